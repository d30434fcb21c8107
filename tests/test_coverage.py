"""Soundness of the confidence bounds, checked three independent ways.

1. Coverage of certify: over many independent runs, S_low exceeds the truth in at most
   ~alpha of them. The synthetic encoder with several frequencies has an exactly known
   smoothed feature, so each run's target ``<v, f_hat(x)>`` (for the direction v that run
   chose) and ``S_c`` are exact. A large alpha gives the test power: a bound that is
   anti-conservative by even a small amount fails it (see ``test_coverage_test_has_power``).
2. Exact coverage of each bound on two-point laws (a finite sum, no sampling error).
3. Each bound recomputed here from its published definition (Hoeffding, Maurer-Pontil,
   and the wealth process of Waudby-Smith & Ramdas with Ville's threshold 1/alpha), since a
   coverage test at one alpha cannot tell a level alpha from a level 2 alpha.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from featsmooth import SmoothedEncoder, bounds
from featsmooth.encoders.synthetic import TrigEncoder

SIGMA = 0.25
ALPHA = 0.1
RUNS = 400


def _allowed_failures(runs: int, alpha: float) -> int:
    """Upper 0.999 quantile of Binomial(runs, alpha): exceeding it means miscoverage."""
    return int(stats.binom.ppf(0.999, runs, alpha))


@pytest.fixture(scope="module")
def encoder() -> TrigEncoder:
    gen = torch.Generator().manual_seed(0)
    freq = torch.randn((3, 3, 4, 4), generator=gen, dtype=torch.float64)
    freq *= torch.tensor([0.6, 1.5, 3.0], dtype=torch.float64)[:, None, None, None] / 4.0
    return TrigEncoder(freq, weights=torch.tensor([3.0, 1.0, 1.0]))


def _run(encoder, method, seed, **kwargs):
    x = torch.rand((1, 3, 4, 4), generator=torch.Generator().manual_seed(1)).expand(
        RUNS, -1, -1, -1
    )
    certs = SmoothedEncoder(encoder, SIGMA, batch_size=4096).certify(
        x.contiguous(), n0=8, alpha=ALPHA, method=method, seed=seed, **kwargs
    )
    exact = encoder.smoothed(x[:1], SIGMA)[0].numpy()
    target = np.array([c.direction @ exact for c in certs])  # <v, f_hat(x)> <= S
    lows = np.array([c.score_lower for c in certs])
    clean_lows = np.array([c.clean_score_lower for c in certs])
    return lows, clean_lows, target


@pytest.mark.parametrize("method", bounds.METHODS)
def test_fixed_sample_coverage(encoder, method):
    lows, clean_lows, target = _run(encoder, method, seed=100, n=200)
    true_s, true_sc = encoder.true_score(SIGMA), encoder.true_clean_score(SIGMA)
    assert np.all(target <= true_s + 1e-12)
    limit = _allowed_failures(RUNS, ALPHA)
    assert int(np.sum(lows > target)) <= limit
    assert int(np.sum(lows > true_s)) <= limit
    assert int(np.sum(clean_lows > true_sc)) <= limit


def test_sequential_coverage_with_optional_stopping(encoder):
    # stopping as soon as the bound looks tight is the case a fixed-n bound cannot survive
    lows, clean_lows, target = _run(encoder, "betting", seed=200, n=3000, tolerance=0.05)
    limit = _allowed_failures(RUNS, ALPHA)
    assert int(np.sum(lows > target)) <= limit
    assert int(np.sum(clean_lows > encoder.true_clean_score(SIGMA))) <= limit


def test_coverage_test_has_power(encoder):
    """The same check rejects a bound that is anti-conservative by a small margin."""
    x = torch.rand((1, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    smoothed = SmoothedEncoder(encoder, SIGMA)
    values = torch.stack(
        [
            smoothed.noisy_features(x, 200, generator=torch.Generator().manual_seed(s))[0]
            for s in range(RUNS)
        ]
    ).double()  # (RUNS, 200, k)
    exact = encoder.smoothed(x, SIGMA)[0]
    true_clean = values.new_tensor(encoder.true_clean_score(SIGMA))
    clean_f = torch.nn.functional.normalize(encoder(x).double(), dim=1)[0]
    proj = (values @ clean_f).numpy()
    # a normal-approximation bound with half its width: what a factor-2 error would give
    z = stats.norm.ppf(1 - ALPHA)
    naive = proj.mean(axis=1) - 0.5 * z * proj.std(axis=1, ddof=1) / np.sqrt(proj.shape[1])
    assert int(np.sum(naive > float(true_clean))) > _allowed_failures(RUNS, ALPHA)
    assert float(exact.norm()) == pytest.approx(encoder.true_score(SIGMA))


# ------------------------------------------------------------------ exact coverage
# For samples X in {-1, +1} with P[X = 1] = q, the failure probability P[L > E X] of a
# bound is a finite sum: over the count k (Hoeffding and Bernstein depend on the samples only
# through k) or over all 2^n sequences (betting depends on their order). No randomness, so
# no tolerance: the exact probability must not exceed alpha. These laws are where dropping
# a term of a bound shows (see each test).


def _exact_failure_by_count(lower, n: int, q: float, alpha: float) -> float:
    mean = 2.0 * q - 1.0
    fails = [k for k in range(n + 1) if lower(np.r_[np.ones(k), -np.ones(n - k)], alpha) > mean]
    return float(sum(stats.binom.pmf(k, n, q) for k in fails))


@pytest.mark.parametrize(("n", "q", "alpha"), [(100, 0.5, 0.01), (50, 0.5, 0.01), (40, 0.7, 0.05)])
def test_hoeffding_exact_coverage(n, q, alpha):
    # Halving the slack (dropping the range factor b - a = 2) fails 0.067 at (100, 0.5, 0.01).
    assert _exact_failure_by_count(bounds.hoeffding_lower_bound, n, q, alpha) <= alpha


@pytest.mark.parametrize(("n", "q", "alpha"), [(20, 0.95, 0.1), (10, 0.9, 0.05), (30, 0.97, 0.05)])
def test_bernstein_small_n_exact_coverage_on_a_skewed_law(n, q, alpha):
    # With probability q^n (0.36 at (20, 0.95)) every sample is +1: the sample variance is 0
    # and only the 7 ln(2/alpha) / (3(n-1)) term keeps the bound below the mean.
    assert _exact_failure_by_count(bounds.bernstein_lower_bound, n, q, alpha) <= alpha


@pytest.mark.parametrize("horizon", [None, 12])
@pytest.mark.parametrize(("q", "alpha"), [(0.5, 0.1), (0.3, 0.25), (0.8, 0.1)])
def test_betting_exact_coverage_over_all_sequences(q, alpha, horizon):
    n = 12
    seqs = np.array(list(itertools.product([-1.0, 1.0], repeat=n)))  # (4096, 12)
    ones = (seqs > 0).sum(axis=1)
    prob = q**ones * (1.0 - q) ** (n - ones)
    lows = bounds.betting_lower_bounds(seqs, alpha, horizon)
    assert float(prob.sum()) == pytest.approx(1.0)
    assert float(prob[lows > 2.0 * q - 1.0].sum()) <= alpha


# ------------------------------------------------------------------ independent recomputation


def _reference_max_log_wealth(y: np.ndarray, m: float, alpha: float, horizon: int | None) -> float:
    """``max_{s <= t} log K_s(m)`` for ``y`` in [0, 1], written out from the definitions.

    Waudby-Smith & Ramdas (2023), predictable plug-in bets: ``mu_i = (1/2 + sum_{j<=i}
    y_j)/(i + 1)``, ``var_i = (1/4 + sum_{j<=i} (y_j - mu_j)^2)/(i + 1)``, bet
    ``lambda_i = sqrt(2 ln(1/alpha) / (scale_i var_{i-1}))`` with ``scale_i = N`` (horizon) or
    ``i ln(1 + i)`` (anytime), truncated at ``c/m``; ``K_s(m) = prod_{i<=s} (1 +
    lambda_i(m) (y_i - m))``. One sample at a time, plain floats, no numpy.
    """
    c = bounds.BET_TRUNCATION
    log_wealth = best = 0.0
    total = squares = 0.0
    var_prev = 0.25
    for i, yi in enumerate(y.tolist(), start=1):
        scale = horizon if horizon is not None else i * math.log(1.0 + i)
        lam = math.sqrt(2.0 * math.log(1.0 / alpha) / (scale * var_prev))
        log_wealth += math.log(1.0 + min(lam, c / m) * (yi - m))
        best = max(best, log_wealth)
        total += yi
        mu = (0.5 + total) / (i + 1)
        squares += (yi - mu) ** 2
        var_prev = (0.25 + squares) / (i + 1)
    return best


def _sequences():
    rng = np.random.default_rng(5)
    return [
        np.cos(rng.normal(0.0, 0.6, 300)),  # mean ~0.84, low variance
        np.where(rng.random(200) < 0.7, 1.0, -1.0),  # two-point, skewed
        np.clip(rng.normal(0.2, 0.4, 250), -1.0, 1.0),
    ]


@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.25])
@pytest.mark.parametrize("schedule", ["anytime", "horizon"])
def test_betting_bound_is_where_the_wealth_reaches_one_over_alpha(alpha, schedule):
    """Ville's inequality: the rejection threshold of the wealth is exactly 1/alpha.

    The bound L is the smallest mean not rejected, so the wealth at (1 + L)/2, recomputed
    here from the definition, equals 1/alpha (it is continuous in m), is above it just below
    and below it just above. A threshold of 1/(2 alpha) would put ln 2 between them.
    """
    threshold = math.log(1.0 / alpha)
    for x in _sequences():
        horizon = len(x) if schedule == "horizon" else None
        low = bounds.betting_lower_bounds(x[None], alpha, horizon)[0]
        assert low == bounds.mean_lower_bound(x, alpha, "betting", horizon=horizon)
        m = (low + 1.0) / 2.0
        y = (x + 1.0) / 2.0
        assert 0.0 < m < float(y.mean())
        assert _reference_max_log_wealth(y, m, alpha, horizon) == pytest.approx(threshold, abs=1e-6)
        assert _reference_max_log_wealth(y, m - 1e-7, alpha, horizon) > threshold
        assert _reference_max_log_wealth(y, m + 1e-7, alpha, horizon) < threshold
        # the one-shot wealth test agrees with the reference on either side of the bound
        for mean, expected in [(low - 0.01, True), (low + 0.01, False), (low - 1e-6, True)]:
            assert bool(bounds.betting_rejects(x[None], alpha, horizon, mean)[0]) is expected
            reference = _reference_max_log_wealth(y, (mean + 1.0) / 2.0, alpha, horizon)
            assert (reference >= threshold) is expected


def test_hoeffding_closed_form():
    """``mean - (b - a) sqrt(ln(1/alpha) / (2n))`` with range ``b - a = 2`` (Hoeffding 1963)."""
    rng = np.random.default_rng(6)
    for n, alpha in [(1, 0.5), (37, 0.01), (5000, 1e-6)]:
        x = rng.uniform(-1.0, 1.0, n)
        expected = float(np.mean(x)) - 2.0 * math.sqrt(math.log(1.0 / alpha) / (2.0 * n))
        assert bounds.hoeffding_lower_bound(x, alpha) == pytest.approx(expected, rel=1e-12)
        assert bounds.mean_lower_bound(x, alpha, "hoeffding") == pytest.approx(expected, rel=1e-12)
    # all samples at +1 and ln(1/alpha) = n/2: the slack is exactly 1
    assert bounds.hoeffding_lower_bound(np.ones(10), math.exp(-5.0)) == pytest.approx(
        0.0, abs=1e-12
    )


def test_bernstein_closed_form():
    """Maurer & Pontil (2009), Theorem 4, for ``Z = (X + 1)/2`` in [0, 1], mapped back."""
    rng = np.random.default_rng(7)
    for n, alpha in [(2, 0.3), (25, 0.01), (4000, 1e-5)]:
        x = np.cos(rng.normal(0.0, 1.0, n))
        z = (x + 1.0) / 2.0
        log_term = math.log(2.0 / alpha)
        z_low = (
            z.mean()
            - math.sqrt(2.0 * z.var(ddof=1) * log_term / n)
            - 7.0 * log_term / (3.0 * (n - 1))
        )
        assert bounds.bernstein_lower_bound(x, alpha) == pytest.approx(2.0 * z_low - 1.0, rel=1e-12)
    # zero variance: only the 7 ln(2/alpha) / (3(n-1)) term remains
    assert bounds.bernstein_lower_bound(np.ones(11), 0.1) == pytest.approx(
        1.0 - 2.0 * 7.0 * math.log(20.0) / 30.0, rel=1e-12
    )
