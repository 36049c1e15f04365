"""Market dynamics between awards, as pure functions: supply month by month, exit, entry, HHI.

The SimPy processes (vbp.process) decide when these happen; vbp.model keeps the state. Here:

- `supply_month`: one month of deliveries, winner by winner. A supplying winner fails with a
  monthly probability and stays down for a (geometric) number of months drawn by the caller; its volume (and any volume
  above its capacity) goes first to the unit's other winners with spare capacity (the rulebooks'
  backup regions) after a lag, at a premium, and what they cannot take is a shortage.
- `stays`: a firm stays in a molecule's market while its expected annual profit there covers
  its outside option (a share of its pre-VBP fair-share revenue).
- `loser_profit`: what a non-winner still earns: a share of the molecule's demand reached outside
  the agreed volume, at a price capped at a multiple of the highest winning price [S78].
- `hhi`: the Herfindahl-Hirschman index of volume shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SupplyMonth", "supply_month", "stays", "loser_profit", "hhi"]


@dataclass(frozen=True)
class SupplyMonth:
    """One month of deliveries of one round's contracts (L winner lines, U units)."""

    own: np.ndarray  # (L,) units each winner delivered of its own volume
    backup: np.ndarray  # (L,) units each winner delivered as a backup for others of its unit
    shortage: np.ndarray  # (U,) units of demand nobody delivered
    need: np.ndarray  # (U,) units the winners were due to deliver
    down: np.ndarray  # (L,) months of failure left after this month
    new_failures: int  # failures that started this month


def supply_month(unit_of: np.ndarray, volume: np.ndarray, capacity: np.ndarray, down: np.ndarray,
                 n_units: int, uniform: np.ndarray, length: np.ndarray, *, fail_prob: float,
                 lag_share: float, capacity_binds: bool) -> SupplyMonth:
    """Deliveries of one month.

    `unit_of` (L,) unit index of each winner line; `volume` (L,) units due this month; `capacity`
    (L,) units per month; `down` (L,) months of failure left at the start of the month;
    `uniform` (L,) in [0, 1) and `length` (L,) >= 1: each line's draws for this month (a supplying
    winner fails if its uniform is below `fail_prob`, for `length` months). The draws are made by
    the caller, keyed by unit and bidder, so they do not depend on outcomes.
    """
    n = len(volume)
    fail_now = (down == 0) & (np.asarray(uniform) < fail_prob)
    down = np.where(fail_now, length, down)
    up = down == 0
    cap = capacity if capacity_binds else np.full(n, 1e30)
    own = np.where(up, np.minimum(volume, cap), 0.0)
    short = volume - own
    spare = np.where(up, cap - own, 0.0)
    need = np.bincount(unit_of, weights=volume, minlength=n_units)
    owed = np.bincount(unit_of, weights=short, minlength=n_units)
    spare_u = np.bincount(unit_of, weights=spare, minlength=n_units)
    # a failure that starts this month leaves its volume unmet until backups step in
    lagged = lag_share * np.bincount(unit_of, weights=np.where(fail_now, short, 0.0), minlength=n_units)
    backup_u = np.minimum(owed - lagged, spare_u)
    with np.errstate(invalid="ignore", divide="ignore"):
        backup = np.where(spare_u[unit_of] > 0, spare * (backup_u / spare_u)[unit_of], 0.0)
    shortage = np.maximum(owed - backup_u, 0.0)
    return SupplyMonth(own=own, backup=backup, shortage=shortage, need=need,
                       down=np.maximum(down - 1, 0), new_failures=int(fail_now.sum()))


def stays(annual_profit: np.ndarray, fair_share_revenue: float, outside_option: float) -> np.ndarray:
    """(n,) True where a firm's expected annual profit covers its outside option."""
    if outside_option <= 0:
        return np.ones(len(annual_profit), dtype=bool)
    return np.asarray(annual_profit) >= outside_option * fair_share_revenue


def loser_profit(cost: np.ndarray, ref_price: np.ndarray, top_price: float, demand: float, n_losers: int,
                 access: float, price_cap: float) -> np.ndarray:
    """(n,) annual profit of each non-winner, yuan: an equal part of `access` x demand, sold at
    min(its pre-VBP price, `price_cap` x the highest winning price)."""
    if n_losers <= 0:
        return np.zeros(len(cost))
    price = np.minimum(ref_price, price_cap * top_price)
    return np.maximum(price - cost, 0.0) * access * demand / n_losers


def hhi(volumes: np.ndarray) -> float:
    """Herfindahl-Hirschman index of volume shares, in (0, 1]; nan when nothing is supplied."""
    v = np.asarray(volumes, dtype=float)
    total = v.sum()
    if total <= 0:
        return float("nan")
    s = v / total
    return float(np.sum(s * s))
