"""`vbp run --out DIR` saves each replication as it finishes; `--resume` reuses them.

An interrupted run (Ctrl-C or SIGKILL) resumed with any worker count writes tables byte-identical
to an uninterrupted run; a folder saved under another seed, scenario, kind or version is refused
before any simulation; without `--resume` nothing saved is reused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vbp.experiment
from vbp import output
from vbp.cli import cli
from vbp.experiment import run
from vbp.scenario import load_scenario

HERE = Path(__file__).parent
ROOT = HERE.parent
TINY = str(HERE / "data" / "tiny.toml")
SEED = "5"
REAL_ONE = vbp.experiment._one


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def run_tiny(out: Path, n: int, *args: str):
    return invoke("run", TINY, "-n", str(n), "--seed", SEED, "--quiet", "--out", str(out), *args)


def tables(folder: Path) -> dict[str, bytes]:
    """The bytes of every table a run folder holds (Parquet records and CSV summaries)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".parquet", ".csv")}


def saved(out: Path) -> list[int]:
    return sorted(int(p.name[1:7]) for p in (out / output.PARTS).glob("r*.json"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[int, dict[str, bytes]]:
    """Tables of uninterrupted runs of 6 and 40 replications (one worker)."""
    refs = {}
    for n in (6, 40):
        out = tmp_path_factory.mktemp("clean") / f"n{n}"
        res = run_tiny(out, n, "--workers", "1")
        assert res.exit_code == 0, res.output
        refs[n] = tables(out)
    assert len(refs[6]) >= 8  # records and summaries
    return refs


def interrupt_at(monkeypatch, rep: int) -> list[int]:
    """Make replication `rep` raise KeyboardInterrupt (as Ctrl-C would); return the reps started."""
    started: list[int] = []

    def one(args):
        started.append(args[2])
        if args[2] == rep:
            raise KeyboardInterrupt
        return REAL_ONE(args)

    monkeypatch.setattr(vbp.experiment, "_one", one)
    return started


@pytest.mark.parametrize("workers", ["1", "2"])
def test_interrupted_run_resumes_to_identical_tables(tmp_path, monkeypatch, clean, workers):
    out = tmp_path / "R"
    with monkeypatch.context() as m:
        interrupt_at(m, 3)
        res = run_tiny(out, 6, "--workers", "1")
    assert res.exit_code == 130, res.output
    assert "3 of 6 replications are saved" in res.stderr and "--resume" in res.stderr
    assert "Traceback" not in res.stderr
    assert saved(out) == [0, 1, 2]
    assert not (out / "bids.parquet").exists()

    res = run_tiny(out, 6, "--workers", workers, "--resume")
    assert res.exit_code == 0, (res.output, res.exception)
    assert "(3 saved replications reused)" in res.stdout
    assert tables(out) == clean[6]
    assert saved(out) == list(range(6))
    assert json.loads((out / "manifest.json").read_text())["replications"] == 6


def test_resume_runs_only_the_missing_replications(tmp_path, monkeypatch, clean):
    out = tmp_path / "R"
    with monkeypatch.context() as m:
        interrupt_at(m, 2)
        assert run_tiny(out, 6, "--workers", "1").exit_code == 130
    started = interrupt_at(monkeypatch, -1)
    assert run_tiny(out, 6, "--workers", "1", "--resume", "--json").exit_code == 0
    assert started == [2, 3, 4, 5]
    assert tables(out) == clean[6]


def test_resume_may_ask_for_more_replications_than_saved(tmp_path, monkeypatch, clean):
    out = tmp_path / "R"
    assert run_tiny(out, 6, "--workers", "1").exit_code == 0  # a finished run keeps its parts
    started = interrupt_at(monkeypatch, -1)
    res = run_tiny(out, 40, "--workers", "1", "--resume")
    assert res.exit_code == 0, res.output
    assert started == list(range(6, 40))
    assert tables(out) == clean[40]


def test_without_resume_nothing_saved_is_reused(tmp_path, monkeypatch, clean):
    out = tmp_path / "R"
    assert run_tiny(out, 6, "--workers", "1").exit_code == 0
    started = interrupt_at(monkeypatch, -1)
    assert run_tiny(out, 6, "--workers", "1").exit_code == 0  # same spec: still a fresh run
    assert started == list(range(6))
    assert tables(out) == clean[6]
    # another spec: the old parts are cleared, not mixed in
    assert invoke("run", TINY, "-n", "2", "--seed", "9", "--quiet", "--workers", "1", "--out", str(out)).exit_code == 0
    assert saved(out) == [0, 1]
    assert json.loads((out / output.PARTS / "spec.json").read_text())["seed"] == 9


def _must_not_simulate(*args, **kwargs):
    raise AssertionError("the simulation ran although the command should have stopped before it")


@pytest.mark.parametrize("change, field, old, new", [
    (("--seed", "6"), "seed", "5", "6"),
    (("--set", "agents.markup=0.4"), "scenario_sha256", None, None),
])
def test_resume_with_another_spec_is_refused_before_simulating(tmp_path, monkeypatch, change, field, old, new):
    out = tmp_path / "R"
    assert run_tiny(out, 2, "--workers", "1").exit_code == 0
    spec_before = (out / output.PARTS / "spec.json").read_bytes()
    monkeypatch.setattr("vbp.experiment.run", _must_not_simulate)
    args = ["run", TINY, "-n", "2", "--seed", SEED, "--quiet", "--workers", "1", "--out", str(out), "--resume"]
    res = invoke(*args, *change)
    assert res.exit_code == 2, (res.output, res.exception)
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and res.stdout == ""
    assert line.startswith(f"error: {out}: {field}: cannot resume")
    assert "new --out folder" in line
    if old is not None:
        assert f"have {field} {old}, this run asks for {new}" in line
    else:
        spec = json.loads(spec_before)
        assert spec[field] in line and load_scenario(TINY, ["agents.markup=0.4"]).digest() in line
    assert (out / output.PARTS / "spec.json").read_bytes() == spec_before
    assert saved(out) == [0, 1]


def test_reproduce_refuses_to_resume_a_run_folder(tmp_path, monkeypatch):
    out = tmp_path / "R"
    assert run_tiny(out, 1, "--workers", "1").exit_code == 0
    monkeypatch.setattr("vbp.experiment.run", _must_not_simulate)
    res = invoke("reproduce", "-n", "1", "--seed", SEED, "--quiet", "--out", str(out), "--resume")
    assert res.exit_code == 2, res.output
    assert 'kind: cannot resume: the replications saved here have kind "run", this run asks for "reproduce"' \
        in res.stderr


@pytest.mark.parametrize("command", [["run", TINY], ["reproduce"]])
def test_resume_without_out_is_a_usage_error(monkeypatch, command):
    monkeypatch.setattr("vbp.experiment.run", _must_not_simulate)
    res = invoke(*command, "-n", "1", "--resume")
    assert res.exit_code == 2
    assert "--resume needs --out" in res.stderr and "Traceback" not in res.output


def test_sigkilled_run_resumes_to_identical_tables(tmp_path, clean):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "vbp", "run", TINY, "-n", "5000", "--seed", SEED, "--workers", "1", "--quiet",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while (not (out / output.PARTS).is_dir() or len(saved(out)) < 10) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    kept = saved(out)
    assert kept == list(range(len(kept))) and 10 <= len(kept) < 40  # killed part-way, in order

    res = run_tiny(out, 40, "--workers", "1", "--resume")
    assert res.exit_code == 0, res.output
    assert f"({len(kept)} saved replications reused)" in res.stdout
    assert tables(out) == clean[40]
    assert not list((out / output.PARTS).glob(".*.tmp"))


def test_a_part_with_a_missing_table_is_run_again(tmp_path, monkeypatch, clean):
    out = tmp_path / "R"
    assert run_tiny(out, 6, "--workers", "1").exit_code == 0
    (out / output.PARTS / "r000004.bids.parquet").unlink()
    (out / output.PARTS / ".r000005.units.parquet.abc.tmp").write_bytes(b"PAR1 half")  # a write cut short
    started = interrupt_at(monkeypatch, -1)
    assert run_tiny(out, 6, "--workers", "1", "--resume").exit_code == 0
    assert started == [4]
    assert tables(out) == clean[6]
    assert not list((out / output.PARTS).glob(".*.tmp"))


# --- the library: saved parts in, identical tables out ------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return load_scenario(TINY)


@pytest.fixture(scope="module")
def full(tiny):
    return run(tiny, replications=5, seed=3, workers=1)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keep=st.sets(st.integers(0, 4)))
def test_any_saved_subset_gives_the_full_run(tiny, full, keep):
    """Whichever replications were saved, reading them back and running the rest gives the same
    tables, and progress counts from the saved ones up to all."""
    with tempfile.TemporaryDirectory() as tmp:
        parts = output.open_parts(Path(tmp), output.run_spec("run", tiny, 3), resume=False)
        for rep in keep:
            one = vbp.experiment._one((tiny, 3, rep))
            output.save_part(parts, rep, one.frames, one.timing, total=5)
        back = output.load_parts(parts, 5)
        assert [p[0] for p in back] == sorted(keep)
        seen: list[int] = []
        new: list[int] = []
        result = run(tiny, replications=5, seed=3, workers=1, saved=back,
                     progress=lambda done, total: seen.append(done), on_part=lambda p: new.append(p.rep))
    assert new == [rep for rep in range(5) if rep not in keep]
    assert seen == list(range(len(keep), 6)) and result.reused == len(keep)
    assert result.frames.keys() == full.frames.keys()
    for name, df in full.frames.items():
        pd.testing.assert_frame_equal(result.frames[name], df, check_exact=True)


def test_saved_parts_round_trip_exactly(tiny, tmp_path):
    one = vbp.experiment._one((tiny, 3, 2))
    parts = output.open_parts(tmp_path, output.run_spec("run", tiny, 3), resume=False)
    output.save_part(parts, 2, one.frames, one.timing, total=3)
    [(rep, frames, timing)] = output.load_parts(parts, 3)
    assert rep == 2 and timing == pytest.approx(one.timing)
    for name, df in one.frames.items():
        pd.testing.assert_frame_equal(frames[name], df, check_exact=True)
        assert frames[name].dtypes.equals(df.dtypes)
    assert output.count_parts(parts, 3) == 1 and output.count_parts(parts, 2) == 0
