"""The Helm chart (through helm-python-sdk: Helm v4's Go SDK, no helm binary here): it lints clean, renders the
SAME objects as the Python renderer for every job spec and both APIs (TrainJob + TrainingRuntime, PyTorchJob) apart
from Helm's recommended labels, names them after the release, and its values.schema.json rejects malformed values."""

from __future__ import annotations

import copy
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from k8s_helpers import CHART, REPO, SPECS, k8s_plan, needs_k8s_secret, spec_id

from gemma3_launch.container_image import DEFAULT_IMAGE
from gemma3_launch.k8s_manifests import render_objects
from gemma3_launch.render_helm import helm_values

pytestmark = pytest.mark.k8s
FEATURES = REPO / "tests" / "k8s" / "specs" / "k8s_features_2node.yaml"


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


#: Helm's recommended labels (and the keep policy of a shared ClusterTrainingRuntime): the chart's own additions.
HELM_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)
HELM_ANNOTATIONS = ("helm.sh/resource-policy",)


def _plan(path: Path, api: str = "trainjob", **sets: str):
    plan = k8s_plan(path, **{"k8s.api": api}, **sets)
    if needs_k8s_secret(plan):
        return k8s_plan(path, **{"k8s.api": api, "k8s.secret_name": "gemma3-credentials"}, **sets)
    return plan


def _documents(rendered: dict[str, str]) -> list[dict]:
    return [doc for name, text in rendered.items() if name.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]


def _without_helm_labels(document: dict) -> dict:
    document = copy.deepcopy(document)
    meta = document["metadata"]
    for key in HELM_LABELS:
        meta.get("labels", {}).pop(key, None)
    for key in HELM_ANNOTATIONS:
        meta.get("annotations", {}).pop(key, None)
    if meta.get("annotations") == {}:
        del meta["annotations"]
    return document


def _render(chart: helm.Chart, values: dict, namespace: str = "default", release: str = "release") -> list[dict]:
    return _documents(chart.render(values, name=release, namespace=namespace, is_install=True))


def _jobs(chart: helm.Chart, plan, values: dict | None = None) -> list[dict]:
    """The chart's job objects (not PVCs / ExternalSecrets) for `plan`, release name = job id, Helm labels off."""
    documents = _render(chart, values or helm_values(plan), namespace=plan.k8s.namespace, release=plan.job_id)
    kinds = ("TrainingRuntime", "ClusterTrainingRuntime", "TrainJob", "PyTorchJob")
    return [_without_helm_labels(d) for d in documents if d["kind"] in kinds]


