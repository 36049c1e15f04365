"""Calibration: moments come from the published table, the surrogate is exact on quadratics,
and a small calibration of the stent cost recovers a cost that reproduces the stent cut."""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np
import pytest
import tomli_w

from vbp import calibrate as cal
from vbp.scenario import load_raw


def test_moments_exclude_savings_and_rounds_after_batch7():
    ms = cal.moments_for(("pilot", "expansion", "batch2", "batch3", "batch4", "batch5", "batch7", "joints",
                          "insulin"))
    names = {m.name for m in ms}
    assert "batch3.avg_cut" in names and "batch3.winner_share" in names and "pilot.procured_share" in names
    assert not any("saving" in n for n in names)
    assert not any(n.startswith(("batch8", "batch9", "batch10", "batch11")) for n in names)
    b3 = {m.name: m for m in ms}["batch3.winner_share"]
    assert b3.published == pytest.approx(125 / 189)
    # ... and only where the bidding firms are published: not the expansion's unverified 77 nor
    # insulin's assumed 12
    assert not {"expansion.winner_share", "insulin.winner_share"} & names
    assert "batch2.winner_share" in set(m.name for m in cal.moments_for(("batch2", "expansion")))
    # winners per molecule only where bidding products are published: batch 5 (355), not batches 2-4, 7
    assert {m.name: m for m in ms}["batch5.winners_per_unit"].published == pytest.approx(251 / 61)
    assert not {"batch2.winners_per_unit", "batch3.winners_per_unit", "batch7.winners_per_unit"} & names
    # every drug round's share of listed molecules procured (a round that drops molecules is not a fit)
    assert {m.name: m for m in ms}["batch3.procured_share"].published == pytest.approx(55 / 56)
    assert {f"{r}.procured_share" for r in ("batch2", "batch4", "batch5", "batch7")} <= names
    assert not {"joints.procured_share", "insulin.procured_share"} & names


def test_quadratic_surrogate_is_exact_on_a_quadratic():
    rng = np.random.default_rng(0)
    u = rng.random((30, 3))
    y = 1 + u @ [0.5, -1, 2] + 0.7 * u[:, 0] * u[:, 2] - 0.3 * u[:, 1] ** 2
    coef, *_ = np.linalg.lstsq(cal._features(u), y, rcond=None)
    np.testing.assert_allclose(cal._features(u) @ coef, y, atol=1e-10)


def test_unit_scaling_round_trips():
    params = cal.GROUPS[0].params
    x = np.array([0.2, 0.9, 0.3, 62.0, 0.7, 0.4, 0.8])
    np.testing.assert_allclose(cal._from_unit(cal._to_unit(x, params), params), x)


def test_the_ceiling_ratio_has_a_prior_at_the_assumed_ratio():
    """Before calibration the drug ceilings were taken to equal the reference (1.0, L): that is the
    prior the fit is drawn towards, and it costs nothing there."""
    params = cal.GROUPS[0].params
    ceiling = next(p for p in params if p.path == "market.ceiling_ratio_drug")
    assert ceiling.prior == 1.0 and ceiling.prior_sd > 0
    x = np.array([0.2, 0.9, 0.3, 62.0, 0.7, 0.4, 1.0])
    assert cal._prior_penalty(cal._to_unit(x, params), params) == pytest.approx(0.0, abs=1e-12)
    x[-1] = np.exp(-ceiling.prior_sd)  # one log-sd below the prior
    assert cal._prior_penalty(cal._to_unit(x, params), params) == pytest.approx(1.0)


def test_a_parameter_no_kept_moment_depends_on_returns_to_its_prior():
    """In a leave-one-round-out or rolling refit without the round that identifies a parameter,
    the prior, not the edge of the box, decides it."""
    params = cal.GROUPS[0].params
    dim = len(params)
    k = [p.path for p in params].index("market.ceiling_ratio_drug")
    n_feat = cal._features(np.zeros(dim)).shape[1]
    coef = np.zeros((n_feat, 2))
    coef[0, 0], coef[1, 0] = 0.4, 0.2  # moment 0 depends on parameter 0 only
    coef[0, 1], coef[1 + k, 1] = 0.5, -0.3  # moment 1 on the ceiling ratio only
    pub, w = np.array([0.5, 0.3]), np.array([1e4, 1e4])
    starts = np.array([np.full(dim, 0.1), np.full(dim, 0.9)])
    u_all = cal._minimise(cal._objective(coef, pub, w, np.array([True, True]), params), dim, starts)
    u_left = cal._minimise(cal._objective(coef, pub, w, np.array([True, False]), params), dim, starts)
    x_all, x_left = cal._from_unit(u_all, params), cal._from_unit(u_left, params)
    assert x_left[k] == pytest.approx(1.0, rel=1e-3)  # back to the prior
    assert 0.5 - 0.3 * u_all[k] == pytest.approx(0.3, abs=0.01)  # the data move it when kept
    assert x_all[k] < 0.95


