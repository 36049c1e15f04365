"""Rulebooks of the national VBP rounds as pure functions.

A `Rulebook` holds one era's award rules as data; `award` applies them to the bids of one
competition unit (a molecule, a stent group, a joint category x group, an insulin group) and
returns who wins, at what price, and the agreed first-year volume of each bidder as a fraction
of the unit's reported demand. `award_fractions` is the same award vectorized over many samples
of bids, for equilibrium bid computations. Prices are unit comparable prices in yuan per unit;
the ceiling is the maximum valid declared price. The rules are those of the sourced facts
(vbp_facts §2 "Bidding rules by era", Addendum A.1 joints and A.2 stents).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RULEBOOK_KINDS", "Rulebook", "Award", "lookup", "max_winners_for",
           "volume_share_for", "contract_years_for", "valid_bids", "award", "award_fractions",
           "focal_fractions", "resolve_pre_awards"]

RULEBOOK_KINDS = ("single_winner", "multi_winner", "stent", "joint", "insulin")

_INT_TABLES = ("max_winners", "contract_years")
_SHARE_TABLES = ("volume_shares", "rank_volume", "rank_release", "tier_volumes")
_KIND_TABLES = {"joint": ("rank_volume", "rank_release"), "insulin": ("tier_volumes",)}


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Rulebook:
    """Award rules of one era (parameter object; the scenario loader builds it from TOML).

    Tables are indexed by a count: entry i-1 for count i, the last entry for larger counts.
    Prices in yuan per unit (unit comparable price); shares in [0, 1]. `max_winners` caps
    the winners of every kind; fields a kind does not use are ignored.
    """

    name: str
    kind: str  # one of RULEBOOK_KINDS
    description: str = ""
    max_winners: tuple[int, ...] = (1,)  # cap on winners, by number of valid bidders N
    volume_shares: tuple[float, ...] = (1.0,)  # agreed share of demand, by number of winners
    contract_years: tuple[int, ...] = (1,)  # contract term in years, by number of winners
    gate_ratio: float | None = None  # may win if price <= gate_ratio x anchor (lowest valid)
    gate_abs_yuan: float | None = None  # or price <= this (yuan per unit)
    safe_harbour_cut: float | None = None  # or price <= (1 - cut) x ceiling
    anchor_mean_factor: float | None = None  # anchor = max(lowest, factor x mean valid bid)
    revival: bool = False  # open slots go to non-winners accepting the revival price
    ceiling_is_cap: bool = True  # bids above the ceiling are invalid (False for stents)
    win_below_ceiling: bool = False  # stents: a shortlisted bid < ceiling also wins
    shortlist: int | None = None  # stents: only this many lowest valid products can win
    max_products_per_firm: int | None = None  # stents: per-firm limit in the shortlist
    pre_award_max_bidders: int = 0  # pilot: <= this many valid bids -> provisional award
    pre_award_outright: int = 7  # pilot: pre-awards with the largest cuts won outright
    rank_volume: tuple[float, ...] = ()  # joints: base share of own demand, by price rank
    rank_release: tuple[float, ...] = ()  # joints: share of own demand released, by rank
    remainder_excludes_highest: bool = False  # joints: highest-priced winner gets no pool
    tier_ratio: float | None = None  # insulin: tier A if price <= tier_ratio x lowest
    tier_b_cut: float | None = None  # insulin: tier B if price <= (1 - cut) x ceiling
    tier_volumes: tuple[float, ...] = ()  # insulin: share of own demand for A1, A, B, C
    tier_pool_to_a: bool = False  # insulin: demand the tiers leave unassigned goes to tier A winners

    def __post_init__(self) -> None:
        for f in (*_INT_TABLES, *_SHARE_TABLES):  # TOML gives lists; keep the object hashable
            object.__setattr__(self, f, tuple(getattr(self, f)))

        def fail(f: str, value: object, must: str) -> ValueError:
            return ValueError(f"rulebook {self.name!r}: {f} {must}, got {value!r}")

        if self.kind not in RULEBOOK_KINDS:
            raise fail("kind", self.kind, f"must be one of {', '.join(RULEBOOK_KINDS)}")
        for f in (*_INT_TABLES, "volume_shares", *_KIND_TABLES.get(self.kind, ())):
            if not getattr(self, f):
                raise fail(f, getattr(self, f), f"must not be empty for kind {self.kind!r}")
        for f in _INT_TABLES:
            for v in getattr(self, f):
                if not _is_int(v) or v < 1:
                    raise fail(f, v, "must be integers >= 1")
        for f in _SHARE_TABLES:
            for v in getattr(self, f):
                if not _is_real(v) or not 0.0 <= v <= 1.0:
                    raise fail(f, v, "must be in [0, 1]")
        for f in ("gate_ratio", "gate_abs_yuan", "anchor_mean_factor", "tier_ratio"):
            v = getattr(self, f)
            if v is not None and (not _is_real(v) or not 0.0 < v < math.inf):
                raise fail(f, v, "must be a finite number > 0")
        for f in ("safe_harbour_cut", "tier_b_cut"):
            v = getattr(self, f)
            if v is not None and (not _is_real(v) or not 0.0 <= v <= 1.0):
                raise fail(f, v, "must be in [0, 1]")
        for f in ("shortlist", "max_products_per_firm"):
            v = getattr(self, f)
            if v is not None and (not _is_int(v) or v < 1):
                raise fail(f, v, "must be an integer >= 1")
        for f in ("pre_award_max_bidders", "pre_award_outright"):
            if not _is_int(getattr(self, f)) or getattr(self, f) < 0:
                raise fail(f, getattr(self, f), "must be an integer >= 0")
        if self.kind == "insulin" and len(self.tier_volumes) != 4:
            raise fail("tier_volumes", self.tier_volumes, "must have 4 entries (A1, A, B, C)")
        if self.kind == "joint":
            for r in range(1, max(len(self.rank_volume), len(self.rank_release)) + 1):
                kept = lookup(self.rank_volume, r) + lookup(self.rank_release, r)
                if kept > 1.0 + 1e-12:
                    raise fail("rank_volume + rank_release", kept, f"must be <= 1 at rank {r}")


@dataclass(frozen=True)
class Award:
    """Outcome of one competition unit; arrays are in the order of the input bids."""

    won: np.ndarray  # (n,) bool
    price: np.ndarray  # (n,) award price, yuan per unit; nan for non-winners
    agreed: np.ndarray  # (n,) agreed first-year volume, share of the unit's reported demand
    n_valid: int  # finite, > 0 and (when the ceiling is a cap) <= ceiling
    n_winners: int
    pre_award: bool = False  # pilot: the winner is provisional (see resolve_pre_awards)
    reason: str = ""  # why nobody won


def lookup(table: Sequence, index: int):
    """Entry ``index - 1`` of a rule table; the last entry for larger indices (index >= 1)."""
    if index < 1:
        raise ValueError(f"rule table index must be >= 1, got {index}")
    return table[min(index, len(table)) - 1]


def max_winners_for(rb: Rulebook, n_qualified: int) -> int:
    """Cap on winners for `n_qualified` valid bidders (0 when there are none)."""
    return 0 if n_qualified <= 0 else int(lookup(rb.max_winners, n_qualified))


def volume_share_for(rb: Rulebook, k: int) -> float:
    """Agreed first-year volume as a share of reported demand with `k` winners (0 if none)."""
    return 0.0 if k <= 0 else float(lookup(rb.volume_shares, k))


def contract_years_for(rb: Rulebook, k: int) -> int:
    """Contract term in years with `k` winners (k >= 1)."""
    return int(lookup(rb.contract_years, k))


def valid_bids(rb: Rulebook, bids: np.ndarray, ceiling: float) -> np.ndarray:
    """Bool mask of valid bids: finite, > 0, and <= ceiling when the ceiling is a cap."""
    b = np.asarray(bids, dtype=float)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(b) & (b > 0)
        return ok & (b <= ceiling) if rb.ceiling_is_cap else ok


def _gate_threshold(rb: Rulebook, lowest, mean, ceiling: float):
    """Highest price passing any enabled multi-winner gate; inf when no gate is enabled.

    Works on scalars or on arrays of per-sample `lowest` and `mean` valid bids."""
    zero = np.zeros_like(np.asarray(lowest, dtype=float))
    limit = zero - np.inf
    if rb.gate_ratio is not None:
        anchor = lowest
        if rb.anchor_mean_factor is not None:
            anchor = np.maximum(lowest, rb.anchor_mean_factor * mean)
        limit = np.maximum(limit, rb.gate_ratio * anchor)
    if rb.gate_abs_yuan is not None:
        limit = np.maximum(limit, zero + rb.gate_abs_yuan)
    if rb.safe_harbour_cut is not None:
        limit = np.maximum(limit, zero + (1.0 - rb.safe_harbour_cut) * ceiling)
    no_gate = rb.gate_ratio is None and rb.gate_abs_yuan is None and rb.safe_harbour_cut is None
    return zero + np.inf if no_gate else limit


def _check_inputs(bids, ceiling: float, demand_share, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated bids array and demand shares (equal shares when None)."""
    b = np.asarray(bids, dtype=float)
    if b.ndim != ndim:
        raise ValueError(f"bids must be {ndim}-dimensional, got shape {b.shape}")
    if not (_is_real(ceiling) and 0.0 < ceiling < math.inf):
        raise ValueError(f"ceiling must be a finite price > 0 (yuan per unit), got {ceiling!r}")
    n = b.shape[-1]
    if demand_share is None:
        return b, np.full(n, 1.0 / max(n, 1))
    s = np.asarray(demand_share, dtype=float)
    if s.shape != (n,) or not np.all(np.isfinite(s)) or np.any(s < 0) or s.sum() > 1 + 1e-9:
        raise ValueError(f"demand_share must be ({n},) shares >= 0 summing to <= 1, got {s!r}")
    return b, s