def test_chart_lints_clean() -> None:
    report = helm.lint(str(CHART), strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 1 = info ("icon is recommended")
    assert problems == [] and report["errors"] == []


def test_lint_does_catch_a_broken_chart(tmp_path: Path) -> None:
    broken = tmp_path / "gemma3-launch"
    broken.mkdir()
    for item in CHART.rglob("*"):
        if item.is_file():
            (broken / item.relative_to(CHART)).parent.mkdir(parents=True, exist_ok=True)
            (broken / item.relative_to(CHART)).write_text(item.read_text())
    (broken / "templates" / "pytorchjob.yaml").write_text("{{ .Values.job.name ")
    report = helm.lint(str(broken), strict=True)
    assert any(m["severity"] == 3 for m in report["messages"]) or report["errors"]


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_chart_renders_the_same_objects_as_the_launcher(chart: helm.Chart, path: Path, api: str) -> None:
    plan = _plan(path, api)
    assert _jobs(chart, plan) == render_objects(plan)


def test_chart_renders_a_shared_cluster_runtime_kept_on_uninstall(chart: helm.Chart) -> None:
    plan = _plan(FEATURES, **{"k8s.runtime_kind": "ClusterTrainingRuntime"})
    assert _jobs(chart, plan) == render_objects(plan)
    (runtime,) = [d for d in _render(chart, helm_values(plan)) if d["kind"] == "ClusterTrainingRuntime"]
    assert runtime["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_every_object_has_helms_recommended_labels_and_the_release_name(chart: helm.Chart, api: str) -> None:
    plan = _plan(FEATURES, api)
    for document in _render(chart, helm_values(plan), namespace="ml-training", release="my-release"):
        labels = document["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "gemma3-launch"
        assert labels["app.kubernetes.io/instance"] == "my-release"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "gemma3-launch-0.1.0" and labels["app.kubernetes.io/version"] == "0.1.0"
        assert document["metadata"]["name"] == "my-release"


def test_pvc_template_creates_only_requested_claims_and_keeps_them(chart: helm.Chart) -> None:
    values = helm_values(_plan(FEATURES))
    values["pvcs"][0]["create"] = {"size": "2Ti", "accessModes": ["ReadWriteMany"], "storageClassName": "fast"}
    documents = _render(chart, values, namespace="ml-training")
    (pvc,) = [d for d in documents if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == "gemma3-checkpoints"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Ti"
    kubernetes_validate.validate(pvc, "1.30.0", strict=True)
    assert _jobs(chart, _plan(FEATURES), values) == render_objects(_plan(FEATURES))  # the job is unchanged


def test_default_values_render_a_valid_job_with_the_default_image(chart: helm.Chart, crd_schemas) -> None:
    from k8s_helpers import crd_errors

    runtime, job = _render(chart, {})
    assert (runtime["kind"], job["kind"]) == ("TrainingRuntime", "TrainJob")
    assert job["spec"]["trainer"]["image"] == DEFAULT_IMAGE
    for document in (runtime, job):
        assert crd_errors(crd_schemas.get(document["apiVersion"], document["kind"])[0], document) == []
    (pytorchjob,) = _render(chart, {"api": "pytorchjob"})
    assert (
        pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"]
        == DEFAULT_IMAGE
    )


MALFORMED = {
    "unknown key": lambda v: v.__setitem__("node", 2),
    "zero nodes": lambda v: v.__setitem__("nodes", 0),
    "nodes as text": lambda v: v.__setitem__("nodes", "two"),
    "unknown api": lambda v: v.__setitem__("api", "mpijob"),
    "bad runtime kind": lambda v: v["runtime"].__setitem__("kind", "Runtime"),
    "runtime field nulled": lambda v: v["runtime"].__setitem__("failurePolicy", None),
    "zero deadline": lambda v: v["trainJob"].__setitem__("activeDeadlineSeconds", 0),
    "label value not text": lambda v: v["labels"].__setitem__("team", 3),
    "bad job name": lambda v: v["job"].__setitem__("name", "Not_A_DNS_Name"),
    "bad memory quantity": lambda v: v["resources"]["requests"].__setitem__("memory", "lots"),
    "secret value in env": lambda v: v["env"].append({"name": "HF_TOKEN", "valueFrom": "x"}),
    "relative mount path": lambda v: v["pvcs"][0].__setitem__("mountPath", "checkpoints"),
    "bad toleration effect": lambda v: v["tolerations"][0].__setitem__("effect", "Never"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_schema_rejects_malformed_values(chart: helm.Chart, case: str) -> None:
    values = copy.deepcopy(helm_values(_plan(FEATURES)))
    chart.validate_schema(values)  # the generated values pass ...
    MALFORMED[case](values)
    with pytest.raises(helm.HelmValuesError):  # ... and each malformed variant does not
        chart.render(values, name="release", namespace="default")


def test_secrets_without_a_secret_name_fail_the_render(chart: helm.Chart) -> None:
    values = helm_values(_plan(FEATURES))
    values["secrets"]["secretName"] = ""
    with pytest.raises(helm.HelmError, match="secrets.secretName"):
        chart.render(values, name="release", namespace="default")


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_notes_say_how_to_follow_the_job_and_create_the_secret(chart: helm.Chart, api: str) -> None:
    plan = _plan(FEATURES, api)
    notes = chart.render(helm_values(plan), name=plan.job_id, namespace="ml-training")[
        "gemma3-launch/templates/NOTES.txt"
    ]
    assert f"get {api} {plan.job_id}" in notes and "logs -f" in notes
    assert 'create secret generic gemma3-credentials --from-literal=HF_TOKEN="$HF_TOKEN"' in notes


def test_chart_values_default_image_matches_the_one_definition() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"] == DEFAULT_IMAGE, "helm/gemma3-launch/values.yaml image: run containers/sync_image.py"


def test_render_format_helm_values_prints_these_values(chart: helm.Chart) -> None:
    import subprocess
    import sys

    from gemma3_launch.loader import load_spec
    from gemma3_launch.plan import Cluster, make_plan

    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "gemma3_launch.cli",
            "render",
            str(FEATURES),
            "--cluster",
            "k8s",
            "--format",
            "helm-values",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    values = yaml.safe_load(cli.stdout)
    plan = make_plan(load_spec(FEATURES), Cluster("k8s"))
    assert values == helm_values(plan)
    assert _jobs(chart, plan, values) == render_objects(plan)


def test_optional_external_secret_references_the_store_not_the_values(chart: helm.Chart) -> None:
    plan = _plan(FEATURES)
    values = helm_values(plan)
    values["secrets"]["external"] = {
        "storeRef": {"name": "vault", "kind": "ClusterSecretStore"},
        "remoteRefs": {"HF_TOKEN": {"key": "ml/hf", "property": "token"}, "WANDB_API_KEY": {"key": "ml/wandb"}},
    }
    documents = _render(chart, values, namespace="ml-training")
    (external,) = [d for d in documents if d["kind"] == "ExternalSecret"]
    assert external["spec"]["target"]["name"] == "gemma3-credentials"
    assert [d["secretKey"] for d in external["spec"]["data"]] == ["HF_TOKEN", "WANDB_API_KEY"]
    assert _jobs(chart, plan, values) == render_objects(plan)
    del values["secrets"]["external"]["remoteRefs"]["WANDB_API_KEY"]
    with pytest.raises(helm.HelmError, match="remoteRefs.WANDB_API_KEY"):
        chart.render(values, name="release", namespace="ml-training")
    values["secrets"]["external"]["remoteRefs"]["WANDB_API_KEY"] = {"value": "a-secret-value"}
    with pytest.raises(helm.HelmValuesError):  # a value where a reference belongs is rejected by the schema
        chart.render(values, name="release", namespace="ml-training")
