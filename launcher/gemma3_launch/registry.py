"""The job index: a SQLite cache over the run directories' job.json files, in the user's state directory.

job.json is the truth; this index only makes `list` / `status JOB` fast and finds a job's run dir from its id.
SQLite locking is unreliable on NFS home directories, so nothing here is needed to recover: `list --rebuild`
re-reads every run dir under the runs roots the index has seen (and any given explicitly).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from .contract import JOB_RECORD_FILE
from .record import read_record

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


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "gemma3-launch"


class Registry:
    def __init__(self, path: Path | None = None):
        self.path = path or state_dir() / "index.sqlite"

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30)
        try:
            con.execute(
                "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, name TEXT, kind TEXT, backend TEXT,"
                " backend_id TEXT, state TEXT, run_dir TEXT, submitted_at TEXT, spec_hash TEXT, git_sha TEXT)"
            )
            con.execute("CREATE TABLE IF NOT EXISTS roots (path TEXT PRIMARY KEY)")
            yield con
            con.commit()
        finally:
            con.close()

    def upsert(self, rec: dict) -> None:
        """Index one job.json record (only non-secret summary columns)."""
        row = (
            rec["job_id"],
            rec.get("name"),
            rec.get("kind"),
            rec.get("backend"),
            rec.get("backend_id"),
            rec.get("state"),
            rec.get("run_dir"),
            rec.get("submitted_at"),
            rec.get("spec_hash"),
            (rec.get("git") or {}).get("sha"),
        )
        with self._db() as con:
            con.execute(
                f"INSERT OR REPLACE INTO jobs ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})", row
            )
            if rec.get("run_dir"):
                con.execute("INSERT OR IGNORE INTO roots VALUES (?)", (str(Path(rec["run_dir"]).parent),))

    def get(self, job_id: str) -> dict | None:
        """Exact id, else a unique prefix."""
        with self._db() as con:
            rows = con.execute(f"SELECT {','.join(COLUMNS)} FROM jobs WHERE job_id = ?", (job_id,)).fetchall()
            if not rows:
                rows = con.execute(
                    f"SELECT {','.join(COLUMNS)} FROM jobs WHERE job_id LIKE ? ESCAPE '\\'",
                    (job_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
                ).fetchall()
        return dict(zip(COLUMNS, rows[0], strict=False)) if len(rows) == 1 else None

    def all(self, backend: str | None = None) -> list[dict]:
        q = f"SELECT {','.join(COLUMNS)} FROM jobs"
        args: tuple = ()
        if backend:
            q += " WHERE backend = ?"
            args = (backend,)
        with self._db() as con:
            rows = con.execute(q + " ORDER BY submitted_at DESC, job_id", args).fetchall()
        return [dict(zip(COLUMNS, r, strict=False)) for r in rows]

    def roots(self) -> list[str]:
        with self._db() as con:
            return [r[0] for r in con.execute("SELECT path FROM roots ORDER BY path")]

    def rebuild(self, extra_roots: Iterable[str] = ()) -> int:
        """Drop the cache and re-read every job.json under the known roots; returns how many jobs were found."""
        roots = dict.fromkeys([*self.roots(), *(str(Path(r).resolve()) for r in extra_roots)])
        with self._db() as con:
            con.execute("DELETE FROM jobs")
        n = 0
        for root in roots:
            for rec_path in sorted(Path(root).glob(f"*/{JOB_RECORD_FILE}")):
                rec = read_record(rec_path.parent)
                if rec and rec.get("job_id"):
                    self.upsert(rec)
                    n += 1
        with self._db() as con:
            for root in roots:
                con.execute("INSERT OR IGNORE INTO roots VALUES (?)", (root,))
        return n


def dump_rows(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)
