"""The sweep store: one SQLite row per finished task, written as each task finishes.

SQLite in WAL mode, written by the parent process only, one transaction per task: a crash, a
Ctrl-C or a killed worker loses at most the tasks in flight, and the UNIQUE (point, rep) key means
a row can never be duplicated. A row that records an error may be replaced by a later successful
retry; a successful row is never overwritten. An advisory lock on the folder keeps two sweeps from
writing into the same store at once.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vbp.errors import InputError

__all__ = ["Store", "TaskRow", "STATUSES"]

STATUSES = ("ok", "error")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    point INTEGER NOT NULL CHECK (point >= 0),
    rep INTEGER NOT NULL CHECK (rep >= 0),
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error TEXT,
    metrics TEXT NOT NULL,
    wall_s REAL,
    finished_at TEXT NOT NULL,
    UNIQUE (point, rep)
);
"""


@dataclass(frozen=True)
class TaskRow:
    """One finished task: a (design point, replication) pair and what it measured."""

    point: int
    rep: int
    seed: int
    status: str  # "ok" or "error"
    error: str | None  # the error message when status is "error"
    metrics: dict[str, float]  # metric name -> value (nan where not defined)
    wall_s: float | None  # seconds the task took in its worker


def _encode(metrics: dict[str, float]) -> str:
    """JSON of a metric dict with NaN/inf stored as null (JSON has no NaN)."""
    clean = {k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in metrics.items()}
    return json.dumps(clean, sort_keys=True)


def _decode(text: str) -> dict[str, float]:
    return {k: (math.nan if v is None else float(v)) for k, v in json.loads(text).items()}


class Store:
    """A sweep's task table in `path` (SQLite, WAL mode); use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = _lock_folder(self.path)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._release()
            raise InputError(f"not a usable sweep store: {exc}", file=str(self.path)) from None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the database and release the folder lock."""
        try:
            self._db.close()
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- metadata ------------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        """All key/value metadata (e.g. the spec and scenario hashes)."""
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, **values: str) -> None:
        """Set metadata keys in one transaction."""
        with _transaction(self._db):
            self._db.executemany("INSERT INTO meta (key, value) VALUES (?, ?) "
                                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                 [(k, str(v)) for k, v in values.items()])

    # -- tasks ---------------------------------------------------------------------------------
    def put(self, row: TaskRow) -> bool:
        """Record one finished task atomically; False if a successful row was already there."""
        if row.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {row.status!r}")
        with _transaction(self._db):
            cur = self._db.execute(
                "INSERT INTO tasks (point, rep, seed, status, error, metrics, wall_s, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(point, rep) DO UPDATE SET seed = excluded.seed, status = excluded.status, "
                "error = excluded.error, metrics = excluded.metrics, wall_s = excluded.wall_s, "
                "finished_at = excluded.finished_at WHERE tasks.status != 'ok'",
                (int(row.point), int(row.rep), int(row.seed), row.status, row.error, _encode(row.metrics),
                 None if row.wall_s is None else float(row.wall_s),
                 dt.datetime.now(dt.UTC).isoformat(timespec="seconds")))
            return cur.rowcount == 1

    def done(self) -> set[tuple[int, int]]:
        """(point, rep) of tasks that finished successfully (a resumed sweep skips them)."""
        return set(self._db.execute("SELECT point, rep FROM tasks WHERE status = 'ok'").fetchall())

    def count(self) -> dict[str, int]:
        """Rows by status."""
        counts = dict(self._db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall())
        return {s: int(counts.get(s, 0)) for s in STATUSES}

    def rows(self) -> list[TaskRow]:
        """Every stored task, sorted by (point, rep)."""
        cur = self._db.execute("SELECT point, rep, seed, status, error, metrics, wall_s FROM tasks "
                               "ORDER BY point, rep")
        return [TaskRow(p, r, s, st, err, _decode(m), w) for p, r, s, st, err, m, w in cur.fetchall()]

    def frame(self, metrics: list[str]) -> pd.DataFrame:
        """Stored tasks as a table: point, rep, seed, status, error, then `metrics` (nan if absent)."""
        rows = self.rows()
        data: dict[str, Any] = {
            "point": [r.point for r in rows], "rep": [r.rep for r in rows], "seed": [r.seed for r in rows],
            "status": [r.status for r in rows], "error": [r.error for r in rows],
        }
        for m in metrics:
            data[m] = [float(r.metrics.get(m, math.nan)) for r in rows]
        df = pd.DataFrame(data)
        return df.astype({"point": "int64", "rep": "int64", "seed": "int64"})


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception, including KeyboardInterrupt)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, exc, tb) -> None:
        self.db.execute("ROLLBACK" if kind else "COMMIT")


def _lock_folder(path: Path):
    """Hold an exclusive advisory lock on `<store>.lock`, or fail if another sweep holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        return None
    fh = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 - held for the store's life
    try:
        # A POSIX record lock: held by this process only (not by forked workers), freed when it dies.
        fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise InputError("another sweep is writing to this store; wait for it or use another --out",
                         file=str(path)) from None
    return fh
