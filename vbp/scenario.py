"""Scenarios: TOML files loaded into immutable, validated objects.

A scenario names the rounds to simulate (ids from the packaged round table, or inline tables), the
rulebooks, and the agent, market, rule and optimizer parameters. Loading resolves everything into
one plain nested dict first, applies dotted-path overrides (`--set agents.markup=0.2`) to it, and
only then validates, so every field a user sees in `vbp params` can be swept with no code.
Errors name the file, the field path, the value and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from vbp import data
from vbp.errors import InputError, did_you_mean
from vbp.rules import Rulebook

__all__ = [
    "Round", "DeviceGroup", "AgentParams", "MarketParams", "DynamicsParams", "RuleOverrides", "OptimizerParams",
    "Scenario",
    "load_scenario", "resolve_raw", "apply_overrides", "parse_override", "read_toml_file",
    "scenario_from_raw", "scenario_with_overrides", "flatten", "describe", "calibrated_parameters",
    "MAX_FILE_BYTES", "CATEGORY_KINDS",
]

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 12

# The rulebook kinds a round of each category can be awarded under: the market generator builds a
# round's units by category (drug molecules without brand shares, device and insulin units with
# them) and the award and the allocation follow those units, so drug rules apply to drug rounds and
# each device or insulin rule to its own category only.
CATEGORY_KINDS: dict[str, tuple[str, ...]] = {
    "drug": ("single_winner", "multi_winner"),
    "stent": ("stent",),
    "joint": ("joint",),
    "insulin": ("insulin",),
}


class FieldProblem(ValueError):
    """A check across fields that names the field at fault (`path`, dotted as in `--set`)."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


def _numeric(annotation: str) -> bool:
    """Whether a field's type (as text) is a number: there a boolean would be read as 0 or 1."""
    return re.search(r"\b(int|float)\b", annotation) is not None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v, info: ValidationInfo):
        """A count or a number given as true/false is a typo, not 1 or 0 (pydantic would take it)."""
        if isinstance(v, bool):
            kind = str(cls.model_fields[info.field_name].annotation)
            if "bool" not in kind:
                what = "a number" if _numeric(kind) else "no true/false value"
                raise ValueError(f"the boolean {str(v).lower()} given; this field takes {what}")
        return v


class DeviceGroup(_Frozen):
    """A product category of a device round (e.g. a hip bearing), tendered as its own units."""

    name: str
    volume_units: float = Field(gt=0, description="intended first-year volume, units")
    reference_price_yuan: float = Field(gt=0, description="pre-VBP price, yuan per unit")


class Round(_Frozen):
    """One national tender round, described by its inputs only."""

    id: str
    name: str
    category: Literal["drug", "insulin", "stent", "joint"]
    rulebook: str
    bid_date: dt.date
    supply_lag_months: float = Field(ge=0, le=36, description="months from bid to supply start")
    molecules: int = Field(ge=1, le=2000, description="molecules (drugs) or product categories (devices)")
    bidding_firms: int | None = Field(default=None, ge=1, description="companies bidding")
    bidding_products: int | None = Field(default=None, ge=1, description="products bidding")
    market_value_bn: float = Field(gt=0, description="annual reported demand at reference prices, CNY bn")
    coverage: float = Field(default=1.0, gt=0, le=1, description="share of national demand covered")
    ceiling_ratio: float | None = Field(
        default=None, gt=0, le=10, description="ceiling / reference price; unset: market.ceiling_ratio_drug "
        "for a drug round, 1.0 otherwise")
    ceiling_from: str | None = Field(default=None, description="round whose winning price caps bids")
    cut_base: Literal["reference", "ceiling"] = Field(
        default="reference", description="price the round's published cut is measured against: the pre-VBP "
        "reference price or the ceiling (maximum valid declared price)")
    provinces: tuple[str, ...] | None = Field(default=None, description="participating provinces (all when unset)")
    reference_price_yuan: float | None = Field(default=None, gt=0, description="device reference price, yuan/unit")
    volume_units: float | None = Field(default=None, gt=0, description="device first-year volume, units")
    contract_years: int | None = Field(default=None, ge=1, le=10, description="term override, years")
    groups: tuple[DeviceGroup, ...] | None = Field(default=None, description="device categories (joints)")
    min_bidders: int = Field(default=1, ge=1, le=1000, description="least bidding products (of distinct "
                             "firms) per molecule: an entry threshold, such as batches 10-11's >= 7 qualified firms")

    @model_validator(mode="after")
    def _joint_groups(self):
        if self.category == "joint" and not self.groups:
            raise FieldProblem("groups", "a joint round needs its product categories in `groups`")
        return self

    @model_validator(mode="after")
    def _bidder_counts(self):
        products, firms = self.bidding_products, self.bidding_firms
        if products is not None and products < self.molecules:
            raise FieldProblem("bidding_products", f"{products} bidding products for {self.molecules} molecules: "
                               "every listed molecule needs at least one bidding product "
                               "(bidding_products >= molecules)")
        if products is not None and firms is not None and firms > products:
            raise FieldProblem("bidding_firms", f"{firms} bidding firms but {products} bidding products: "
                               "every bidding firm bids at least one product (bidding_firms <= bidding_products)")
        floor = self.min_bidders
        if floor > 1 and self.category != "drug":
            raise FieldProblem("min_bidders", f"{floor}: only a drug round's molecules take an entry threshold")
        if products is not None and floor * self.molecules > products:
            raise FieldProblem("min_bidders", f"{floor} bidders for each of {self.molecules} molecules need "
                               f"{floor * self.molecules} bidding products, but the round has {products}")
        if firms is not None and floor > firms:
            raise FieldProblem("min_bidders", f"{floor} bidders per molecule, each of its own firm, but the round "
                               f"has {firms} bidding firms")
        return self

    @field_validator("provinces")
    @classmethod
    def _known_provinces(cls, v):
        if v is None:
            return v
        known = data.provinces().name
        for name in v:
            if name not in known:
                raise ValueError(f"unknown province {name!r}{did_you_mean(name, known)}")
        if len(set(v)) != len(v):
            raise ValueError("provinces listed twice")
        if not v:
            raise ValueError("empty province list")
        return v


