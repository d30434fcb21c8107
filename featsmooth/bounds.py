"""Pure mathematics of Feature-space Smoothing certificates (numpy/scipy only, float64).

Notation (docs/theory.md has the proofs). ``f`` is a unit-norm feature encoder,
``f_hat(x) = E f(x + eps)`` with ``eps ~ N(0, sigma^2 I)`` in pixel units, and a *score*
``S in [-1, 1]`` is the value ``<u, f_hat(x)>`` for a unit reference vector ``u`` fixed at
the clean input: ``u = f_hat(x)/||f_hat(x)||`` gives ``S = ||f_hat(x)||`` (smoothed
reference), ``u = f(x)`` gives the paper's ``S_c`` (clean reference).

Guarantee (Theorem 1 of docs/theory.md). If ``S_low <= <u, f_hat(x)>`` then for every
perturbation with ``||delta||_2 <= r``::

    <u, f_hat(x + delta)> >= B(S_low, r) = 2 Phi(Phi^-1((1 + S_low)/2) - r/sigma) - 1,

and because ``||f_hat(x + delta)|| <= 1`` this lower-bounds the cosine between ``u`` and
``f_hat(x + delta)`` *only when B >= 0*. :func:`fcsb` therefore returns NaN, meaning
"no certificate", wherever B < 0.

Confidence bounds. :func:`mean_lower_bound` turns i.i.d. samples in [-1, 1] into a lower
bound ``L`` on their mean with ``P[L > mean] <= alpha``. Three methods are offered:

* ``"hoeffding"``: ``mean - 2 sqrt(ln(1/alpha) / (2n))``, variance-blind baseline.
* ``"bernstein"``: empirical Bernstein bound of Maurer & Pontil (2009), Theorem 4.
* ``"betting"``: the betting confidence sequence of Waudby-Smith & Ramdas (2023), one-sided,
  with predictable plug-in bets. It is *anytime valid*: the probability that the bound
  ever exceeds the mean, at any sample size, is at most alpha, so sampling may stop at a
  data-dependent time, provided the bet schedule does not depend on that time (see
  :func:`betting_lower_bounds`).

Which guarantee each mode gives (docs/theory.md, section 5):

* Hoeffding, Bernstein, and betting with ``horizon=N``: ``P[bound > mean] <= alpha`` when
  the sample size was fixed before looking at the samples. Betting with a horizon ``N``
  fixed in advance is moreover valid at every sample size, including data-chosen ones,
  as long as ``N`` itself was not chosen from the data.
* Betting with ``horizon=None`` (the default): the anytime schedule, valid simultaneously
  over all sample sizes, so the sample size may be chosen by looking at the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats

from featsmooth.errors import InputError

DEFAULT_METHOD = "betting"

# Truncation of the betting fraction, c in (0, 1): the wealth of a bet on the mean being
# above m can fall at most to (1 - c) per sample. Waudby-Smith & Ramdas suggest 1/2 or 3/4;
# our means sit near 1 with tiny variance, where larger bets pay: on cos-of-Gaussian samples
# (bench/bench_bounds.py) c = 0.9 needs ~45% fewer samples than 1/2 at S = 0.99 and costs
# little at S = 0.5. Any c in (0, 1) is valid.
BET_TRUNCATION = 0.9
_BISECTION_STEPS = 60  # halves [0, 1] down to 2^-60, below float64 resolution of the mean


def _check_sigma(sigma: ArrayLike) -> np.ndarray:
    sigma = np.asarray(sigma, dtype=np.float64)
    if not np.all(np.isfinite(sigma)) or np.any(sigma <= 0):
        raise InputError(f"sigma must be a positive finite number, got {sigma}")
    return sigma


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    return alpha


def _check_score(score: ArrayLike) -> np.ndarray:
    score = np.asarray(score, dtype=np.float64)
    finite = score[~np.isnan(score)]
    if np.any(finite < -1.0) or np.any(finite > 1.0):
        raise InputError("a score is a cosine-type value and must lie in [-1, 1]")
    return score


# Rounding. Every closed form below is evaluated in float64 and then pushed outward by
# _SAFETY (relative, plus the same absolute amount) at each step, in the direction that
# can only shrink a certificate. scipy's ndtri/erf are accurate to a few ulps (~1e-15
# relative); 2^-44 (~5.7e-14) dominates that with a wide margin while moving no bound by
# more than ~1e-12. docs/theory.md section 7 has the argument.
_SAFETY = 2.0**-44


def _down(x: np.ndarray) -> np.ndarray:
    """A float64 value no larger than the exact quantity that ``x`` approximates."""
    return x - _SAFETY * (np.abs(x) + 1.0)


def _up(x: np.ndarray) -> np.ndarray:
    """A float64 value no smaller than the exact quantity that ``x`` approximates."""
    return x + _SAFETY * (np.abs(x) + 1.0)


def _level(score: np.ndarray) -> np.ndarray:
    """``Phi^-1((1 + S)/2)`` computed as ``-Phi^-1((1 - S)/2)``, rounded down.

    ``(1 + S)/2`` rounds to 1 for S within ~1e-16 of 1, where ``Phi^-1`` is infinite: the
    old form over-certified there. ``1 - S`` is exact for S in [1/2, 1] (Sterbenz), so near
    S = 1 the only error left is ndtri's own, which :func:`_down` covers. +inf at S = 1.
    """
    with np.errstate(divide="ignore"):
        level = -special.ndtri((1.0 - score) / 2.0)
    return np.where(np.isposinf(level), level, _down(level))


def _half_normal_mass(z: np.ndarray) -> np.ndarray:
    """``2 Phi(z) - 1 = erf(z / sqrt 2)``, rounded down (erf keeps relative precision near 0)."""
    return _down(special.erf(z / math.sqrt(2.0)))


def fcsb(score_lower: ArrayLike, radius: ArrayLike, sigma: ArrayLike) -> np.ndarray:
    """Feature Cosine Similarity Bound: certified cosine at l2 radius ``radius``.

    Returns ``B = 2 Phi(Phi^-1((1 + S)/2) - r/sigma) - 1`` where ``B >= 0``, else NaN
    (no certificate: a negative lower bound on ``<u, f_hat(x+delta)>`` says nothing
    about the cosine, since ``||f_hat(x+delta)||`` may be below one). NaN scores
    propagate as NaN. Arguments broadcast like numpy arrays; the result is float64.

    Guarantee: if ``score_lower <= <u, f_hat(x)>`` for a unit ``u`` fixed at the clean
    input ``x``, then ``cos(u, f_hat(x + delta)) >= fcsb(score_lower, r, sigma)`` for all
    ``||delta||_2 <= r`` wherever the result is not NaN. The float64 result is never above
    the exact value of the formula (outward rounding, at most ~1e-12 below it).
    """
    score = _check_score(score_lower)
    radius = np.asarray(radius, dtype=np.float64)
    if np.any(radius < 0) or np.any(np.isnan(radius)):
        raise InputError("radius must be non-negative")
    sigma = _check_sigma(sigma)
    with np.errstate(invalid="ignore", over="ignore"):
        level = _level(score)
        bound = _half_normal_mass(_down(level - _up(radius / sigma)))
        # At S = 1, Phi^-1(1) = inf and the bound is exactly 1 at every finite radius.
        bound = np.where(np.isposinf(level) & np.isfinite(radius), 1.0, bound)
        bound = np.where(bound >= 0.0, bound, np.nan)
    return np.asarray(bound, dtype=np.float64)


def certified_radius(score_lower: ArrayLike, cosine: ArrayLike, sigma: ArrayLike) -> np.ndarray:
    """Largest l2 radius at which :func:`fcsb` still certifies cosine >= ``cosine``.

    ``R = sigma (Phi^-1((1 + S)/2) - Phi^-1((1 + c)/2))`` for a target ``c in [0, 1)``.
    NaN where ``S < c`` (not even the clean input is certified at that cosine; also
    within ~1e-12 above ``c``, where rounding could not tell); ``inf`` where ``S == 1``.
    Inverse of :func:`fcsb` up to rounding, which is outward: never above the exact radius.
    """
    score = _check_score(score_lower)
    cosine = np.asarray(cosine, dtype=np.float64)
    if np.any(cosine < 0) or np.any(cosine >= 1) or np.any(np.isnan(cosine)):
        raise InputError("target cosine must lie in [0, 1): negative bounds certify nothing")
    sigma = _check_sigma(sigma)
    with np.errstate(invalid="ignore", over="ignore"):
        target_level = _up(-special.ndtri((1.0 - cosine) / 2.0))
        radius = _down(sigma * _down(_level(score) - target_level))
        radius = np.where(np.isposinf(_level(score)), np.inf, radius)
        radius = np.where(radius >= 0.0, radius, np.nan)
    return np.asarray(radius, dtype=np.float64)


def required_score(cosine: ArrayLike, radius: ArrayLike, sigma: ArrayLike) -> np.ndarray:
    """Smallest score S whose certificate reaches ``cosine`` at ``radius`` (inverse in S).

    Rounded up (capped at 1), so a score at or above it certifies the target up to the
    ~1e-12 rounding margin of :func:`fcsb`.
    """
    cosine = np.asarray(cosine, dtype=np.float64)
    if np.any(cosine < 0) or np.any(cosine >= 1):
        raise InputError("target cosine must lie in [0, 1)")
    radius = np.asarray(radius, dtype=np.float64)
    sigma = _check_sigma(sigma)
    level = _up(_up(-special.ndtri((1.0 - cosine) / 2.0)) + _up(radius / sigma))
    return np.asarray(np.minimum(_up(special.erf(level / math.sqrt(2.0))), 1.0), dtype=np.float64)


def probability_radius(p_lower: ArrayLike, sigma: ArrayLike) -> np.ndarray:
    """Radius ``sigma * Phi^-1(p)`` certified by a lower bound ``p > 1/2`` on a probability.

    Used for the pairwise-margin and hard-vote (Cohen et al. 2019) prediction certificates;
    NaN (abstain) where ``p <= 1/2``. Computed as ``-sigma Phi^-1(1 - p)`` (``1 - p`` is
    exact for p >= 1/2) and rounded down, so it is never above the exact radius.
    """
    p_lower = np.asarray(p_lower, dtype=np.float64)
    sigma = _check_sigma(sigma)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        level = -special.ndtri(1.0 - p_lower)
        radius = np.where(np.isposinf(level), np.inf, _down(sigma * _down(level)))
        radius = np.where((p_lower > 0.5) & (radius > 0.0), radius, np.nan)
    return np.asarray(radius, dtype=np.float64)


# --------------------------------------------------------------------------------------
# Confidence bounds for the mean of i.i.d. samples in [-1, 1]


def _as_samples(values: ArrayLike) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise InputError("values must be a non-empty 1-D array of samples")
    if not np.all(np.isfinite(values)):
        raise InputError("values must be finite")
    # Inner products of float unit vectors may exceed one by a few ulps; anything beyond
    # that is a caller bug, since the bounds below rely on the range [-1, 1].
    if np.any(np.abs(values) > 1.0 + 1e-6):
        raise InputError("values must lie in [-1, 1]")
    return np.clip(values, -1.0, 1.0)


def hoeffding_lower_bound(values: ArrayLike, alpha: float) -> float:
    """Hoeffding (1963): ``mean - 2 sqrt(ln(1/alpha) / (2 n))`` for samples in [-1, 1]."""
    values = _as_samples(values)
    alpha = _check_alpha(alpha)
    n = values.size
    return float(values.mean() - 2.0 * math.sqrt(math.log(1.0 / alpha) / (2.0 * n)))


def bernstein_lower_bound(values: ArrayLike, alpha: float) -> float:
    """Empirical Bernstein bound (Maurer & Pontil 2009, Theorem 4), needs n >= 2.

    For Y in [0, 1] with unbiased sample variance V: with probability >= 1 - alpha,
    ``E Y >= mean(Y) - sqrt(2 V ln(2/alpha) / n) - 7 ln(2/alpha) / (3 (n - 1))``.
    Applied to ``Y = (X + 1)/2`` and mapped back to [-1, 1].
    """
    values = _as_samples(values)
    alpha = _check_alpha(alpha)
    n = values.size
    if n < 2:
        raise InputError("the empirical Bernstein bound needs at least 2 samples")
    y = (values + 1.0) / 2.0
    log_term = math.log(2.0 / alpha)
    variance = float(y.var(ddof=1))
    slack = math.sqrt(2.0 * variance * log_term / n) + 7.0 * log_term / (3.0 * (n - 1))
    return float(2.0 * (y.mean() - slack) - 1.0)


def _betting_fractions(y: np.ndarray, alpha: float, horizon: int | None) -> np.ndarray:
    """Predictable plug-in bets of Waudby-Smith & Ramdas (2023), Section 5.

    ``lambda_i`` depends only on ``y_1..y_{i-1}``: a regularised running mean and variance
    (prior mean 1/2, prior variance 1/4), so the wealth process below is a nonnegative
    supermartingale under ``E Y <= m`` whatever stopping rule the caller uses.
    With a ``horizon`` N fixed in advance the bets are tuned to be tightest at N:
    ``sqrt(2 ln(1/alpha) / (N var))``; without one they follow the anytime schedule
    ``sqrt(2 ln(1/alpha) / (var * i * ln(1 + i)))``, good at every i (sequential use).
    Shape: y is (..., t); the result has the same shape.
    """
    t = y.shape[-1]
    idx = np.arange(1, t + 1, dtype=np.float64)
    csum = np.cumsum(y, axis=-1)
    mu_hat = (0.5 + csum) / (idx + 1.0)  # mu_hat_i uses y_1..y_i
    dev2 = np.cumsum((y - mu_hat) ** 2, axis=-1)
    var_hat = (0.25 + dev2) / (idx + 1.0)
    # shift by one: the bet for sample i uses the estimates after sample i-1
    var_prev = np.concatenate([np.full((*y.shape[:-1], 1), 0.25), var_hat[..., :-1]], axis=-1)
    scale = float(horizon) if horizon is not None else idx * np.log1p(idx)
    return np.sqrt(2.0 * math.log(1.0 / alpha) / (scale * var_prev))


def _log_wealth_max(y: np.ndarray, lam: np.ndarray, m: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """max over times s of log K_s(m), K_s(m) = prod_{i<=s} (1 + min(lam_i, c/m)(y_i - m)).

    y, lam: (B, t); m: (B,); valid: (B, t) mask of samples present. Each factor is
    decreasing in m and at least 1 - c > 0, so the result is non-increasing in m.
    """
    m = m[:, None]
    bet = np.minimum(lam, BET_TRUNCATION / np.maximum(m, 1e-300))
    log_factors = np.where(valid, np.log1p(bet * (y - m)), 0.0)
    log_wealth = np.cumsum(log_factors, axis=-1)
    return np.max(log_wealth, axis=-1, initial=0.0)


def betting_lower_bounds(
    values: np.ndarray,
    alpha: float,
    horizon: int | None = None,
    counts: ArrayLike | None = None,
) -> np.ndarray:
    """Betting lower confidence bounds for several sample sequences at once.

    Args:
        values: ``(B, t)`` samples in [-1, 1]; row ``b`` uses its first ``counts[b]`` entries.
        alpha: error probability, ``P[exists s: bound_s > mean] <= alpha`` for each row.
        horizon: ``None`` (default) selects the anytime bet schedule, valid however the
            sample size was chosen. An integer ``N`` tunes the bets to be tightest at ``N``
            samples; the bound is then valid at every sample size *provided N was fixed
            before looking at the samples*. Passing ``N = len(samples)`` after choosing
            the sample size from the data voids the guarantee (the bets would then depend
            on the data through ``N``).
        counts: number of valid samples per row (default: all ``t``).

    Returns:
        ``(B,)`` lower bounds on the means, in [-1, 1]. The bound is the smallest ``m`` not
        rejected at any time ``s <= counts[b]`` by the wealth test ``K_s(m) >= 1/alpha``,
        i.e. the running intersection of the confidence sequence.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] == 0:
        raise InputError("values must have shape (B, t) with t >= 1")
    if np.any(np.abs(values) > 1.0 + 1e-6):
        raise InputError("values must lie in [-1, 1]")
    alpha = _check_alpha(alpha)
    b, t = values.shape
    counts = np.full(b, t) if counts is None else np.asarray(counts, dtype=np.int64)
    horizon = None if horizon is None else int(horizon)
    if np.any(counts < 1) or np.any(counts > t) or (horizon is not None and horizon < 1):
        raise InputError("counts must lie in [1, t] and horizon must be >= 1")
    y = (np.clip(values, -1.0, 1.0) + 1.0) / 2.0
    valid = np.arange(t)[None, :] < counts[:, None]
    y = np.where(valid, y, 0.5)
    lam = _betting_fractions(y, alpha, horizon)
    threshold = math.log(1.0 / alpha)
    # Bisection on m in [0, 1]: "rejected" (wealth reached 1/alpha) is a down-set in m.
    lo = np.zeros(b)  # invariant: lo is rejected or lo == 0
    hi = np.ones(b)  # invariant: hi is not rejected (K(1) <= 1 < 1/alpha)
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2.0
        rejected = _log_wealth_max(y, lam, mid, valid) >= threshold
        lo = np.where(rejected, mid, lo)
        hi = np.where(rejected, hi, mid)
    # Every m < lo is rejected, so the smallest non-rejected m is >= lo: lo is sound.
    return 2.0 * lo - 1.0


