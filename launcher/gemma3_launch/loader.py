"""Load a job spec: strict YAML -> `--set` overrides -> `${VAR}` expansion -> string checks -> validation -> JobSpec.

Every failure is a SpecError whose str() is ONE line: `<file>[:<line>]: <dotted.field>: <what was expected>`; the
CLI prints it and exits 2. Error text never echoes a value that could be a secret (credentials.scrub).

String rules checked here, before the typed model (spec.py documents each field's own grammar):
- no control characters (C0, DEL, C1, Unicode line separators) and no lone surrogates in any key or value, except
  that `generate.prompt` may hold newlines and tabs (a prompt travels to the job as a file in the run dir);
- `secrets` entries, `k8s.secret_name`, and `env` names and values must not look like a credential (a token
  pasted where a name belongs); the error says so without showing it.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .contract import SECRET_ENV_NAMES
from .credentials import looks_like_credential, scrub
from .quoting import has_control_chars
from .spec import SECRET_KEY_HINT, JobSpec
from .yaml_strict import MAX_BYTES, StrictYamlError, load_strict, yaml_error_text

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SET_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_SURROGATE = re.compile("[\ud800-\udfff]")
#: The one field that may hold multi-line text, and the control characters it may hold.
MULTILINE_FIELDS = {"generate.prompt": "\n\t"}

Warn = Callable[[str], None]


class SpecError(ValueError):
    """Invalid input: one line naming the file/field and what was expected (credential-shaped text redacted)."""

    def __init__(self, message: str):
        super().__init__(scrub(message))


def load_spec(
    path: str | Path,
    sets: list[str] | tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
    warn: Warn | None = None,
) -> JobSpec:
    """The validated spec at `path` with `sets` applied; `warn` receives notes (a `--set` that drops entries)."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    where = str(path)
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"{where}: expected an existing job spec file") from None
    except OSError as exc:
        raise SpecError(f"{where}: expected a readable job spec file ({exc.__class__.__name__})") from None
    if len(blob) > MAX_BYTES:
        raise SpecError(f"{where}: expected at most {MAX_BYTES // 1024} KiB of YAML")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{where}: expected a UTF-8 text file") from None
    raw = parse_yaml(text, where)
    if not isinstance(raw, dict):
        kind = type(raw).__name__ if raw is not None else "an empty document"
        raise SpecError(f"{where}: expected a YAML mapping of spec fields at the top level, got {kind}")
    try:
        data = apply_sets(raw, sets, warn)
        declared_secrets = {s for s in data.get("secrets") or [] if isinstance(s, str)}
        data = expand_vars(data, environ, declared_secrets)
        check_strings(data)
        return validate(data)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


def parse_yaml(text: str, where: str) -> Any:
    """`text` through the strict reader; errors become `<where>:<line>: [<path>: ]<what was expected>`."""
    try:
        return load_strict(text)
    except StrictYamlError as exc:
        line = f":{exc.line}" if exc.line else ""
        field = f" {exc.path}:" if exc.path else ""
        raise SpecError(f"{where}{line}:{field} {exc.message}") from None
    except yaml.YAMLError as exc:
        line, problem = yaml_error_text(exc, text)
        raise SpecError(f"{where}{':' + str(line) if line else ''}: {problem}") from None


def apply_sets(data: dict, sets: list[str] | tuple[str, ...], warn: Warn | None = None) -> dict:
    """`--set KEY=VALUE` replaces a field; `--set KEY+=VALUE` appends to a list (VALUE: one item or a list). VALUE
    is read by the same strict YAML reader as the spec (text that is not valid YAML is taken as a string). A
    replace that drops list entries or section keys is reported through `warn`."""
    data = copy.deepcopy(data)
    for item in sets:
        key, sep, value = item.partition("=")
        append = key.endswith("+")
        key = key[:-1] if append else key
        if not sep or not _SET_KEY.fullmatch(key):
            raise SpecError(
                f"--set {key}: expected KEY=VALUE (or KEY+=VALUE) with a dotted key such as resources.nodes=2"
            )
        parsed = _set_value(key, value)
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise SpecError(f"--set {key}: expected '{'.'.join(parts[: i + 1])}' to be a section")
            node = nxt
        last, old = parts[-1], node.get(parts[-1])
        if append:
            if old is not None and not isinstance(old, list):
                raise SpecError(f"--set {key}+=: expected {key} to be a list (use {key}=VALUE to replace it)")
            node[last] = [*(old or []), *(parsed if isinstance(parsed, list) else [parsed])]
            continue
        if warn is not None:
            _note_dropped(key, old, parsed, warn)
        node[last] = parsed
    return data


def _set_value(key: str, value: str) -> Any:
    if value == "" or has_control_chars(value):
        return value  # taken as typed: YAML would fold a newline into a space (the string checks judge it)
    try:
        return load_strict(value)
    except StrictYamlError as exc:
        raise SpecError(f"--set {key}: {exc.message}") from None
    except yaml.YAMLError:
        return value  # not YAML (e.g. `a: b: c`): the text itself


def _note_dropped(key: str, old: Any, new: Any, warn: Warn) -> None:
    if isinstance(old, list):
        kept = new if isinstance(new, list) else [new]
        dropped = [str(v) for v in old if v not in kept]
        how = f"use {key}+=VALUE to append"
    elif isinstance(old, dict):
        dropped = [str(k) for k in old if not (isinstance(new, dict) and k in new)]
        how = f"set {key}.FIELD=VALUE to change one field"
    else:
        return
    if dropped:
        warn(f"--set {key}=: replaces the spec's {key}, dropping {len(dropped)}: {', '.join(dropped)} ({how})")


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


_LOOKS_SECRET = "got something that looks like a credential (not shown)"


def check_strings(obj: Any, path: str = "") -> None:
    """The string rules of this module's docstring, on every key and value (after `${VAR}` expansion)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                _check_text(key, sub, "")
                if path == "env" and looks_like_credential(key):
                    raise SpecError(f"{sub}: expected an environment variable name, {_LOOKS_SECRET}")
            check_strings(value, sub)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            check_strings(value, f"{path}.{i}")
    elif isinstance(obj, str):
        _check_text(obj, path, MULTILINE_FIELDS.get(path, ""))
        if not looks_like_credential(obj):
            return
        if re.fullmatch(r"secrets\.\d+", path):
            raise SpecError(f"{path}: expected an environment variable NAME such as HF_TOKEN, {_LOOKS_SECRET}")
        if path == "k8s.secret_name":
            raise SpecError(f"{path}: expected the NAME of a Kubernetes Secret, {_LOOKS_SECRET}")
        if path.startswith("env."):
            raise SpecError(f"{path}: expected a non-secret value ({_LOOKS_SECRET}); list it under 'secrets' instead")


def _check_text(text: str, path: str, allowed: str) -> None:
    bad = next((c for c in text if c not in allowed and (has_control_chars(c) or _SURROGATE.match(c))), None)
    if bad is not None:
        also = " other than newline and tab" if allowed else ""
        raise SpecError(f"{path}: expected text without control characters{also} (found U+{ord(bad):04X})")


def validate(data: dict) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # an unknown key explains the most (a typo'd required key also shows up as "missing"): report it first
        first = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
        raise SpecError(format_error(first)) from None


def format_error(err: Mapping[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ()) if p != "[key]"]  # a dict key's error: its path names the key
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
        if sep and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_./-]*", head):
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
        if sensitive or looks_like_credential(value) or has_control_chars(value) or len(value) > 60:
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