class AgentParams(_Frozen):
    """Manufacturers: cost distributions, types, capacity and bidding strategy."""

    strategy: str = Field("equilibrium", description="bidding strategy: equilibrium | cost_plus | adaptive")
    markup: float = Field(0.3, ge=0, le=10, description="cost_plus markup over unit cost")
    cost_median_drug: float = Field(0.20, gt=0, le=2, description="median generic unit cost / reference price, drugs")
    cost_sigma_drug: float = Field(0.8, gt=0, le=5, description="log-sd of unit cost, drugs")
    cost_tau_drug: float = Field(0.0, ge=0, le=3, description="log-sd across molecules of the drug cost level "
                                 "(known to the molecule's bidders)")
    cost_firm_share_drug: float = Field(0.0, ge=0, lt=1, description="share of the log-variance of drug costs "
                                        "common to a firm's products (its efficiency)")
    cost_median_insulin: float = Field(0.30, gt=0, le=2, description="median unit cost / ceiling, insulin")
    cost_sigma_insulin: float = Field(0.5, gt=0, le=5, description="log-sd of unit cost, insulin")
    cost_median_stent: float = Field(0.03, gt=0, le=2, description="median unit cost / reference price, stents")
    cost_sigma_stent: float = Field(0.5, gt=0, le=5, description="log-sd of unit cost, stents")
    cost_median_joint: float = Field(0.10, gt=0, le=2, description="median unit cost / reference price, joints")
    cost_sigma_joint: float = Field(0.5, gt=0, le=5, description="log-sd of unit cost, joints")
    equilibrium_iterations: int = Field(30, ge=1, le=500, description="equilibrium solver iterations")
    equilibrium_samples: int = Field(256, ge=16, le=8192, description="rival cost profiles in the equilibrium solver")
    originator_bid_prob: float = Field(0.4, ge=0, le=1, description="chance the originator bids for a molecule")
    originator_premium: float = Field(0.3, ge=0, le=5,
                                      description="originator's forgone brand margin / reference price")
    capacity_low: float = Field(0.8, gt=0, description="lowest annual capacity / the unit's reported demand")
    capacity_high: float = Field(2.5, gt=0, description="highest annual capacity / the unit's reported demand")
    products_per_firm: float = Field(1.65, ge=1, le=20,
                                     description="products per bidding firm where products are unknown")
    firm_pool: int = Field(800, ge=10, le=100000, description="manufacturers in the national pool")
    adaptive_grid: int = Field(11, ge=2, le=201, description="adaptive: margin shares on the grid (0 to 1)")
    adaptive_rate: float = Field(2.0, ge=0, le=100,
                                 description="adaptive: learning rate of the exponential weights per award")
    adaptive_memory: float = Field(0.9, gt=0, le=1,
                                   description="adaptive: weight kept by earlier evidence at each award")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v):
        from vbp.strategies import STRATEGIES

        known = [*STRATEGIES, "adaptive"]  # adaptive bidders need firm identity: the model runs them
        if v not in known:
            raise ValueError(f"unknown strategy {v!r}{did_you_mean(v, known)}; known: {', '.join(known)}")
        return v

    @model_validator(mode="after")
    def _capacity_order(self):
        if self.capacity_low > self.capacity_high:
            raise ValueError(f"capacity_low ({self.capacity_low}) exceeds capacity_high ({self.capacity_high})")
        return self


