"""A strict YAML reader for job specs and `--set` values: PyYAML's SafeLoader with YAML 1.2 core-schema scalars.

Why not plain `yaml.safe_load`: it merges duplicate keys silently (last wins), expands aliases without bound (an
alias bomb), and reads scalars with YAML 1.1 rules that surprise (`4:00:00` is the integer 14400, `yes`/`on` are
booleans, `017` is octal, `2024-01-05` a date). Why not a YAML 1.2 library (ruamel.yaml): it would be a new
dependency for what a small SafeLoader subclass does with its own resolvers; the rules here are:
- scalars: null (`~`, `null`, empty), booleans `true`/`false` only, integers decimal / `0o` octal / `0x` hex,
  floats with `.inf` / `.nan`; everything else (times, dates, `yes`, `on`, `1_000`) is a string;
- a duplicate key is an error naming both lines; anchors and aliases are refused; explicit tags other than the
  core ones (`!!str`, `!!int`, ...) are refused; keys must be strings (`1:` or `true:` is no field name);
- the text is at most MAX_BYTES and nested at most MAX_DEPTH deep.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: A job spec is a page of YAML; anything this large is a mistake or an attack.
MAX_BYTES = 256 * 1024
#: Nesting depth (mappings and lists): a spec needs 4.
MAX_DEPTH = 32

_T = "tag:yaml.org,2002:"
CORE_TAGS = frozenset(_T + t for t in ("str", "int", "float", "bool", "null", "map", "seq"))

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class StrictYamlError(ValueError):
    """A rule of the strict reader broken at `line` (1-based; 0 = the text as a whole) at the field `path`."""

    def __init__(self, line: int, path: str, message: str):
        super().__init__(message)
        self.line, self.path, self.message = line, path, message


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's implicit resolvers, no aliases and a depth cap."""

    yaml_implicit_resolvers: dict = {}

    def __init__(self, stream: str):
        super().__init__(stream)
        self._path: list[str] = []  # dotted path of the node being composed, for error lines
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # `index` is the key node of a mapping value, the position of a list item, None for a key or the root
        name = index.value if isinstance(index, ScalarNode) else str(index) if isinstance(index, int) else None
        path = ".".join(self._path if name is None else [*self._path, name])
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise StrictYamlError(line, path, "expected no aliases (*name): write the value out")
        if getattr(event, "anchor", None):
            raise StrictYamlError(line, path, "expected no anchors (&name): write the value out")
        if self._depth >= MAX_DEPTH:
            raise StrictYamlError(line, ".".join(self._path[:3]), f"expected at most {MAX_DEPTH} levels of nesting")
        self._depth += 1
        if name is not None:
            self._path.append(name)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if name is not None:
                self._path.pop()

    def construct_yaml_int(self, node: ScalarNode) -> int:
        text = node.value.lstrip("+")
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)

    def construct_yaml_float(self, node: ScalarNode) -> float:
        text = node.value.lower()
        if text.endswith(".inf"):
            return float("-inf") if text.startswith("-") else float("inf")
        if text == ".nan":
            return float("nan")
        return float(text)


for _tag, _regex, _first in (
    ("null", _NULL, ["~", "n", "N", ""]),
    ("bool", _BOOL, list("tTfF")),
    ("int", _INT, list("-+0123456789")),
    ("float", _FLOAT, list("-+.0123456789")),
):
    StrictLoader.add_implicit_resolver(_T + _tag, _regex, _first)
StrictLoader.add_constructor(_T + "int", StrictLoader.construct_yaml_int)
StrictLoader.add_constructor(_T + "float", StrictLoader.construct_yaml_float)


def _check_tree(loader: StrictLoader, node: Node, path: str) -> None:
    """Tags, key shapes and duplicate keys, walking the composed node tree (before anything is constructed)."""
    if node.tag not in CORE_TAGS:
        raise StrictYamlError(
            node.start_mark.line + 1, path, f"expected no YAML tag such as '{node.tag.replace(_T, '!!')}'"
        )
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _check_tree(loader, item, f"{path}.{i}" if path else str(i))
    elif isinstance(node, MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode) or key_node.tag not in CORE_TAGS:
                raise StrictYamlError(line, path or "spec", "expected plain scalar keys")
            key = key_node.value
            key_path = f"{path}.{key}" if path else str(key)
            if key_node.tag != _T + "str":  # `1:`, `true:`, `~:` - every key in a spec is a name
                raise StrictYamlError(line, key_path, "expected a name as key (quote it if it is one)")
            if key in first_line:
                raise StrictYamlError(
                    line,
                    key_path,
                    f"expected each key once, found duplicate key '{key}' (first at line {first_line[key]})",
                )
            first_line[key] = line
            _check_tree(loader, value_node, key_path)


def load_strict(text: str) -> Any:
    """Parse one YAML document under the rules above. Raises StrictYamlError or yaml.YAMLError."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise StrictYamlError(0, "", f"expected at most {MAX_BYTES // 1024} KiB of YAML")
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_tree(loader, node, "")
        try:
            return loader.construct_document(node)
        except (ValueError, KeyError, TypeError) as exc:  # e.g. `!!int 4:00:00`, or an integer of 5000 digits
            raise StrictYamlError(0, "", f"expected a value its tag can hold ({exc.__class__.__name__})") from None
    finally:
        loader.dispose()


def yaml_error_text(exc: yaml.YAMLError, text: str) -> tuple[int, str]:
    """(1-based line or 0, what went wrong) of a PyYAML syntax error, in one line."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else 0
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "a non-printable character"
        return line, f"expected printable text (found {char}; write control characters as escapes in double quotes)"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    return (mark.line + 1 if mark else 0), f"expected valid YAML ({problem})"