def betting_rejects(
    values: np.ndarray, alpha: float, horizon: int | None, mean: float
) -> np.ndarray:
    """Whether each row's betting test rejects ``E X <= mean`` (so its bound is >= mean).

    One wealth evaluation per row instead of a bisection; ``values`` is ``(B, t)`` in
    [-1, 1] with all entries valid, ``mean`` in [-1, 1]; ``horizon`` as in
    :func:`betting_lower_bounds`.
    """
    values = np.asarray(values, dtype=np.float64)
    alpha = _check_alpha(alpha)
    y = (np.clip(values, -1.0, 1.0) + 1.0) / 2.0
    lam = _betting_fractions(y, alpha, horizon)
    m = np.full(y.shape[0], (float(mean) + 1.0) / 2.0)
    valid = np.ones(y.shape, dtype=bool)
    return _log_wealth_max(y, lam, m, valid) >= math.log(1.0 / alpha)


def betting_lower_bound(values: ArrayLike, alpha: float, horizon: int | None = None) -> float:
    """Betting lower bound (Waudby-Smith & Ramdas 2023) for one sequence.

    ``horizon=None``: anytime schedule, valid for a data-chosen sample size; an integer
    horizon must be fixed before sampling (see :func:`betting_lower_bounds`).
    """
    values = _as_samples(values)
    return float(betting_lower_bounds(values[None, :], alpha, horizon)[0])


