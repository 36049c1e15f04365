"""Where tasks run: in-process, a local process pool, or a Dask cluster, behind one interface.

Every backend is a `concurrent.futures.Executor` (Dask through `Client.get_executor`), so one loop
(`run_tasks`) submits tasks, keeps a bounded number in flight and reports each result as it
arrives. Results never depend on the backend: a task is a pure function of its arguments.
Dask is optional and imported only when asked for.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    BrokenExecutor,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from threadpoolctl import threadpool_limits

from vbp.errors import InputError
from vbp.experiment import default_workers

__all__ = ["InProcessExecutor", "Backend", "open_executor", "run_tasks", "single_threaded_blas", "wait_any"]

MAX_ATTEMPTS = 3  # a task whose worker process died is retried on a fresh pool up to this often
STALL_CHECK_S = 5.0  # how often a wait with nothing finished looks for a worker that died unseen


class InProcessExecutor(Executor):
    """Runs each task at submission, in this process (one worker; easiest to debug)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # a KeyboardInterrupt propagates to the caller
            future.set_exception(exc)
        return future


@dataclass
class Backend:
    """An open executor and what the task loop needs to know about it."""

    executor: Executor
    name: str  # "in-process" | "processes" | "dask"
    slots: int  # tasks that run at once
    address: str | None = None  # Dask scheduler address
    restart: Callable[[], Executor] | None = None  # a fresh executor after a worker died

    def stop(self, *, abandon: bool) -> None:
        """Shut the executor down; with `abandon`, cancel queued tasks and stop running ones."""
        ex = self.executor
        if isinstance(ex, ProcessPoolExecutor) and abandon:
            _abandon_pool(ex)
        else:
            ex.shutdown(wait=not abandon)


