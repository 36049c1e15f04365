"""Pool workers: one BLAS thread each, the parent left as it was; an abandoned pool stops at once."""

from __future__ import annotations

import os
import time

import pytest
from threadpoolctl import threadpool_info

from vbp import calibrate as cal
from vbp.executors import open_executor


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
