"""The step's structured result: `result.json`, written by rank 0 when the job wrapper asks for it.

The job wrapper (gemma3_launch.jobwrap) sets RESULT_FILE_ENV to a path in the run dir and reads the file after the
step ends, instead of scraping the step's output: the exit status, the subcommand, the summary lines a person
reads (losses, accuracy, checkpoint), the outputs written and the generated answers' file. Torch-free.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gemma3_launch.contract import RESULT_FILE_ENV

_summary: list[str] = []
_outputs: dict[str, str] = {}
_answers_file: list[str] = []


def reset() -> None:
    """Forget an earlier step's record: each `gemma3-runtime` invocation (one per process, or several in a test
    process) starts from an empty result."""
    _summary.clear()
    _outputs.clear()
    _answers_file.clear()


def add_summary(lines: list[str]) -> None:
    """Lines of the step's summary (the same lines it prints under `== summary ==`)."""
    _summary.extend(lines)


def set_output(key: str, path: str) -> None:
    _outputs[key] = path


def set_answers_file(path: str) -> None:
    """The JSONL file of generated answers (prompt, text, tokens) the step wrote."""
    _answers_file[:] = [path]


def write(command: str, exit_code: int) -> None:
    """Write result.json where the job wrapper asked (no-op outside a job, and on ranks other than 0)."""
    target = os.environ.get(RESULT_FILE_ENV)
    if not target or int(os.environ.get("RANK", "0")) != 0:
        return
    record = {
        "command": command,
        "exit_code": exit_code,
        "summary": list(_summary),
        "outputs": dict(_outputs),
        "answers_file": _answers_file[0] if _answers_file else None,
    }
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, path)