# --------------------------------------------------------------------------------------
# The registry of confidence-bound methods: everything else (CLI help, validation, the
# sequential-stopping and recompute rules, sanity checks, tests) reads it.


@dataclass(frozen=True)
class BoundMethod:
    """A lower confidence bound on the mean of i.i.d. samples in [-1, 1].

    Attributes:
        name: the name users pass as ``method``.
        lower_bound: ``(samples, alpha, horizon) -> L`` with ``P[L > mean] <= alpha``;
            ``horizon`` is the sample size fixed in advance, or ``None`` when the sample
            size may be chosen from the data (a method may ignore it).
        anytime_valid: whether the guarantee survives a data-chosen sample size
            (sequential stopping, early stops) when called with ``horizon=None``.
        min_samples: the fewest samples it accepts.
        summary: one line for help texts.
        variance_adaptive: whether its slack shrinks with the sample variance (so it needs
            far fewer samples when the projections concentrate, as they do for S near 1).
        min_lower_bound: optional ``(rows (k, n), alpha, horizon) -> m``, a faster way to a
            value ``m`` at most every row's ``lower_bound`` (see :func:`min_lower_bound`).
    """

    name: str
    lower_bound: Callable[[np.ndarray, float, int | None], float]
    anytime_valid: bool
    min_samples: int = 1
    summary: str = ""
    variance_adaptive: bool = True
    min_lower_bound: Callable[[np.ndarray, float, int | None], float] | None = None