def test_stent_calibration_reproduces_the_stent_cut():
    group = dataclasses.replace(cal.GROUPS[1], design=5)
    raw, file = load_raw("national-history", calibrated=False)
    import json

    base = json.loads(json.dumps(raw, default=str))
    fit = cal.calibrate_group(group, base, file, reps=1, seed=3, workers=1)
    median = fit.params["agents.cost_median_stent"]
    assert 0.005 <= median <= 0.2
    assert abs(fit.confirmed["stents.avg_cut"] - 0.93) < 0.03
    doc = cal.to_toml([fit], command="test", seed=3, reps=1)
    # written in full: the file's values are the point whose moments it records
    assert doc["parameters"]["agents.cost_median_stent"] == median
    assert tomllib.loads(tomli_w.dumps(doc))["parameters"] == doc["parameters"] == fit.params
    assert doc["fit"]["stent"]["moments"][0]["name"] == "stents.avg_cut"


def test_cached_evaluations_are_keyed_by_the_code(monkeypatch):
    """A model change must not reuse evaluations cached by the old code."""
    sc = cal._scenario(load_raw("national-history", calibrated=False)[0], "x", ("stents",), {})
    key = cal._eval_key(sc, 2, 1, ["stents.avg_cut"])
    assert key == cal._eval_key(sc, 2, 1, ["stents.avg_cut"])
    monkeypatch.setattr(cal, "code_digest", lambda: "other code")
    assert cal._eval_key(sc, 2, 1, ["stents.avg_cut"]) != key


def _stand_in_weights(n_moments: int, n_params: int) -> np.ndarray:
    return np.random.default_rng(7).normal(size=(n_moments, n_params)) * 0.05


def _stand_in(base: float, weights: np.ndarray, u: np.ndarray, curve: float) -> float:
    return base + float(weights @ (u - 0.4)) + curve * float(np.sum(np.sin(6 * u)))


def _fake_drug_fit(monkeypatch, shift: dict[str, float] | None = None, curve: float = 0.0,
                   held_out: bool = True) -> cal.GroupFit:
    """The drug group's calibration on a smooth stand-in for the simulator (each moment a fixed
    function of the unit-scaled parameters, bent by `curve` so a quadratic cannot match it), so its
    bookkeeping is checked in a second."""
    group = dataclasses.replace(cal.GROUPS[0], design=16)
    base = {m.name: m.published for m in cal.moments_for(group.rounds)}
    moments = cal.moments_for(group.rounds)
    if shift:  # move some published moments; the stand-in model stays put
        moments = [dataclasses.replace(m, published=m.published + shift.get(m.round, 0.0)) for m in moments]
    monkeypatch.setattr(cal, "moments_for", lambda rounds: moments)
    monkeypatch.setattr(cal, "_scenario", lambda base, file, rounds, theta: theta)
    weights = _stand_in_weights(len(moments), len(group.params))

    def fake(tasks, workers, progress):
        out = []
        for theta, ms, _reps, _seed in tasks:
            u = cal._to_unit(np.array([theta[p.path] for p in group.params], dtype=float), group.params)
            out.append({m.name: _stand_in(base[m.name], weights[j], u, curve) for j, m in enumerate(ms)})
        return out

    monkeypatch.setattr(cal, "_run_tasks", fake)
    return cal.calibrate_group(group, {}, "x", reps=1, seed=1, workers=1, held_out=held_out)


def test_without_held_out_refits_the_fit_is_the_same(monkeypatch):
    """`--no-held-out` skips the refits, not any step of the fit: the same point, objective and
    designs, and nothing out of sample recorded."""
    full = _fake_drug_fit(monkeypatch, curve=0.02)
    quick = _fake_drug_fit(monkeypatch, curve=0.02, held_out=False)
    assert full.loro and not (quick.loro or quick.loro_share or quick.rolling)
    assert quick.params == full.params and quick.objective == full.objective and quick.point == full.point
    np.testing.assert_array_equal(quick.design_u, full.design_u)
    assert quick.refit_control == full.refit_control
    doc = cal.to_toml([quick], command="test", seed=1, reps=1, held_out=False)
    assert doc["meta"]["held_out_refits"] is False and doc["loro"] == [] and "rolling" not in doc


