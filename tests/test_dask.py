"""Sweeps on Dask: a cluster joined by address and one started with --local-cluster give the
same results.csv as an in-process run, also when a worker process dies mid-sweep."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from vbp import sweep as sw
from vbp.cli import cli

distributed = pytest.importorskip("distributed")

TINY = Path(__file__).parent / "data" / "tiny.toml"

SPEC = """
scenario = "{tiny}"
replications = 2
seed = 11
[design]
kind = "lhs"
samples = 3
[parameters]
"agents.markup" = {{low = 0.2, high = 0.8}}
"rules.volume_share_4plus" = {{low = 0.5, high = 0.9}}
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dask") / "spec.toml"
    path.write_text(SPEC.format(tiny=TINY.as_posix()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(spec) -> bytes:
    out = spec.parent / "in-process"
    res = CliRunner().invoke(cli, ["sweep", str(spec), "--out", str(out), "--workers", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    return (out / "results.csv").read_bytes()


def test_joining_a_cluster_by_address_gives_identical_results(spec, reference):
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        out = spec.parent / "joined"
        res = CliRunner().invoke(cli, ["sweep", str(spec), "--out", str(out), "--scheduler",
                                       cluster.scheduler_address, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["done"] == 6
    assert (out / "results.csv").read_bytes() == reference
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["executor"]["kind"] == "dask" and manifest["executor"]["slots"] == 2


def test_local_cluster_gives_identical_results(spec, reference):
    out = spec.parent / "local-cluster"
    res = CliRunner().invoke(cli, ["sweep", str(spec), "--out", str(out), "--local-cluster", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (out / "results.csv").read_bytes() == reference
    executor = json.loads((out / "manifest.json").read_text())["executor"]
    assert executor["address"].startswith("tcp://127.0.0.1:")


def test_a_lost_worker_is_replaced_and_the_results_are_identical(spec, reference, tmp_path):
    marker = tmp_path / "killed"

    def die_once(scenario, seed, rep):
        """A sweep task whose worker process dies the first time replication 1 of any point runs."""
        if rep == 1:
            try:
                with open(marker, "x") as fh:  # exactly one task, once: a retry finds the marker
                    fh.write(str(os.getpid()))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return sw.run_task(scenario, seed, rep)

    out = tmp_path / "lost-worker"
    result = sw.run_sweep(sw.load_spec(spec), out, workers=2, local_cluster=True, task=die_once)
    assert int(marker.read_text()) != os.getpid(), "the task ran in this process, not on a Dask worker"
    assert (result.done, result.failed, result.complete) == (6, 0, True)
    assert (out / "results.csv").read_bytes() == reference