def _abandon_pool(pool: ProcessPoolExecutor, timeout: float = 10.0) -> None:
    """Cancel a pool's queued tasks, stop its workers now (their in-flight tasks are lost by
    design) and wait, briefly, for its manager thread to finish.

    The workers, the thread and the result queue are read before `shutdown`, which forgets them.
    Waiting for the thread matters at interpreter exit: a manager thread still tidying up a broken
    pool closes the pipe that exit wakes it through, and the wake-up then prints a traceback."""
    workers = _workers(pool)
    manager = getattr(pool, "_executor_manager_thread", None)
    results = getattr(pool, "_result_queue", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in workers:
        if proc.is_alive():
            proc.kill()
    # A worker killed while writing a result leaves half a message in the result pipe, and the
    # manager thread reading it would wait for the rest for ever (this process holds a write end
    # too, so the pipe never ends), and so would the interpreter at exit. Only workers write to
    # it: closing this end lets the pipe end once they are dead, and the thread's read fail.
    writer = getattr(results, "_writer", None)
    if writer is not None:
        writer.close()
    if manager is not None and manager is not threading.current_thread():
        manager.join(timeout)


def wait_any(executor: Executor, futures: Iterable[Future]) -> set[Future]:
    """Wait for the first of `futures` to finish.

    A local pool whose worker died while writing its result (killed, out of memory) never says so:
    its manager thread waits for the rest of the message, and the futures never finish. A pool
    with a dead worker that has not been marked broken, seen twice STALL_CHECK_S apart with
    nothing finished, is such a pool, and raises BrokenProcessPool as a pool that saw its worker
    die does. Abandoning it (`Backend.stop`) then frees the thread."""
    futures = list(futures)
    seen_dead = False
    while True:
        done, _ = wait(futures, timeout=STALL_CHECK_S, return_when=FIRST_COMPLETED)
        if done:
            return done
        dead = _has_dead_worker(executor)
        if dead and seen_dead:
            raise BrokenProcessPool("a worker process died while returning its result")
        seen_dead = dead


def _has_dead_worker(executor: Executor) -> bool:
    if not isinstance(executor, ProcessPoolExecutor) or getattr(executor, "_broken", False):
        return False
    return any(proc.exitcode is not None for proc in _workers(executor))


def _workers(pool: ProcessPoolExecutor) -> list:
    """The pool's worker processes (none once it has been shut down)."""
    return list((getattr(pool, "_processes", None) or {}).values())


def single_threaded_blas() -> None:
    """One BLAS thread in this process. A worker of a pool already runs beside the others on its
    own core; BLAS threads of its own (the solver's covariances) would only contend with them, and
    spin: on 2 cores, 2 workers of 2 BLAS threads each solved bid functions several times slower.
    Results do not change (the BLAS splits a product's rows between threads, not its sums)."""
    threadpool_limits(1, user_api="blas")


def _worker_init() -> None:
    """Pool workers leave Ctrl-C to the parent, exit when the parent is gone (killed), and use
    one BLAS thread each.

    The parent's death is read from its sentinel (a pipe that ends when it dies), which names the
    process that started the pool under fork, spawn and forkserver alike; the worker's own parent
    process is the fork server under forkserver (Python 3.14's default on Linux)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    single_threaded_blas()
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)  # orphaned: nobody will collect this worker's results

    threading.Thread(target=watch, name="vbp-parent-watch", daemon=True).start()


def _process_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, initializer=_worker_init)


@contextmanager
def open_executor(workers: int | None = None, scheduler: str | None = None,
                  local_cluster: bool = False) -> Iterator[Backend]:
    """Open the backend the options ask for and close it on exit.

    `scheduler` joins a running Dask cluster (tcp://HOST:PORT); `local_cluster` starts a Dask
    LocalCluster on 127.0.0.1 (processes, `workers` or 2 of them, one thread each, no dashboard);
    otherwise `workers` = 1 runs in-process and more use a local process pool (default: all cores).
    """
    if scheduler and local_cluster:
        raise InputError("use either --scheduler or --local-cluster, not both", field="--scheduler",
                         value=scheduler)
    if scheduler or local_cluster:
        with _dask_backend(scheduler, workers or 2) as backend:
            yield backend
        return
    n = workers or default_workers()
    if n <= 1:
        yield Backend(InProcessExecutor(), "in-process", 1)
        return
    backend = Backend(_process_pool(n), "processes", n, restart=lambda: _process_pool(n))
    with _stopping(backend):
        yield backend


@contextmanager
def _stopping(backend: Backend) -> Iterator[Backend]:
    """Stop the backend on exit: abandon the tasks in flight if the body raised (Ctrl-C included)."""
    try:
        yield backend
    except BaseException:
        backend.stop(abandon=True)
        raise
    backend.stop(abandon=False)


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise InputError("Dask is not installed; install the extra: pip install 'vbp[dask]'",
                         field="--scheduler") from None
    return distributed


@contextmanager
def _dask_backend(scheduler: str | None, workers: int) -> Iterator[Backend]:
    distributed = _import_distributed()
    cluster = None
    try:
        if scheduler:
            client = distributed.Client(scheduler, timeout="10s", set_as_default=False)
        else:
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                               host="127.0.0.1", dashboard_address=None)
            client = distributed.Client(cluster, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        if cluster is not None:
            cluster.close()
        raise InputError(f"cannot reach the Dask scheduler: {exc}", field="--scheduler",
                         value=scheduler) from None
    try:
        slots = max(1, sum(client.nthreads().values()))
        backend = Backend(client.get_executor(pure=False), "dask", slots, address=client.scheduler.address)
        with _stopping(backend):
            yield backend
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


Outcome = Callable[[Hashable, Any, str | None], None]


def run_tasks(backend: Backend, fn: Callable[..., Any], tasks: Iterable[tuple[Hashable, tuple]],
              on_done: Outcome, *, window: int | None = None) -> None:
    """Run `fn(*args)` for each (key, args) and call `on_done(key, result, error)` as each finishes.

    At most `window` tasks (default: twice the backend's slots) are in flight, so an interruption
    loses at most those. An exception in a task becomes its error message; a dead worker process
    breaks a local pool (seen at once, or by `wait_any` if it died returning its result): the pool
    is restarted and the tasks in flight are retried, each at most MAX_ATTEMPTS times before they
    are reported as errors. On KeyboardInterrupt the tasks in flight are abandoned and the
    interrupt propagates.
    """
    # A queue of one extra task per slot keeps pool workers busy; in-process there is nothing to queue.
    window = window or (1 if isinstance(backend.executor, InProcessExecutor) else 2 * backend.slots)
    queue = iter(tasks)
    flight: dict[Future, tuple[Hashable, tuple, int]] = {}
    retry: list[tuple[Hashable, tuple, int]] = []

    def fill() -> None:
        while len(flight) < window:
            if retry:
                key, args, attempt = retry.pop(0)
            else:
                nxt = next(queue, None)
                if nxt is None:
                    return
                (key, args), attempt = nxt, 1
            flight[backend.executor.submit(fn, *args)] = (key, args, attempt)

    def lost(key: Hashable, args: tuple, attempt: int, exc: BaseException) -> None:
        if attempt < MAX_ATTEMPTS and backend.restart is not None:
            retry.append((key, args, attempt + 1))
        else:
            on_done(key, None, f"worker process died ({type(exc).__name__}) in {attempt} attempt(s)")

    fill()
    while flight:
        broken = False
        try:
            finished = wait_any(backend.executor, flight)
        except BrokenProcessPool as exc:  # a worker died unseen: no task in flight will come back
            for item in sorted(flight.values(), key=lambda item: str(item[0])):
                lost(*item, exc)
            flight.clear()
            finished, broken = set(), True
        for fut in sorted(finished, key=lambda f: str(flight[f][0])):
            key, args, attempt = flight.pop(fut)
            try:
                result = fut.result()
            except BrokenExecutor as exc:
                broken = True
                lost(key, args, attempt, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - a failing task is recorded and the sweep goes on
                on_done(key, None, _message(exc))
                continue
            on_done(key, result, None)
        if broken and backend.restart is not None:
            for fut, item in list(flight.items()):  # the pool is gone: everything in flight reruns
                retry.append(item)
                flight.pop(fut)
            backend.stop(abandon=True)
            backend.executor = backend.restart()
        fill()


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