def test_rolling_origin_forecasts_fit_on_earlier_rounds_only(monkeypatch):
    fit = _fake_drug_fit(monkeypatch)
    cuts = [r for r in fit.rolling if r["stat"] == "avg_cut"]
    # from batch 3 on: the first round with three earlier drug rounds
    assert [r["round"] for r in cuts] == ["batch3", "batch4", "batch5", "batch7"]
    order = list(cal.GROUPS[0].rounds)
    for r in fit.rolling:
        assert r["trained_on"] == order[:order.index(r["round"])]
    # every round with a published winner share (and published bidders) gets its held-out prediction
    assert [r["round"] for r in fit.loro_share] == ["batch2", "batch3", "batch4", "batch5", "batch7"]
    doc = cal.to_toml([fit], command="test", seed=1, reps=1)
    assert len(doc["rolling"]) == len(fit.rolling) and len(doc["loro_winner_share"]) == 5
    # every refit is written with its parameter values, inside the search box
    paths = {p.path: p for p in cal.GROUPS[0].params}
    refits = doc["loro"] + [r for r in doc["rolling"] if r["stat"] == "avg_cut"]
    assert len(refits) == 7 + 4
    for row in refits:
        assert set(row["params"]) == set(paths)
        assert row["params"] in [r.get("params") for r in fit.loro + fit.rolling]  # in full
        assert all(paths[k].low - 1e-3 <= v <= paths[k].high + 1e-3 for k, v in row["params"].items())
    # the control refit keeps every moment, and is written with its simulated cuts' error
    assert fit.refit_control is not None and set(fit.refit_control["params"]) == set(paths)
    assert doc["refit_control"]["avg_cut_mae"] == pytest.approx(fit.refit_control["avg_cut_mae"], abs=1e-4)


def test_a_later_round_cannot_move_an_earlier_rolling_forecast(monkeypatch):
    """The whole calibration, on a bent stand-in: moving batch 5's and batch 7's published moments
    moves where the calibration's local design goes, yet leaves the rolling forecasts of batches 3
    and 4 exactly where they were, while batch 7's forecast, fitted on batch 5, moves."""
    fit = _fake_drug_fit(monkeypatch, curve=0.02)
    moved = _fake_drug_fit(monkeypatch, shift={"batch5": 0.05, "batch7": -0.08}, curve=0.02)
    # the local design did move (its size may change too)
    assert fit.design_u.shape != moved.design_u.shape or not np.allclose(fit.design_u, moved.design_u)
    before = {(r["round"], r["stat"]): r["predicted"] for r in fit.rolling}
    after = {(r["round"], r["stat"]): r["predicted"] for r in moved.rolling}
    for key in (("batch3", "avg_cut"), ("batch4", "avg_cut"), ("batch4", "winner_share")):
        assert after[key] == pytest.approx(before[key], abs=1e-12)
    assert abs(after[("batch7", "avg_cut")] - before[("batch7", "avg_cut")]) > 1e-3


def test_held_out_predictions_are_simulated_at_the_refit(monkeypatch):
    """A left-out round's prediction is the simulator's value at the refit's stored parameters, not
    the spline's reading, which a bent response does not match."""
    group = cal.GROUPS[0]
    fit = _fake_drug_fit(monkeypatch, curve=0.02)
    moments = cal.moments_for(group.rounds)
    base = {m.name: m.published for m in moments}
    weights = _stand_in_weights(len(moments), len(group.params))
    names = [m.name for m in moments]
    apart = 0.0
    for row in fit.loro + [r for r in fit.rolling if r["stat"] == "avg_cut"]:
        u = cal._to_unit(np.array([row["params"][p.path] for p in group.params]), group.params)
        j = names.index(f"{row['round']}.avg_cut")
        assert row["predicted"] == pytest.approx(_stand_in(base[names[j]], weights[j], u, 0.02), abs=1e-9)
        assert row["error"] == pytest.approx(row["predicted"] - row["published"])
        assert row["refit"].startswith(HELD_OUT_SOURCES)
        apart = max(apart, abs(row["surrogate"] - row["predicted"]))
    # the surface's reading would have differed by far more than the 1e-9 the prediction is held to
    assert apart > 1e-6


