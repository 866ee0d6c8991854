"""The job store: every job is a row, and the rows outlive the process.

A job is created ``queued``, becomes ``running`` when a worker takes it, and ends
``succeeded``, ``failed`` (with a one-line reason) or ``canceled``.  Every change is a
conditional update (``... WHERE status = 'running'``), so a cancel that lands while a
worker finishes is decided once, by the database, and never undone.

:class:`JobStore` is the small interface the rest of the service uses; :class:`SQLiteJobStore`
implements it on one SQLite file under the data directory (WAL journal: readers never wait
for the writer, and a killed process loses no committed row), for one server process.  A store
shared by several processes implements the same methods (:mod:`tunesmith.serve.redis_queue`).

A running job names its ``worker`` (the process that started it) and counts its ``attempts``:
the changes a worker makes to its own jobs can be made conditional on still owning them
(``worker=``), so a job handed to another worker after its first one was presumed dead is
never finished or re-queued by the first.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Protocol

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
FINISHED = (SUCCEEDED, FAILED, CANCELED)

# why a job failed: its request could not be generated (the client's to fix), our fault, or a restart
INPUT_ERROR, INTERNAL_ERROR, INTERRUPTED = "input", "internal", "interrupted"


@dataclass
class Job:
    """One generation request and what became of it."""

    id: str
    model: str
    prompt: str
    duration: float
    seed: int
    format: str
    controls: dict[str, Any] = field(default_factory=dict)  # JSON values only (steps, cfg, mask, ...)
    inputs: dict[str, str] = field(default_factory=dict)  # audio control -> stored upload name
    status: str = QUEUED
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total: int = 0
    error: str | None = None
    error_kind: str | None = None
    sample_rate: int | None = None
    generation_seconds: float | None = None
    batch_size: int | None = None
    worker: str | None = None  # who started it last (see Scheduler.worker_id)
    attempts: int = 0  # how many times it was started
    info: dict[str, Any] = field(default_factory=dict)  # what the generator reported (Audio.info: control_report)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def result_name(self) -> str:
        return f"{self.id}.{self.format}"

    @property
    def batch_key(self) -> str:
        """Jobs with equal keys may run as one batch: same model, duration, controls and inputs."""
        return json.dumps([self.model, self.duration, self.controls, self.inputs], sort_keys=True)


class JobStore(Protocol):
    """Where jobs live.  Every method is safe to call from any thread."""

    def add(self, job: Job) -> None: ...

    def get(self, job_id: str) -> Job | None: ...

    def recent(self, limit: int) -> list[Job]: ...

    def with_status(self, status: str) -> list[Job]:
        """Jobs in ``status``, oldest first."""
        ...

    def start(self, job_ids: list[str], batch_size: int, worker: str | None = None) -> list[str]:
        """Mark the queued ones of ``job_ids`` running by ``worker`` (one more attempt each);
        returns those it marked."""
        ...

    def progress(self, job_ids: list[str], step: int, total: int) -> None: ...

    def statuses(self, job_ids: list[str]) -> dict[str, str]: ...

    def finish(self, job_id: str, status: str, *, from_statuses: tuple[str, ...] = (RUNNING,),
               error: str | None = None, error_kind: str | None = None, sample_rate: int | None = None,
               generation_seconds: float | None = None, worker: str | None = None,
               info: dict[str, Any] | None = None) -> bool:
        """End a job if it is in one of ``from_statuses`` (and, given ``worker``, still that worker's);
        False if it was not (e.g. canceled)."""
        ...

    def requeue(self, job_ids: list[str], worker: str | None = None, *, count_attempt: bool = False) -> list[str]:
        """Running (by ``worker``, when given) -> queued; returns those it changed.  A graceful
        shutdown hands its work back and its attempt does not count; a job whose worker died
        keeps the attempt (``count_attempt``), so one that kills every worker stops somewhere."""
        ...

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns its status before (None: no such job)."""
        ...

    def expired(self, before: float) -> list[Job]:
        """Finished jobs that ended before ``before``."""
        ...

    def delete(self, job_id: str) -> None: ...

    def close(self) -> None: ...


_COLUMNS = [f.name for f in fields(Job)]
_JSON_COLUMNS = ("controls", "inputs", "info")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, prompt TEXT NOT NULL, duration REAL NOT NULL,
    seed INTEGER NOT NULL, format TEXT NOT NULL, controls TEXT NOT NULL, inputs TEXT NOT NULL,
    status TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    step INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0, error TEXT, error_kind TEXT,
    sample_rate INTEGER, generation_seconds REAL, batch_size INTEGER,
    worker TEXT, attempts INTEGER NOT NULL DEFAULT 0, info TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at);
