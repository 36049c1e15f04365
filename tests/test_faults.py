"""Runtime faults in `vbp run` / `vbp reproduce`: each ends in one readable line and an exit code.

A failed solve exits 1 naming the round, molecule and solver status; a worker process that dies
exits 1 saying so; an output folder that cannot be written exits 2 before any simulation; a disk
that fills up mid-run exits 1 naming the file, keeps the replications saved so far, and `--resume`
completes the work; Ctrl-C exits 130. None shows a traceback unless --debug is given.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import vbp.experiment
from vbp import output, wdp
from vbp.cli import cli
from vbp.errors import SimulationError
from vbp.scenario import load_scenario

HERE = Path(__file__).parent
TINY = str(HERE / "data" / "tiny.toml")
SOLVER_FAULT = ("round batch2, molecule batch2/m01: status 'Time limit reached': "
                "time limit of 10 s reached without proof of optimality")
# a real solver fault: every molecule with two or more winners goes to a MILP that cannot finish
TIME_LIMITED = ("--set", "optimizer.method=milp", "--set", "optimizer.time_limit=1e-9")


def invoke(*args: str):
    """Run `vbp ARGS` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(cli, list(args))


def assert_one_line(result, code: int, *needles: str) -> str:
    """Exit `code`, nothing on stdout, one line on stderr naming every needle, no traceback."""
    shown = f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.exit_code == code, (shown, repr(result.exception))
    assert isinstance(result.exception, SystemExit), (repr(result.exception), shown)
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert result.stdout == "", shown
    line = result.stderr.strip()
    assert line and "\n" not in line, shown
    for needle in needles:
        assert needle in line, (needle, shown)
    return line


def _must_not_simulate(*args, **kwargs):
    raise AssertionError("the simulation ran although the command should have stopped before it")


# --- solver failures ------------------------------------------------------------------------


def test_forced_solver_failure_names_round_molecule_and_status(monkeypatch):
    def fail(problem, **kwargs):
        raise wdp.AllocationError(SOLVER_FAULT)

    monkeypatch.setattr("vbp.wdp.allocate", fail)
    result = invoke("run", TINY, "-n", "1", "--workers", "1", "--quiet", "--json")
    line = assert_one_line(result, 1, "round batch2", "molecule batch2/m01", "'Time limit reached'")
    assert line.startswith("simulation failed: ")


def test_forced_solver_failure_with_debug_shows_the_traceback(monkeypatch):
    def fail(problem, **kwargs):
        raise wdp.AllocationError(SOLVER_FAULT)

    monkeypatch.setattr("vbp.wdp.allocate", fail)
    result = invoke("--debug", "run", TINY, "-n", "1", "--workers", "1", "--quiet")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.stderr
    assert "Traceback" in result.stderr and f"{SimulationError.__module__}.SimulationError" in result.stderr
    assert "batch2/m01" in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_real_time_limited_solve_fails_the_run(workers):
    # no patching: the solver itself stops short of optimality; with two workers the error is
    # raised in a worker process and must cross back intact
    result = invoke("run", TINY, "-n", "2", "--workers", workers, "--quiet", *TIME_LIMITED)
    assert_one_line(result, 1, "simulation failed: round batch2, molecule batch2/m",
                    "'Time limit reached'", "time limit of 1e-09 s")


def _capacitated(label: str) -> wdp.AllocationProblem:
    """Ten winners, 31 provinces, capacities that bind: only the MILP can answer."""
    rng = np.random.default_rng(7)
    k, n_prov = 10, 31
    return wdp.AllocationProblem(rng.uniform(1, 2, k), rng.uniform(0, 100, n_prov),
                                 np.full(k, 400.0), rng.uniform(0, 0.3, (k, n_prov)), label)


@pytest.mark.parametrize("method", ["auto", "milp"])
def test_time_limited_milp_raises_never_a_silent_optimal(method):
    label = "round batch9, molecule batch9/m03"
    problem = _capacitated(label)
    assert not np.all(wdp._within_capacity(  # the fast path cannot answer: auto must reach the MILP
        np.bincount(wdp._assignment_supplier(problem.cost()), weights=problem.demand, minlength=10),
        problem.capacity))
    with pytest.raises(wdp.AllocationError) as info:
        wdp.allocate(problem, method=method, time_limit=1e-9)
    message = str(info.value)
    assert message.startswith(label + ": status 'Time limit reached': time limit of 1e-09 s")
    # the same instance with time to finish is solved, so the failure above is the limit's doing
    assert wdp.allocate(problem, method=method).status == "optimal"


