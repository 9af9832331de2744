"""The CRDs' CEL rules (`x-kubernetes-validations`), evaluated offline with cel-python, as a >= 1.25 apiserver
evaluates them on create.

The schema is walked alongside the object; at each node that carries rules and is present in the object, every
rule is evaluated with `self` bound to that node. Transition rules (they read `oldSelf`) only run on an update,
so on create they are not evaluated, exactly as the API server skips them; tests/k8s/crds/README.md lists them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import celpy


@cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def is_transition_rule(rule: str) -> bool:
    return "oldSelf" in rule


def cel_errors(schema: dict[str, Any], document: Any, path: str = "") -> list[str]:
    """`path: message (rule)` for every CEL rule the create of `document` would break."""
    errors: list[str] = []
    for validation in schema.get("x-kubernetes-validations") or []:
        rule = validation["rule"]
        if is_transition_rule(rule):
            continue
        try:
            ok = _program(rule).evaluate({"self": celpy.json_to_cel(document)})
        except celpy.CELEvalError as exc:
            errors.append(
                f"{path or '<root>'}: rule {rule!r} could not be evaluated ({exc.args[0] if exc.args else exc})"
            )
            continue
        if not ok:
            errors.append(f"{path or '<root>'}: {validation.get('message', 'CEL rule failed')} ({rule})")
    if isinstance(document, dict):
        for key, value in document.items():
            sub = (schema.get("properties") or {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                errors += cel_errors(sub, value, f"{path}.{key}" if path else key)
    elif isinstance(document, list) and isinstance(schema.get("items"), dict):
        for index, value in enumerate(document):
            errors += cel_errors(schema["items"], value, f"{path}[{index}]")
    return errors


def all_rules(schema: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (path, rule) in a schema, for the README's list and for the tests that every rule compiles."""
    found: list[tuple[str, str]] = []
    if isinstance(schema, dict):
        found += [(path or "<root>", v["rule"]) for v in schema.get("x-kubernetes-validations") or []]
        for key, value in (schema.get("properties") or {}).items():
            found += all_rules(value, f"{path}.{key}" if path else key)
        if isinstance(schema.get("items"), dict):
            found += all_rules(schema["items"], f"{path}[]")
        if isinstance(schema.get("additionalProperties"), dict):
            found += all_rules(schema["additionalProperties"], f"{path}{{}}")
    return found
