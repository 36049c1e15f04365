"""The sweep store: atomic rows, no duplicates, successful rows kept, a lock per folder."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbp.errors import InputError
from vbp.store import Store, TaskRow


def _row(point, rep, status="ok", value=1.0, error=None):
    return TaskRow(point, rep, 7, status, error, {"m": value}, 0.1)


def test_round_trip_keeps_values_and_nan(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        assert s.put(TaskRow(1, 0, 7, "ok", None, {"a": 0.25, "b": math.nan, "c": math.inf}, 0.5))
        assert s.put(TaskRow(0, 2, 7, "error", "ValueError: boom", {}, None))
    with Store(tmp_path / "s.sqlite") as s:  # reopened: rows persisted
        rows = s.rows()
        assert [(r.point, r.rep) for r in rows] == [(0, 2), (1, 0)]  # sorted by (point, rep)
        ok = rows[1]
        assert ok.metrics["a"] == 0.25 and math.isnan(ok.metrics["b"]) and math.isnan(ok.metrics["c"])
        assert rows[0].status == "error" and rows[0].error == "ValueError: boom"
        assert s.done() == {(1, 0)}
        assert s.count() == {"ok": 1, "error": 1}


def test_wal_mode_and_unique_constraint(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as s:
        s.put(_row(0, 0))
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO tasks (point, rep, seed, status, metrics, finished_at) "
                       "VALUES (0, 0, 7, 'ok', '{}', 'now')")
        db.close()


def test_ok_row_is_never_overwritten_but_an_error_is_replaced(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        assert s.put(_row(0, 0, value=1.0))
        assert not s.put(_row(0, 0, value=2.0))
        assert not s.put(_row(0, 0, status="error", error="late"))
        assert s.put(_row(1, 0, status="error", error="first"))
        assert s.put(_row(1, 0, value=3.0))
        rows = {(r.point, r.rep): r for r in s.rows()}
        assert len(rows) == 2 == len(s.rows())
        assert rows[(0, 0)].metrics["m"] == 1.0 and rows[(0, 0)].status == "ok"
        assert rows[(1, 0)].metrics["m"] == 3.0 and rows[(1, 0)].error is None


def test_bad_status_writes_nothing(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        with pytest.raises(ValueError, match="status"):
            s.put(_row(0, 0, status="running"))
        assert s.rows() == []


def test_meta_and_frame(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        s.set_meta(spec_sha256="abc")
        s.set_meta(spec_sha256="def", other="1")
        assert s.meta() == {"spec_sha256": "def", "other": "1"}
        s.put(TaskRow(0, 1, 7, "ok", None, {"x": 2.0}, 0.1))
        s.put(TaskRow(0, 0, 7, "error", "E", {}, None))
        df = s.frame(["x", "y"])
        assert list(df.columns) == ["point", "rep", "seed", "status", "error", "x", "y"]
        assert df["rep"].tolist() == [0, 1]
        assert math.isnan(df.loc[0, "x"]) and df.loc[1, "x"] == 2.0 and df["y"].isna().all()


def test_not_a_database_is_an_input_error(tmp_path):
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InputError, match="not a usable sweep store"):
        Store(path)
    Store(path.with_name("t.sqlite")).close()  # the lock was released after the failure


def test_a_second_process_cannot_open_a_store_in_use(tmp_path):
    path = tmp_path / "s.sqlite"
    code = ("import sys\nfrom vbp.store import Store\nfrom vbp.errors import InputError\n"
            "try:\n    Store(sys.argv[1])\nexcept InputError as e:\n    print(e)\n    sys.exit(3)\n")
    root = str(Path(__file__).resolve().parent.parent)
    with Store(path):
        busy = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                              cwd=root, env={"PYTHONPATH": root, "PATH": ""}, timeout=120)
    assert busy.returncode == 3 and "another sweep" in busy.stdout
    free = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          cwd=root, env={"PYTHONPATH": root, "PATH": ""}, timeout=120)
    assert free.returncode == 0, free.stderr


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.booleans(), st.floats(-1, 1)),
                max_size=30))
def test_any_sequence_of_puts_keeps_one_row_per_task_and_the_first_success(tmp_path_factory, puts):
    path = tmp_path_factory.mktemp("store") / "s.sqlite"
    first_ok: dict = {}
    last: dict = {}
    with Store(path) as s:
        for point, rep, ok, value in puts:
            s.put(_row(point, rep, "ok" if ok else "error", value, None if ok else "e"))
            last[(point, rep)] = (ok, value)
            if ok:
                first_ok.setdefault((point, rep), value)
        rows = s.rows()
    keys = [(r.point, r.rep) for r in rows]
    assert len(keys) == len(set(keys)) == len(last)
    for r in rows:
        if (r.point, r.rep) in first_ok:
            assert r.status == "ok" and r.metrics["m"] == first_ok[(r.point, r.rep)]
        else:
            assert r.status == "error"