"""
_ADDED_COLUMNS = {"worker": "TEXT", "attempts": "INTEGER NOT NULL DEFAULT 0",  # a store from before them
                  "info": "TEXT NOT NULL DEFAULT '{}'"}


class SQLiteJobStore:
    """:class:`JobStore` on one SQLite file (one connection, serialised by a lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
        self._db.executescript(_SCHEMA)
        have = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, declaration in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")

    # -- helpers ---------------------------------------------------------------

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[Job]:
        with self._lock:
            rows = self._db.execute(sql, tuple(args)).fetchall()
        return [self._job(row) for row in rows]

    def _execute(self, sql: str, args: Iterable[Any] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, tuple(args)).rowcount

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        values = {name: row[name] for name in _COLUMNS}
        for name in _JSON_COLUMNS:
            values[name] = json.loads(values[name])
        return Job(**values)

    @staticmethod
    def _marks(n: int) -> str:
        return ",".join("?" * n)

    # -- JobStore ----------------------------------------------------------------

    def add(self, job: Job) -> None:
        values = asdict(job)
        for name in _JSON_COLUMNS:
            values[name] = json.dumps(values[name], sort_keys=True)
        self._execute(f"INSERT INTO jobs ({','.join(_COLUMNS)}) VALUES ({self._marks(len(_COLUMNS))})",
                      [values[name] for name in _COLUMNS])

    def get(self, job_id: str) -> Job | None:
        found = self._rows("SELECT * FROM jobs WHERE id = ?", [job_id])
        return found[0] if found else None

    def recent(self, limit: int) -> list[Job]:
        return self._rows("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", [limit])

    def with_status(self, status: str) -> list[Job]:
        return self._rows("SELECT * FROM jobs WHERE status = ? ORDER BY created_at", [status])

    def start(self, job_ids: list[str], batch_size: int, worker: str | None = None) -> list[str]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(f"SELECT id FROM jobs WHERE status = ? AND id IN ({self._marks(len(job_ids))})",
                                        [QUEUED, *job_ids]).fetchall()
                started = [row["id"] for row in rows]
                self._db.execute(f"UPDATE jobs SET status = ?, started_at = ?, batch_size = ?, step = 0, total = 0, "
                                 f"worker = ?, attempts = attempts + 1 WHERE id IN ({self._marks(len(started))})",
                                 [RUNNING, time.time(), batch_size, worker, *started])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [i for i in job_ids if i in started]

    def progress(self, job_ids: list[str], step: int, total: int) -> None:
        self._execute(f"UPDATE jobs SET step = ?, total = ? WHERE status = ? AND id IN ({self._marks(len(job_ids))})",
                      [step, total, RUNNING, *job_ids])

    def statuses(self, job_ids: list[str]) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute(f"SELECT id, status FROM jobs WHERE id IN ({self._marks(len(job_ids))})",
                                    list(job_ids)).fetchall()
        return {row["id"]: row["status"] for row in rows}

    def finish(self, job_id: str, status: str, *, from_statuses: tuple[str, ...] = (RUNNING,),
               error: str | None = None, error_kind: str | None = None, sample_rate: int | None = None,
               generation_seconds: float | None = None, worker: str | None = None,
               info: dict[str, Any] | None = None) -> bool:
        if status not in FINISHED:
            raise ValueError(f"not a final status: {status}")
        owner = " AND worker = ?" if worker is not None else ""
        return self._execute(
            f"UPDATE jobs SET status = ?, finished_at = ?, error = ?, error_kind = ?, sample_rate = ?, "
            f"generation_seconds = ?, info = ? WHERE id = ? AND status IN ({self._marks(len(from_statuses))}){owner}",
            [status, time.time(), error, error_kind, sample_rate, generation_seconds,
             json.dumps(info or {}, sort_keys=True), job_id, *from_statuses,
             *([worker] if worker is not None else [])]) == 1

    def requeue(self, job_ids: list[str], worker: str | None = None, *, count_attempt: bool = False) -> list[str]:
        owner = " AND worker = ?" if worker is not None else ""
        where = f"WHERE status = ? AND id IN ({self._marks(len(job_ids))}){owner}"
        args = [RUNNING, *job_ids, *([worker] if worker is not None else [])]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                changed = {row["id"] for row in self._db.execute(f"SELECT id FROM jobs {where}", args).fetchall()}
                refund = "" if count_attempt else ", attempts = MAX(attempts - 1, 0)"
                self._db.execute(f"UPDATE jobs SET status = ?, started_at = NULL, step = 0, total = 0{refund} {where}",
                                 [QUEUED, *args])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [i for i in job_ids if i in changed]

    def cancel(self, job_id: str) -> str | None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT status FROM jobs WHERE id = ?", [job_id]).fetchone()
                if row is not None and row["status"] in (QUEUED, RUNNING):
                    self._db.execute("UPDATE jobs SET status = ?, finished_at = ? WHERE id = ?",
                                     [CANCELED, time.time(), job_id])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return None if row is None else row["status"]

    def expired(self, before: float) -> list[Job]:
        return self._rows(f"SELECT * FROM jobs WHERE status IN ({self._marks(len(FINISHED))}) AND finished_at < ?",
                          [*FINISHED, before])

    def delete(self, job_id: str) -> None:
        self._execute("DELETE FROM jobs WHERE id = ?", [job_id])

    def close(self) -> None:
        with self._lock:
            self._db.close()