class MarketParams(_Frozen):
    """Demand and consumption: how round-level facts become molecules and monthly purchases."""

    completion_ratio: float = Field(1.914, gt=0, le=10, description="actual / agreed volume of winners (pilot: 191.4%)")
    molecule_value_sigma: float = Field(1.0, ge=0, le=5, description="log-sd of molecule market values within a round")
    bidders_dispersion: float = Field(2.0, gt=0, le=100,
                                      description="gamma shape of bidders per molecule (lower = more uneven)")
    bidder_count: Literal["entrants", "bids"] = Field(
        "entrants", description="what a drug round's bidding products and firms are taken to count: "
                                "'entrants' (those whose cost is above a capped ceiling do not bid; the "
                                "calibrated convention) or 'bids' (as published: entrants are added until "
                                "that many products can bid)")
    ceiling_ratio_drug: float = Field(
        1.0, gt=0, le=10, description="ceiling (maximum valid declared price) / pre-VBP reference price of the "
                                      "drug rounds whose ceilings are not documented (ceiling_ratio unset)")
    ref_price_median_yuan: float = Field(1.5, gt=0, description="median reference price per unit, drugs, yuan")
    ref_price_sigma: float = Field(1.2, ge=0, le=5, description="log-sd of drug reference prices")
    product_price_sigma: float = Field(0.25, ge=0, le=3, description="log-sd of product reference prices, devices")
    logistics_per_1000km: float = Field(0.005, ge=0, le=1, description="delivery cost per 1,000 km / reference price")
    bidding_window_days: int = Field(30, ge=1, le=365, description="days from announcement to bid opening")
    joint_participation: float = Field(0.6, gt=0, le=1, description="chance a joint maker bids in a category")
    renewal: Literal["extend", "none", "retender"] = Field(
        "extend", description="at expiry: extend at the last price, stop, or re-tender among surviving firms")

    def ceiling(self, rnd: Round) -> float:
        """A round's ceiling / reference price: its own where documented, else (drug rounds) the
        market-wide `ceiling_ratio_drug`; 1.0 for other rounds."""
        if rnd.ceiling_ratio is not None:
            return rnd.ceiling_ratio
        return self.ceiling_ratio_drug if rnd.category == "drug" else 1.0


class DynamicsParams(_Frozen):
    """What happens between rounds: renewals, exit and entry, supply failures and backups.

    The defaults switch everything off (deliveries are aggregated per round, as agreed); the
    embedded scenario `national-history-dynamics` switches it on.
    """

    renewal_years: int = Field(3, ge=1, le=10, description="term of a re-tendered contract, years")
    renewal_ceiling: Literal["max_winning", "first_ceiling"] = Field(
        "max_winning", description="re-tender ceiling: the expiring award's highest winning price, or the "
                                   "first round's ceiling")
    outside_option: float = Field(
        0.0, ge=0, le=10, description="annual profit a firm needs to stay in a molecule's market, as a share "
                                      "of its pre-VBP fair-share revenue (market value / bidders); 0 = no exit")
    loser_access: float = Field(
        0.3, ge=0, le=1, description="share of reported demand non-winners still sell (retail, private, non-agreed)")
    loser_price_cap: float = Field(
        1.5, ge=1, le=100, description="losers' price cap as a multiple of the highest winning price")
    entry_rate: float = Field(0.0, ge=0, le=50,
                              description="new generic approvals per molecule per year, bidding at re-tender")
    supply: bool = Field(False, description="deliveries winner by winner: capacity, failures, backups, shortages")
    failure_prob: float = Field(0.01, ge=0, le=1, description="monthly chance a winner's supply fails")
    failure_months: float = Field(2.0, ge=1, le=60, description="mean length of a supply failure, months")
    backup_lag_days: float = Field(15.0, ge=0, le=31,
                                   description="days before backup suppliers take over a failed supply")
    backup_premium: float = Field(0.1, ge=0, le=10, description="backup supply's extra cost over its own price")
    capacity_binds: bool = Field(True, description="supply: a winner delivers at most its capacity / 12 a month")


class RuleOverrides(_Frozen):
    """Policy levers applied over every multi-winner rulebook; unset = as each rulebook says."""

    volume_share_1: float | None = Field(None, ge=0, le=1, description="agreed share with 1 winner")
    volume_share_2: float | None = Field(None, ge=0, le=1, description="agreed share with 2 winners")
    volume_share_3: float | None = Field(None, ge=0, le=1, description="agreed share with 3 winners")
    volume_share_4plus: float | None = Field(None, ge=0, le=1, description="agreed share with 4 or more winners")
    gate_ratio: float | None = Field(None, gt=0, le=100, description="price gate multiple of the lowest bid")
    safe_harbour: bool | None = Field(None, description="keep the 50%-below-ceiling route (false removes it)")
    max_winners_cap: int | None = Field(None, ge=1, le=100, description="cap on winners per molecule")
    anchor_mean_factor: float | None = Field(
        None, gt=0, le=10, description="gate anchor = max(lowest, factor x mean valid bid) (batch 11: 0.5)")