#: Where a held-out refit's point can come from: a global design point, its spline refinement, or
#: its own trust region (a local design point or a quadratic's optimum).
HELD_OUT_SOURCES = ("design point", "refit step", "local design point", "surrogate optimum")


def test_each_held_out_refit_runs_its_own_trust_region_on_the_kept_moments(monkeypatch):
    """Every held-out refit goes on from its spline refinement through a trust region of its own,
    as the calibration does: it ends at least as well on its kept moments, mostly better, and at a
    point of the trust region on a bent stand-in. Moving a round's published moments moves the
    calibration, yet leaves the refit without that round exactly where it was: nothing it leaves
    out places any of its points."""
    fit = _fake_drug_fit(monkeypatch, curve=0.02)
    rows = fit.loro + [r for r in fit.rolling if r["stat"] == "avg_cut"]
    for row in rows:
        assert row["objective"] <= row["objective_spline"] + 1e-12
    assert sum(row["objective"] < row["objective_spline"] - 1e-6 for row in rows) >= len(rows) // 2
    assert any(row["refit"].startswith(("local design point", "surrogate optimum")) for row in rows)
    moved = _fake_drug_fit(monkeypatch, shift={"batch7": -0.08}, curve=0.02)
    assert fit.params != moved.params
    before, after = (next(row for row in f.loro if row["round"] == "batch7") for f in (fit, moved))
    assert after["params"] == before["params"] and after["refit"] == before["refit"]
    assert after["predicted"] == pytest.approx(before["predicted"], abs=1e-12)
    batch3 = [next(row for row in f.loro if row["round"] == "batch3") for f in (fit, moved)]
    assert batch3[0]["params"] != batch3[1]["params"]  # a refit that keeps batch 7 does move


@pytest.mark.filterwarnings("ignore:The balance properties")
def test_held_out_trust_regions_draw_the_calibrations_local_designs():
    """A held-out refit's local designs come from the same Sobol points as the calibration's (past
    the global design), so the two procedures differ only in the moments they keep."""
    from scipy.stats import qmc

    sob = qmc.Sobol(7, scramble=True, seed=11)
    sob.random(48)
    np.testing.assert_array_equal(cal._local_sobol(7, 11, 48).random(45), sob.random(45))


def test_held_out_choice_takes_the_best_simulated_point_for_the_kept_moments():
    params = cal.GROUPS[1].params  # one parameter, no prior
    pub, w, keep = np.array([0.5, 0.9]), np.array([1.0, 1.0]), np.array([True, False])
    own_u, own_y = np.array([[0.2], [0.4]]), np.array([[0.7, 0.0], [0.55, 5.0]])  # the second fits better
    design_u, design_y = np.array([[0.9]]), np.array([[0.6, 0.9]])
    u, y, k = cal._held_out_choice(own_u, own_y, design_u, design_y, pub, w, keep, params)
    assert k == 1 and u[0] == 0.4 and y[1] == 5.0  # the left-out moment plays no part
    u, y, k = cal._held_out_choice(own_u, own_y, np.array([[0.9]]), np.array([[0.51, 0.0]]), pub, w, keep, params)
    assert k is None and u[0] == 0.9
    # no simulated point of its own (every one had an undefined moment): the best design point
    u, y, k = cal._held_out_choice(np.empty((0, 1)), np.empty((0, 2)), design_u, design_y, pub, w, keep, params)
    assert k is None and u[0] == 0.9
    # and with no design point either, a clear error
    with pytest.raises(cal.SimulationError):
        cal._held_out_choice(np.empty((0, 1)), np.empty((0, 2)), np.empty((0, 1)), np.empty((0, 2)), pub, w,
                             keep, params)


