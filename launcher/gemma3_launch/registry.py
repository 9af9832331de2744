"""The job index: a SQLite cache over the run directories' job.json files, in the user's state directory.

job.json is the truth; this index only makes `list` / `status JOB` fast and finds a job's run dir from its id.
It heals itself, because nothing in it is needed to recover:
- a corrupt or truncated index.sqlite is moved aside (`index.sqlite.corrupt-<UTC time>`) with one warning and
  rebuilt from the run dirs under the runs roots seen so far;
- those roots are also kept in a plain text file beside it (runs-roots.txt, one path a line, replaced atomically),
  so a lost index still knows where to look;
- `rebuild` writes a NEW index file and swaps it in with one rename: the old one serves readers until then;
- a job.json that is garbage, truncated or holds wrong types is skipped with one warning naming it.

A submit announces itself first (`begin_submit`: a small intent file under submitting/ beside the index) and
withdraws the intent when the job is registered with its scheduler id (`end_submit`). An intent whose submitting
process is gone means that submit was killed: the next `get` / `all` / `rebuild` settles it (`settle_submits`),
so `list` and `list --rebuild` agree after a kill at any phase (docs/CONTRACTS.md, "Writes and the CLI").
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import json
import os
import re
import shutil
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .contract import JOB_RECORD_FILE
from .credentials import one_line
from .record import (
    SUBMIT_INTERRUPTED,
    add_state,
    load_record_file,
    process_start_ticks,
    read_json,
    update_record,
    write_json_atomic,
)

COLUMNS = (
    "job_id",
    "name",
    "kind",
    "backend",
    "backend_id",
    "state",
    "run_dir",
    "submitted_at",
    "spec_hash",
    "git_sha",
)
INDEX_FILE = "index.sqlite"
ROOTS_FILE = "runs-roots.txt"
INTENTS_DIR = "submitting"
#: An intent written on another host (a login node sharing this home directory) is settled only after this long:
#: its process cannot be checked from here.
FOREIGN_INTENT_TTL_S = 24 * 3600
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, name TEXT, kind TEXT, backend TEXT,"
    " backend_id TEXT, state TEXT, run_dir TEXT, submitted_at TEXT, spec_hash TEXT, git_sha TEXT)",
    "CREATE TABLE IF NOT EXISTS roots (path TEXT PRIMARY KEY)",
)
_INSERT = f"INSERT OR REPLACE INTO jobs ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"
_T = TypeVar("_T")


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "gemma3-launch"


def print_warning(message: str) -> None:
    print(f"gemma3-launch: warning: {one_line(message)}", file=sys.stderr)


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def _text(value: Any) -> str | None:
    """A column value: text or NULL (a record is checked before it is indexed; this guards direct callers)."""
    return None if value is None else str(value)


def _row(rec: dict, run_dir: str | None = None) -> tuple:
    git = rec.get("git") if isinstance(rec.get("git"), dict) else {}
    values = [rec.get(c) for c in COLUMNS[:-1]]
    if run_dir is not None:
        values[COLUMNS.index("run_dir")] = run_dir
    return tuple(_text(v) for v in (*values, git.get("sha")))


class Registry:
    def __init__(self, path: Path | None = None, warn: Callable[[str], None] = print_warning):
        self.path = Path(path) if path else state_dir() / INDEX_FILE
        self.roots_file = self.path.with_name(ROOTS_FILE)
        self.intents_dir = self.path.with_name(INTENTS_DIR)
        self.warn = warn

    # ---- the database, healed once on corruption --------------------------------------------------------------
    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(path, timeout=30)
        try:
            for statement in _SCHEMA:
                con.execute(statement)
        except BaseException:
            con.close()
            raise
        return con

    def _with_db(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work` (idempotent) in one transaction; a corrupt index is healed and `work` run once more."""
        for attempt in (1, 2):
            try:
                con = self._connect(self.path)
                try:
                    out = work(con)
                    con.commit()
                    return out
                finally:
                    con.close()
            except sqlite3.DatabaseError as exc:
                if attempt == 2 or not _is_corrupt(exc):
                    raise
                self._heal()
        raise AssertionError("unreachable")

    def _heal(self) -> None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        with contextlib.suppress(FileNotFoundError):  # another process moved it aside first
            os.replace(self.path, aside)
        for suffix in ("-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}{suffix}")
        n = self.rebuild()
        self.warn(
            f"the job index {self.path} was unreadable (corrupt or truncated): moved aside to {aside.name} and"
            f" rebuilt from the run directories ({n} job(s))"
        )

    # ---- roots ---------------------------------------------------------------------------------------------------
    def _file_roots(self) -> list[str]:
        try:
            lines = self.roots_file.read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError):
            return []
        return [line for line in lines if line.startswith("/")]

    def _remember_roots(self, roots: Iterable[str]) -> None:
        known = self._file_roots()
        new = [r for r in dict.fromkeys(roots) if r not in known and r.startswith("/") and "\n" not in r]
        if not new:
            return
        self.roots_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.roots_file.with_name(f".{ROOTS_FILE}.tmp-{os.getpid()}")
        tmp.write_text("".join(f"{r}\n" for r in sorted({*known, *new})), encoding="utf-8")
        os.replace(tmp, self.roots_file)

    def roots(self) -> list[str]:
        """Every runs root seen: those in the roots file and those in the index (when it is readable)."""
        found = self._file_roots()
        try:
            con = self._connect(self.path)
            try:
                found += [r[0] for r in con.execute("SELECT path FROM roots") if isinstance(r[0], str)]
            finally:
                con.close()
        except sqlite3.DatabaseError:
            pass  # a corrupt index: the roots file is what is left
        return sorted(set(found))

    # ---- records -------------------------------------------------------------------------------------------------
    def upsert(self, rec: dict) -> None:
        """Index one job.json record (only non-secret summary columns)."""
        row = _row(rec)

        def work(con: sqlite3.Connection) -> None:
            con.execute(_INSERT, row)
            if rec.get("run_dir"):
                con.execute("INSERT OR IGNORE INTO roots VALUES (?)", (str(Path(rec["run_dir"]).parent),))

        self._with_db(work)
        if rec.get("run_dir"):
            self._remember_roots([str(Path(str(rec["run_dir"])).parent)])

    def get(self, job_id: str) -> dict | None:
        """Exact id, else a unique prefix."""
        self.settle_submits()
        pattern = job_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"

        def work(con: sqlite3.Connection) -> list:
            rows = con.execute(f"SELECT {','.join(COLUMNS)} FROM jobs WHERE job_id = ?", (job_id,)).fetchall()
            if not rows:
                sql = f"SELECT {','.join(COLUMNS)} FROM jobs WHERE job_id LIKE ? ESCAPE '\\'"
                rows = con.execute(sql, (pattern,)).fetchall()
            return rows

        rows = self._with_db(work)
        return dict(zip(COLUMNS, rows[0], strict=False)) if len(rows) == 1 else None

    def all(self, backend: str | None = None, job_filter: JobFilter | None = None) -> list[dict]:
        """Indexed jobs, newest first: all of them, those on `backend`, or those `job_filter` keeps."""
        self.settle_submits()
        q = f"SELECT {','.join(COLUMNS)} FROM jobs"
        args: tuple = ()
        if backend:
            q += " WHERE backend = ?"
            args = (backend,)
        rows = self._with_db(lambda con: con.execute(q + " ORDER BY submitted_at DESC, job_id", args).fetchall())
        found = [dict(zip(COLUMNS, r, strict=False)) for r in rows]
        return [r for r in found if job_filter.keeps(r)] if job_filter else found

    def rebuild(self, extra_roots: Iterable[str] = ()) -> int:
        """Re-read every job.json under the known roots (and `extra_roots`) into a NEW index file, then swap it in
        with one rename; returns how many jobs were indexed. Unusable job.json files are skipped with a warning;
        so are hidden entries (`.NAME.tmp-PID`: a run dir still being assembled, never committed)."""
        self.settle_submits()
        roots = list(dict.fromkeys([*self.roots(), *(str(Path(r).resolve()) for r in extra_roots)]))
        new = self.path.with_name(f".{self.path.name}.new-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.remove(new)
        con = self._connect(new)
        n = 0
        try:
            for root in roots:
                for rec_path in sorted(Path(root).glob(f"*/{JOB_RECORD_FILE}")):
                    if rec_path.parent.name.startswith("."):
                        continue
                    rec, problem = load_record_file(rec_path)
                    if rec is None:
                        self.warn(f"skipped {rec_path}: {problem}")
                        continue
                    con.execute(_INSERT, _row(rec, run_dir=str(rec_path.parent)))
                    n += 1
                con.execute("INSERT OR IGNORE INTO roots VALUES (?)", (root,))
            con.commit()
        finally:
            con.close()
        os.replace(new, self.path)
        self._remember_roots(roots)
        return n

    # ---- submit intents ------------------------------------------------------------------------------------------
    def begin_submit(self, job_id: str, run_dir: Path, tmp_dir: Path) -> None:
        """Record that this process is about to write `tmp_dir` and rename it to `run_dir` (before it does)."""
        self._remember_roots([str(Path(run_dir).parent)])
        self.intents_dir.mkdir(parents=True, exist_ok=True)
        intent = {
            "job_id": job_id,
            "run_dir": str(run_dir),
            "tmp_dir": str(tmp_dir),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": process_start_ticks(os.getpid()),
            "at": time.time(),
        }
        write_json_atomic(self._intent_path(job_id), intent)

    def end_submit(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._intent_path(job_id))

    def _intent_path(self, job_id: str) -> Path:
        return self.intents_dir / f"{job_id}.json"

    def settle_submits(self) -> None:
        """Finish what killed submits left: their temporary run dirs are removed, a committed run dir is indexed
        (its job.json marked SUBMIT_INTERRUPTED when the scheduler's id never got in), the intent withdrawn."""
        if not self.intents_dir.is_dir():
            return
        for path in sorted(self.intents_dir.glob("*.json")):
            intent = read_json(path)
            if intent is not None and _submitter_alive(intent):
                continue
            if intent is not None:
                self._settle_one(intent)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def _settle_one(self, intent: dict) -> None:
        tmp_dir, run_dir = intent.get("tmp_dir"), intent.get("run_dir")
        if not isinstance(run_dir, str):
            return
        # only ever the submit's own temporary sibling `.NAME.tmp-PID` of the run dir
        if isinstance(tmp_dir, str) and re.fullmatch(
            rf"\.{re.escape(Path(run_dir).name)}\.tmp-\d+", Path(tmp_dir).name
        ):
            shutil.rmtree(Path(run_dir).with_name(Path(tmp_dir).name), ignore_errors=True)
        rec, _problem = load_record_file(Path(run_dir) / JOB_RECORD_FILE)
        if rec is None or rec.get("job_id") != intent.get("job_id"):
            return

        def interrupted(r: dict) -> None:
            if r.get("state") == "SUBMITTED" and not r.get("backend_id"):
                add_state(
                    r,
                    SUBMIT_INTERRUPTED,
                    error="the submitting process was killed before it recorded the scheduler's job id",
                )

        rec = update_record(run_dir, interrupted)
        self.upsert(rec)
        self.warn(f"{rec['job_id']}: a killed submit left its run directory {run_dir}: indexed as {rec.get('state')}")


def _submitter_alive(intent: dict) -> bool:
    """Whether the process that wrote `intent` may still be submitting."""
    if intent.get("host") != socket.gethostname():
        at = intent.get("at")
        return isinstance(at, (int, float)) and time.time() - at < FOREIGN_INTENT_TTL_S
    pid = intent.get("pid")
    if not isinstance(pid, int):
        return False
    started = process_start_ticks(pid)
    return started is not None and started == intent.get("pid_start")


@dataclass(frozen=True)
class JobFilter:
    """`list`'s filters: a row is kept when it passes every one that is set (an empty tuple / None = no filter)."""

    states: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    #: submitted at or after this instant (unix seconds)
    since: float | None = None
    #: a shell glob matched against the job's spec name and its job id
    name: str | None = None

    def keeps(self, row: dict) -> bool:
        if self.states and (row.get("state") or "").upper() not in self.states:
            return False
        if self.kinds and row.get("kind") not in self.kinds:
            return False
        if self.name and not any(fnmatch.fnmatchcase(str(row.get(c) or ""), self.name) for c in ("name", "job_id")):
            return False
        if self.since is not None:
            at = parse_instant(row.get("submitted_at"))
            if at is None or at < self.since:
                return False
        return True


def parse_instant(text: object) -> float | None:
    """Unix seconds of an ISO 8601 date or date-time (a naive one is UTC); None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        at = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=_dt.timezone.utc)).timestamp()


_RELATIVE = re.compile(r"^(\d{1,6})([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """`--since`: a relative age (30m, 2h, 3d, 1w) or an ISO date / date-time; raises ValueError naming the forms."""
    m = _RELATIVE.match(text.strip())
    if m:
        return now - int(m.group(1)) * _UNIT_S[m.group(2)]
    at = parse_instant(text.strip())
    if at is None:
        raise ValueError("expected an age such as 30m, 2h, 3d or 1w, or an ISO date such as 2026-01-31[T12:00]")
    return at


def dump_rows(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)