class OptimizerParams(_Frozen):
    """Province allocation: exact fast path or MILP, and planner mode settings."""

    mode: Literal["rules", "planner"] = Field(
        "rules", description="rules: winners by rulebook; planner: MILP picks winners")
    method: Literal["auto", "milp", "draft"] = Field(
        "auto", description="auto: exact fast path, MILP when needed; milp: always; "
                            "draft: no optimizer, winners pick provinces in price order")
    # a wall-clock guard, not a setting of the answer: a solve that finishes is the same whatever
    # the limit (one thread, fixed seed). Some planner_secure models take seconds to prove optimal
    # (province subsets filling a 70% cap), so the guard leaves room for a loaded machine.
    time_limit: float = Field(60.0, gt=0, le=3600, description="solver time limit per model, s (wall clock)")
    min_suppliers: int = Field(1, ge=1, le=31, description="planner: minimum winners per molecule")
    max_share: float = Field(1.0, gt=0, le=1, description="planner: maximum national share of one winner")
    backup_coverage: bool = Field(
        False, description="planner: the other winners' capacity covers the whole demand if any one fails")


class Scenario(_Frozen):
    """A complete, validated simulation setup. Immutable: counterfactuals are copies."""

    name: str
    description: str = ""
    start: dt.date = dt.date(2018, 1, 1)
    end: dt.date
    rounds: tuple[Round, ...]
    rulebooks: tuple[Rulebook, ...]
    agents: AgentParams = AgentParams()
    market: MarketParams = MarketParams()
    dynamics: DynamicsParams = DynamicsParams()
    rules: RuleOverrides = RuleOverrides()
    optimizer: OptimizerParams = OptimizerParams()

    @field_validator("rulebooks", mode="before")
    @classmethod
    def _no_bool_rule_numbers(cls, v):
        """Rule numbers reach the dataclass after pydantic has read true as 1: catch them before."""
        kinds = {f.name: str(f.type) for f in dataclasses.fields(Rulebook)}
        for book in v if isinstance(v, (list, tuple)) else ():
            if not isinstance(book, dict):
                continue
            for key, value in book.items():
                items = value if isinstance(value, (list, tuple)) else [value]
                kind = kinds.get(key, "bool")
                if "bool" not in kind and any(isinstance(x, bool) for x in items):
                    what = "a number" if _numeric(kind) else "text"
                    raise FieldProblem(f"{book.get('name')}.{key}",
                                       f"{json.dumps(value)}: a boolean where the rule takes {what}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if not self.rounds:
            raise FieldProblem("rounds", "no rounds to simulate")
        if self.end <= self.start:
            raise FieldProblem("end", f"end {self.end} is not after start {self.start}")
        books = {rb.name: rb for rb in self.rulebooks}
        ids = [r.id for r in self.rounds]
        for r in self.rounds:
            if r.rulebook not in books:
                raise FieldProblem(f"rounds.{r.id}.rulebook",
                                   f"unknown rulebook {r.rulebook!r}{did_you_mean(r.rulebook, books)}")
            kind, fits = books[r.rulebook].kind, CATEGORY_KINDS[r.category]
            if kind not in fits:
                raise FieldProblem(f"rounds.{r.id}.rulebook",
                                   f"rulebook {r.rulebook!r} is of kind {kind!r}, which does not fit a "
                                   f"{r.category} round; a {r.category} round takes a rulebook of kind "
                                   + " or ".join(repr(k) for k in fits))
            if not self.start <= r.bid_date <= self.end:
                raise FieldProblem(f"rounds.{r.id}.bid_date",
                                   f"bid_date {r.bid_date} outside {self.start}..{self.end}")
            if r.ceiling_from is not None and r.ceiling_from not in ids[: ids.index(r.id)]:
                raise FieldProblem(f"rounds.{r.id}.ceiling_from",
                                   f"ceiling_from {r.ceiling_from!r} is not an earlier round")
        dates = [r.bid_date for r in self.rounds]
        if dates != sorted(dates):
            raise ValueError("rounds are not in date order: " + ", ".join(f"{r.id} {r.bid_date}" for r in self.rounds))
        if len(set(ids)) != len(ids):
            raise ValueError("round ids repeat")
        return self

    def rulebook(self, name: str) -> Rulebook:
        for rb in self.rulebooks:
            if rb.name == name:
                return rb
        raise KeyError(name)

    def round(self, round_id: str) -> Round:
        for r in self.rounds:
            if r.id == round_id:
                return r
        raise KeyError(round_id)

    def digest(self) -> str:
        """sha256 of the canonical JSON form: equal scenarios give equal hashes."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading and resolving


def read_toml_file(path: Path) -> dict:
    """Read a TOML file with checks a hand-written file needs: exists, size, text, syntax, depth."""
    name = str(path)
    if not path.exists():
        raise InputError("file not found", file=name)
    if path.is_dir():
        raise InputError("is a folder, expected a TOML file", file=name)
    size = path.stat().st_size
    if size == 0:
        raise InputError("file is empty, expected a TOML document", file=name)
    if size > MAX_FILE_BYTES:
        raise InputError(f"file is {size} bytes, larger than the {MAX_FILE_BYTES} allowed", file=name)
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise InputError("file is binary, expected TOML text", file=name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", file=name) from None
    return parse_toml_text(text, name)


def parse_toml_text(text: str, name: str) -> dict:
    """Parse TOML text, naming the file and the line on a syntax error; reject absurd nesting."""
    if not text.strip():
        raise InputError("file is empty, expected a TOML document", file=name)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML: {exc}", file=name) from None
    except RecursionError:
        raise InputError(f"nesting deeper than {MAX_DEPTH} levels", file=name) from None
    if _depth(doc) > MAX_DEPTH:
        raise InputError(f"nesting deeper than {MAX_DEPTH} levels", file=name)
    return doc


def _depth(obj: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(obj, dict):
        return max([_depth(v, level + 1) for v in obj.values()], default=level + 1)
    if isinstance(obj, list):
        return max([_depth(v, level + 1) for v in obj], default=level + 1)
    return level


def _fact_value(v: Any) -> Any:
    """A seeds fact {value, source, confidence, note} -> its value; plain values pass through."""
    if isinstance(v, dict) and "value" in v and set(v) <= {"value", "source", "confidence", "note"}:
        return v["value"]
    return v


def _seed_round(round_id: str, file: str, field: str, fitted: dict[str, Any]) -> dict:
    """A round of the packaged table, with any calibrated value for it (`rounds.<id>.<field>`)."""
    table = data.read_toml("rounds.toml")["rounds"]
    if round_id not in table:
        raise InputError(f"unknown round id {round_id!r}{did_you_mean(round_id, table)}; known: "
                         + ", ".join(table), file=file, field=field, value=round_id)
    out = {k: _fact_value(v) for k, v in table[round_id].items()}
    prefix = f"rounds.{round_id}."
    out.update({p[len(prefix):]: v for p, v in fitted.items() if p.startswith(prefix)})
    out["id"] = round_id
    return out


def resolve_raw(doc: dict, file: str, *, calibrated: bool = True) -> dict:
    """Scenario document -> fully resolved plain dict (rounds and rulebooks by id, defaults filled).

    Values come, last winning: defaults and the packaged tables; the calibrated parameters
    (seeds/calibration.toml) unless `calibrated` is False; the scenario file itself.
    """
    doc = copy.deepcopy(doc)
    fitted = calibrated_parameters() if calibrated else {}
    known = {"name", "description", "start", "end", "rounds", "rulebooks", "agents", "market",
             "dynamics", "rules", "optimizer"}
    for key in doc:
        if key not in known:
            raise InputError(f"unknown key{did_you_mean(key, known)}; allowed: " + ", ".join(sorted(known)),
                             file=file, field=key)
    rounds_in = doc.get("rounds")
    if rounds_in is None:
        raise InputError("missing required field: a list of round ids or tables", file=file, field="rounds")
    if not isinstance(rounds_in, list):
        raise InputError(f"expected a list of round ids or tables, got {type(rounds_in).__name__}",
                         file=file, field="rounds", value=rounds_in)
    if not rounds_in:
        raise InputError("empty list: a scenario needs at least one round", file=file, field="rounds")
    rounds: dict[str, dict] = {}
    for i, item in enumerate(rounds_in):
        field = f"rounds[{i}]"
        if isinstance(item, str):
            r = _seed_round(item, file, field, fitted)
        elif isinstance(item, dict):
            item = {k: _fact_value(v) for k, v in item.items()}
            base = item.pop("from", None)
            r = _seed_round(base, file, field + ".from", fitted) if base is not None else {}
            r.update(item)
            if "id" not in r:
                raise InputError("missing required field 'id'", file=file, field=field)
        else:
            raise InputError(f"expected a round id or table, got {item!r}", file=file, field=field)
        if not isinstance(r["id"], str):
            raise InputError(f"round id must be text, got {r['id']!r}", file=file, field=field + ".id")
        if r["id"] in rounds:
            raise InputError(f"round {r['id']!r} listed twice", file=file, field=field)
        for name, f in Round.model_fields.items():  # every optional field present, so --set can reach it
            if not f.is_required():
                r.setdefault(name, f.default)
        rounds[r["id"]] = r

    rulebooks = copy.deepcopy(data.read_toml("rulebooks.toml")["rulebooks"])
    for path, value in fitted.items():
        parts = path.split(".")
        if parts[0] == "rulebooks" and len(parts) == 3 and parts[1] in rulebooks:
            rulebooks[parts[1]][parts[2]] = value
    extra = doc.get("rulebooks", {})
    if isinstance(extra, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in extra):
        # a resolved scenario (a results folder's scenario.toml) lists its rulebooks by name
        extra = {t["name"]: {k: v for k, v in t.items() if k != "name"} for t in extra}
    if not isinstance(extra, dict):
        raise InputError("expected a table of rulebooks", file=file, field="rulebooks")
    for name, table in extra.items():
        if not isinstance(table, dict):
            raise InputError("expected a table", file=file, field=f"rulebooks.{name}")
        base = table.pop("from", None)
        if base is not None:
            if base not in rulebooks:
                raise InputError(f"unknown rulebook {base!r}{did_you_mean(base, rulebooks)}",
                                 file=file, field=f"rulebooks.{name}.from", value=base)
            rulebooks[name] = {**rulebooks[base], **table}
        else:
            rulebooks[name] = {**rulebooks.get(name, {}), **table}
    for name, table in rulebooks.items():
        table["name"] = name
        table.setdefault("description", "")

    out: dict[str, Any] = {
        "name": doc.get("name", Path(file).stem),
        "description": doc.get("description", ""),
        "start": doc.get("start", "2018-01-01"),
        "end": doc.get("end"),
        "rounds": rounds,
        "rulebooks": rulebooks,
    }
    for key, model in (("agents", AgentParams), ("market", MarketParams), ("dynamics", DynamicsParams),
                       ("rules", RuleOverrides), ("optimizer", OptimizerParams)):
        section = doc.get(key, {})
        if not isinstance(section, dict):
            raise InputError(f"expected a table, got {section!r}", file=file, field=key)
        merged = model().model_dump()
        merged.update({p.split(".", 1)[1]: v for p, v in fitted.items()
                       if p.startswith(key + ".") and p.split(".", 1)[1] in merged})
        for k, v in section.items():
            if k not in merged:
                raise InputError(f"unknown key{did_you_mean(k, merged)}", file=file, field=f"{key}.{k}", value=v)
            merged[k] = v
        out[key] = merged
    if out["end"] is None:
        raise InputError("missing required field (last date simulated, e.g. 2022-12-31)", file=file, field="end")
    return out


def calibrated_parameters() -> dict[str, Any]:
    """Parameters fitted by `vbp calibrate` (seeds/calibration.toml) by dotted path; {} if none."""
    try:
        cal = data.read_toml("calibration.toml")
    except FileNotFoundError:
        return {}
    return dict(cal.get("parameters", {}))


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b.c=VALUE' -> ('a.b.c', value); VALUE is read as TOML (numbers, booleans, lists), or JSON
    (lists and tables), else as text."""
    if "=" not in text:
        raise InputError(f"expected PATH=VALUE, got {text!r}", field="--set", value=text)
    path, _, value = text.partition("=")
    path, value = path.strip(), value.strip()
    if not path:
        raise InputError(f"empty path in {text!r}", field="--set", value=text)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        try:  # JSON too, so the defaults `vbp params --json` prints can be passed back
            parsed = json.loads(value) if value[:1] in "[{" else value
        except ValueError:
            parsed = value
    if isinstance(parsed, float) and not math.isfinite(parsed):
        raise InputError(f"value must be a finite number, got {value}", file="--set", field=path, value=value)
    return path, parsed


def apply_overrides(raw: dict, overrides: Sequence[tuple[str, Any]], file: str = "--set",
                    labels: Sequence[str] | None = None) -> dict:
    """Set each dotted path in the resolved dict; the path must already exist. `labels` are the
    paths as the user wrote them (e.g. a forecast's `round.molecules` for `rounds.<id>.molecules`),
    used in messages; by default the paths themselves."""
    raw = copy.deepcopy(raw)
    for i, (path, value) in enumerate(overrides):
        label = path if labels is None else labels[i]
        node: Any = raw
        parts = path.split(".")
        for depth, part in enumerate(parts):
            where = _as_written(parts[: depth + 1], parts, label)
            if not isinstance(node, dict) or part not in node:
                choices = list(node) if isinstance(node, dict) else []
                raise InputError(f"no such parameter{did_you_mean(part, choices)}"
                                 + (f"; at this level: {', '.join(map(str, choices[:12]))}" if choices else ""),
                                 file=file, field=where, value=value)
            if depth == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise InputError("is a table; set one of its fields", file=file, field=where)
                node[part] = value
            else:
                node = node[part]
    return raw


def _as_written(head: list[str], parts: list[str], label: str) -> str:
    """The leading `head` of path `parts` as written in `label`, which may spell a prefix of the
    path shorter (a forecast's `round.` for `rounds.<id>.`): the rest of the path is the same."""
    written = label.split(".")
    if written == parts:
        return ".".join(head)
    keep = len(head) - (len(parts) - len(written))
    return ".".join(written[: max(keep, 1)])


def _validated(raw: dict) -> Scenario:
    payload = dict(raw)
    payload["rounds"] = list(raw["rounds"].values())
    payload["rulebooks"] = list(raw["rulebooks"].values())
    return Scenario.model_validate(payload)


def _problems(exc: ValidationError, raw: dict) -> list[tuple[str, str]]:
    """Each validation error as (dotted field path, or '' for the whole scenario; message with the
    value given)."""
    problems = []
    for err in exc.errors():
        loc = list(err["loc"])
        if loc and loc[0] in ("rounds", "rulebooks") and len(loc) > 1 and isinstance(loc[1], int):
            keys = list(raw[loc[0]])
            loc[1] = keys[loc[1]] if loc[1] < len(keys) else loc[1]
        path = ".".join(str(p) for p in loc)
        msg = err["msg"].removeprefix("Value error, ")
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, FieldProblem):  # a check across fields that knows which one is wrong
            path, msg = ".".join(p for p in (path, cause.path) if p), str(cause)
        if err["type"] == "extra_forbidden":
            msg = f"unknown key{did_you_mean(str(loc[-1]), _allowed_keys(loc))}"
        value = err.get("input")
        shown = "" if isinstance(value, dict) or isinstance(cause, FieldProblem) else f" (got {value!r})"
        problems.append((path, f"{msg}{shown}"))
    return problems