def _per_bidder(x, n: int, name: str) -> np.ndarray | None:
    if x is None:
        return None
    a = np.asarray(x)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    return a


def _split(weights: np.ndarray, total: float) -> np.ndarray:
    """`total` split in proportion to `weights`, equally when the weights sum to zero."""
    s = weights.sum()
    return total * (weights / s if s > 0 else np.full(weights.size, 1.0 / weights.size))


def award(rb: Rulebook, bids: np.ndarray, ceiling: float, *, reserve: np.ndarray | None = None,
          firm: np.ndarray | None = None, demand_share: np.ndarray | None = None) -> Award:
    """Apply the rulebook to the bids (yuan per unit, nan = no bid) of one competition unit.

    `reserve` is each bidder's lowest acceptable price (needed when the rulebook has revival),
    `firm` the firm id of each product (stent per-firm cap; revival counts firms), and
    `demand_share` each product's share of the unit's reported demand (equal when None).
    Price ties rank the lower index first. Revival needs at least one gate winner.
    """
    b, share = _check_inputs(bids, ceiling, demand_share, ndim=1)
    n = b.size
    reserve = _per_bidder(reserve, n, "reserve")
    firm = _per_bidder(firm, n, "firm")
    if rb.revival and reserve is None:
        raise ValueError(f"rulebook {rb.name!r} has revival: pass reserve prices")
    valid = valid_bids(rb, b, ceiling)
    n_valid = int(valid.sum())
    order = [int(i) for i in np.argsort(np.where(valid, b, np.inf), kind="stable")[:n_valid]]
    price = np.full(n, np.nan)
    agreed = np.zeros(n)
    winners: list[int] = []
    pre_award = False
    if n_valid:
        lowest = b[order[0]]
        cap = max_winners_for(rb, n_valid)
        if rb.kind == "single_winner":
            winners = order[:1]
            agreed[winners] = volume_share_for(rb, 1)
            pre_award = n_valid <= rb.pre_award_max_bidders
        elif rb.kind == "multi_winner":
            mean = np.where(valid, b, 0.0).sum() / n_valid
            limit = _gate_threshold(rb, lowest, mean, ceiling)
            winners = [i for i in order if b[i] <= limit][:cap]
            if rb.revival and 0 < len(winners) < cap:
                winners += _revive(rb, b, order, winners, reserve, firm, ceiling, cap, price)
            agreed[winners] = volume_share_for(rb, len(winners)) / max(len(winners), 1)
        elif rb.kind == "stent":
            winners = _stent_winners(rb, b, order, firm, lowest, ceiling)[:cap]
            if winners:
                agreed[winners] = _split(share[winners], volume_share_for(rb, len(winners)))
        elif rb.kind == "joint":
            limit = np.inf if rb.gate_ratio is None else rb.gate_ratio * lowest
            winners = [i for i in order if b[i] <= limit][:cap]
            _joint_volumes(rb, winners, share, agreed)
        else:  # insulin
            winners = order[:cap]
            tiers = [_insulin_tier(rb, r, b[i], lowest, ceiling) for r, i in enumerate(winners)]
            for t, i in zip(tiers, winners):
                agreed[i] = rb.tier_volumes[t] * share[i]
            if rb.tier_pool_to_a and winners:
                # hospitals give the unassigned demand to tier A winners (A1 and A), by demand share
                takers = [i for t, i in zip(tiers, winners) if t <= 1]
                pool = max(0.0, float(share.sum()) - float(agreed.sum()))
                agreed[takers] += _split(share[takers], pool)
    won = np.zeros(n, dtype=bool)
    won[winners] = True
    price = np.where(won & np.isnan(price), b, price)
    reason = ""
    if not winners:
        reason = ("no bids" if np.isnan(b).all() else
                  "no valid bids" if n_valid == 0 else "no bid passes the gates")
    for a in (won, price, agreed):
        a.setflags(write=False)
    return Award(won, price, agreed, n_valid, len(winners), pre_award, reason)


