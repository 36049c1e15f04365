"""Scenario loading: embedded scenarios, overrides, immutability and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vbp.errors import InputError
from vbp.scenario import apply_overrides, flatten, load_raw, load_scenario, parse_override, scenario_from_raw

DATA = Path(__file__).parent / "data"


def test_national_history_has_every_round_in_date_order():
    s = load_scenario("national-history")
    ids = [r.id for r in s.rounds]
    assert ids[0] == "pilot" and "joints" in ids and "insulin" in ids and ids[-1] == "batch7"
    assert [r.bid_date for r in s.rounds] == sorted(r.bid_date for r in s.rounds)
    assert s.round("batch3").bidding_firms == 189


def test_scenario_is_immutable_and_counterfactual_is_a_copy():
    s = load_scenario("national-history")
    with pytest.raises(pydantic.ValidationError):
        s.agents.markup = 2.0  # type: ignore[misc]
    t = load_scenario("national-history", ["agents.markup=0.9"])
    assert t.agents.markup == 0.9 and s.agents.markup != 0.9
    assert s.digest() != t.digest()
    assert s.digest() == load_scenario("national-history").digest()


def test_override_reaches_rounds_and_rulebooks():
    s = load_scenario("national-history", ["rounds.batch3.bidding_firms=150",
                                           "rulebooks.batch4_9.gate_ratio=2.0",
                                           "rules.volume_share_4plus=0.6"])
    assert s.round("batch3").bidding_firms == 150
    assert s.rulebook("batch4_9").gate_ratio == 2.0
    assert s.rules.volume_share_4plus == 0.6


def test_inline_round_from_seed_table():
    s = load_scenario(DATA / "tiny.toml")
    assert [r.id for r in s.rounds] == ["batch2", "stents"]
    assert s.round("batch2").molecules == 4
    assert s.round("batch2").rulebook == "batch2"


@pytest.mark.parametrize("override, field", [
    ("agents.markupp=1", "markupp"),
    ("rounds.batch9.molecules=3", "batch9"),
    ("nosuch=1", "nosuch"),
])
def test_unknown_override_paths_are_named(override, field):
    with pytest.raises(InputError) as err:
        load_scenario("national-history", [override])
    assert field in str(err.value)


def test_did_you_mean_suggests_the_close_name():
    with pytest.raises(InputError, match="did you mean 'markup'"):
        load_scenario("national-history", ["agents.markupp=1"])


@pytest.mark.parametrize("override, needle", [
    ("market.completion_ratio=-1", "completion_ratio"),
    ("rounds.batch2.coverage=1.5", "coverage"),
    ("rules.volume_share_1=2", "volume_share_1"),
    ("rounds.batch2.molecules='many'", "molecules"),
    ("agents.strategy=psychic", "strategy"),
    ("rounds.batch3.rulebook=batch99", "batch99"),
    ("rounds.batch3.bid_date=2017-01-01", "bid_date"),
    ("rulebooks.batch2.volume_shares=[0.5, 1.7]", "volume_shares"),
    ("agents.cost_median_drug=nan", "cost_median_drug"),
    ("rounds.batch5.min_bidders=7", "434 bidding products, but the round has 355"),
    ("rounds.stents.min_bidders=2", "only a drug round"),
    ("rounds.batch2.min_bidders=0", "min_bidders"),
    # a boolean is not a count or a number (pydantic alone would read true as 1)
    ("rounds.batch2.min_bidders=true", "rounds.batch2.min_bidders: the boolean true"),
    ("agents.markup=false", "agents.markup: the boolean false"),
    ("rounds.batch3.rulebook=true", "no true/false value"),
    ("rulebooks.batch2.gate_ratio=true", "rulebooks.batch2.gate_ratio: true: a boolean"),
    ("rulebooks.batch2.max_winners=[1, true, 3]", "rulebooks.batch2.max_winners: [1, true, 3]: a boolean"),
    ("rulebooks.batch2.kind=true", "rulebooks.batch2.kind: true: a boolean where the rule takes text"),
    ("rounds.batch3.cut_base=true", "this field takes no true/false value"),
])
def test_bad_values_name_the_field(override, needle):
    with pytest.raises(InputError) as err:
        load_scenario("national-history", [override])
    assert needle in str(err.value)


def test_boolean_fields_still_take_booleans():
    s = load_scenario("national-history", ["dynamics.supply=true", "rules.safe_harbour=false"])
    assert s.dynamics.supply is True and s.rules.safe_harbour is False
    assert load_scenario("national-history", ["rulebooks.batch10.revival=false"]).rulebook("batch10").revival is False


def _write(tmp_path, text: str | bytes, name="s.toml") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


@pytest.mark.parametrize("content, needle", [
    ("", "empty"),
    (b"\x00\x01\x02binary", "binary"),
    ("name = [unclosed", "not valid TOML"),
    ('name = "x"\nend = "2022-12-31"\n', "rounds"),
    ('name = "x"\nend = "2022-12-31"\nrounds = []\n', "empty list"),
    ('name = "x"\nend = "2022-12-31"\nrounds = ["batch99"]\n', "batch99"),
    ('name = "x"\nrounds = ["batch2"]\n', "end"),
    ('name = "x"\nend = "2022-12-31"\nrounds = ["batch2"]\ncolour = 3\n', "colour"),
    ('name = "x"\nend = "2022-12-31"\nrounds = ["batch3", "batch2"]\n', "date order"),
    ('end = "2022-12-31"\nrounds = ["batch2"]\n[agents]\nmarkupp = 1\n', "did you mean 'markup'"),
    ("a = " + "[" * 40 + "]" * 40 + "\n", "nesting"),
])
def test_bad_files_give_input_errors(tmp_path, content, needle):
    path = _write(tmp_path, content)
    with pytest.raises(InputError) as err:
        load_scenario(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value) or "rounds" in str(err.value)


def test_oversized_file(tmp_path):
    path = _write(tmp_path, "# " + "x" * 1_100_000 + "\n")
    with pytest.raises(InputError, match="larger than"):
        load_scenario(path)


def test_missing_file_and_unknown_name():
    with pytest.raises(InputError, match="not found"):
        load_scenario("no/such/file.toml")
    with pytest.raises(InputError, match="did you mean 'national-history'"):
        load_scenario("national-histroy")


def test_every_listed_parameter_can_be_set_to_its_own_value():
    raw, file = load_raw("national-history")
    leaves = [(p, v) for p, v in flatten(raw) if v is not None]
    again = apply_overrides(raw, leaves)
    assert scenario_from_raw(again, file).digest() == scenario_from_raw(raw, file).digest()


_PATHS = [p for p, _ in flatten(load_raw("national-history")[0])]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.one_of(st.sampled_from(_PATHS), st.text(min_size=1, max_size=30)),
       value=st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(),
                       st.text(max_size=12), st.lists(st.integers(-5, 5), max_size=4)))
def test_any_override_either_loads_or_raises_input_error(path, value):
    """Fuzz: no override, however odd, escapes as anything but InputError."""
    text = f"{path}={value!r}" if not isinstance(value, str) else f"{path}={value}"
    try:
        load_scenario("national-history", [text])
    except InputError:
        pass


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_scenario_loader_fuzz(tmp_path_factory, text):
    """Fuzz: arbitrary text as a scenario file is either a scenario or an InputError."""
    path = tmp_path_factory.mktemp("fuzz") / "f.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_scenario(path)
    except InputError:
        pass


def test_parse_override_types():
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=cost_plus") == ("a", "cost_plus")
    with pytest.raises(InputError):
        parse_override("no-equals-sign")


def test_every_calibrated_parameter_reaches_the_scenario():
    """Each dotted path in seeds/calibration.toml is applied when a scenario loads (and can be
    switched off), whatever section it lives in: agents, rulebooks or rounds."""
    from vbp.scenario import calibrated_parameters

    fitted = calibrated_parameters()
    if not fitted:
        pytest.skip("no calibration file")
    on = dict(flatten(load_raw("national-history")[0]))
    off = dict(flatten(load_raw("national-history", calibrated=False)[0]))
    for path, value in fitted.items():
        assert on[path] == value, path
    assert any(on[p] != off[p] for p in fitted)


def test_scenario_with_overrides_is_the_overridden_scenario_and_blames_only_set():
    from vbp.scenario import scenario_with_overrides

    raw, file = load_raw("national-history")
    sets = [("agents.markup", 0.4), ("rounds.batch2.molecules", 30)]
    got = scenario_with_overrides(raw, sets, file)
    assert got.agents.markup == 0.4 and got.rounds[[r.id for r in got.rounds].index("batch2")].molecules == 30
    plain = scenario_from_raw(raw, file)
    assert plain.agents.markup != 0.4 and got.agents == plain.agents.model_copy(update={"markup": 0.4})
    assert got.market == plain.market and got.rulebooks == plain.rulebooks
    assert scenario_with_overrides(raw, [], file) == scenario_from_raw(raw, file)
    with pytest.raises(InputError) as err:
        scenario_with_overrides(raw, [("agents.markup", -1)], file)
    assert err.value.file == "--set" and file not in str(err.value)


def test_apply_overrides_names_a_path_as_written():
    raw, _ = load_raw("national-history")
    with pytest.raises(InputError) as err:
        apply_overrides(raw, [("rounds.batch2.molecule", 3)], labels=["round.molecule"])
    assert err.value.field == "round.molecule"
    assert apply_overrides(raw, [("rounds.batch2.molecules", 3)], labels=["round.molecules"])[
        "rounds"]["batch2"]["molecules"] == 3
