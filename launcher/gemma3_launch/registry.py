"""The job index: a SQLite cache over the run directories' job.json files, in the user's state directory.

job.json is the truth; this index only makes `list` / `status JOB` fast and finds a job's run dir from its id.
It heals itself, because nothing in it is needed to recover:
- a corrupt or truncated index.sqlite is moved aside (`index.sqlite.corrupt-<UTC time>`) with one warning and
  rebuilt from the run dirs under the runs roots seen so far;
- those roots are also kept in a plain text file beside it (runs-roots.txt, one path a line, replaced atomically),
  so a lost index still knows where to look;
- `rebuild` writes a NEW index file and swaps it in with one rename: the old one serves readers until then;
- a job.json that is garbage, truncated or holds wrong types is skipped with one warning naming it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import json
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .contract import JOB_RECORD_FILE
from .credentials import one_line
from .record import load_record_file

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
        with one rename; returns how many jobs were indexed. Unusable job.json files are skipped with a warning."""
        roots = list(dict.fromkeys([*self.roots(), *(str(Path(r).resolve()) for r in extra_roots)]))
        new = self.path.with_name(f".{self.path.name}.new-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.remove(new)
        con = self._connect(new)
        n = 0
        try:
            for root in roots:
                for rec_path in sorted(Path(root).glob(f"*/{JOB_RECORD_FILE}")):
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