def test_infeasible_capacitated_instance_raises_with_label_and_status():
    # 9 units fit in 10 of capacity by count, but some winner must take two 3-unit provinces
    problem = wdp.AllocationProblem([1.0, 2.0], [3.0, 3.0, 3.0], [5.0, 5.0],
                                    label="round batch4, molecule batch4/m11")
    with pytest.raises(wdp.AllocationError) as info:
        wdp.solve_allocation_milp(problem, time_limit=5.0)
    message = str(info.value)
    assert message.startswith("round batch4, molecule batch4/m11: status 'Infeasible'"), message
    assert "infeasible" in message.split(": status", 1)[1]


# --- a worker process that dies -------------------------------------------------------------

_REAL_ONE = vbp.experiment._one


def _die_on_rep_2(args):
    """Stand-in for one replication: the worker running replication 2 ends without a word."""
    if args[2] == 2:
        os._exit(1)
    return _REAL_ONE(args)


fork_only = pytest.mark.skipif(multiprocessing.get_start_method() != "fork",
                               reason="the patched replication reaches workers only when forked")


@fork_only
def test_dead_worker_becomes_a_simulation_error(monkeypatch):
    monkeypatch.setattr(vbp.experiment, "_one", _die_on_rep_2)
    with pytest.raises(SimulationError, match="a worker process died") as info:
        vbp.experiment.run(load_scenario(TINY), replications=4, seed=1, workers=2)
    assert "use --workers 1 to see the error" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@fork_only
def test_dead_worker_in_a_real_process_exits_1_with_one_line():
    # a real interpreter, so stderr is exactly what a user sees (no runner in between)
    code = ("import os, sys\n"
            "import vbp.experiment as e\n"
            "real = e._one\n"
            "def die(args):\n"
            "    if args[2] == 2:\n"
            "        os._exit(1)\n"
            "    return real(args)\n"
            "e._one = die\n"
            "from vbp.cli import cli\n"
            "cli(['run', sys.argv[1], '-n', '4', '--workers', '2', '--quiet', '--json'],"
            " prog_name='vbp')\n")
    root = str(HERE.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code, TINY], capture_output=True, text=True, env=env,
                          cwd=root, timeout=120)
    shown = f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert proc.returncode == 1, shown
    assert proc.stdout == "" and "Traceback" not in proc.stderr, shown
    line = proc.stderr.strip()
    assert "\n" not in line, shown
    assert line.startswith("simulation failed: a worker process died after "), shown
    assert line.endswith("rerun, or use --workers 1 to see the error"), shown


# --- an output folder that cannot be written ------------------------------------------------


@pytest.mark.parametrize("command", [["run", TINY], ["reproduce"]])
def test_out_under_a_file_stops_before_simulating(tmp_path, monkeypatch, command):
    monkeypatch.setattr("vbp.experiment.run", _must_not_simulate)
    blocker = tmp_path / "plain-file"
    blocker.write_text("not a folder")
    out = str(blocker / "results")
    result = invoke(*command, "-n", "1", "--workers", "1", "--quiet", "--out", out)
    line = assert_one_line(result, 2, "--out", out)
    assert line.startswith("error: ")
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root may write into a read-only folder")
def test_read_only_out_stops_before_simulating(tmp_path, monkeypatch):
    monkeypatch.setattr("vbp.experiment.run", _must_not_simulate)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = str(locked / "results")
        result = invoke("run", TINY, "-n", "1", "--quiet", "--out", out)
        assert_one_line(result, 2, "--out", out)
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_read_only_out_stops_before_simulating_even_as_root(tmp_path, monkeypatch):
    """The same refusal when the file system itself says no (as a read-only mount does to root)."""
    import errno
    import pathlib

    monkeypatch.setattr("vbp.experiment.run", _must_not_simulate)
    real = pathlib.Path.write_text

    def refuse(self, *args, **kwargs):
        if self.name == ".vbp-write-test":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", refuse)
    out = str(tmp_path / "results")
    result = invoke("run", TINY, "-n", "1", "--quiet", "--out", out)
    line = assert_one_line(result, 2, "--out", out)
    assert os.strerror(errno.EROFS).lower() in line.lower()