def _input_error(lines: list[tuple[str, str]]) -> InputError:
    """One InputError for (source, text) lines, the source being the file or `--set`."""
    if len(lines) == 1:  # one problem, one line
        return InputError(lines[0][1], file=lines[0][0])
    head = next((src for src, _ in lines if src != "--set"), "--set")  # the file if it is at fault
    problems = [text if src == head else f"{src}: {text}" for src, text in lines]
    return InputError(f"{len(lines)} problems in the scenario", file=head, problems=problems)


def scenario_from_raw(raw: dict, file: str) -> Scenario:
    """Validate a resolved dict into a Scenario, or raise InputError listing every problem."""
    try:
        return _validated(raw)
    except ValidationError as exc:
        problems = _problems(exc, raw)
    raise _input_error([(file, f"{path or '(scenario)'}: {text}") for path, text in problems])


def _related(path: str, target: str) -> bool:
    """True when field `path` is `target`, holds it or lies inside it."""
    return bool(path) and (path == target or target.startswith(path + ".") or path.startswith(target + "."))


def scenario_with_overrides(raw: dict, overrides: Sequence[tuple[str, Any]], file: str, *,
                            labels: Sequence[str] | None = None,
                            alias: tuple[str, str] | None = None) -> Scenario:
    """Apply `--set` overrides (path, value) to a resolved dict and validate it.

    A problem the file alone has names the file; a problem the overrides bring names `--set` and
    the override at fault (as written: `labels`, by default the paths), or the field when no one
    override is. `alias` (prefix, shown) renames a path prefix in those messages (a forecast's
    `rounds.<id>` is its `round`)."""
    if not overrides:
        return scenario_from_raw(raw, file)
    labels = [p for p, _ in overrides] if labels is None else list(labels)
    changed = apply_overrides(raw, overrides, labels=labels)
    try:
        return _validated(changed)
    except ValidationError as exc:
        problems = _problems(exc, changed)
    try:
        _validated(raw)
        own: list[tuple[str, str]] = []
    except ValidationError as exc:
        own = _problems(exc, raw)

    def shown(path: str) -> str:
        if alias and (path == alias[0] or path.startswith(alias[0] + ".")):
            return alias[1] + path[len(alias[0]):]
        return path

    lines = []
    for path, text in problems:
        if (path, text) in own:
            lines.append((file, f"{path or '(scenario)'}: {text}"))
            continue
        hits = [(p, label) for (p, _), label in zip(overrides, labels) if _related(path, p)]
        if not hits and len(overrides) == 1:
            hits = [(overrides[0][0], labels[0])]
        where = ", ".join(label for _, label in hits)
        inside = bool(path) and not any(p == path or p.startswith(path + ".") for p, _ in hits)
        if inside or not where:  # the message alone does not say which field it is about
            where = ": ".join(w for w in (where, shown(path)) if w)
        lines.append(("--set", f"{where}: {text}" if where else text))
    raise _input_error(lines)


