"""Every string field of a valid spec, filled with arbitrary text (hypothesis): `validate` either refuses it with
exit 2 and one line naming that field, or accepts it - and an accepted value comes out of `load_spec` byte for
byte. Plus the values the rules must let through: printable Unicode, spaces, quotes, `$` and `%` in prompts,
paths and env values, and multi-line prompts."""

from __future__ import annotations

import copy
import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml
from hostile_cases import BASE, STRING_FIELDS, set_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gemma3_launch.cli import main
from gemma3_launch.loader import load_spec

pytestmark = pytest.mark.unit

#: Text with everything a hostile user might type: control characters, quotes, `$`, `%`, backslashes, Unicode.
HOSTILE_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),  # any Unicode scalar, controls included
        st.sampled_from(list("\n\t\r\x00\x1b\x7f\x85\u2028$%'\"\\`;&|<>(){}[]#*?~!= -:/")),
    ),
    max_size=40,
)


def _get(data, path: str):
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def _spec_yaml(path: str, value: str) -> str:
    """BASE with `value` at `path`, written as a YAML double-quoted string (every character escaped as YAML needs);
    `$` doubled, because `$$` is the spec's own escape for a literal `$` (`${VAR}` expands)."""
    data = copy.deepcopy(BASE)
    set_path(data, path, value.replace("$", "$$"))
    return json.dumps(data, ensure_ascii=True)  # JSON is YAML 1.2: the strict reader takes it as is


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(field=st.sampled_from(STRING_FIELDS), value=HOSTILE_TEXT)
def test_any_text_in_any_string_field_is_refused_in_one_line_or_kept_exactly(field, value, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec_yaml(field, value), encoding="utf-8", errors="surrogatepass")
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        rc = main(["validate", str(spec)])
    lines = [ln for ln in err.getvalue().splitlines() if ": warning: " not in ln]
    if rc == 0:
        assert _get(load_spec(spec).model_dump(), field) == value  # byte for byte
        return
    assert rc == 2, (field, value, err.getvalue())
    assert len(lines) == 1, lines
    assert "Traceback" not in err.getvalue()
    assert lines[0].isprintable()
    named = field.rsplit(".", 1)[0] if field.split(".")[-1].isdigit() else field
    assert named in lines[0], (field, value, lines[0])


@pytest.mark.parametrize(
    "field,value",
    [
        ("generate.prompt", "Line one\nline two\twith a tab, 'quotes', \"double\", $HOME, 100% and ünïcødé ✓"),
        ("generate.prompt", "${not a var} $$ $( rm -rf / ) `id` %j %%"),
        ("runs_dir", '/scratch/my runs/100% done/$USER\'s "runs"'),
        ("checkpoint.dir", "/ck/with space/ünï/%x/$HOME"),
        ("checkpoint.pretrained", '/ck/it\'s/"here"'),
        ("model", "/models/gemma 3 (1B)/"),
        ("export.hf_path", "/out/hf %j $x"),
        ("data.paths.0", "/data/ünïcødé/train 1.jsonl"),
        ("mounts.0.source", "/data/with space/$x/%y"),
        ("env.LOG_LEVEL", "a value with spaces, 'quotes', \"dq\", $ and %"),
        ("slurm.partition", "gpu-β"),
    ],
)
def test_printable_text_validates_and_survives(field, value, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec_yaml(field, value), encoding="utf-8")
    assert main(["validate", str(spec)]) == 0, capsys.readouterr().err
    assert _get(load_spec(spec).model_dump(), field) == value


def test_prompts_file_validates_with_spaces_and_percent(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    data = copy.deepcopy(BASE)
    data["generate"] = {"prompts_file": "/prompts/100% sure/it's.txt"}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["validate", str(spec)]) == 0, capsys.readouterr().err
    assert load_spec(spec).generate.prompts_file == "/prompts/100% sure/it's.txt"


def test_a_literal_block_prompt_keeps_its_newlines(tmp_path):
    spec = tmp_path / "spec.yaml"
    text = yaml.safe_dump({k: v for k, v in BASE.items() if k != "generate"}, sort_keys=False)
    spec.write_text(text + "generate:\n  prompt: |\n    first line\n    \tsecond: line\n", encoding="utf-8")
    assert load_spec(spec).generate.prompt == "first line\n\tsecond: line\n"
