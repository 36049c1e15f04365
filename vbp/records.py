"""Flat, immutable output records of one replication, turned into tables once at the end.

One row type per thing observed: a bid, a unit's award (molecule or device group), each tender of
a unit (first award and re-tenders), a month of deliveries of a round, and a timeline event.
Money is in yuan, volumes in units, times in days from the scenario start (dates as ISO text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import pandas as pd

__all__ = ["BidRow", "UnitRow", "TenderRow", "DeliveryRow", "EventRow", "Replication", "to_frames", "TABLES"]


class BidRow(NamedTuple):
    rep: int  # replication number
    round: str  # round id
    unit: int  # molecule or device unit index within the round
    label: str  # "round/unit", e.g. batch3/m07
    bidder: int  # bidder index within the unit
    firm: int  # manufacturer id in the replication's firm pool
    originator: bool  # the originator (brand) product of the molecule
    cost: float  # unit cost, yuan per unit
    reserve: float  # lowest acceptable price, yuan per unit
    bid: float  # yuan per unit; nan = no bid
    ceiling: float  # maximum valid declared price, yuan per unit
    ref_price: float  # pre-VBP price of the product, yuan per unit
    won: bool  # the bid won
    price: float  # award price, yuan per unit; nan for losers
    agreed_units: float  # first-year agreed volume
    provinces_won: int  # provinces where this winner is the primary supplier (drugs)


class UnitRow(NamedTuple):
    rep: int  # replication number
    round: str  # round id
    unit: int  # unit index within the round
    label: str  # "round/unit"
    n_bidders: int  # products that could bid
    n_valid: int  # valid bids (the rulebook's qualified bidders N)
    n_winners: int  # winning products
    procured: bool  # at least one winner
    status: str  # "awarded", "no valid bids", "negotiation failed", ...
    cut: float  # mean over winners of 1 - price / reference price; nan if not procured
    max_cut: float  # largest cut among winners; nan if not procured
    agreed_units: float  # first-year agreed volume of all winners, units
    agreed_value_ref: float  # agreed volume at reference prices, yuan
    annual_savings: float  # official-style: (reference - price) x agreed first-year volume, yuan
    contract_years: int  # contract term by the rulebook (or the round's override)
    method: str  # allocation method: trivial | assignment | milp | planner | brand | none
    objective: float  # allocation cost, yuan


class TenderRow(NamedTuple):
    rep: int  # replication number
    round: str  # round id
    unit: int  # unit index within the round
    label: str  # "round/unit"
    tender: int  # 0 = the round's award, k = the k-th re-tender at contract expiry
    date: str  # ISO date of the award
    n_bidders: int  # products that could bid (at a re-tender: survivors plus entrants)
    exits: int  # earlier bidders that left the molecule's market before this tender
    entrants: int  # newly approved products bidding for the first time
    n_winners: int  # winning products
    procured: bool  # at least one winner
    ceiling_ratio: float  # maximum valid price / reference price
    price_ratio: float  # volume-weighted mean winning price / reference price; nan if not procured
    top_price_ratio: float  # highest winning price / reference price; nan if not procured
    hhi: float  # Herfindahl-Hirschman index of winners' agreed volumes, in (0, 1]; nan if none
    top_share: float  # largest winner's share of the agreed volume; nan if none
    contract_years: int  # term of this award


class DeliveryRow(NamedTuple):
    rep: int  # replication number
    round: str  # round id
    month: str  # ISO date of the month's first day
    units: float  # winners' purchases in the month
    spend: float  # at award prices, yuan
    spend_ref: float  # the same units at reference prices, yuan
    savings: float  # spend_ref - spend, yuan
    active_units: int  # molecules/units under contract that month
    backup_units: float = 0.0  # units delivered by backup suppliers for failed or full winners
    shortage_units: float = 0.0  # units due from winners that nobody delivered
    shortage_days: float = 0.0  # days of a whole unit's demand unmet, volume-equivalent, summed over units
    failures: int = 0  # winners' supply failures that started this month


class EventRow(NamedTuple):
    rep: int  # replication number
    day: float  # simulation clock, days from the scenario start
    kind: str  # announce | bids_open | award | supply_start | expiry | renewal | end
    round: str  # round id ("" for the end of the run)
    detail: str  # e.g. "93 products", "27 of 31 procured"


@dataclass
class Replication:
    """Everything one replication observed."""

    rep: int
    bids: list[BidRow] = field(default_factory=list)
    units: list[UnitRow] = field(default_factory=list)
    tenders: list[TenderRow] = field(default_factory=list)
    deliveries: list[DeliveryRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)


TABLES = {"bids": BidRow, "units": UnitRow, "tenders": TenderRow, "deliveries": DeliveryRow,
          "events": EventRow}


def to_frames(reps: list[Replication]) -> dict[str, pd.DataFrame]:
    """Stack replications into tidy tables: bids, units, tenders, deliveries, events."""
    out = {}
    for name, cls in TABLES.items():
        rows = [row for r in reps for row in getattr(r, name)]
        out[name] = pd.DataFrame(rows, columns=list(cls._fields))
    return out
