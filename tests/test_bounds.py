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
        assert s < c
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
    low = bounds.betting_lower_bounds(values, 0.01)
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
    a = bounds.betting_lower_bounds(padded, 0.05, counts=[300], anytime=True)[0]
    b = bounds.betting_lower_bounds(row[None], 0.05, anytime=True)[0]
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