# --- a disk that fills up -------------------------------------------------------------------


def fail_writes(monkeypatch, match: str, code: int) -> list[str]:
    """Make Parquet writes whose (temporary) file name starts with `match` write a few bytes and
    then fail with OSError(`code`), as a full disk does; return the names that failed."""
    real = pd.DataFrame.to_parquet
    failed: list[str] = []

    def to_parquet(self, path, *args, **kwargs):
        if Path(path).name.startswith(match):
            failed.append(Path(path).name)
            Path(path).write_bytes(b"PAR1 half a table")
            raise OSError(code, os.strerror(code), str(path))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet)
    return failed


def _tables(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".parquet", ".csv")}


def _run(out: Path, *args: str):
    return invoke("run", TINY, "-n", "6", "--seed", "2", "--quiet", "--out", str(out), *args)


@pytest.fixture(scope="module")
def six_reps(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("clean") / "R"
    assert _run(out, "--workers", "1").exit_code == 0
    return _tables(out)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_disk_full_on_a_part_keeps_the_saved_ones_and_resume_completes(tmp_path, monkeypatch, six_reps, workers):
    out = tmp_path / "R"
    parts = out / output.PARTS
    with monkeypatch.context() as m:
        failed = fail_writes(m, ".r000002.", errno.ENOSPC)
        result = _run(out, "--workers", workers)
    assert failed, "the third replication was never written"
    line = assert_one_line(result, 1, "simulation failed: cannot write ", f"{parts / 'r000002.'}",
                           ": disk full; ", "rerun the same command with --resume to complete the work")
    kept = output.load_parts(parts, 6)
    count = int(re.search(r"; (\d) of 6 replications are saved in ", line).group(1))
    assert count == len(kept) and 2 not in [rep for rep, _, _ in kept]
    if workers == "1":  # in order: exactly the two before it
        assert [rep for rep, _, _ in kept] == [0, 1]
    assert all(len(frames["bids"]) > 0 for _, frames, _ in kept)  # complete, readable tables
    assert not list(parts.glob(".*.tmp")), "a half-written file was left behind"
    assert not list(parts.glob("r000002.*")), "a part of the failed replication looks saved"
    assert not (out / "bids.parquet").exists()

    result = _run(out, "--workers", workers, "--resume")
    assert result.exit_code == 0, result.output
    assert _tables(out) == six_reps


def test_quota_exceeded_on_the_final_tables_resumes_without_simulating(tmp_path, monkeypatch, six_reps):
    out = tmp_path / "R"
    with monkeypatch.context() as m:
        fail_writes(m, ".units.parquet.", errno.EDQUOT)  # the final table, not a part
        result = _run(out, "--workers", "1", "--json")
    assert_one_line(result, 1, f"cannot write {out / 'units.parquet'}: disk quota exceeded",
                    f"all 6 replications are saved in {out / output.PARTS}", "--resume")
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(vbp.experiment, "_one", _must_not_simulate)
    result = _run(out, "--workers", "1", "--resume")
    assert result.exit_code == 0, result.output
    assert _tables(out) == six_reps


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "disk full"), (errno.EDQUOT, "disk quota exceeded"),
                                          (errno.EROFS, "read-only file system"),
                                          (errno.EACCES, "permission denied"), (errno.EIO, os.strerror(errno.EIO))])
def test_write_failures_are_named(tmp_path, code, reason):
    error = output.write_failure(OSError(code, os.strerror(code)), tmp_path / "x.parquet", "hint")
    assert str(error) == f"cannot write {tmp_path / 'x.parquet'}: {reason}; hint"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs the Linux /dev/full device")
def test_a_real_full_device_reads_as_disk_full(tmp_path):
    with pytest.raises(OSError) as info:  # the Parquet writer's own error on a full device
        pd.DataFrame({"a": range(1000)}).to_parquet("/dev/full")
    assert "disk full" in str(output.write_failure(info.value, tmp_path / "a.parquet"))


# --- Ctrl-C ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["run", TINY], ["reproduce"]])
def test_interrupt_exits_130_without_traceback(monkeypatch, command):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("vbp.experiment.run", interrupted)
    result = invoke(*command, "-n", "1", "--workers", "1", "--quiet")
    assert_one_line(result, 130, "interrupted")