def _allowed_keys(loc: list) -> list[str]:
    models = {"agents": AgentParams, "market": MarketParams, "dynamics": DynamicsParams, "rules": RuleOverrides,
              "optimizer": OptimizerParams, "rounds": Round}
    if loc and loc[0] in models:
        return list(models[loc[0]].model_fields)
    if loc and loc[0] == "rulebooks":
        import dataclasses

        return [f.name for f in dataclasses.fields(Rulebook)]
    return list(Scenario.model_fields)


def load_scenario(ref: str | Path, overrides: Sequence[str] = (), *, calibrated: bool = True) -> Scenario:
    """Load an embedded scenario by name, or a TOML file by path, with `--set` overrides
    (and the calibrated parameters unless `calibrated` is False: the uncalibrated priors)."""
    raw, file = load_raw(ref, calibrated=calibrated)
    return scenario_with_overrides(raw, [parse_override(o) for o in overrides], file)


def load_raw(ref: str | Path, *, calibrated: bool = True) -> tuple[dict, str]:
    """Embedded name or path -> (resolved dict, file label for messages)."""
    path = Path(ref)
    names = data.embedded_scenarios()
    if str(ref) in names:
        path = data.scenario_dir() / f"{ref}.toml"
        file = f"{ref} (embedded)"
    elif path.suffix != ".toml" and not path.exists():
        raise InputError(f"no embedded scenario or file named {str(ref)!r}{did_you_mean(str(ref), names)};"
                         f" embedded: {', '.join(names)}", field="SCENARIO", value=str(ref))
    else:
        file = str(ref)
    doc = read_toml_file(path)
    return resolve_raw(doc, file, calibrated=calibrated), file