def _revive(rb, b, order, winners, reserve, firm, ceiling, cap, price) -> list[int]:
    """Batch 10 revival: valid non-winners, in price order, that accept the revival price.

    The revival price is the highest winning price; when a single firm won through the
    gates it is gate_ratio x that price, capped at the ceiling. Sets `price` of the revived.
    """
    top = float(np.max(b[winners]))
    n_firms = len(set(winners if firm is None else firm[winners].tolist()))
    if n_firms == 1 and rb.gate_ratio is not None:
        top = min(rb.gate_ratio * top, ceiling)
    taken = set(winners)
    revived = [i for i in order if i not in taken and reserve[i] <= top][: cap - len(winners)]
    price[revived] = top
    return revived


def _stent_winners(rb, b, order, firm, lowest, ceiling) -> list[int]:
    """Shortlisted products (lowest first, at most `max_products_per_firm` per firm) that pass
    the ratio gate or, with `win_below_ceiling`, bid below the ceiling."""
    per_firm: dict[object, int] = {}
    shortlisted = []
    for i in order:
        if rb.shortlist is not None and len(shortlisted) == rb.shortlist:
            break
        key = i if firm is None else firm[i].item()
        limit = rb.max_products_per_firm
        if limit is not None and per_firm.get(key, 0) >= limit:
            continue
        per_firm[key] = per_firm.get(key, 0) + 1
        shortlisted.append(i)
    if rb.gate_ratio is None and not rb.win_below_ceiling:
        return shortlisted
    return [i for i in shortlisted
            if (rb.gate_ratio is not None and b[i] <= rb.gate_ratio * lowest)
            or (rb.win_below_ceiling and b[i] < ceiling)]