def test_parameter_standard_errors_match_the_closed_form_on_a_linear_model():
    """Moments linear in the unit-scaled log parameters: se(ln theta) = sqrt(diag((G'WG + P)^-1)),
    with G the slopes per unit of ln theta; the ceiling ratio, which no moment here measures, keeps
    its prior's sd."""
    params = cal.GROUPS[0].params
    dim = len(params)
    n_feat = cal._features(np.zeros((1, dim))).shape[1]
    rng = np.random.default_rng(3)
    slopes = rng.normal(size=(dim - 1, 10))  # 10 moments on the first six parameters
    coef = np.zeros((n_feat, 10))
    coef[1:dim, :] = slopes  # the linear terms of parameters 0..5; the ceiling ratio (last) has none
    moments = [cal.Moment(f"m{j}", "x", "avg_cut", 0.5, 0.02 + 0.01 * j) for j in range(10)]
    u_hat = np.full(dim, 0.5)
    out = cal._uncertainty(coef, u_hat, moments, params)
    span = np.log([p.high for p in params]) - np.log([p.low for p in params])
    g = np.zeros((10, dim))
    g[:, :dim - 1] = (slopes / span[:dim - 1, None]).T
    w = 1 / np.array([m.scale for m in moments]) ** 2
    info = g.T @ (w[:, None] * g)
    info[-1, -1] += 1 / params[-1].prior_sd ** 2
    expected = np.sqrt(np.diag(np.linalg.inv(info)))
    got = np.array([out["se_log"][p.path] for p in params])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert out["se_log"]["market.ceiling_ratio_drug"] == pytest.approx(params[-1].prior_sd)
    x = cal._from_unit(u_hat, params)
    assert out["low95"][params[0].path] == pytest.approx(x[0] * np.exp(-1.96 * expected[0]))
    c = np.array(out["correlation"])
    np.testing.assert_allclose(np.diag(c), 1.0)
    np.testing.assert_allclose(c, c.T)


