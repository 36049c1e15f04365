"""`vbp check` on a forecast round file (the `[round]` table `vbp forecast` reads): validated as a
forecast, its mistakes named by file, field and value, exit 2 and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from vbp.cli import cli
from vbp.forecast import load_forecast

FORECASTS = Path(__file__).resolve().parent.parent / "experiments" / "forecasts"
BATCH8 = FORECASTS / "batch8.toml"


def check(*args: str):
    return CliRunner().invoke(cli, ["check", *args])


@pytest.mark.parametrize("path", sorted(FORECASTS.glob("*.toml")), ids=lambda p: p.stem)
def test_check_accepts_every_forecast_file(path):
    result = check(str(path))
    assert result.exit_code == 0, (result.stderr, result.exception)
    scenario = load_forecast(path)
    r = scenario.rounds[0]
    assert result.stdout.startswith(f"ok: forecast round file: {r.id}")
    for shown in (str(r.bid_date), r.rulebook, f"{r.molecules} molecules", scenario.digest()[:12]):
        assert shown in result.stdout, shown
    assert "unknown key" not in result.stdout + result.stderr


def test_check_applies_set_to_a_forecast_file():
    result = check(str(BATCH8), "--set", "rounds.batch8.molecules=12")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "12 molecules" in result.stdout


@pytest.mark.parametrize(("line", "bad", "field", "value"), [
    ("molecules = 40 ", "molecules = -3 ", "round.molecules", "-3"),
    ('bid_date = "2023-03-29"', 'bid_date = "2023-13-29"', "round.bid_date", "2023-13-29"),
    ('rulebook = "batch4_9"', 'rulebook = "nosuch"', "round.rulebook", "nosuch"),
    ("coverage = 1.0", "coverag = 1.0", "round.coverag", "coverage"),
])
def test_bad_forecast_file_exits_2_naming_file_field_and_value(tmp_path, line, bad, field, value):
    text = BATCH8.read_text(encoding="utf-8")
    assert line in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(line, bad), encoding="utf-8")
    result = check(str(path))
    assert result.exit_code == 2
    assert str(path) in result.stderr and field in result.stderr and value in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""


def test_a_scenario_file_is_still_checked_as_a_scenario():
    result = check(str(Path(__file__).parent / "data" / "tiny.toml"))
    assert result.exit_code == 0
    assert result.stdout.startswith("ok: tiny: 2 rounds")
