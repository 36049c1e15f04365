"""Bad input through the command line: exit code 2, the file and field named, never a traceback.

The scenario files are in tests/data/bad/ (one mistake each, described in the file's first line);
`FILE_CASES` says what the message must name for each. Command-line mistakes are in `ARG_CASES`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vbp.cli import cli
from vbp.errors import InputError

HERE = Path(__file__).parent
BAD = HERE / "data" / "bad"
TINY = str(HERE / "data" / "tiny.toml")

# file in tests/data/bad -> what stderr must name (field paths, values, suggestions)
FILE_CASES: dict[str, tuple[str, ...]] = {
    # unknown keys, with a suggestion
    "unknown_key.toml": ("descripton", "did you mean 'description'"),
    "unknown_section.toml": ("agent", "did you mean 'agents'"),
    "unknown_agents_key.toml": ("agents.markupp", "did you mean 'markup'"),
    "unknown_round_field.toml": ("rounds.batch2.molecule", "did you mean 'molecules'"),
    # missing or empty required fields
    "missing_end.toml": ("end", "missing required field"),
    "missing_rounds.toml": ("rounds", "missing required field"),
    "empty_rounds.toml": ("rounds", "empty list"),
    "round_without_id.toml": ("rounds[0]", "id"),
    # wrong types
    "rounds_not_a_list.toml": ("rounds", "expected a list"),
    "round_entry_wrong_type.toml": ("rounds[0]", "42"),
    "molecules_not_integer.toml": ("rounds.batch2.molecules", "many"),
    "molecules_fractional.toml": ("rounds.batch2.molecules", "4.5"),
    "end_not_a_date.toml": ("end", "the end of 2021"),
    "agents_not_a_table.toml": ("agents", "expected a table"),
    "safe_harbour_not_bool.toml": ("rules.safe_harbour", "maybe"),
    "name_not_text.toml": ("name", "5"),
    # NaN, infinity, negative values, shares outside [0, 1]
    "nan_markup.toml": ("agents.markup", "nan"),
    "inf_market_value.toml": ("rounds.batch2.market_value_bn", "inf"),
    "negative_price.toml": ("rounds.stents.reference_price_yuan", "-500.0"),
    "negative_markup.toml": ("agents.markup", "-0.2"),
    "negative_bidding_firms.toml": ("rounds.batch2.bidding_firms", "-3"),
    "share_above_one.toml": ("rules.volume_share_4plus", "1.5"),
    "coverage_negative.toml": ("rounds.batch2.coverage", "-0.1"),
    "max_share_above_one.toml": ("optimizer.max_share", "1.2"),
    "capacity_low_above_high.toml": ("capacity_low", "capacity_high"),
    # dates and round order
    "dates_out_of_order.toml": ("date order", "batch3", "batch2"),
    "end_before_start.toml": ("end", "start", "2020-01-01"),
    "bid_date_after_end.toml": ("rounds.batch2.bid_date", "2020-01-17"),
    "ceiling_from_later_round.toml": ("rounds.batch2.ceiling_from", "batch3"),
    "duplicate_round.toml": ("rounds[1]", "batch2", "listed twice"),
    # unknown names
    "unknown_rulebook.toml": ("rounds.batch2.rulebook", "batch99"),
    "rulebook_from_unknown.toml": ("rulebooks.mine.from", "batch22", "did you mean 'batch2'"),
    "rulebook_unknown_kind.toml": ("rulebooks.mine", "kind", "auction"),
    "rulebook_volume_shares_above_one.toml": ("rulebooks.batch2", "volume_shares", "1.7"),
    "unknown_strategy.toml": ("agents.strategy", "psychic"),
    "unknown_optimizer_mode.toml": ("optimizer.mode", "dictator"),
    "unknown_round_id.toml": ("rounds[0]", "batch9", "did you mean"),
    "inline_round_from_unknown.toml": ("rounds[0].from", "batch99"),
    "province_misspelt.toml": ("provinces", "Shanghia", "did you mean 'Shanghai'"),
    # files that are not scenario text
    "empty.toml": ("empty",),
    "whitespace_only.toml": ("empty",),
    "binary.toml": ("binary",),
    "not_utf8.toml": ("UTF-8",),
    "not_toml.toml": ("not valid TOML", "line 1"),
    "unclosed_bracket.toml": ("not valid TOML",),
    "duplicate_key.toml": ("not valid TOML", "line 4"),
    "too_deep.toml": ("nesting",),
}

# command-line mistakes: (args, what stderr must name); {data} is tests/data
T = "{data}/tiny.toml"
ARG_CASES: list[tuple[list[str], tuple[str, ...]]] = [
    (["check", T, "--set", "agents.markupp=1"], ("agents.markupp", "did you mean 'markup'")),
    (["check", T, "--set", "nosuch.path=1"], ("--set", "nosuch")),
    (["check", T, "--set", "rounds.batch9.molecules=3"],
     ("rounds.batch9", "did you mean 'batch2'")),
    (["check", T, "--set", "agents.markup.x=1"], ("agents.markup.x",)),
    (["check", T, "--set", "agents=1"], ("agents", "is a table")),
    (["check", T, "--set", "agents.markup"], ("--set", "PATH=VALUE", "agents.markup")),
    (["check", T, "--set", "=3"], ("--set", "empty path")),
    (["check", T, "--set", "agents.markup=nan"], ("agents.markup", "nan")),
    (["check", T, "--set", "agents.markup=-inf"], ("agents.markup", "-inf")),
    (["check", T, "--set", "agents.markup=-1"], ("agents.markup", "-1")),
    (["check", T, "--set", "rules.volume_share_4plus=1.5"], ("rules.volume_share_4plus", "1.5")),
    (["check", T, "--set", "agents.strategy=psychic"], ("agents.strategy", "psychic")),
    (["check", T, "--set", "rounds.batch2.rulebook=nosuch"], ("rounds.batch2.rulebook", "nosuch")),
    (["check", T, "--set", "rounds.batch2.ceiling_from=stents"], ("rounds.batch2.ceiling_from", "stents")),
    (["run", T, "--set", "agents.markupp=1"], ("agents.markupp",)),
    (["reproduce", "--set", "rounds.batch99.molecules=3"], ("rounds.batch99",)),
    (["run", T, "-n", "-1"], ("--replications", "-1")),
    (["run", T, "-n", "0"], ("--replications", "0")),
    (["reproduce", "--replications", "two"], ("--replications", "two")),
    (["run", T, "--seed", "1.5"], ("--seed", "1.5")),
    (["run", T, "--seed", "abc"], ("--seed", "abc")),
    (["run", T, "--seed", "-3"], ("--seed", "-3")),
    (["run", T, "--workers", "0"], ("--workers", "0")),
    (["run", T, "--frobnicate"], ("--frobnicate",)),
    (["frobnicate"], ("frobnicate",)),
    (["check"], ("SCENARIO",)),
    (["run", "no/such/file.toml"], ("no/such/file.toml", "not found")),
    (["check", "national-histroy"], ("national-histroy", "did you mean 'national-history'")),
    (["params", "no-such-scenario"], ("no-such-scenario",)),
    (["params", "{data}/bad/unknown_key.toml"], ("descripton",)),
    (["check", "{data}"], ("data", "folder")),
    (["scenarios", "show", "national-histroy"],
     ("national-histroy", "did you mean 'national-history'")),
    (["scenarios", "show", "nope"], ("nope", "national-history")),
]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def names(text: str, needle: str) -> bool:
    """True when `needle` appears in `text` as a whole token (not inside a longer name)."""
    return re.search(rf"(?<![\w-]){re.escape(needle)}(?![\w-])", text) is not None


def assert_bad_input(result, *needles: str, file: str | None = None) -> None:
    """Exit 2 (SystemExit), empty stdout, no traceback, the file and every needle named."""
    shown = f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.exit_code == 2, shown
    assert isinstance(result.exception, SystemExit), (repr(result.exception), shown)
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert result.stdout == "", shown
    text = result.stderr
    if file is not None:
        assert file in text, shown
        text = text.replace(file, "<file>")  # a needle must be named in the message, not the path
    for needle in needles:
        assert names(text, needle), (needle, shown)


def test_corpus_is_large_and_matches_the_case_table():
    on_disk = {p.name for p in BAD.iterdir()}
    assert on_disk == set(FILE_CASES)
    assert len(FILE_CASES) + len(ARG_CASES) >= 30 and len(FILE_CASES) >= 30


@pytest.mark.parametrize("name", sorted(FILE_CASES))
def test_bad_file(name):
    path = str(BAD / name)
    assert_bad_input(invoke("check", path), *FILE_CASES[name], file=path)


@pytest.mark.parametrize("name", ["unknown_agents_key.toml", "negative_price.toml", "binary.toml",
                                  "unknown_round_id.toml", "province_misspelt.toml"])
def test_bad_file_through_run(name):
    """run refuses before simulating, and --json prints no document."""
    path = str(BAD / name)
    assert_bad_input(invoke("run", path, "-n", "1", "--json"), *FILE_CASES[name], file=path)


@pytest.mark.parametrize("name", ["unknown_agents_key.toml", "binary.toml", "unknown_round_id.toml",
                                  "missing_end.toml", "negative_price.toml", "molecules_not_integer.toml",
                                  "unknown_rulebook.toml"])
def test_bad_file_through_params(name):
    """params lists only a scenario that would run: structure and values are checked as by check."""
    path = str(BAD / name)
    assert_bad_input(invoke("params", path, "--json"), *FILE_CASES[name], file=path)


@pytest.mark.parametrize("args, needles",
                         [pytest.param(*case, id=" ".join(case[0])) for case in ARG_CASES])
def test_bad_arguments(args, needles):
    result = invoke(*[a.replace("{data}", str(HERE / "data")) for a in args])
    assert_bad_input(result, *needles)


def test_too_large_file(tmp_path):
    path = tmp_path / "huge.toml"
    path.write_text('name = "huge"\n' + "# padding\n" * 110_000, encoding="utf-8")
    assert path.stat().st_size > 1_000_000
    assert_bad_input(invoke("check", str(path)), "larger than", file=str(path))


def test_folder_named_like_a_scenario_file(tmp_path):
    folder = tmp_path / "scenario.toml"
    folder.mkdir()
    assert_bad_input(invoke("check", str(folder)), "folder", file=str(folder))


def test_missing_file(tmp_path):
    path = str(tmp_path / "absent.toml")
    assert_bad_input(invoke("run", path, "-n", "1"), "not found", file=path)


def test_out_under_a_regular_file(tmp_path):
    blocker = tmp_path / "plain-file"
    blocker.write_text("not a folder")
    out = str(blocker / "results")
    result = invoke("run", TINY, "-n", "1", "--quiet", "--out", out)
    assert_bad_input(result, "--out", out)
    assert blocker.read_text() == "not a folder"


def test_out_is_a_regular_file(tmp_path):
    blocker = tmp_path / "plain-file"
    blocker.write_text("not a folder")
    result = invoke("reproduce", "-n", "1", "--out", str(blocker))
    assert_bad_input(result, "--out", str(blocker))
    assert blocker.read_text() == "not a folder"


def test_debug_adds_the_traceback_and_keeps_the_exit_code():
    path = str(BAD / "unknown_agents_key.toml")
    quiet = invoke("check", path)
    assert isinstance(quiet.exception, SystemExit) and quiet.exit_code == 2
    assert "Traceback" not in quiet.stderr
    loud = invoke("--debug", "check", path)
    assert isinstance(loud.exception, SystemExit) and loud.exit_code == 2, loud.stderr
    assert "Traceback" in loud.stderr and f"{InputError.__module__}.InputError" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()  # then the same message


def _vbp(*args: str) -> subprocess.CompletedProcess:
    root = str(HERE.parent)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "vbp", *args], capture_output=True, text=True,
                          env=env, cwd=root, timeout=60)


def test_debug_shows_a_traceback_in_a_real_process():
    path = str(BAD / "unknown_agents_key.toml")
    plain = _vbp("check", path)
    assert plain.returncode == 2, plain.stderr
    assert "Traceback" not in plain.stderr and "agents.markupp" in plain.stderr
    debug = _vbp("--debug", "check", path)
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and "InputError" in debug.stderr
