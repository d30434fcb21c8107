"""Closed-form checks of featsmooth.bounds: known values, inverses, monotonicity, inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from featsmooth import bounds
from featsmooth.errors import InputError

scores = st.floats(0.0, 0.999999, allow_nan=False)
radii = st.floats(0.0, 5.0, allow_nan=False)
sigmas = st.floats(0.01, 2.0, allow_nan=False)


def test_fcsb_matches_worked_numbers():
    # Paper-style score S_hat = (1 + S)/2: S_hat = 0.95 -> S = 0.9; S_hat = 0.99 -> S = 0.98.
    got = bounds.fcsb(0.9, [0.1, 0.25], 0.25)
    np.testing.assert_allclose(got, [0.787, 0.481], atol=5e-4)
    got = bounds.fcsb(0.98, [0.1, 0.25, 0.5], 0.25)
    np.testing.assert_allclose(got, [0.946, 0.815, 0.256], atol=5e-4)


def test_fcsb_formula_and_radius_zero():
    s, r, sigma = 0.7, 0.3, 0.5
    expected = 2 * stats.norm.cdf(stats.norm.ppf((1 + s) / 2) - r / sigma) - 1
    assert bounds.fcsb(s, r, sigma) == pytest.approx(expected, abs=1e-12)
    assert bounds.fcsb(s, 0.0, sigma) == pytest.approx(s, abs=1e-12)


def test_fcsb_is_nan_where_bound_negative():
    out = bounds.fcsb(0.5, [0.0, 0.1, 1.0, 3.0], 0.25)
    assert not np.isnan(out[0]) and np.isnan(out[-1]) and np.isnan(out[-2])
    assert np.all(np.isnan(bounds.fcsb(-0.2, [0.0, 0.5], 0.25)))
    assert np.all(out[~np.isnan(out)] >= 0)


def test_fcsb_score_one_certifies_everything_and_broadcasts():
    assert np.all(bounds.fcsb(1.0, [0.0, 10.0], 0.1) == 1.0)
    grid = bounds.fcsb(np.array([[0.9], [0.99]]), np.array([0.1, 0.2, 0.3]), 0.25)
    assert grid.shape == (2, 3) and grid.dtype == np.float64
    assert np.all(grid[1] > grid[0])


def test_certified_radius_closed_form_and_nan():
    s, c, sigma = 0.95, 0.5, 0.25
    expected = sigma * (stats.norm.ppf((1 + s) / 2) - stats.norm.ppf(0.75))
    assert bounds.certified_radius(s, c, sigma) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(bounds.certified_radius(0.4, 0.5, 0.25))
    assert bounds.certified_radius(1.0, 0.5, 0.25) == np.inf


@pytest.mark.parametrize(
    "call",
    [
        lambda: bounds.fcsb(0.9, 0.1, 0.0),
        lambda: bounds.fcsb(0.9, -0.1, 0.25),
        lambda: bounds.fcsb(1.5, 0.1, 0.25),
        lambda: bounds.certified_radius(0.9, 1.0, 0.25),
        lambda: bounds.certified_radius(0.9, -0.1, 0.25),
        lambda: bounds.mean_lower_bound([0.5, 2.0], 0.01),
        lambda: bounds.mean_lower_bound([0.5, 0.4], 0.0),
        lambda: bounds.mean_lower_bound([0.5, 0.4], 1.0),
        lambda: bounds.mean_lower_bound([0.5, 0.4], 0.1, "magic"),
        lambda: bounds.mean_lower_bound([], 0.1),
        lambda: bounds.mean_lower_bound([0.5, float("nan")], 0.1),
        lambda: bounds.bernstein_lower_bound([0.5], 0.1),
    ],
)
def test_bad_input_is_a_clear_error(call):
    with pytest.raises(InputError):
        call()


@settings(max_examples=200, deadline=None)
@given(s1=scores, s2=scores, r=radii, sigma=sigmas)
def test_fcsb_increases_with_score(s1, s2, r, sigma):
    lo, hi = sorted((s1, s2))
    b_lo, b_hi = bounds.fcsb(lo, r, sigma), bounds.fcsb(hi, r, sigma)
    if not np.isnan(b_lo):
        assert b_hi >= b_lo - 1e-12


@settings(max_examples=200, deadline=None)
@given(s=scores, r1=radii, r2=radii, sigma=sigmas)
def test_fcsb_decreases_with_radius(s, r1, r2, sigma):
    lo, hi = sorted((r1, r2))
    b_lo, b_hi = bounds.fcsb(s, lo, sigma), bounds.fcsb(s, hi, sigma)
    if not np.isnan(b_hi):
        assert b_lo >= b_hi - 1e-12


@settings(max_examples=200, deadline=None)
@given(s=scores, r=radii, sig1=sigmas, sig2=sigmas)
def test_fcsb_increases_with_sigma_at_fixed_score(s, r, sig1, sig2):
    lo, hi = sorted((sig1, sig2))
    b_lo, b_hi = bounds.fcsb(s, r, lo), bounds.fcsb(s, r, hi)
    if not np.isnan(b_lo):
        assert b_hi >= b_lo - 1e-12


@settings(max_examples=200, deadline=None)
@given(s=st.floats(0.01, 0.9999), c=st.floats(0.001, 0.99), sigma=sigmas)
def test_certified_radius_inverts_fcsb(s, c, sigma):
    r = bounds.certified_radius(s, c, sigma)
    if np.isnan(r):
        # no certificate where S < c, or where S exceeds c by less than the rounding margin
        assert s < c + 1e-9
        return
    assert bounds.fcsb(s, r, sigma) == pytest.approx(c, abs=1e-7)
    # slightly beyond the radius the certificate falls below c
    beyond = bounds.fcsb(s, r + 1e-3 * sigma, sigma)
    assert np.isnan(beyond) or beyond < c
    assert bounds.required_score(c, r, sigma) == pytest.approx(s, abs=1e-7)


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=300),
    alpha=st.floats(1e-6, 0.5),
)
def test_fixed_sample_bounds_are_below_the_sample_mean(values, alpha):
    # (The betting bound is a running intersection over time: an early run of high values
    # may legitimately leave it above the final sample mean, so it is not included here.)
    mean = float(np.mean(values))
    for method in ("hoeffding", "bernstein"):
        assert bounds.mean_lower_bound(values, alpha, method) <= mean + 1e-9


def test_bounds_tighten_with_more_samples_and_order_as_expected():
    rng = np.random.default_rng(0)
    x = np.cos(rng.normal(0, 0.2, 20_000))  # mean exp(-0.02), tiny variance
    true_mean = math.exp(-0.02)
    gaps = {
        m: [true_mean - bounds.mean_lower_bound(x[:n], 1e-3, m) for n in (500, 20_000)]
        for m in bounds.METHODS
    }
    for gap in gaps.values():
        assert gap[1] < gap[0]
    # at low variance both variance-adaptive bounds beat Hoeffding by a wide margin
    assert gaps["bernstein"][1] < gaps["hoeffding"][1] / 4
    assert gaps["betting"][1] < gaps["hoeffding"][1] / 4


def test_betting_rejects_agrees_with_bisection():
    rng = np.random.default_rng(1)
    values = np.clip(rng.normal(0.6, 0.2, size=(6, 400)), -1, 1)
    low = bounds.betting_lower_bounds(values, 0.01, 400)
    assert np.all(
        bounds.betting_rejects(values, 0.01, 400, float(low.min()) - 1e-6)[low > low.min()]
    )
    assert not np.any(bounds.betting_rejects(values, 0.01, 400, 0.99))
    for row, lo in zip(values, low):
        assert bounds.betting_rejects(row[None], 0.01, 400, lo - 1e-6)[0]
        assert not bounds.betting_rejects(row[None], 0.01, 400, lo + 1e-6)[0]


def test_betting_counts_mask_padding():
    rng = np.random.default_rng(2)
    row = np.clip(rng.normal(0.5, 0.3, 300), -1, 1)
    padded = np.concatenate([row, np.full(200, -1.0)])[None]
    a = bounds.betting_lower_bounds(padded, 0.05, counts=[300])[0]
    b = bounds.betting_lower_bounds(row[None], 0.05)[0]
    assert a == b


def test_clopper_pearson_matches_scipy_exact_interval():
    for k, n, alpha in [(0, 10, 0.05), (7, 10, 0.05), (990, 1000, 0.001), (1000, 1000, 0.01)]:
        ours = float(bounds.clopper_pearson_lower(k, n, alpha))
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
        assert ours == pytest.approx(ref.low, abs=1e-10)


def test_probability_radius_abstains_at_half():
    assert np.isnan(bounds.probability_radius(0.5, 0.25))
    assert bounds.probability_radius(0.975, 0.5) == pytest.approx(0.5 * 1.959964, abs=1e-5)


def test_hoeffding_sample_count_closed_form():
    n = bounds.samples_needed("hoeffding", 1e-3, 0.01)
    assert 2 * math.sqrt(math.log(1e3) / (2 * n)) <= 0.01
    assert 2 * math.sqrt(math.log(1e3) / (2 * (n - 1))) > 0.01


# --------------------------------------------------------------------------------------
# Rounding: every closed form is compared with a 50-digit reference (mpmath). With
# Phi^-1((1 + S)/2) = sqrt(2) erfinv(S), B = erf(erfinv(S) - r/(sigma sqrt 2)) exactly.

mpmath = pytest.importorskip("mpmath")
mpmath.mp.dps = 50
ULP = 2.0**-53
NEAR_ONE = [1.0 - k * ULP for k in (1, 2, 3, 5, 8, 64)] + [1.0 - 1e-15, 1.0 - 1e-12]
SCORES = [*NEAR_ONE, 0.999, 0.9, 0.5, 0.3, 1e-6, 0.0]
SIGMAS = [0.12, 0.25, 0.5, 1.0]
RADII = [0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0]


def _exact_fcsb(s: float, r: float, sigma: float):
    return mpmath.erf(mpmath.erfinv(mpmath.mpf(s)) - mpmath.mpf(r) / (sigma * mpmath.sqrt(2)))


def _exact_radius(s: float, c: float, sigma: float):
    return sigma * mpmath.sqrt(2) * (mpmath.erfinv(mpmath.mpf(s)) - mpmath.erfinv(mpmath.mpf(c)))


def _assert_sound_and_tight(got: float, exact, slack: float = 1e-10) -> None:
    """``got`` is NaN (no certificate) or within ``slack`` below the exact value."""
    if math.isnan(got):
        assert exact < slack, f"abstained although the exact value is {float(exact)}"
        return
    assert got <= exact, f"{got!r} is above the exact value {mpmath.nstr(exact, 20)}"
    assert got >= exact - slack * max(1.0, abs(float(exact)))


def test_fcsb_never_exceeds_the_exact_value_near_one_and_elsewhere():
    for s in SCORES:
        for sigma in SIGMAS:
            got = bounds.fcsb(s, RADII, sigma)
            for g, r in zip(got, RADII):
                _assert_sound_and_tight(float(g), _exact_fcsb(s, r, sigma))


def test_fcsb_at_the_largest_score_below_one_is_not_a_perfect_certificate():
    s = float(np.nextafter(1.0, 0.0))
    # the exact bound is negative at r = 1, sigma = 0.12: no certificate
    assert _exact_fcsb(s, 1.0, 0.12) < 0
    assert np.isnan(bounds.fcsb(s, 1.0, 0.12))
    assert bounds.fcsb(s, 0.5, 0.12) < 1.0
    radius = float(bounds.certified_radius(s, 0.0, 0.12))
    assert math.isfinite(radius)
    _assert_sound_and_tight(radius, _exact_radius(s, 0.0, 0.12))


def test_fcsb_near_zero_keeps_its_sign_soundly():
    # radii where the exact bound is within 1e-6 of zero, on both sides
    for s, sigma in [(0.9, 0.25), (0.5, 0.5), (1.0 - 3 * ULP, 0.12)]:
        r0 = float(_exact_radius(s, 0.0, sigma))  # B(s, r0) = 0 exactly
        for dr in (-1e-6, -1e-9, 0.0, 1e-9, 1e-6):
            r = r0 + dr
            got = float(bounds.fcsb(s, r, sigma))
            exact = _exact_fcsb(s, r, sigma)
            if exact < 0:
                assert math.isnan(got)
            else:
                assert math.isnan(got) or got <= exact


@settings(max_examples=300, deadline=None)
@given(
    s=st.floats(0.0, 1.0, exclude_max=True),
    r=st.floats(0.0, 3.0),
    sigma=st.floats(0.01, 2.0),
    c=st.floats(0.0, 0.99),
)
def test_closed_forms_never_overstate_on_random_inputs(s, r, sigma, c):
    _assert_sound_and_tight(float(bounds.fcsb(s, r, sigma)), _exact_fcsb(s, r, sigma))
    exact_r = _exact_radius(s, c, sigma)
    _assert_sound_and_tight(float(bounds.certified_radius(s, c, sigma)), exact_r)
    # the score asked of a target is never below the exact one
    exact_s = mpmath.erf(mpmath.erfinv(mpmath.mpf(c)) + mpmath.mpf(r) / (sigma * mpmath.sqrt(2)))
    assert bounds.required_score(c, r, sigma) >= exact_s or bounds.required_score(c, r, sigma) == 1


def test_certified_radius_and_probability_radius_against_the_reference():
    for s in SCORES:
        for c in (0.0, 0.5, 0.9):
            for sigma in SIGMAS:
                got = float(bounds.certified_radius(s, c, sigma))
                _assert_sound_and_tight(got, _exact_radius(s, c, sigma))
    for p in [0.5 + 1e-12, 0.6, 0.99, 1.0 - 1e-12, 1.0 - ULP]:
        for sigma in SIGMAS:
            got = float(bounds.probability_radius(p, sigma))
            exact = sigma * mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(p) - 1)
            _assert_sound_and_tight(got, exact)


# --------------------------------------------------------------------------------------
# Betting bound when the sample size is chosen by looking at the data


def test_betting_default_is_valid_when_the_sample_size_is_chosen_from_the_data():
    # Samples cos(N(0, 0.8)) in [-1, 1], mean exp(-0.32). A user computes the bound at
    # n = 50, 100, ..., 1000 and keeps the best: with the default (anytime) schedule the
    # failure rate stays within alpha; with bets tuned to each peeked n (what a
    # horizon = len(values) default did) it does not, which shows the test can tell.
    alpha, runs, sizes = 0.25, 300, range(50, 1001, 50)
    true_mean = math.exp(-0.32)
    rng = np.random.default_rng(12345)
    data = np.cos(rng.normal(0.0, 0.8, size=(runs, sizes.stop - 1)))
    # the batch form shares mean_lower_bound's default; checked on one row
    assert (
        bounds.mean_lower_bound(data[0], alpha) == bounds.betting_lower_bounds(data[:1], alpha)[0]
    )
    safe = np.max([bounds.betting_lower_bounds(data[:, :t], alpha) for t in sizes], axis=0)
    peeked = np.max([bounds.betting_lower_bounds(data[:, :t], alpha, t) for t in sizes], axis=0)
    limit = alpha * runs + 3 * math.sqrt(alpha * (1 - alpha) * runs)
    assert np.sum(safe > true_mean) <= limit, (np.sum(safe > true_mean), limit)
    assert np.sum(peeked > true_mean) > limit, (np.sum(peeked > true_mean), limit)


def test_betting_horizon_fixed_in_advance_is_a_confidence_sequence():
    # a horizon fixed before sampling stays valid under peeking: running intersection
    rng = np.random.default_rng(7)
    values = np.cos(rng.normal(0.0, 0.5, 600))
    prefix = [
        bounds.mean_lower_bound(values[:t], 0.05, "betting", horizon=400) for t in (100, 300, 600)
    ]
    assert prefix == sorted(prefix)
    anytime = [bounds.mean_lower_bound(values[:t], 0.05) for t in (100, 300, 600)]
    assert anytime == sorted(anytime)
