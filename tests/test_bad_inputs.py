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
    (["check", T, "--set", "rounds.batch2.bidding_products=3"],
     ("--set", "rounds.batch2.bidding_products", "3", "4", "molecules")),
    (["check", T, "--set", "rounds.stents.bidding_products=5"],
     ("--set", "rounds.stents.bidding_products", "rounds.stents.bidding_firms", "11", "5")),
    (["check", T, "--set", "rounds.stents.rulebook=batch2"],
     ("--set", "rounds.stents.rulebook", "batch2", "multi_winner", "stent")),
    (["check", T, "--set", "rounds.batch2.rulebook=stent"],
     ("--set", "rounds.batch2.rulebook", "stent", "single_winner", "multi_winner")),
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


# --- counts of bidders, rulebook kinds, and --set named as the source of its own mistakes ---------

BATCH8 = HERE.parent / "experiments" / "forecasts" / "batch8.toml"


def _batch8(tmp_path: Path, *changes: tuple[str, str]) -> str:
    """batch8.toml with each (line start, replacement line) changed, written to tmp_path."""
    lines = BATCH8.read_text(encoding="utf-8").splitlines()
    for start, new in changes:
        hits = [i for i, line in enumerate(lines) if line.startswith(start)]
        assert len(hits) == 1, start
        lines[hits[0]] = new
    path = tmp_path / "round.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_fewer_bidding_products_than_molecules_is_refused(tmp_path):
    path = _batch8(tmp_path, ("molecules =", "molecules = 50"), ("bidding_products =", "bidding_products = 10"),
                   ("bidding_firms =", "bidding_firms = 5"))
    for args in (["check", path], ["forecast", path, "-n", "1", "--json"]):
        assert_bad_input(invoke(*args), "round.bidding_products", "10", "50", "molecule", file=path)


def test_more_bidding_firms_than_products_is_refused(tmp_path):
    path = _batch8(tmp_path, ("bidding_firms =", "bidding_firms = 400"))
    assert_bad_input(invoke("check", path), "round.bidding_firms", "400", "366", file=path)
    scenario = tmp_path / "scenario.toml"
    scenario.write_text('end = "2022-12-31"\nrounds = [{ from = "batch5", bidding_firms = 356 }]\n',
                        encoding="utf-8")
    assert_bad_input(invoke("check", str(scenario)), "rounds.batch5.bidding_firms", "356", "355",
                     file=str(scenario))


def test_bidder_counts_at_their_limits_are_accepted():
    from vbp.scenario import load_scenario

    s = load_scenario(TINY, ["rounds.batch2.bidding_products=4", "rounds.batch2.bidding_firms=4",
                             "rounds.stents.bidding_products=11"])
    assert (s.round("batch2").bidding_products, s.round("stents").bidding_products) == (4, 11)


@pytest.mark.parametrize("rnd", ["pilot", "batch2", "stents", "joints", "insulin"])
@pytest.mark.parametrize("book", ["pilot", "batch4_9", "stent", "joint", "insulin"])
def test_a_round_takes_only_rulebooks_of_its_category(rnd, book):
    from vbp.scenario import CATEGORY_KINDS, load_scenario

    base = load_scenario("national-history")
    category, kind = base.round(rnd).category, base.rulebook(book).kind
    override = f"rounds.{rnd}.rulebook={book}"
    if kind in CATEGORY_KINDS[category]:
        assert load_scenario("national-history", [override]).round(rnd).rulebook == book
        return
    with pytest.raises(InputError) as err:
        load_scenario("national-history", [override])
    text = str(err.value)
    assert f"rounds.{rnd}.rulebook" in text and repr(kind) in text and category in text, text
    assert text.startswith("--set: ") and "(embedded)" not in text, text


def test_every_category_has_a_rulebook_kind_it_fits():
    from vbp.rules import RULEBOOK_KINDS
    from vbp.scenario import CATEGORY_KINDS, Round

    assert set(CATEGORY_KINDS) == set(Round.model_fields["category"].annotation.__args__)
    assert {k for kinds in CATEGORY_KINDS.values() for k in kinds} == set(RULEBOOK_KINDS)


