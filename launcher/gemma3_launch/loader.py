"""Load a job spec: YAML -> `--set` overrides -> `${VAR}` expansion -> strict validation -> JobSpec.

Every failure is a SpecError whose str() is ONE line: `<file>: <dotted.field>: <what was expected>`; the CLI prints
it and exits 2. Error text never echoes a value that could be a secret.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .contract import SECRET_ENV_NAMES
from .spec import SECRET_KEY_HINT, SECRET_VALUE_HINT, JobSpec

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SpecError(ValueError):
    """Invalid input: one line naming the file/field and what was expected."""


def load_spec(
    path: str | Path, sets: list[str] | tuple[str, ...] = (), environ: Mapping[str, str] | None = None
) -> JobSpec:
    path = Path(path)
    environ = os.environ if environ is None else environ
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{where}: expected an existing job spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{where}: expected a readable UTF-8 YAML file ({exc.__class__.__name__})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise SpecError(f"{where}{loc}: expected valid YAML ({problem})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a YAML mapping of spec fields at the top level, got {type(raw).__name__}")
    try:
        data = apply_sets(raw, sets)
        declared_secrets = {s for s in data.get("secrets") or [] if isinstance(s, str)}
        data = expand_vars(data, environ, declared_secrets)
        return validate(data)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


def apply_sets(data: dict, sets: list[str] | tuple[str, ...]) -> dict:
    """`--set resources.gpus_per_node=2`: the value is parsed as YAML (numbers, booleans, lists)."""
    import copy

    data = copy.deepcopy(data)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise SpecError(
                f"--set {item.split('=')[0]!s}: expected KEY=VALUE with a dotted key such as resources.nodes=2"
            )
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise SpecError(f"--set {key}: expected '{'.'.join(parts[: i + 1])}' to be a section")
            node = nxt
        node[parts[-1]] = parsed
    return data


def expand_vars(obj: Any, environ: Mapping[str, str], secrets: set[str], path: str = "") -> Any:
    """`${VAR}` / `${VAR:-default}` in every string value; `$$` is a literal `$`. Secrets may not be expanded."""
    if isinstance(obj, dict):
        return {k: expand_vars(v, environ, secrets, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand_vars(v, environ, secrets, f"{path}.{i}") for i, v in enumerate(obj)]
    if not isinstance(obj, str):
        return obj

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in secrets or name in SECRET_ENV_NAMES or SECRET_KEY_HINT.search(name):
            raise SpecError(
                f"{path}: expected no secret in the spec, but it expands ${{{name}}}; list {name} under 'secrets'"
            )
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise SpecError(f"{path}: expected environment variable {name} to be set (or write ${{{name}:-default}})")

    return _VAR.sub(sub, obj)


def validate(data: dict) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # an unknown key explains the most (a typo'd required key also shows up as "missing"): report it first
        first = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
        raise SpecError(format_error(first)) from None


def format_error(err: Mapping[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    typ = err.get("type", "")
    msg = str(err.get("msg", ""))
    if typ == "extra_forbidden":
        allowed = _fields_at(JobSpec, loc[:-1])
        near = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.5)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        return f"{'.'.join(loc)}: unknown key{hint}; expected one of: {', '.join(allowed)}"
    if typ == "missing":
        return f"{'.'.join(loc)}: expected this required field (missing)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        # validators prefix the sub-field they blame ("nproc_per_node: ..."): fold it into the path
        head, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", head):
            if not (loc and loc[-1] == head):
                loc = [*loc, head] if loc else [head]
            msg = rest
    elif typ == "string_pattern_mismatch" and _PATTERN_HELP.get(_last_name(loc)):
        msg = f"expected {_PATTERN_HELP[_last_name(loc)]}{_got(err, loc)}"
    else:
        msg = msg.replace("Input should be", "expected").replace("String should", "expected a string to")
        msg = msg.replace("should", "expected to")
        msg = f"{msg}{_got(err, loc)}"
    field = ".".join(loc) or "spec"
    return " ".join(f"{field}: {msg}".split())


#: What a pattern-checked field wants, in words (the regex itself is no help to a user).
_PATTERN_HELP = {
    "name": "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 40 characters",
    "memory": "a size such as 64G (a whole number followed by K, M, G or T)",
    "overrides": "KEY=VALUE with a dotted key, e.g. train.train_iters=100",
    "extra_sbatch": "a long sbatch option such as --reservation=foo",
    "secrets": "an environment variable NAME such as HF_TOKEN (never its value)",
    "env": "an environment variable name",
    "namespace": "a Kubernetes namespace (lowercase letters, digits, '-')",
    "claim": "a PVC name (lowercase letters, digits, '-', '.')",
    "shm_size": "a size such as 16Gi (Mi or Gi)",
}


def _last_name(loc: list[str]) -> str:
    names = [p for p in loc if not p.isdigit()]
    return names[-1] if names else ""


def _got(err: Mapping[str, Any], loc: list[str]) -> str:
    """', got ...' - the input only when it is short and cannot be a secret (never under env/secrets)."""
    value = err.get("input")
    sensitive = bool(loc) and loc[0] in ("env", "secrets")
    if isinstance(value, (bool, int, float)):
        return "" if sensitive else f", got {value!r}"
    if isinstance(value, str):
        if sensitive or SECRET_VALUE_HINT.match(value) or len(value) > 60:
            return ", got a string"
        return f", got {value!r}"
    return f", got {type(value).__name__ if value is not None else 'null'}"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the (nested) model at `loc`, for 'did you mean' on unknown keys."""

    cur: Any = model
    for part in loc:
        if part.isdigit():
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return []
        cur = _model_in(cur.model_fields[part].annotation)
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return []


def _model_in(tp: Any) -> Any:
    import typing

    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