def _joint_volumes(rb: Rulebook, winners: list[int], share: np.ndarray, agreed: np.ndarray) -> None:
    """Joints (Addendum A.1): base volume by price rank; the losers' demand and each winner's
    released share form a pool shared among winners in proportion to their demand, except
    the highest-priced winner when `remainder_excludes_highest` (unless it is alone)."""
    if not winners:
        return
    lost = np.ones(share.size, dtype=bool)
    lost[winners] = False
    pool = share[lost].sum()
    for r, i in enumerate(winners, start=1):
        agreed[i] = lookup(rb.rank_volume, r) * share[i]
        pool += lookup(rb.rank_release, r) * share[i]
    takers = winners[:-1] if rb.remainder_excludes_highest and len(winners) > 1 else winners
    agreed[takers] += _split(share[takers], pool)


def _insulin_tier(rb: Rulebook, rank: int, p: float, lowest: float, ceiling: float) -> int:
    """Insulin tier index: 0 = A1 (lowest), 1 = A (<= tier_ratio x lowest), 2 = B
    (<= (1 - tier_b_cut) x ceiling), 3 = C."""
    if rank == 0:
        return 0
    if rb.tier_ratio is not None and p <= rb.tier_ratio * lowest:
        return 1
    if rb.tier_b_cut is not None and p <= (1.0 - rb.tier_b_cut) * ceiling:
        return 2
    return 3


