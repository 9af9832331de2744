"""The rules behind the hostile corpus, from the accepting side: YAML 1.2 scalars, sbatch time-limit formats,
`--set` replace/append semantics with its note, and the credential scrubber on every CLI error path."""

from __future__ import annotations

import pytest
import yaml
from hostile_cases import BASE, CREDENTIALS

from gemma3_launch.cli import main
from gemma3_launch.credentials import looks_like_credential, one_line, scrub
from gemma3_launch.loader import SpecError, apply_sets, load_spec
from gemma3_launch.spec_time import parse_time_limit
from gemma3_launch.yaml_strict import StrictYamlError, load_strict

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "text,value",
    [
        ("4:00:00", "4:00:00"),  # YAML 1.1: the integer 14400
        ("yes", "yes"),
        ("on", "on"),
        ("No", "No"),
        ("true", True),
        ("False", False),
        ("017", 17),  # YAML 1.1: octal 15
        ("0o17", 15),
        ("0x1F", 31),
        ("1_000", "1_000"),
        ("2024-01-05", "2024-01-05"),  # YAML 1.1: a date
        ("~", None),
        ("1e3", 1000.0),
        ("-.inf", float("-inf")),
        ("'quoted: yes'", "quoted: yes"),
    ],
)
def test_scalars_read_as_yaml_1_2_core(text, value):
    assert load_strict(f"v: {text}") == {"v": value}


def test_duplicate_key_names_both_lines():
    with pytest.raises(StrictYamlError) as err:
        load_strict("resources:\n  gpus_per_node: 8\n  nodes: 1\n  gpus_per_node: 1\n")
    assert (err.value.line, err.value.path) == (4, "resources.gpus_per_node")
    assert "first at line 2" in str(err.value)


def test_spec_error_line_format(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: a\nkind: import\nname: b\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert str(err.value) == f"{spec}:3: name: expected each key once, found duplicate key 'name' (first at line 1)"


@pytest.mark.parametrize(
    "value,seconds",
    [
        (240, 4 * 3600),  # an integer is minutes, as sbatch reads it
        ("90", 90 * 60),
        ("90:30", 90 * 60 + 30),
        ("04:00:00", 4 * 3600),
        ("4:0:0", 4 * 3600),
        ("100:00:00", 100 * 3600),
        ("2-12", 60 * 3600),
        ("1-02:03", 26 * 3600 + 180),
        ("1-02:03:04", 93784),
        ("365-00:00:00", 365 * 86400),
        (525600, 365 * 86400),
    ],
)
def test_time_limit_formats(value, seconds):
    assert parse_time_limit(value) == seconds


def test_unquoted_sexagesimal_time_limit_is_the_string_sbatch_reads(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: a\nkind: import\nmodel: m\ncheckpoint: {dir: /c}\nresources: {time_limit: 4:00:00}\n")
    loaded = load_spec(spec)
    assert loaded.resources.time_limit == "4:00:00" and loaded.resources.time_limit_s == 4 * 3600


def test_set_replace_and_append():
    data = {"overrides": ["a=1", "b=2"], "resources": {"nodes": 1}}
    notes: list[str] = []
    out = apply_sets(data, ["overrides+=c=3", "overrides+=[d=4, e=5]", "resources.nodes=2"], notes.append)
    assert out["overrides"] == ["a=1", "b=2", "c=3", "d=4", "e=5"] and out["resources"]["nodes"] == 2
    assert notes == []
    out = apply_sets(data, ["secrets+=HF_TOKEN"], notes.append)
    assert out["secrets"] == ["HF_TOKEN"]  # appending to an absent list creates it
    assert data == {"overrides": ["a=1", "b=2"], "resources": {"nodes": 1}}  # the input is not changed


def test_set_replace_that_drops_entries_says_which(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({**BASE, "overrides": ["train.train_iters=10", "optimizer.lr=1e-4"]}))
    assert main(["validate", str(spec), "--set", "overrides=[optimizer.lr=1e-3]"]) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "--set overrides" in ln]
    assert len(notes) == 1, notes
    assert "warning" in notes[0] and "dropping 2: train.train_iters=10, optimizer.lr=1e-4" in notes[0]
    assert "overrides+=" in notes[0]
    assert main(["validate", str(spec), "--set", "overrides+=optimizer.lr=1e-3"]) == 0
    assert "dropping" not in capsys.readouterr().err


def test_set_value_is_read_by_the_strict_reader():
    assert apply_sets({}, ["resources.time_limit=4:00:00"])["resources"]["time_limit"] == "4:00:00"
    assert apply_sets({}, ["slurm.exclusive=yes"])["slurm"]["exclusive"] == "yes"
    assert apply_sets({}, ["generate.prompt=a: b: c"])["generate"]["prompt"] == "a: b: c"  # not YAML: the text
    assert apply_sets({}, ["generate.prompt=one\ntwo"])["generate"]["prompt"] == "one\ntwo"  # not folded
    with pytest.raises(SpecError, match="--set resources: expected each key once"):
        apply_sets({}, ["resources={nodes: 1, nodes: 2}"])


@pytest.mark.parametrize("kind", sorted(CREDENTIALS))
def test_every_credential_shape_is_recognised_and_scrubbed(kind):
    value = CREDENTIALS[kind]
    assert looks_like_credential(value)
    line = scrub(f"field: expected a name, got {value!r} (and {value})")
    assert value not in line and line.count("<redacted>") == 2


@pytest.mark.parametrize(
    "text",
    [
        "/scratch/users/JohnDoe2/runs/gemma3-1b/checkpoints/iter_0000100",
        "google/gemma-3-1b-pt",
        "ThisIsAVeryLongCamelCaseIdentifier2024",
        "SomeDataset_v2_TrainSplit_2024_01_05_Shard0001",
        "train.train_iters=1000",
        "MY_SERVICE_ACCOUNT_CREDENTIALS_FILE_PATH",
        "gemma3_270m_finetune",
    ],
)
def test_ordinary_text_is_not_taken_for_a_credential(text):
    assert not looks_like_credential(text) and scrub(text) == text


def test_one_line_escapes_control_characters():
    assert one_line("a\nb\x1b[31m\tc\u2028d") == "a b\\x1b[31m c d"


@pytest.mark.parametrize("argv", [["status"], ["logs"], ["cancel"]])
def test_job_commands_never_echo_a_credential(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    token = CREDENTIALS["ghp"]
    assert main([*argv, token]) == 2
    err = capsys.readouterr().err
    assert token not in err and "<redacted>" in err and len(err.splitlines()) == 1


def test_spec_path_and_set_key_errors_never_echo_a_credential(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    token = CREDENTIALS["hf"]
    assert main(["validate", str(tmp_path / token / "spec.yaml")]) == 2
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(BASE))
    assert main(["validate", str(spec), "--set", f"{token}.x=1"]) == 2  # an unknown key
    assert main(["validate", str(spec), "--set", f"{token}=1=2"]) == 2
    err = capsys.readouterr().err
    assert token not in err and err.count("<redacted>") == 3 and len(err.splitlines()) == 3
