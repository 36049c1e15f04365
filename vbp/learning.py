"""Adaptive bidders: Hedge (exponential weights) over a grid of margin shares.

Bids in a VBP round are opened in public, so after each award every firm can work out what any
margin it might have bid would have earned against the bids actually seen (full-information,
"foregone" payoffs). Each firm keeps, per product category, a weight per margin share on a grid;
it bids by drawing a grid point from its weights and, after the award, adds ``rate`` x the scaled
foregone payoff of every grid point to its log-weights, discounting older evidence by ``memory``.
This is smoothed fictitious play against the observed field.

All prices and costs are fractions of the unit's reference price. A bid of ``nan`` means the
firm does not bid.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
from scipy.special import logsumexp

__all__ = ["margin_grid", "margin_bids", "foregone_payoffs", "HedgeLearner"]

AwardFn = Callable[[np.ndarray], np.ndarray]  # bids (S, n) -> agreed fractions (S, n); nan = no bid


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def margin_grid(size: int) -> np.ndarray:
    """(size,) margin shares theta in [0, 1], evenly spaced, 0 and 1 included; size >= 2."""
    if not (_is_int(size) and size >= 2):
        raise ValueError(f"margin_grid size must be an integer >= 2, got {size!r}")
    return np.linspace(0.0, 1.0, int(size))


def margin_bids(theta: np.ndarray | float, reserve: np.ndarray, cap: float) -> np.ndarray:
    """Bids that take share theta of the room between each bidder's reserve and the cap.

    bid = reserve + theta * (cap - reserve): theta = 0 bids the reserve (the lowest acceptable
    price), theta = 1 bids the cap. A scalar theta gives reserve's shape; theta (K,) with reserve
    (n,) gives (n, K). nan where reserve > cap (the bidder cannot bid) or reserve is nan.
    """
    if not (_is_real(cap) and 0.0 < cap < math.inf):
        raise ValueError(f"cap must be a finite price > 0 (fraction of the reference price), got {cap!r}")
    th = np.asarray(theta, dtype=float)
    if th.size and not (np.all(th >= 0.0) and np.all(th <= 1.0)):
        raise ValueError(f"theta must be margin shares in [0, 1], got {theta!r}")
    r = np.asarray(reserve, dtype=float)
    if th.ndim:
        r = r[..., None]
    with np.errstate(invalid="ignore"):
        # Clipped so rounding never lifts theta = 1 above the cap (an invalid bid) or a bid below the reserve.
        out = np.clip(r + th * (cap - r), r, cap)
        return np.where(r > cap, np.nan, out)


def foregone_payoffs(
    award_fn: AwardFn, bids: np.ndarray, reserve: np.ndarray, cost: np.ndarray, cap: float, theta: np.ndarray
) -> np.ndarray:
    """(n, K) profit share each bidder would have earned at each margin share, rivals' bids fixed.

    Entry (i, k) is (b_ik - cost_i) * agreed_i, where b_ik = margin_bids(theta_k, reserve_i, cap)
    replaces bidder i's bid and every rival bids as in `bids` (nan = no bid); agreed_i is bidder i's
    agreed volume fraction from `award_fn`. Units: fraction of the reference price x share of the
    unit's demand. All n*K counterfactual bid vectors go to award_fn in one (n*K, n) call. Rows of
    bidders whose reserve is above the cap (or missing) are 0.
    """
    b = np.asarray(bids, dtype=float)
    th = np.asarray(theta, dtype=float)
    if b.ndim != 1:
        raise ValueError(f"bids must be 1-dimensional (one unit), got shape {b.shape}")
    if th.ndim != 1 or th.size == 0:
        raise ValueError(f"theta must be a non-empty 1-dimensional grid, got shape {th.shape}")
    n, k = b.size, th.size
    r = np.asarray(reserve, dtype=float)
    c = np.asarray(cost, dtype=float)
    for name, a in (("reserve", r), ("cost", c)):
        if a.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if n == 0:
        return np.zeros((0, k))
    own = margin_bids(th, r, cap)  # (n, K)
    # Row i*K + k: the observed bids with bidder i's bid replaced by own[i, k].
    trial = np.repeat(b[None, :], n * k, axis=0)
    rows = np.arange(n * k)
    who = np.repeat(np.arange(n), k)
    trial[rows, who] = own.ravel()
    agreed = np.asarray(award_fn(trial), dtype=float)
    if agreed.shape != (n * k, n):
        raise ValueError(f"award_fn must return shape {(n * k, n)}, got {agreed.shape}")
    mine = agreed[rows, who].reshape(n, k)
    with np.errstate(invalid="ignore"):
        pay = (own - c[:, None]) * mine
    return np.where(np.isfinite(own), np.nan_to_num(pay, nan=0.0), 0.0)


class HedgeLearner:
    """Each firm's weights over the margin grid, per category: the mutable learning state of one
    replication (the scenario itself stays immutable).

    Weights are kept as normalised log-probabilities per (firm, category); a firm not yet updated
    in a category holds uniform weights.
    """

    def __init__(self, grid_size: int = 11, rate: float = 2.0, memory: float = 0.9) -> None:
        if not (_is_int(grid_size) and grid_size >= 2):
            raise ValueError(f"HedgeLearner grid_size must be an integer >= 2, got {grid_size!r}")
        if not (_is_real(rate) and math.isfinite(rate) and rate >= 0):
            raise ValueError(f"HedgeLearner rate must be a finite number >= 0, got {rate!r}")
        if not (_is_real(memory) and 0.0 < memory <= 1.0):
            raise ValueError(f"HedgeLearner memory must be in (0, 1], got {memory!r}")
        self.rate = float(rate)  # log-weight gain for the best arm of one update
        self.memory = float(memory)  # discount of older evidence per update, in (0, 1]
        self.theta = margin_grid(int(grid_size))  # (K,) margin shares in [0, 1]
        self.theta.setflags(write=False)
        self._logp: dict[tuple[int, str], np.ndarray] = {}

    def __repr__(self) -> str:
        return (
            f"HedgeLearner(grid_size={self.theta.size}, rate={self.rate!r}, memory={self.memory!r}, "
            f"states={len(self._logp)})"
        )

    def _log_probs(self, firm: int, category: str) -> np.ndarray:
        """Normalised log-probabilities (K,) of one firm; uniform when unseen (not stored)."""
        got = self._logp.get((int(firm), category))
        return np.full(self.theta.size, -math.log(self.theta.size)) if got is None else got

    def probabilities(self, firm: int, category: str) -> np.ndarray:
        """(K,) probability of each grid point for `firm` in `category`; uniform if unseen."""
        p = np.exp(self._log_probs(firm, category))
        return p / p.sum()

    def choose(self, firms: np.ndarray, category: str, rng: np.random.Generator) -> np.ndarray:
        """(n,) grid indices, each drawn from its firm's probabilities by inversion.

        Draws exactly one rng.random(n), so results are reproducible and do not depend on the
        order in which firms were first seen.
        """
        ids = np.asarray(firms).ravel()
        u = rng.random(ids.size)
        if ids.size == 0:
            return np.zeros(0, dtype=int)
        p = np.stack([self.probabilities(f, category) for f in ids.tolist()])
        cdf = np.cumsum(p, axis=1)
        idx = (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=1)
        # Rounding can put u at the very top; never pick an arm with zero probability.
        last = p.shape[1] - 1 - np.argmax(p[:, ::-1] > 0, axis=1)
        return np.minimum(idx, last)

    def update(self, firms: np.ndarray, category: str, payoffs: np.ndarray) -> None:
        """Apply foregone payoffs (n, K), row j to firm firms[j], in row order.

        Each row is scaled by its maximum, so `rate` is the log-weight gain of that row's best arm
        whatever the unit's size; rows with max <= 0 carry no information and are skipped. Then
        L <- memory * L + rate * scaled_row, renormalised with logsumexp (a shift of L does not
        change the probabilities, so nothing overflows).
        """
        ids = np.asarray(firms).ravel()
        pay = np.asarray(payoffs, dtype=float)
        if pay.shape != (ids.size, self.theta.size):
            raise ValueError(f"payoffs must have shape ({ids.size}, {self.theta.size}), got {pay.shape}")
        if not np.all(np.isfinite(pay)):
            raise ValueError("payoffs must be finite")
        for f, row in zip(ids.tolist(), pay):
            top = row.max()
            if top <= 0:
                continue
            logw = self.memory * self._log_probs(f, category) + self.rate * (row / top)
            self._logp[(int(f), category)] = logw - logsumexp(logw)

    def mean_theta(self, firm: int, category: str) -> float:
        """Expected margin share in [0, 1] of `firm` in `category` under its weights."""
        return float(np.clip(self.probabilities(firm, category) @ self.theta, 0.0, 1.0))  # clip rounding

    def snapshot(self) -> dict[tuple[int, str], np.ndarray]:
        """Copy of the probabilities of every (firm, category) updated so far."""
        return {key: np.exp(v) for key, v in sorted(self._logp.items())}