_REGISTRY: dict[str, BoundMethod] = {}
#: Names of the registered methods, in registration order (a live view of the registry).
METHODS = _REGISTRY.keys()


def register(method: BoundMethod) -> BoundMethod:
    """Add a bound method; its name must be new. Returns it (usable as a one-liner)."""
    if method.name in _REGISTRY:
        raise ValueError(f"a bound method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> BoundMethod:
    """The registered method called ``name``; a clear :class:`InputError` otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown bound method {name!r}; choose one of {', '.join(METHODS)}"
        ) from None


def anytime_methods() -> list[str]:
    """Names of the methods valid at a data-chosen sample size."""
    return [m.name for m in _REGISTRY.values() if m.anytime_valid]


def _min_betting_lower_bound(rows: np.ndarray, alpha: float, horizon: int | None) -> float:
    """At most every row's betting bound, with one wealth test per row instead of a
    bisection: rows whose wealth test already rejects the running minimum ``m`` (so their
    bound is at least ``m``) are skipped. Which rows are skipped depends on the samples;
    the inequality holds for every outcome, so that choice costs nothing."""
    order = np.argsort(rows.mean(axis=1))
    best = float(betting_lower_bounds(rows[order[:1]], alpha, horizon)[0])
    rest = rows[order[1:]]
    if rest.shape[0]:
        hard = rest[~betting_rejects(rest, alpha, horizon, best)]
        if hard.shape[0]:
            best = min(best, float(betting_lower_bounds(hard, alpha, horizon).min()))
    return best


def min_lower_bound(
    rows: ArrayLike, alpha: float, method: str = DEFAULT_METHOD, horizon: int | None = None
) -> float:
    """A value at most the lower confidence bound (level ``1 - alpha``) of every row of
    ``rows`` ``(k, n)``. If some row's bound holds, so does this for that row's mean, hence
    ``P[result > min_j mean_j] <= alpha`` with no split of ``alpha`` over the rows when the
    row of the smallest mean is fixed in advance (docs/theory.md, Proposition 5)."""
    values = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    found = get_method(method)
    if found.min_lower_bound is not None:
        return float(found.min_lower_bound(values, alpha, horizon))
    return min(mean_lower_bound(row, alpha, method, horizon=horizon) for row in values)


for _method in (
    BoundMethod(
        "betting", betting_lower_bound, anytime_valid=True,
        min_lower_bound=_min_betting_lower_bound,
        summary="betting confidence sequence (Waudby-Smith & Ramdas 2023); anytime valid",
    ),
    BoundMethod(
        "bernstein", lambda values, alpha, horizon: bernstein_lower_bound(values, alpha),
        anytime_valid=False, min_samples=2,
        summary="empirical Bernstein (Maurer & Pontil 2009); fixed n",
    ),
    BoundMethod(
        "hoeffding", lambda values, alpha, horizon: hoeffding_lower_bound(values, alpha),
        anytime_valid=False, variance_adaptive=False,
        summary="Hoeffding (1963), variance-blind baseline; fixed n",
    ),
):  # fmt: skip
    register(_method)


def mean_lower_bound(
    values: ArrayLike,
    alpha: float,
    method: str = DEFAULT_METHOD,
    *,
    horizon: int | None = None,
) -> float:
    """Lower confidence bound on the mean of i.i.d. samples in [-1, 1].

    Guarantee: ``P[bound > E X] <= alpha``, in the following sense per method.

    * ``"hoeffding"``, ``"bernstein"``: for a sample size fixed before looking at the
      samples (``horizon`` is ignored). Choosing the size from the data voids it.
    * ``"betting"`` with ``horizon=None`` (default): simultaneously over all sample sizes,
      so it stays valid when the sample size was chosen by looking at the data.
    * ``"betting"`` with ``horizon=N``: bets tuned to ``N`` samples, tighter there; valid
      at every sample size as long as ``N`` was fixed before sampling. Pass it only when
      that is so (e.g. ``N = n`` of a run whose ``n`` was set in advance).

    Any other registered method (:func:`register`) states its own guarantee.
    """
    return float(get_method(method).lower_bound(values, alpha, horizon))


def mean_upper_bound(
    values: ArrayLike, alpha: float, method: str = DEFAULT_METHOD, *, horizon: int | None = None
) -> float:
    """Upper confidence bound on the mean (the lower bound of the negated samples).

    Same guarantee and ``horizon`` semantics as :func:`mean_lower_bound`.
    """
    return -mean_lower_bound(-np.asarray(values, dtype=np.float64), alpha, method, horizon=horizon)


def clopper_pearson_lower(successes: ArrayLike, trials: ArrayLike, alpha: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound on a binomial proportion at level 1 - alpha.

    ``P[p_low > p] <= alpha``; ``p_low = Beta(alpha; k, n - k + 1)`` quantile, 0 if k = 0.
    """
    alpha = _check_alpha(alpha)
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if np.any(k < 0) or np.any(k > n) or np.any(n < 1):
        raise InputError("need 0 <= successes <= trials and trials >= 1")
    with np.errstate(invalid="ignore"):
        low = stats.beta.ppf(alpha, k, n - k + 1.0)
    return np.where(k > 0, low, 0.0)


def samples_needed(
    method: str,
    alpha: float,
    tolerance: float,
    *,
    std: float = 0.0,
) -> int:
    """Rough number of samples for the slack of a bound to fall below ``tolerance``.

    Closed form for Hoeffding; for Bernstein, the smallest n with slack <= tolerance at the
    given sample standard deviation (in [-1, 1] units). Used for planning and sanity checks.
    """
    alpha = _check_alpha(alpha)
    if tolerance <= 0:
        raise InputError("tolerance must be positive")
    if method == "hoeffding":
        return math.ceil(2.0 * math.log(1.0 / alpha) / tolerance**2)
    if method == "bernstein":
        log_term = math.log(2.0 / alpha)
        var01 = (std / 2.0) ** 2
        n = 2
        while (
            2.0 * (math.sqrt(2 * var01 * log_term / n) + 7 * log_term / (3 * (n - 1))) > tolerance
        ):
            n = math.ceil(n * 1.1) + 1
        return n
    raise InputError(f"no closed-form sample count for method {method!r}")


def split_alpha(alpha: float, parts: int) -> float:
    """Bonferroni split: each of ``parts`` statements gets ``alpha / parts``."""
    alpha = _check_alpha(alpha)
    if parts < 1:
        raise InputError("parts must be >= 1")
    return alpha / parts


def as_radii(radius: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Radii as a float64 array (a scalar becomes shape ())."""
    radii = np.asarray(radius, dtype=np.float64)
    if np.any(radii < 0) or np.any(~np.isfinite(radii)):
        raise InputError("radii must be non-negative and finite")
    return radii
