"""A confidence ball for the whole smoothed feature: every cosine and margin from one statement.

``f_1..f_n`` are i.i.d. unit vectors (noisy features, flattened and l2-normalised) with mean
``mu = f_hat(x)``; ``m = mean_i f_i``. With probability at least ``1 - alpha``
(docs/theory.md, Proposition 7)::

    ||m - mu|| <= eps(||mu||),   eps(s) = a + sqrt(b (1 - s^2)),

where ``1 - ||mu||^2 = E||f - mu||^2`` is the total variance of a unit vector, and

* ``"mcdiarmid"``: ``a = sqrt(2 ln(1/alpha) / n)``, ``b = 1/n`` (bounded differences);
* ``"bernstein"``: ``a = 4 ln(2/alpha) / n``, ``b = 2 ln(2/alpha) / n`` (Pinelis' Bernstein
  inequality in Hilbert space, in the form of Smale & Zhou 2007, Lemma 2).

Because ``eps`` falls as ``||mu||`` grows, the event pins ``||mu||`` from below
(:func:`norm_lower_bound`, a closed form), and then ``mu`` lies in the ball of radius
``eps(S_low)`` around ``m`` (:func:`ball_radius`). On that one event, for *every* vector
``u`` at once::

    <u, mu> >= <u, m> - eps(S_low) ||u||,

so the smoothed score (``S >= S_low``), the clean-reference score, and every class margin
``<t_A - t_B, mu>`` are bounded together: no union over references or rivals. The price is
that ``eps`` grows with the *total* variance ``1 - S^2`` of the feature, summed over all its
dimensions, where a scalar bound on one projection pays only that projection's variance
(``bench/bench_prediction_certificates.py`` measures both on the shipped photos).
Fixed ``n`` only (chosen before sampling); these are not confidence sequences.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from featsmooth.errors import InputError

KINDS = ("mcdiarmid", "bernstein")

# relative and absolute safety margins that keep the float64 closed forms on the safe side
# (the rounding of a few operations is below 2^-50 relative; see docs/theory.md, section 7)
_REL, _ABS = 2.0**-40, 2.0**-50


def _check(n: int, alpha: float, kind: str) -> None:
    if kind not in KINDS:
        raise InputError(f"unknown vector bound {kind!r}; choose one of {', '.join(KINDS)}")
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise InputError(f"n must be a positive integer, got {n!r}")
    if not (0.0 < alpha < 1.0):
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")


def coefficients(n: int, alpha: float, kind: str = "bernstein") -> tuple[float, float]:
    """``(a, b)`` of ``eps(s) = a + sqrt(b (1 - s^2))`` for ``n`` samples at level ``alpha``."""
    _check(n, alpha, kind)
    if kind == "mcdiarmid":
        return math.sqrt(2.0 * math.log(1.0 / alpha) / n), 1.0 / n
    log_term = math.log(2.0 / alpha)
    return 4.0 * log_term / n, 2.0 * log_term / n


def deviation(s: ArrayLike, n: int, alpha: float, kind: str = "bernstein") -> np.ndarray:
    """``eps(s)``: the radius the event allows when ``||mu|| = s`` (decreasing in ``s``)."""
    a, b = coefficients(n, alpha, kind)
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0)
    return (a + np.sqrt(b * (1.0 - s * s))) * (1.0 + _REL) + _ABS


def norm_lower_bound(mean_norm: ArrayLike, n: int, alpha: float, kind: str = "bernstein"):
    """``S_low``: the smallest ``s`` in ``[0, 1]`` with ``||m|| - s <= eps(s)``.

    On the event of the ball, ``||m|| - ||mu|| <= ||m - mu|| <= eps(||mu||)``, so
    ``||mu|| >= S_low``. Closed form: with ``c = ||m|| - a``, 0 if ``c <= sqrt(b)``, else
    the smaller root ``(c - sqrt(b (1 + b - c^2))) / (1 + b)`` of
    ``(1 + b) s^2 - 2 c s + c^2 - b`` (docs/theory.md, Proposition 7).
    """
    a, b = coefficients(n, alpha, kind)
    norm = np.asarray(mean_norm, dtype=np.float64)
    if np.any(~np.isfinite(norm)) or np.any(norm < 0) or np.any(norm > 1 + 1e-9):
        raise InputError("the norm of a mean of unit vectors must be in [0, 1]")
    c = np.minimum(norm, 1.0) - a
    root = (c - np.sqrt(np.maximum(b * (1.0 + b - c * c), 0.0))) / (1.0 + b)
    low = np.where(c <= math.sqrt(b), 0.0, root)
    return np.maximum(low * (1.0 - _REL) - _ABS, 0.0)


def ball_radius(mean_norm: ArrayLike, n: int, alpha: float, kind: str = "bernstein"):
    """``eps(S_low)``: on the event, ``||m - mu||`` is at most this (and so is
    ``<u, m> - <u, mu>`` for every unit ``u``)."""
    return deviation(norm_lower_bound(mean_norm, n, alpha, kind), n, alpha, kind)


def samples_for_width(
    width: float, alpha: float, score: float, kind: str = "bernstein", limit: int = 10**9
) -> int:
    """The fewest ``n`` with ``eps(score) <= width``: samples the ball needs for a bound
    ``width`` below the mean when ``||mu|| = score`` (planning, not a certificate)."""
    if not width > 0:
        raise InputError("width must be positive")
    lo, hi = 1, 1
    while float(deviation(score, hi, alpha, kind)) > width:
        hi *= 2
        if hi > limit:
            raise InputError(f"more than {limit} samples needed")
    while lo < hi:
        mid = (lo + hi) // 2
        if float(deviation(score, mid, alpha, kind)) <= width:
            hi = mid
        else:
            lo = mid + 1
    return lo
