"""Type checking for the run configuration: coerce a value to a dataclass field's annotation or fail with ONE line.

Used by `ConfigContainer.from_dict` (YAML), the dotted overrides and `validate()`. Unknown keys suggest the nearest
valid ones. Torch-free. Error text never repeats a value that could be a credential (`shown`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal

from gemma3_runtime.errors import UserInputError

#: Values that look like a token or key are described, never shown: HF tokens, long hex keys (W&B), and long
#: unbroken runs of letters and digits with several digits in them.
_SECRET_LIKE = re.compile(r"hf_[A-Za-z0-9]{16,}|[0-9a-fA-F]{32,}|(?=[A-Za-z0-9]*(?:[0-9][A-Za-z]*){4})[A-Za-z0-9]{24,}")


def shown(value: Any) -> str:
    """`repr(value)` for an error message, unless it is long or looks like a credential."""
    if isinstance(value, str) and (len(value) > 60 or _SECRET_LIKE.search(value)):
        return f"a {len(value)}-character string"
    text = repr(value)
    return text if len(text) <= 80 and not _SECRET_LIKE.search(text) else f"a {type(value).__name__} value"


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def is_plain_str(hint: Any) -> bool:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint is str or (is_union(hint) and args == [str])


def all_keys(obj: Any, prefix: str = "") -> list[str]:
    """Every dotted key reachable from `obj` (sections that are None contribute only their own name)."""
    keys: list[str] = []
    for f in dataclasses.fields(obj):
        dotted = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            keys.extend(all_keys(value, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def check_known(obj: Any, name: str, prefix: str, root: Any = None) -> None:
    """Raise naming `prefix.name` and the nearest valid keys unless `name` is a field of `obj`."""
    names = [f.name for f in dataclasses.fields(obj)]
    if name in names:
        return
    dotted = f"{prefix}.{name}" if prefix else name
    candidates = all_keys(root if root is not None else obj)
    if root is None and prefix:
        candidates = [f"{prefix}.{k}" for k in candidates]
    siblings = [f"{prefix}.{n}" if prefix else n for n in names]
    near = difflib.get_close_matches(dotted, siblings, n=3, cutoff=0.6)
    near += [k for k in difflib.get_close_matches(dotted, candidates, n=3, cutoff=0.5) if k not in near]
    near = near[:3]
    if not near:  # a misspelled section with a right leaf: match on the leaf name
        leaf = name.lower()
        near = [k for k in candidates if k.rsplit(".", 1)[-1] == leaf][:3]
    suggestion = (
        f"; did you mean {', '.join(near)}?"
        if near
        else f"; valid keys under {prefix or 'the top level'}: {', '.join(names)}"
    )
    raise UserInputError(f"unknown config key {dotted!r}{suggestion}")


def type_name(hint: Any) -> str:
    if hint is Any:
        return "any value"
    if is_union(hint):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        inner = (typing.get_args(hint) or (Any,))[0]
        return f"a list of {type_name(inner)}"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return f"a {hint.__name__} mapping"
    return getattr(hint, "__name__", str(hint))


def type_error(key: str, value: Any, hint: Any) -> UserInputError:
    return UserInputError(
        f"config key {key!r}: expected {type_name(hint)}, got {shown(value)} ({type(value).__name__})"
    )


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Return `value` as `hint` or raise naming the key and the expected type. No silent lossy conversions."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if is_union(hint):
        return _coerce_union(value, hint, key)
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise type_error(key, value, hint)
    if origin in (list, tuple):
        return _coerce_sequence(value, hint, key)
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise type_error(key, value, hint)
    if hint in (bool, int, float, str):
        return _coerce_scalar(value, hint, key)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return dataclass_from_dict(hint, value, key)
        raise type_error(key, value, hint)
    return value


def _coerce_union(value: Any, hint: Any, key: str) -> Any:
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(value, arg, key)
        except UserInputError:
            continue
    raise type_error(key, value, hint)


def _coerce_sequence(value: Any, hint: Any, key: str) -> Any:
    args = typing.get_args(hint)
    inner = args[0] if args else Any
    if isinstance(value, (list, tuple)):
        items = [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if typing.get_origin(hint) is list else tuple(items)
    if typing.get_origin(hint) is list and inner is str and isinstance(value, str):
        return [value]
    raise type_error(key, value, hint)


def _coerce_scalar(value: Any, hint: type, key: str) -> Any:
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise type_error(key, value, hint)


def dataclass_from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """`cls(**data)` with every key known (nearest suggested) and every value of its field's type."""
    hints = field_types(cls)
    probe = cls()
    values = {}
    for k, v in data.items():
        if not isinstance(k, str):
            raise UserInputError(f"{prefix}: expected text keys, got {shown(k)}")
        check_known(probe, k, prefix)
        values[k] = coerce(v, hints[k], f"{prefix}.{k}")
    if cls.__dataclass_params__.frozen:
        try:
            return cls(**values)
        except (ValueError, TypeError) as exc:
            raise UserInputError(f"{prefix}: {' '.join(str(exc).split())}") from None
    for k, v in values.items():
        setattr(probe, k, v)
    return probe


def check_types(obj: Any, prefix: str = "") -> None:
    """Check every field of a dataclass tree against its annotation (values set in Python skip the parsers)."""
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_types(value, key)
        elif hints.get(f.name, Any) is not Any:
            coerce(value, hints[f.name], key)


def to_plain(value: Any) -> Any:
    """YAML-safe plain data (dicts, lists, scalars) from a config tree."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return to_plain(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return str(value)