def test_a_device_round_file_under_a_drug_rulebook_is_refused(tmp_path):
    path = tmp_path / "stents.toml"
    path.write_text("""[round]
id = "stents2"
name = "stents again"
category = "stent"
rulebook = "batch10"
bid_date = "2025-01-01"
supply_lag_months = 2
molecules = 1
bidding_firms = 11
bidding_products = 26
market_value_bn = 12.3
reference_price_yuan = 11495
""", encoding="utf-8")
    result = invoke("forecast", str(path), "-n", "1", "--json")
    assert_bad_input(result, "round.rulebook", "batch10", "multi_winner", "stent", file=str(path))
    fixed = path.read_text(encoding="utf-8").replace('"batch10"', '"stent"')
    path.write_text(fixed, encoding="utf-8")
    assert invoke("check", str(path)).exit_code == 0


def test_a_set_mistake_names_set_not_the_forecast_file():
    result = invoke("forecast", str(BATCH8), "--set", "agents.cost_median_drug=abc", "-n", "1")
    assert_bad_input(result, "agents.cost_median_drug", "abc")
    assert result.stderr.startswith("error: --set: agents.cost_median_drug: "), result.stderr
    assert "batch8.toml" not in result.stderr


def test_a_set_mistake_names_set_not_the_embedded_scenario():
    result = invoke("reproduce", "--set", "rules.volume_share_4plus=2", "-n", "1")
    assert_bad_input(result, "rules.volume_share_4plus", "2")
    assert result.stderr.startswith("error: --set: rules.volume_share_4plus: "), result.stderr
    assert "embedded" not in result.stderr


@pytest.mark.parametrize(("override", "needles"), [
    ("rounds.batch2.molecules=20", ("rounds.batch2.molecules", "rounds.batch2.bidding_products", "20")),
    ("agents.capacity_low=3", ("agents.capacity_low", "capacity_high")),
    ("rounds.batch2.bid_date=2020-12-01", ("rounds.batch2.bid_date", "date order")),
    ("start=2022-01-01", ("start", "end")),
])
def test_a_mistake_across_fields_caused_by_set_names_set(tmp_path, override, needles):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text('end = "2021-12-31"\nrounds = [{ from = "batch2", molecules = 4, bidding_firms = 14, '
                        'bidding_products = 19 }, "stents"]\n', encoding="utf-8")
    result = invoke("check", str(scenario), "--set", override)
    assert_bad_input(result, "--set", *needles)
    assert str(scenario) not in result.stderr


def test_file_mistakes_still_name_the_file_beside_set_mistakes(tmp_path):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text('end = "2022-12-31"\nrounds = ["batch2"]\n[agents]\nmarkup = -1\n', encoding="utf-8")
    result = invoke("check", str(scenario), "--set", "agents.cost_sigma_drug=0")
    assert_bad_input(result, "agents.markup", "-1", "agents.cost_sigma_drug", file=str(scenario))
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {scenario}: 2 problems in the scenario", result.stderr
    assert "  - agents.markup: " in lines[1] and lines[2].startswith("  - --set: agents.cost_sigma_drug: ")
    fixed = invoke("check", str(scenario), "--set", "agents.markup=0.3")  # a --set may mend the file
    assert fixed.exit_code == 0, fixed.stderr


def test_set_reaches_a_forecast_round_as_round():
    from vbp.forecast import load_forecast

    short = load_forecast(BATCH8, ("round.molecules=45",))
    long = load_forecast(BATCH8, ("rounds.batch8.molecules=45",))
    assert short.rounds[0].molecules == 45 and short.digest() == long.digest()
    result = invoke("check", str(BATCH8), "--set", "round.molecules=45")
    assert result.exit_code == 0 and "45 molecules" in result.stdout, result.stderr


@pytest.mark.parametrize(("override", "needles"), [
    ("round.molecule=45", ("round.molecule", "did you mean 'molecules'")),
    ("round.molecules=400", ("round.molecules", "round.bidding_products", "366", "400")),
    ("round.rulebook=joint", ("round.rulebook", "joint", "multi_winner")),
    ("round=3", ("round", "is a table")),
])
def test_bad_set_on_a_forecast_round_names_it_as_written(override, needles):
    result = invoke("check", str(BATCH8), "--set", override)
    assert_bad_input(result, "--set", *needles)
    assert "batch8.toml" not in result.stderr and "rounds.batch8" not in result.stderr, result.stderr
