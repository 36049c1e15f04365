"""A sweep killed with SIGKILL resumes to exactly the rows of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from vbp import sweep as sw

ROOT = Path(__file__).resolve().parent.parent
TINY = Path(__file__).parent / "data" / "tiny.toml"

SPEC = """
scenario = "{tiny}"
replications = 3
seed = 4
[design]
kind = "random"
samples = 40
[parameters]
"agents.markup" = {{low = 0.1, high = 0.9}}
"""


def _stored(path: Path) -> int:
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        db.close()


def _vbp(*args: str) -> list[str]:
    return [sys.executable, "-m", "vbp", "sweep", *args]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(tiny=TINY.as_posix()), encoding="utf-8")
    total = 120
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "killed"
    store = out / "store.sqlite"
    proc = subprocess.Popen(_vbp(str(spec), "--out", str(out), "--workers", "2", "--quiet"), env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _stored(store) < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    kept = _stored(store)
    assert 10 <= kept < total  # killed part-way, with the finished rows on disk

    res = subprocess.run(_vbp(str(spec), "--out", str(out), "--resume", "--workers", "1", "--json"), env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["skipped"] == kept and doc["skipped"] + doc["done"] == total and doc["failed"] == 0
    assert _stored(store) == total  # no duplicated rows

    sw.run_sweep(sw.load_spec(spec), tmp_path / "full", workers=1)
    assert (out / "results.csv").read_bytes() == (tmp_path / "full" / "results.csv").read_bytes()
