"""Flat, immutable output records of one replication, turned into tables once at the end.

One row type per thing observed: a bid, a unit's award (molecule or device group), a month of
deliveries of a round, and a timeline event. Money is in yuan, volumes in units, times in days
from the scenario start (dates as ISO text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import pandas as pd

__all__ = ["BidRow", "UnitRow", "DeliveryRow", "EventRow", "Replication", "to_frames"]


class BidRow(NamedTuple):
    rep: int
    round: str
    unit: int
    label: str
    bidder: int
    firm: int
    originator: bool
    cost: float  # yuan per unit
    reserve: float  # lowest acceptable price, yuan per unit
    bid: float  # yuan per unit; nan = no bid
    ceiling: float  # yuan per unit
    ref_price: float  # pre-VBP price of the product, yuan per unit
    won: bool
    price: float  # award price, yuan per unit; nan for losers
    agreed_units: float  # first-year agreed volume
    provinces_won: int  # provinces where this winner is the primary supplier (drugs)


class UnitRow(NamedTuple):
    rep: int
    round: str
    unit: int
    label: str
    n_bidders: int
    n_valid: int
    n_winners: int
    procured: bool
    status: str  # "awarded", "no valid bids", "negotiation failed", ...
    cut: float  # mean over winners of 1 - price / reference price; nan if not procured
    max_cut: float
    agreed_units: float
    agreed_value_ref: float  # agreed volume at reference prices, yuan
    annual_savings: float  # official-style: (reference - price) x agreed first-year volume, yuan
    contract_years: int
    method: str  # allocation method: trivial | assignment | milp | planner | brand | none
    objective: float  # allocation cost, yuan


class DeliveryRow(NamedTuple):
    rep: int
    round: str
    month: str  # ISO date of the month's first day
    units: float  # winners' purchases in the month
    spend: float  # at award prices, yuan
    spend_ref: float  # the same units at reference prices, yuan
    savings: float  # spend_ref - spend, yuan
    active_units: int  # molecules/units under contract that month


class EventRow(NamedTuple):
    rep: int
    day: float
    kind: str  # announce | bids_open | award | supply_start | expiry | renewal | end
    round: str
    detail: str


@dataclass
class Replication:
    """Everything one replication observed."""

    rep: int
    bids: list[BidRow] = field(default_factory=list)
    units: list[UnitRow] = field(default_factory=list)
    deliveries: list[DeliveryRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)


def to_frames(reps: list[Replication]) -> dict[str, pd.DataFrame]:
    """Stack replications into tidy tables: bids, units, deliveries, events."""
    out = {}
    for name, cls in (("bids", BidRow), ("units", UnitRow), ("deliveries", DeliveryRow),
                      ("events", EventRow)):
        rows = [row for r in reps for row in getattr(r, name)]
        out[name] = pd.DataFrame(rows, columns=list(cls._fields))
    return out
