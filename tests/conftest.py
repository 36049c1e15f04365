"""Test configuration: a private bid-function cache per test session, never the user's."""

from __future__ import annotations

import faulthandler
import os
import sys
import tempfile
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

os.environ["VBP_CACHE_DIR"] = tempfile.mkdtemp(prefix="vbp-test-cache-")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A run folder of the tiny scenario (`vbp run tests/data/tiny.toml -n 2 --out R`)."""
    from click.testing import CliRunner

    from vbp.cli import cli

    out = tmp_path_factory.mktemp("run") / "R"
    tiny = Path(__file__).parent / "data" / "tiny.toml"
    result = CliRunner().invoke(cli, ["run", str(tiny), "-n", "2", "--workers", "1", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    return out


def pytest_unconfigure(config):
    """An interpreter still running two minutes after the session prints every thread's stack and
    exits 1: a thread or process left behind (a pool's manager thread waiting for a dead worker)
    would otherwise hold the run open, silently, until whatever runs it gives up."""
    faulthandler.dump_traceback_later(120, exit=True, file=sys.__stderr__)
