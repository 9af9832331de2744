"""The one quoting discipline: every value that reaches rendered text goes through the function for its target.

Targets and their rules:
- a shell word (bash script, local command line): single-quoted by `shlex.quote`; control characters are refused,
  because a value that needs them (a multi-line prompt) travels as a file in the run dir instead;
- a shell comment: control characters are shown as escapes (`\\n`, `\\x1b`), so a value can never end the comment
  line and have the rest run as shell (or end sbatch's `#SBATCH` block);
- an `#SBATCH` directive value: sbatch splits directive lines on blanks unless the value is double-quoted, and
  expands `%` patterns in file names (`%%` is a literal `%`);
- a Kubernetes command / args string: the kubelet expands `$(VAR)` and turns `$$` into `$`, so every `$` is doubled.

Validation (spec.py) refuses control characters in every field except the few documented to hold text (prompts);
these functions still refuse them, as a second line of defence, rather than render something that could run.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

#: C0 controls, DEL and the C1 block: never in a path, a name or anything rendered into a script.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Unicode line and paragraph separators: some tools treat them as line ends.
_LINE_BREAKS = re.compile(r"[\u2028\u2029\x85]")


class UnsafeValueError(ValueError):
    """A value that cannot be rendered safely for its target (the spec should have refused it)."""


def has_control_chars(value: str) -> bool:
    """True when `value` holds a control character or a Unicode line break."""
    return bool(_CONTROL.search(value) or _LINE_BREAKS.search(value))


def _refuse_control(value: str, target: str) -> None:
    if has_control_chars(value):
        raise UnsafeValueError(f"a value with a control character cannot be rendered as {target}")


def shell_word(value: str) -> str:
    """`value` as one bash word, read back byte for byte by bash and by `shlex.split`."""
    _refuse_control(value, "a shell word")
    return shlex.quote(value)


def shell_command(argv: Iterable[str]) -> str:
    """An argv as one bash command line (each element through `shell_word`)."""
    return " ".join(shell_word(a) for a in argv)


def comment_text(value: str) -> str:
    """`value` made safe inside a `#` comment: control characters and line breaks become visible escapes."""

    def escape(m: re.Match[str]) -> str:
        ch = m.group(0)
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(
            ch, f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}"
        )

    return _LINE_BREAKS.sub(escape, _CONTROL.sub(escape, value))


def submitit_sbatch_value(value: str, *, filename: bool = False) -> str:
    """A value for an sbatch option that submitit's script builder writes (`_as_sbatch_flag` shell-quotes it, and
    sbatch's directive reader honours those quotes): control characters refused, and in file-name options `%` doubled
    so sbatch's filename patterns (`%j`, `%x`...) never apply to a literal `%` of the path."""
    _refuse_control(value, "an #SBATCH directive")
    return value.replace("%", "%%") if filename else value


def sbatch_value(value: str, *, filename: bool = False) -> str:
    """A value for `#SBATCH --opt=VALUE`: double-quoted when it holds blanks or quotes (sbatch's own directive
    tokenizer honours double quotes and backslashes), `%` doubled in file-name options (sbatch expands `%j` etc.)."""
    _refuse_control(value, "an #SBATCH directive")
    if filename:
        value = value.replace("%", "%%")
    if re.search(r"[\s\"'\\]", value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def k8s_command_word(value: str, *, script: bool = False) -> str:
    """`value` for a container's `command` / `args`: the kubelet's `$(VAR)` expansion and `$$` escape are defeated
    by doubling every `$` (the kubelet turns `$$` back into one `$`). `script=True`: the value is a whole bash
    script (`bash -c`), whose line breaks are its own; any other control character is still refused."""
    _refuse_control(value.replace("\n", "") if script else value, "a Kubernetes command string")
    return value.replace("$", "$$")
