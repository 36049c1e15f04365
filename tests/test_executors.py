"""Pool workers: one BLAS thread each, the parent left as it was; an abandoned pool stops at once."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info

from vbp import calibrate as cal
from vbp.errors import SimulationError
from vbp.executors import open_executor

# Workers that use what they inherit by fork: a patched function, a pipe's descriptor.
fork_only = pytest.mark.skipif(multiprocessing.get_start_method() != "fork",
                               reason="the workers rely on state inherited by fork")


def _blas_threads(_=None) -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_pool_workers_run_one_blas_thread_and_the_parent_keeps_its_own():
    before = _blas_threads()
    with open_executor(2) as backend:
        assert backend.name == "processes"
        in_worker = [backend.executor.submit(_blas_threads).result() for _ in range(2)]
    assert all(threads and set(threads) == {1} for threads in in_worker)
    assert _blas_threads() == before


def test_calibration_workers_run_one_blas_thread(monkeypatch):
    monkeypatch.setattr(cal, "_evaluate", _blas_threads)
    out = cal._run_tasks([None, None, None], 2, None)
    assert all(threads and set(threads) == {1} for threads in out)


# A pool under each start method: its workers compute, and exit once the process that started
# the pool is killed (under forkserver a worker's own parent is the fork server, not that process).
_POOL_THEN_WAIT = """
import multiprocessing, os, sys, time
if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1], force=True)
    from vbp import executors
    out = {}
    with executors.open_executor(2) as backend:
        executors.run_tasks(backend, pow, [(i, (i, 2)) for i in range(6)],
                            lambda key, result, error: out.__setitem__(key, (result, error)))
        assert out == {i: (i * i, None) for i in range(6)}, out
        workers = [p.pid for p in backend.executor._processes.values()]
        print(" ".join(map(str, workers)), flush=True)
        time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("method", [m for m in ("fork", "spawn", "forkserver")
                                    if m in multiprocessing.get_all_start_methods()])
def test_pool_workers_compute_and_exit_with_their_parent_under_every_start_method(method):
    proc = subprocess.Popen([sys.executable, "-c", _POOL_THEN_WAIT, method], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    limit = threading.Timer(120, proc.kill)  # a child that never reports ends the read, not the run
    limit.start()
    try:
        line = proc.stdout.readline()
        assert line.strip(), f"no workers reported within 120 s: {proc.stderr.read()}"
        workers = [int(pid) for pid in line.split()]
    finally:
        limit.cancel()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, workers)), f"orphaned workers still running: {workers}"


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_an_abandoned_pool_kills_its_workers_and_its_manager_thread_ends():
    # Ctrl-C or a failing task abandons the pool: work in flight must not run on in the background
    with pytest.raises(KeyboardInterrupt), open_executor(2) as backend:
        pool = backend.executor
        pids = {pool.submit(_pid_after, 0.0).result() for _ in range(4)}
        assert pids
        workers = list(pool._processes.values())
        manager = pool._executor_manager_thread
        for _ in range(2):
            pool.submit(_pid_after, 60.0)
        raise KeyboardInterrupt
    # stop() returned only once the workers were gone and the manager thread had finished, so an
    # exiting interpreter has no half-closed pool to wake
    assert not manager.is_alive()
    for proc in workers:
        proc.join(5.0)
        assert not proc.is_alive()


# A worker killed while it writes its result: the manager thread has read the header of a message
# whose body never comes. Run in a child interpreter, since a stuck thread would hang pytest's exit.
_HALF_WRITTEN = """
import os, struct, sys, time
from pathlib import Path
from vbp.executors import open_executor

FD = None
MARKER = Path(sys.argv[1])

def half_a_result():
    os.write(FD, struct.pack("!i", 1 << 20) + b"x" * 64)  # the header promises 1 MiB
    MARKER.write_text("written")
    time.sleep(60)

def nothing():
    return None

try:
    with open_executor(2) as backend:
        pool = backend.executor
        FD = pool._result_queue._writer.fileno()  # the workers fork at the first submit
        pool.submit(nothing).result()
        manager = pool._executor_manager_thread
        pool.submit(half_a_result)
        while not MARKER.exists():
            time.sleep(0.05)
        raise KeyboardInterrupt
except KeyboardInterrupt:
    pass
print("manager alive:", manager.is_alive())
"""


def _child(script: str, marker: Path, stuck: str) -> str:
    """Run `script MARKER` in a child interpreter and return its output; fail saying `stuck` if it
    has not exited within 90 s, and if it exits with an error or a traceback."""
    try:
        proc = subprocess.run([sys.executable, "-c", script, str(marker)], capture_output=True, text=True,
                              cwd=marker.parent, timeout=90)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{stuck}: {exc.stdout!r}")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout.strip()


@fork_only
def test_a_worker_killed_mid_result_leaves_no_thread_to_hang_the_exit(tmp_path):
    out = _child(_HALF_WRITTEN, tmp_path / "written", "the interpreter did not exit after abandoning the pool")
    assert out == "manager alive: False"


# A worker that dies while it writes its result, without the pool noticing: the task loop finds
# the dead worker, restarts the pool and reruns what was in flight (a stuck loop would never end,
# hence the child interpreter).
_DIES_MID_RESULT = """
import os, struct, sys, time
from pathlib import Path
from vbp import executors

executors.STALL_CHECK_S = 0.2
FD = None
MARKER = Path(sys.argv[1])

def task(i):
    if i == 0 and not MARKER.exists():
        MARKER.write_text("died")
        os.write(FD, struct.pack("!i", 1 << 20) + b"x" * 64)  # the header promises 1 MiB
        os._exit(1)
    return i * i

out = {}
with executors.open_executor(2) as backend:
    FD = backend.executor._result_queue._writer.fileno()  # the workers fork at the first submit
    executors.run_tasks(backend, task, [(i, (i,)) for i in range(4)],
                        lambda key, result, error: out.__setitem__(key, (result, error)))
print(sorted(out.items()))
"""


@fork_only
def test_a_worker_that_dies_mid_result_unseen_is_found_and_its_tasks_rerun(tmp_path):
    out = _child(_DIES_MID_RESULT, tmp_path / "died", "the task loop waited for ever on a worker that died mid-result")
    assert (tmp_path / "died").read_text() == "died"
    assert out == str([(i, (i * i, None)) for i in range(4)])


def _die_once(marker: str) -> dict:
    """A calibration point whose first worker dies without a word; its rerun succeeds."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os._exit(1)
    return {"pid": os.getpid()}


def _fail_on(x: int) -> dict:
    if x == 2:
        raise ValueError("no valid bid for molecule m7")
    return {"x": x}


@fork_only
def test_a_calibration_point_whose_worker_dies_is_rerun(monkeypatch, tmp_path):
    monkeypatch.setattr(cal, "_evaluate", _die_once)
    seen = []
    out = cal._run_tasks([str(tmp_path / "died")] * 3, 2, lambda i, n: seen.append((i, n)))
    assert (tmp_path / "died").read_text() == "died"
    assert all(r and r["pid"] != os.getpid() for r in out)
    assert seen[-1] == (3, 3)


@fork_only
def test_a_failing_calibration_point_names_itself_after_the_others_finish(monkeypatch):
    monkeypatch.setattr(cal, "_evaluate", _fail_on)
    seen = []
    with pytest.raises(SimulationError, match=r"1 of 4 calibration points failed; the first \(point 3\): "
                                              r"ValueError: no valid bid for molecule m7"):
        cal._run_tasks([0, 1, 2, 3], 2, lambda i, n: seen.append(i))
    assert seen[-1] == 4