def _table(values: Sequence[float], idx: np.ndarray) -> np.ndarray:
    """Vectorized `lookup` at 0-based indices (clipped to the last entry)."""
    return np.asarray(values)[np.minimum(idx, len(values) - 1)]


def award_fractions(rb: Rulebook, bids: np.ndarray, ceiling: float,
                    demand_share: np.ndarray | None = None) -> np.ndarray:
    """Agreed fractions (S, n) for S independent samples of the n bids of one unit.

    Equals `award(rb, row, ceiling, demand_share=...).agreed` for each row, with each product
    its own firm, no revival and no pre-award. Every kind's eligible set is a prefix of the
    price-sorted valid bids, so the winners are the first k = min(cap, #eligible) of them.
    """
    b, share = _check_inputs(bids, ceiling, demand_share, ndim=2)
    S, n = b.shape
    valid = valid_bids(rb, b, ceiling)
    n_valid = valid.sum(axis=1)
    order, flat = _rank_order(np.where(valid, b, np.inf))
    sb = b.ravel()[flat].reshape(S, n)  # prices in rank order
    pos = np.arange(n)
    in_valid = pos < n_valid[:, None]
    lowest = sb[:, 0] if n else np.full(S, np.nan)
    with np.errstate(invalid="ignore"):
        if rb.kind == "multi_winner":
            mean = None
            if rb.anchor_mean_factor is not None:
                mean = np.where(valid, b, 0.0).sum(axis=1) / np.maximum(n_valid, 1)
            eligible = in_valid & (sb <= _gate_threshold(rb, lowest, mean, ceiling)[:, None])
        elif rb.kind == "stent":
            eligible = in_valid & (pos < (rb.shortlist or n))
            if rb.gate_ratio is not None or rb.win_below_ceiling:
                passes = np.zeros_like(eligible)
                if rb.gate_ratio is not None:
                    passes |= sb <= rb.gate_ratio * lowest[:, None]
                if rb.win_below_ceiling:
                    passes |= sb < ceiling
                eligible &= passes
        elif rb.kind == "joint" and rb.gate_ratio is not None:
            eligible = in_valid & (sb <= rb.gate_ratio * lowest[:, None])
        else:
            eligible = in_valid
    k = np.minimum(_cap(rb, n_valid), eligible.sum(axis=1))
    ss = share[order] if rb.kind in _SHARE_KINDS else None  # shares by rank
    tier = _insulin_tiers(rb, sb, lowest, ceiling) if rb.kind == "insulin" else None
    ranked = _ranked(rb, k, n, ss, tier)
    out = np.empty(S * n)
    out[flat] = ranked.ravel()
    return out.reshape(S, n)


_SHARE_KINDS = ("stent", "joint", "insulin")  # kinds whose volumes follow demand shares


def _cap(rb: Rulebook, n_valid: np.ndarray) -> np.ndarray:
    """Most winners allowed, per sample, for `n_valid` valid bids."""
    cap = np.where(n_valid > 0, _table(rb.max_winners, np.maximum(n_valid - 1, 0)), 0)
    return np.minimum(cap, 1) if rb.kind == "single_winner" else cap


