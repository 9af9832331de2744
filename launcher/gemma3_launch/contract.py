"""Facts shared by the launcher and the runtime (which imports them from here): torch-free by design."""

#: The runtime saved a checkpoint after SIGTERM/SIGUSR2 and asks to be requeued. In 128-255 so that a Kubeflow
#: PyTorchJob with `restartPolicy: ExitCode` restarts the pod; 199 = 128 + 71 matches no signal, so it is never
#: confused with a process killed by a signal (128 + signum).
REQUEUE_EXIT_CODE = 199

#: Bad input (a spec, an override, a path): one clear line on stderr, nothing submitted or written.
INVALID_INPUT_EXIT_CODE = 2

#: Signals on which the runtime finishes its step, saves and exits with REQUEUE_EXIT_CODE.
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR2")

#: Job record file in each run directory (the source of truth; the SQLite index is a cache).
JOB_RECORD_FILE = "job.json"
