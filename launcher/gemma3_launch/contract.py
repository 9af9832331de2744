"""Facts shared by the launcher and the runtime (which imports them from here): torch-free by design."""

#: The runtime saved a checkpoint after SIGTERM/SIGUSR2 and asks to be requeued. In 128-255 so that a Kubeflow
#: PyTorchJob with `restartPolicy: ExitCode` restarts the pod; 199 = 128 + 71 matches no signal, so it is never
#: confused with a process killed by a signal (128 + signum).
REQUEUE_EXIT_CODE = 199

#: Bad input (a spec, an override, a path): one clear line on stderr, nothing submitted or written.
INVALID_INPUT_EXIT_CODE = 2

#: A write found no space left (disk or quota full): one line naming the directory on stderr; the previous
#: checkpoint is kept. 28 is ENOSPC's errno on Linux.
STORAGE_FULL_EXIT_CODE = 28

#: Signals on which the runtime finishes its step, saves and exits with REQUEUE_EXIT_CODE.
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR2")

#: Job record file in each run directory (the source of truth; the SQLite index is a cache).
JOB_RECORD_FILE = "job.json"

#: Written by the job wrapper when the job ends (state + exit code): status still works after the scheduler forgets
#: the job (SLURM MinJobAge) and without accounting.
TERMINAL_STATE_FILE = "state.json"

#: Recipe names `gemma3-runtime run --recipe` accepts: the runtime's recipe functions are `<name>_config`
#: (gemma3_runtime.training.recipes; tests/unit/test_training_validate.py checks the two lists agree, in this order).
#: `tiny` is for mechanics tests only.
MODEL_SIZES = ("tiny", "270m", "1b", "4b", "12b", "27b")
KNOWN_RECIPES = tuple(f"gemma3_{size}_{mode}" for size in MODEL_SIZES for mode in ("pretrain", "finetune"))

#: Environment variables that are secrets: passed by name, never written into a spec, script, manifest or record.
SECRET_ENV_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")

#: Set by the job wrapper for each step: where the runtime writes the step's structured result (result.json).
RESULT_FILE_ENV = "GEMMA3_RESULT_FILE"
