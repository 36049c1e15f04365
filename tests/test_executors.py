"""Pool workers: one BLAS thread each, the parent left as it was."""

from __future__ import annotations

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