def _insulin_tiers(rb: Rulebook, sb: np.ndarray, lowest: np.ndarray, ceiling: float) -> np.ndarray:
    """Insulin tier of each rank (0 = A1, 1 = A, 2 = B, 3 = C) from prices in rank order."""
    tier = np.full(sb.shape, 3)
    with np.errstate(invalid="ignore"):
        if rb.tier_b_cut is not None:
            tier = np.where(sb <= (1.0 - rb.tier_b_cut) * ceiling, 2, tier)
        if rb.tier_ratio is not None:
            tier = np.where(sb <= rb.tier_ratio * lowest[:, None], 1, tier)
    tier[:, :1] = 0
    return tier


def _ranked(rb: Rulebook, k: np.ndarray, n: int, ss: np.ndarray | None, tier: np.ndarray | None) -> np.ndarray:
    """(S, n) agreed fractions in rank order when the first k[s] ranks win: `ss` the demand
    shares by rank (kinds in _SHARE_KINDS), `tier` the insulin tiers by rank.

    The one place the volumes are computed, for award_fractions and focal_fractions alike."""
    pos = np.arange(n)
    win = pos < k[:, None]
    vol = np.where(k > 0, _table(rb.volume_shares, np.maximum(k - 1, 0)), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if rb.kind in ("single_winner", "multi_winner"):
            return win * (vol / np.maximum(k, 1))[:, None]
        if rb.kind == "stent":
            return win * vol[:, None] * _split_rows(ss, win)
        if rb.kind == "joint":
            base = win * _table(rb.rank_volume, pos) * ss
            pool = (win * _table(rb.rank_release, pos) * ss).sum(axis=1) + (ss * ~win).sum(axis=1)
            takers = win.copy()
            if rb.remainder_excludes_highest:
                takers &= ~((pos == (k - 1)[:, None]) & (k > 1)[:, None])
            return base + pool[:, None] * _split_rows(ss, takers)
        ranked = win * np.asarray(rb.tier_volumes)[tier] * ss  # insulin
        if rb.tier_pool_to_a:
            pool = np.maximum(0.0, ss.sum(axis=1) - ranked.sum(axis=1))
            ranked = ranked + pool[:, None] * _split_rows(ss, win & (tier <= 1))
        return ranked


def _counts_at_or_below(values: np.ndarray, valid: np.ndarray, t: np.ndarray, strict: bool) -> np.ndarray:
    """(m, S) number of valid `values` (S, k) of each row at or below (below, if `strict`) each
    of the m thresholds `t`, by sorting the thresholds once: O(S k log m + m S) instead of the
    O(m S k) comparisons of broadcasting. Integer counts, so exact; nan thresholds count none."""
    S, k = values.shape
    m = t.size
    t = np.where(np.isnan(t), -np.inf, t)
    order = np.argsort(t, kind="stable")
    # the first sorted threshold a value counts for: t >= v (t > v when strict)
    first = np.searchsorted(t[order], values, side="right" if strict else "left")
    first = np.where(valid, first, m)
    hist = np.bincount((first + (m + 1) * np.arange(S)[:, None]).ravel(), minlength=S * (m + 1))
    out = np.empty((m, S), dtype=np.intp)
    out[order] = np.cumsum(hist.reshape(S, m + 1)[:, :m], axis=1).T
    return out


def focal_fractions(rb: Rulebook, nodes: np.ndarray, rivals: np.ndarray, ceiling: float) -> np.ndarray:
    """(m, S) agreed fraction of a focal bid at each of m `nodes` against each of S rival
    profiles (S, k), with equal demand shares.

    Equals `award_fractions(rb, [[x, *r]], ceiling)[:, 0]` for every node x and profile r, bit
    for bit, without sorting the rows. The focal bid's award depends only on its rank among the
    valid bids (it is first in the row, so it wins price ties) and on the row's pattern: how many
    win, and for insulin how many winners fall in each tier. These follow from counts against the
    lowest valid bid, the mean valid bid (anchor gate) and the ceiling. One row per pattern present
    is built in rank order by the same `_ranked` as award_fractions. It is what the equilibrium
    solver evaluates, many thousand profiles per iteration.

    Counts against a threshold f(lowest), f non-decreasing (every gate but the mean anchor), need
    no (m, S, k) comparison: f(min(x, l)) = min(f(x), f(l)), so the rivals at or below it are the
    fewer of those at or below f(x), counted for all nodes at once (`_counts_at_or_below`), and
    those at or below f(l), one count per profile.
    """
    x = np.asarray(nodes, dtype=float)
    r = np.asarray(rivals, dtype=float)
    if x.ndim != 1 or r.ndim != 2:
        raise ValueError(f"nodes must be 1-D and rivals 2-D, got shapes {x.shape}, {r.shape}")
    _check_inputs(r, ceiling, None, ndim=2)
    (m,), (S, k) = x.shape, r.shape
    vx, vr = valid_bids(rb, x, ceiling), valid_bids(rb, r, ceiling)
    n_valid = vx[:, None].astype(int) + vr.sum(axis=1)[None, :]
    low_x = np.where(vx, x, np.inf)
    low_r = np.where(vr, r, np.inf).min(axis=1) if k else np.full(S, np.inf)
    lowest = np.minimum(low_x[:, None], low_r[None, :])

    def below(f: Callable[[np.ndarray], np.ndarray], strict: bool = False) -> np.ndarray:
        """(m, S) valid bids of each row at or below the threshold f(lowest) (strictly below)."""
        op = np.less if strict else np.less_equal
        own = vx[:, None] & op(x[:, None], f(lowest))
        at_x = _counts_at_or_below(r, vr, f(low_x), strict)
        at_l = (vr & op(r, f(low_r)[:, None])).sum(axis=1)
        return own + np.minimum(at_x, at_l[None, :])

    def const(v: float) -> Callable[[np.ndarray], np.ndarray]:
        """A threshold that does not depend on the lowest bid."""
        return lambda a: np.full(np.shape(a), v)

    with np.errstate(invalid="ignore"):
        rank = _counts_at_or_below(r, vr, x, strict=True)  # valid rivals strictly below the focal bid
        if rb.kind == "multi_winner" and rb.anchor_mean_factor is not None:
            eligible = _anchor_eligible(rb, x, r, vx, vr, n_valid, lowest, ceiling)
        elif rb.kind == "multi_winner":
            eligible = below(lambda a: _gate_threshold(rb, a, None, ceiling))
        elif rb.kind == "stent":  # a shortlist, then a ratio gate or "below the ceiling"
            eligible = np.minimum(n_valid, rb.shortlist or k + 1)
            passing = None
            if rb.gate_ratio is not None:
                passing = below(lambda a: rb.gate_ratio * a)
            if rb.win_below_ceiling:
                under = below(const(ceiling), strict=True)
                # either test: {b <= t} and {b < ceiling} are nested, so the union is the larger
                passing = under if passing is None else np.maximum(passing, under)
            if passing is not None:
                eligible = np.minimum(eligible, passing)
        elif rb.kind == "joint" and rb.gate_ratio is not None:
            eligible = below(lambda a: rb.gate_ratio * a)
        else:
            eligible = n_valid
        if rb.kind == "insulin":  # winners in tier A1 or A (c1 + 1) and in A1 to B (c12 + 1)
            none = np.zeros_like(n_valid)
            n_a = below(lambda a: rb.tier_ratio * a) if rb.tier_ratio is not None else none
            n_b = below(const((1.0 - rb.tier_b_cut) * ceiling)) if rb.tier_b_cut is not None else none
    k_won = np.minimum(_cap(rb, n_valid), eligible)
    n = k + 1
    at = np.where(vx[:, None], rank, n_valid)  # the focal bid's place in the rank order
    if rb.kind != "insulin":  # the row depends on the number of winners alone
        return _ranked(rb, np.arange(n + 1), n, np.full((n + 1, n), 1.0 / n), None)[k_won, at]
    c1 = np.maximum(np.minimum(n_a, k_won) - 1, 0)
    c12 = np.maximum(np.minimum(np.maximum(n_a, n_b), k_won) - 1, 0)
    codes, row = np.unique(((k_won * n + c1) * n + c12).ravel(), return_inverse=True)
    kk, c1, c12 = codes // (n * n), (codes // n) % n, codes % n
    pos = np.arange(n)
    tier = np.where(pos <= c1[:, None], 1, np.where(pos <= c12[:, None], 2, 3))
    tier[:, :1] = 0
    table = _ranked(rb, kk, n, np.full((codes.size, n), 1.0 / n), tier)
    return table[row.reshape(m, S), at]


def _anchor_eligible(rb: Rulebook, x: np.ndarray, r: np.ndarray, vx: np.ndarray, vr: np.ndarray,
                     n_valid: np.ndarray, lowest: np.ndarray, ceiling: float) -> np.ndarray:
    """(m, S) valid bids at or below the mean-anchored gate: the mean moves with the focal bid, so
    this threshold is compared with every bid of every row."""
    m, (S, k) = x.size, r.shape
    rows = np.empty((m, S, k + 1))  # the same sum, in the same order, as award_fractions
    rows[:, :, 0] = np.where(vx, x, 0.0)[:, None]
    rows[:, :, 1:] = np.where(vr, r, 0.0)[None, :, :]
    mean = rows.reshape(m * S, k + 1).sum(axis=1).reshape(m, S) / np.maximum(n_valid, 1)
    t = _gate_threshold(rb, lowest, mean, ceiling)
    with np.errstate(invalid="ignore"):
        rivals = (np.where(vr, r, np.nan).T[:, None, :] <= t[None, :, :]).sum(axis=0)
        return (vx[:, None] & (x[:, None] <= t)) + rivals


def _rank_order(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise price order with ties to the lower index, and its flat indices.

    The unstable sort is several times faster; rows with tied finite keys are re-sorted stably."""
    S, n = key.shape
    order = np.argsort(key, axis=1)
    flat = (order + n * np.arange(S)[:, None]).ravel()
    with np.errstate(invalid="ignore"):  # inf - inf between invalid bids is nan: not a tie
        tied = (np.diff(key.ravel()[flat].reshape(S, n), axis=1) == 0).any(axis=1)
    if tied.any():
        order[tied] = np.argsort(key[tied], axis=1, kind="stable")
        flat = (order + n * np.arange(S)[:, None]).ravel()
    return order, flat


def _split_rows(weights: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Row-wise `_split` of 1 among `members` in proportion to `weights` (0 outside)."""
    w = weights * members
    total = w.sum(axis=1, keepdims=True)
    count = members.sum(axis=1, keepdims=True)
    equal = members / np.maximum(count, 1)
    return np.where(total > 0, w / np.where(total > 0, total, 1.0), equal)


def resolve_pre_awards(cuts: np.ndarray, reference_cut: float, max_outright: int,
                       accept_cut: np.ndarray) -> np.ndarray:
    """Which pilot pre-award molecules are procured (vbp_facts §2.2).

    Reading: the pre-awards with the largest cuts (ties: lower index first), up to
    `max_outright`, win outright. Each other one goes to price negotiation at `reference_cut`
    (the average cut in molecules with >= 3 bidders) and is procured if its firm reaches it:
    its bid cut already does, or `accept_cut` (the largest cut it can accept,
    1 - cost / reference price) does. Cuts are shares of the reference price.
    """
    c = np.asarray(cuts, dtype=float)
    a = np.asarray(accept_cut, dtype=float)
    if c.ndim != 1 or a.shape != c.shape:
        raise ValueError(f"cuts, accept_cut must be 1-D of one shape, got {c.shape}, {a.shape}")
    if not (np.all(np.isfinite(c)) and np.all(~np.isnan(a))):
        raise ValueError("cuts must be finite and accept_cut not nan")
    if not _is_int(max_outright) or max_outright < 0:
        raise ValueError(f"max_outright must be an integer >= 0, got {max_outright!r}")
    if not _is_real(reference_cut) or math.isnan(reference_cut):
        raise ValueError(f"reference_cut must be a number, got {reference_cut!r}")
    outright = np.zeros(c.size, dtype=bool)
    outright[np.argsort(-c, kind="stable")[:max_outright]] = True
    return outright | (np.maximum(c, a) >= reference_cut)