def flatten(raw: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf of a resolved scenario as (dotted path, value), in document order."""
    out: list[tuple[str, Any]] = []
    if isinstance(raw, dict):
        for k, v in raw.items():
            out.extend(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out.append((prefix, raw))
    return out


_RULEBOOK_HELP = {
    "kind": "award logic: single_winner | multi_winner | stent | joint | insulin",
    "description": "what the rulebook is, with sources",
    "max_winners": "cap on winners by qualified bidders N (entry N-1; last for larger N)",
    "volume_shares": "agreed share of reported demand by number of winners k",
    "contract_years": "contract term in years by number of winners k",
    "gate_ratio": "may win if price <= gate_ratio x lowest (or anchor)",
    "gate_abs_yuan": "may win if unit price <= this many yuan",
    "safe_harbour_cut": "may win if price <= (1 - cut) x ceiling",
    "anchor_mean_factor": "anchor = max(lowest, factor x mean valid bid)",
    "revival": "non-winners may win at the highest winning price",
    "ceiling_is_cap": "bids above the ceiling are invalid",
    "win_below_ceiling": "a shortlisted bid also wins below the ceiling (stents)",
    "shortlist": "only this many lowest products can win (stents)",
    "max_products_per_firm": "products of one firm in the shortlist (stents)",
    "pre_award_max_bidders": "molecules with at most this many bidders go to pre-award (pilot)",
    "pre_award_outright": "pre-awards with the largest cuts that win outright (pilot)",
    "rank_volume": "agreed share of own demand by price rank (joints)",
    "rank_release": "share of own demand released to the remainder pool by rank (joints)",
    "remainder_excludes_highest": "remainder pool cannot go to the highest-priced winner (joints)",
    "tier_ratio": "tier A if price <= ratio x lowest (insulin)",
    "tier_b_cut": "tier B if price <= (1 - cut) x ceiling (insulin)",
    "tier_volumes": "agreed share of own demand by tier A1, A, B, C (insulin)",
    "tier_pool_to_a": "demand the tiers leave unassigned goes to tier A1 and A winners (insulin)",
    "name": "rulebook name",
}


def describe(path: str) -> str:
    """One-line meaning of a dotted scenario path, with units."""
    parts = path.split(".")
    head, leaf = parts[0], parts[-1]
    models = {"agents": AgentParams, "market": MarketParams, "dynamics": DynamicsParams, "rules": RuleOverrides,
              "optimizer": OptimizerParams}
    if head in models and leaf in models[head].model_fields:
        return models[head].model_fields[leaf].description or ""
    if head == "rounds" and leaf in Round.model_fields:
        return Round.model_fields[leaf].description or leaf.replace("_", " ")
    if head == "rulebooks":
        return _RULEBOOK_HELP.get(leaf, "")
    return {"name": "scenario name", "description": "what the scenario is", "start": "clock origin (date)",
            "end": "last day simulated (date)"}.get(head, "")