def test_the_fit_is_the_best_simulated_point_and_its_local_design_surrounds_the_control(monkeypatch):
    """On a bent stand-in: the local design is placed around the control refit's point, and the fit
    is the simulated point (surrogate optimum, control refinement or design point) that fits best,
    with its moments the simulator's values there."""
    group = cal.GROUPS[0]
    fit = _fake_drug_fit(monkeypatch, curve=0.02)
    moments = cal.moments_for(group.rounds)
    pub = np.array([m.published for m in moments])
    w = 1 / np.array([m.scale for m in moments]) ** 2
    n_global = 16 + 1
    u_c = cal._to_unit(np.array([fit.refit_control["params"][p.path] for p in group.params]), group.params)
    per_round = max(8, 16 // 2, cal._features(u_c[None]).shape[1] + 8) + 1  # the design and its centre
    local = fit.design_u[n_global:]
    rounds = [local[i:i + per_round] for i in range(0, len(local), per_round)]
    assert len(local) == per_round * len(rounds) and 1 <= len(rounds) <= cal.LOCAL_ROUNDS
    # the first local design surrounds the control; each later one the best point so far, at half
    # the radius, and only while the best point moves
    assert np.array_equal(rounds[0][-1], u_c)
    centres = [r[-1] for r in rounds]
    for k, r in enumerate(rounds):
        assert np.all(np.abs(r - centres[k]) <= 0.2 / 2 ** k + 1e-9)
    for a, b in zip(centres, centres[1:]):
        assert not np.array_equal(a, b)
    design_obj = [float(np.sum(w * (row - pub) ** 2)) + cal._prior_penalty(p, group.params)
                  for p, row in zip(fit.design_u, fit.design_y)]
    assert fit.objective <= min(design_obj) + 1e-12
    assert fit.objective <= fit.refit_control["objective"] + 1e-12
    assert fit.point.startswith(("surrogate optimum", "global design point", "local design point",
                                 "control refit step"))
    weights = _stand_in_weights(len(moments), len(group.params))
    u = cal._to_unit(np.array([fit.params[p.path] for p in group.params], dtype=float), group.params)
    for j, m in enumerate(moments):
        assert fit.confirmed[m.name] == pytest.approx(_stand_in(m.published, weights[j], u, 0.02), abs=1e-9)
    assert cal.to_toml([fit], command="test", seed=1, reps=1)["fit"]["drug"]["point"] == fit.point


def test_calibrate_cli_writes_one_group_and_keeps_the_others(tmp_path):
    """`vbp calibrate --group stent` refits the stent cost, names the simulated point the fit is,
    and keeps every other group's stored parameters and fits in the file it updates."""
    import tomllib

    from click.testing import CliRunner

    from vbp import data
    from vbp.cli import cli

    stored = data.read_toml("calibration.toml")
    out = tmp_path / "calibration.toml"
    out.write_text((data.data_dir() / "calibration.toml").read_text(encoding="utf-8"), encoding="utf-8")
    r = CliRunner().invoke(cli, ["calibrate", "--group", "stent", "-n", "1", "--workers", "1",
                                 "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    doc = tomllib.loads(out.read_text(encoding="utf-8"))
    assert doc["meta"]["command"] == "vbp calibrate --group stent -n 1 --seed 20181206 --workers 1"
    assert doc["meta"]["replications_per_point"] == 1
    assert doc["fit"]["stent"]["replications_per_point"] == 1
    fit = doc["fit"]["stent"]
    assert f"stent: objective {fit['objective']} ({fit['point']})" in r.output
    assert fit["point"].startswith(("surrogate optimum", "control refit step", "global design point",
                                    "local design point"))
    assert 0.005 <= doc["parameters"]["agents.cost_median_stent"] <= 0.2
    for key, value in stored["parameters"].items():  # the other groups are untouched
        if key != "agents.cost_median_stent":
            assert doc["parameters"][key] == value
    assert doc["fit"]["drug"] == stored["fit"]["drug"]
    assert doc["loro"] == stored["loro"]


def test_each_group_simulates_its_own_replications(monkeypatch):
    """The joint round has few competition units: its group simulates five times `reps`, and the
    file says how many replications each fit used."""
    seen = {}

    def fake(group, base, file, *, reps, seed, workers, progress=None, held_out=True):
        seen[group.name] = reps

    monkeypatch.setattr(cal, "calibrate_group", fake)
    cal.calibrate(reps=3, groups=("joint", "stent"))
    assert seen == {"joint": 15, "stent": 3}


def _round_metrics(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=["rep", "round", "avg_cut", "procured", "annual_savings_bn"])


def test_the_published_savings_come_alone_and_in_groups_of_the_rounds_given():
    groups = {g["name"]: g for g in cal.savings_groups(["pilot", "expansion", "batch4", "batch5", "batch7"])}
    assert set(groups) == {"batch4", "batch5", "batch7", "first batch"}
    first = groups["first batch"]
    assert first["rounds"] == ["pilot", "expansion"] and first["value"] == 25.3
    assert first["cut"] == pytest.approx((25 * 0.52 + 25 * 0.59) / 50)  # over molecules, as published
    assert groups["batch4"]["value"] == 12.4 and groups["batch4"]["cut"] == 0.52
    # a group needs all its rounds; insulin and devices are not drug rounds of the forecasts' error
    assert {g["name"] for g in cal.savings_groups(["pilot", "batch5"])} == {"batch5"}


def test_savings_error_is_the_log_residual_of_savings_per_cut(monkeypatch):
    monkeypatch.setattr(cal, "savings_groups", lambda rounds: [
        {"name": "a", "rounds": ["a"], "value": 10.0, "cut": 0.5},
        {"name": "b", "rounds": ["b1", "b2"], "value": 20.0, "cut": 0.5},
        {"name": "c", "rounds": ["c"], "value": 10.0, "cut": 0.4}])
    rm = _round_metrics(
        # a: twice the published savings at the published cut -> log error ln 2
        [(r, "a", 0.5, 10, 20.0) for r in range(3)]
        # b: its rounds' savings add up, its cut is weighted by molecules procured: (0.6 x 30 + 0.2 x 10) / 40
        + [(r, "b1", 0.6, 30, 15.0) for r in range(3)] + [(r, "b2", 0.2, 10, 5.0) for r in range(3)]
        # c: savings and cut both a quarter lower -> the same agreed value, error 0
        + [(r, "c", 0.3, 5, 7.5) for r in range(3)])
    doc = cal.savings_error(rm, ["a", "b1", "b2", "c"], seed=1)
    rows = {g["group"]: g for g in doc["groups"]}
    assert rows["a"]["log_error"] == pytest.approx(np.log(2), abs=1e-4)
    assert rows["b"]["simulated_bn"] == 20.0 and rows["b"]["simulated_cut"] == pytest.approx(0.5)
    assert rows["b"]["log_error"] == pytest.approx(0.0, abs=1e-4)
    assert rows["c"]["log_error"] == pytest.approx(0.0, abs=1e-4)
    # no spread over replications: the sd is the root mean square of the residuals
    assert doc["log_sd"] == pytest.approx(np.log(2) / np.sqrt(3), abs=1e-4)
    assert doc["groups_checked"] == 3 and doc["covered"] == sum(g["covered"] for g in doc["groups"])
    # a's interval, from the others' residuals only (both 0), is a point: it misses
    assert rows["a"]["sd_without_group"] == 0 and not rows["a"]["covered"]


def test_a_calibration_under_a_fixed_setting_fits_with_it_and_writes_it(monkeypatch):
    """`vbp calibrate --set PATH=VALUE`: every group is fitted on the scenario with the setting, and
    the file holds it beside the fitted parameters (so the simulation uses both) and in its meta."""
    import vbp.scenario as scen

    seen = {}

    def fake(group, base, file, *, reps, seed, workers, progress=None, held_out=True):
        seen[group.name] = base["market"]["bidder_count"]
        return cal.GroupFit(group=group.name, params={"agents.cost_median_stent": 0.02}, moments=[],
                            design_u=np.zeros((1, 1)), design_y=np.zeros((1, 1)), coef=np.zeros((1, 1)), r2={},
                            objective_surrogate=0.0, confirmed={}, objective=0.0, loro=[], point="p")

    monkeypatch.setattr(cal, "calibrate_group", fake)
    fixed = [("market.bidder_count", "bids")]
    fits = cal.calibrate(reps=1, groups=("stent",), fixed=fixed)
    assert seen == {"stent": "bids"}
    doc = cal.to_toml(fits, command="c", seed=1, reps=1, fixed=fixed)
    assert doc["parameters"] == {"agents.cost_median_stent": 0.02, "market.bidder_count": "bids"}
    assert doc["meta"]["fixed"] == ["market.bidder_count=bids"]
    assert doc["fit"]["stent"]["fixed"] == {"market.bidder_count": "bids"}
    # the simulation takes the setting from the file with the fitted values
    monkeypatch.setattr(scen, "calibrated_parameters", lambda: doc["parameters"])
    s = scen.load_scenario("national-history")
    assert s.market.bidder_count == "bids" and s.agents.cost_median_stent == 0.02


def test_a_fitted_parameter_cannot_be_fixed():
    from vbp.errors import InputError

    with pytest.raises(InputError, match="agents.cost_median_drug is fitted") as err:
        cal.calibrate(reps=1, groups=("stent",), fixed=[("agents.cost_median_drug", 0.2)])
    assert err.value.field == "--set" and err.value.value == "agents.cost_median_drug"
    with pytest.raises(InputError, match="not a model setting"):  # read by nothing that simulates
        cal.calibrate(reps=1, groups=("stent",), fixed=[("end", "2022-12-31")])


def test_calibrate_cli_keeps_other_groups_only_under_the_same_setting(tmp_path):
    from click.testing import CliRunner

    from vbp import data
    from vbp.cli import cli

    out = tmp_path / "calibration.toml"
    text = (data.data_dir() / "calibration.toml").read_text(encoding="utf-8")
    out.write_text(text, encoding="utf-8")
    r = CliRunner().invoke(cli, ["calibrate", "--group", "stent", "--set", "market.bidder_count=bids",
                                 "--out", str(out), "--quiet"])
    assert r.exit_code == 2
    assert "meta.fixed" in r.output and "same --set" in r.output
    assert out.read_text(encoding="utf-8") == text  # nothing written
    bad = CliRunner().invoke(cli, ["calibrate", "--set", "market.bidder_count=all", "--out", str(out), "--quiet"])
    assert bad.exit_code == 2 and "--set" in bad.output and "bidder_count" in bad.output and "all" in bad.output


def test_stored_calibration_settings_compare_by_value_and_a_bad_file_is_an_input_error(tmp_path):
    from vbp.cli import _stored_calibration
    from vbp.errors import InputError

    f = tmp_path / "c.toml"
    f.write_text('[meta]\nfixed = ["market.ceiling_ratio_drug=1.0", "market.bidder_count=bids"]\n')
    same = [("market.bidder_count", "bids"), ("market.ceiling_ratio_drug", 1)]  # 1 and 1.0 are one value
    assert _stored_calibration(f, same)["meta"]["fixed"][1] == "market.bidder_count=bids"
    with pytest.raises(InputError, match="same --set"):
        _stored_calibration(f, [("market.bidder_count", "bids")])
    f.write_text('[meta]\nfixed = "market.bidder_count=bids"\n')
    with pytest.raises(InputError) as err:
        _stored_calibration(f, [])
    assert err.value.field == "meta.fixed"
    f.write_text("[meta\n")
    with pytest.raises(InputError):
        _stored_calibration(f, [])


def test_calibrate_cli_merges_into_the_file_as_it_is_when_it_writes(tmp_path, monkeypatch):
    """Another group written to the file while this one was fitted is kept, not overwritten by the
    copy read at the start; refitting every group replaces the file whatever it was fitted under."""
    from click.testing import CliRunner

    from vbp.cli import cli

    out = tmp_path / "calibration.toml"
    out.write_text('[meta]\nfixed = []\n[parameters]\n"agents.cost_median_joint" = 0.1\n[fit]\n')

    def fake_calibrate(*, groups=None, fixed=(), **kw):
        # meanwhile, another run writes its group into the file
        out.write_text('[meta]\nfixed = []\n[parameters]\n"agents.cost_median_joint" = 0.2\n[fit]\n')
        return [cal.GroupFit(group="stent", params={"agents.cost_median_stent": 0.02}, moments=[],
                             design_u=np.zeros((1, 1)), design_y=np.zeros((1, 1)), coef=np.zeros((1, 1)),
                             r2={}, objective_surrogate=0.0, confirmed={}, objective=0.0, loro=[], point="p")]

    monkeypatch.setattr(cal, "calibrate", fake_calibrate)
    r = CliRunner().invoke(cli, ["calibrate", "--group", "stent", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    doc = tomllib.loads(out.read_text())
    assert doc["parameters"] == {"agents.cost_median_joint": 0.2, "agents.cost_median_stent": 0.02}
    # every group named: nothing is kept, so a file fitted under other settings is no obstacle
    out.write_text('[meta]\nfixed = ["market.bidder_count=bids"]\n[parameters]\n"x.y" = 1\n[fit]\n')
    monkeypatch.setattr(cal, "model_error", lambda *a, **k: None)
    every = [a for g in ("drug", "stent", "joint", "insulin") for a in ("--group", g)]
    r = CliRunner().invoke(cli, ["calibrate", *every, "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert tomllib.loads(out.read_text())["parameters"] == {"agents.cost_median_stent": 0.02}


def test_calibrate_cli_without_held_out_drops_stale_out_of_sample_figures(tmp_path, monkeypatch):
    """`vbp calibrate --group drug --no-held-out` into a file that holds held-out figures: they
    belonged to other parameters, so they go; no model error is simulated; the command says so."""
    from click.testing import CliRunner

    from vbp.cli import cli

    out = tmp_path / "calibration.toml"
    out.write_text('[meta]\nfixed = []\n[parameters]\n"agents.cost_median_joint" = 0.1\n[fit]\n'
                   '[[loro]]\nround = "batch2"\nerror = 0.01\n[model_error]\navg_cut_sd = 0.07\n')
    seen = {}

    def fake_calibrate(*, held_out=True, **kw):
        seen["held_out"] = held_out
        return [cal.GroupFit(group="drug", params={"agents.cost_median_drug": 0.2}, moments=[],
                             design_u=np.zeros((1, 1)), design_y=np.zeros((1, 1)), coef=np.zeros((1, 1)),
                             r2={}, objective_surrogate=0.0, confirmed={}, objective=0.0, loro=[], point="p")]

    def no_model_error(*a, **k):
        raise AssertionError("no model error without held-out refits")

    monkeypatch.setattr(cal, "calibrate", fake_calibrate)
    monkeypatch.setattr(cal, "model_error", no_model_error)
    r = CliRunner().invoke(cli, ["calibrate", "--group", "drug", "--no-held-out", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    doc = tomllib.loads(out.read_text())
    assert seen["held_out"] is False
    assert doc["meta"]["held_out_refits"] is False and "--no-held-out" in doc["meta"]["command"]
    assert doc["loro"] == [] and "model_error" not in doc
    assert doc["parameters"] == {"agents.cost_median_joint": 0.1, "agents.cost_median_drug": 0.2}


def test_local_design_size_does_not_follow_the_global_design():
    """The local designs are most of a calibration's run time: a larger global design (which every
    refit's spline needs) must not make each of them larger too."""
    drug = cal.GROUPS[0]
    n = cal._local_size(drug)
    assert n == cal._features(np.zeros((1, len(drug.params)))).shape[1] + 8  # 36 coefficients + 8
    assert cal._local_size(dataclasses.replace(drug, design=4 * drug.design)) == n
