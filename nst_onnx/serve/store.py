"""The job queue of ``nst serve``: one SQLite database beside the outputs (WAL, the server
process its one writer), so the queue, the gallery and every job's state outlive a restart —
``kill -9`` included: a job found "running" at start was interrupted and is queued again
(it resumes from its checkpoint)."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import BadInput

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one server per folder is then the user's rule
    fcntl = None

DATABASE = "jobs.sqlite"
SERVER_LOCK = ".serve.lock"  # held by the one server of a folder
WORKERS_LOCK = ".workers.lock"  # shared by a server's worker processes
STATES = ("queued", "running", "done", "failed", "cancelled")
ENDED = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    output TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    iteration INTEGER NOT NULL DEFAULT 0,
    iterations INTEGER,
    loss REAL,
    cancel INTEGER NOT NULL DEFAULT 0,
    record TEXT,
    reason TEXT
)"""
_JSON = ("request", "record")


def hold_lock(path: Path, wait: bool, shared: bool = False) -> int | None:
    """A lock on ``path`` (exclusive, or ``shared`` with other shared holders) for as long as
    the returned descriptor stays open (the kernel drops it when its process dies, ``kill -9``
    included); None when it is held otherwise and ``wait`` is false."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) |
                    (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class JobStore:
    """Jobs by id, in submission order. Every method is one short transaction. One server
    owns a folder: a second is refused (two writers would run every job twice)."""

    def __init__(self, folder: Path):
        self._lock_fd = hold_lock(folder / SERVER_LOCK, wait=False)
        if self._lock_fd is None:
            raise BadInput(f"another nst serve is using {folder}: stop it first, or give "
                           "--out another folder")
        self.path = folder / DATABASE
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _run(self, sql: str, args=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def add(self, request: dict, output: str, **fields) -> dict:
        """A new job writing ``output`` (a file name in the output folder): queued, unless
        ``fields`` say otherwise (a finished job found in the manifest)."""
        row = {"id": secrets.token_hex(6), "state": "queued", "request": request,
               "output": output, "created": time.time(), **fields}
        for k in _JSON:
            if k in row:
                row[k] = json.dumps(row[k])
        self._run(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                  tuple(row.values()))
        return self.get(row["id"])

    def get(self, job_id: str) -> dict | None:
        rows = self._run("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def all(self) -> list[dict]:
        """Newest first (by submission; a job found in the manifest by when it began)."""
        return [_job(r) for r in self._run("SELECT * FROM jobs ORDER BY created DESC, seq DESC")]

    def claim_next(self) -> dict | None:
        """The first queued job, now running (one transaction: two workers never take one)."""
        with self._lock:
            rows = self._db.execute("UPDATE jobs SET state = 'running', started = ? WHERE seq = "
                                    "(SELECT seq FROM jobs WHERE state = 'queued' ORDER BY seq "
                                    "LIMIT 1) RETURNING *", (time.time(),)).fetchall()
        return _job(rows[0]) if rows else None

    def outputs(self) -> set[str]:
        return {r["output"] for r in self._run("SELECT output FROM jobs")}

    def update(self, job_id: str, **fields) -> None:
        for k in _JSON:
            if k in fields:
                fields[k] = json.dumps(fields[k])
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._run(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, flag a running one (its worker stops it); the state
        after, or None for an unknown id."""
        with self._lock:
            self._db.execute("UPDATE jobs SET state = 'cancelled', finished = ?, reason = "
                             "'cancelled before it started' WHERE id = ? AND state = 'queued'",
                             (time.time(), job_id))
            self._db.execute("UPDATE jobs SET cancel = 1 WHERE id = ? AND state = 'running'",
                             (job_id,))
            rows = self._db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchall()
        return rows[0]["state"] if rows else None

    def requeue_interrupted(self) -> int:
        """Jobs left running by a server that died: queued again, ahead of nothing (they keep
        their place in submission order)."""
        with self._lock:
            return self._db.execute(
                "UPDATE jobs SET state = CASE cancel WHEN 1 THEN 'cancelled' ELSE 'queued' END "
                "WHERE state = 'running'").rowcount


def _job(row: sqlite3.Row) -> dict:
    d = dict(row)
    for k in _JSON:
        d[k] = json.loads(d[k]) if d[k] else None
    d.pop("seq")
    d["cancel"] = bool(d["cancel"])
    return d
