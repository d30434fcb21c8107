"""The confidence ball for the mean feature (docs/theory.md, Proposition 7), checked two ways:
closed form against a direct search, and coverage on unit vectors whose mean is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from featsmooth import vector_bounds as V
from featsmooth.errors import InputError


@pytest.mark.parametrize("kind", V.KINDS)
@pytest.mark.parametrize("n", [10, 300, 10_000])
def test_norm_lower_bound_is_the_smallest_feasible_norm(kind, n):
    grid = np.linspace(0.0, 1.0, 200_001)
    eps = V.deviation(grid, n, 0.01, kind)
    for norm in (0.05, 0.3, 0.8, 0.95, 0.999, 1.0):
        feasible = grid[norm - grid <= eps]
        low = float(V.norm_lower_bound(norm, n, 0.01, kind))
        # never above the smallest feasible norm, and not below it by more than the grid step
        assert low <= feasible[0] + 1e-12
        assert low >= feasible[0] - 1e-5 or feasible[0] == 0.0


@pytest.mark.parametrize("kind", V.KINDS)
def test_radius_falls_with_n_and_grows_with_variance(kind):
    assert V.ball_radius(0.95, 10_000, 0.001, kind) < V.ball_radius(0.95, 300, 0.001, kind)
    assert V.deviation(0.5, 300, 0.001, kind) > V.deviation(0.99, 300, 0.001, kind)
    # the ball is not vacuous once n is large
    assert 0.9 < V.norm_lower_bound(0.99, 1_000_000, 0.001, kind) < 0.99


def _unit_set(rng, k: int, d: int, spread: float) -> np.ndarray:
    """``k`` unit vectors around one direction: the uniform law on them has an exact mean."""
    x = np.zeros((k, d))
    x[:, 0] = 1.0
    x += spread * rng.standard_normal((k, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", V.KINDS)
@pytest.mark.parametrize("spread", [0.1, 0.6])
def test_coverage_on_a_law_with_known_mean(kind, spread):
    rng = np.random.default_rng(7)
    points = _unit_set(rng, 64, 32, spread)
    mu = points.mean(0)
    alpha, n, runs = 0.2, 40, 3000
    misses = {"ball": 0, "norm": 0, "projection": 0}
    u = rng.standard_normal(32)
    u /= np.linalg.norm(u)
    for _ in range(runs):
        m = points[rng.integers(0, 64, n)].mean(0)
        eps = float(V.ball_radius(np.linalg.norm(m), n, alpha, kind))
        misses["ball"] += np.linalg.norm(m - mu) > eps
        misses["norm"] += V.norm_lower_bound(np.linalg.norm(m), n, alpha, kind) > np.linalg.norm(mu)
        misses["projection"] += u @ m - eps > u @ mu
    for name, count in misses.items():
        assert count / runs <= alpha, (name, count)


def test_total_variance_identity_used_by_the_proof():
    """E||m - mu||^2 = (1 - ||mu||^2) / n for unit vectors (Monte Carlo vs closed form)."""
    rng = np.random.default_rng(3)
    points = _unit_set(rng, 50, 16, 0.5)
    mu = points.mean(0)
    n = 25
    sq = [np.sum((points[rng.integers(0, 50, n)].mean(0) - mu) ** 2) for _ in range(20_000)]
    assert np.mean(sq) == pytest.approx((1 - mu @ mu) / n, rel=0.03)


def test_a_too_small_radius_would_be_caught():
    """The coverage test can fail: a radius smaller by sqrt(n) misses far more than alpha."""
    rng = np.random.default_rng(11)
    points = _unit_set(rng, 64, 32, 0.6)
    mu, n = points.mean(0), 40
    eps = float(V.ball_radius(0.8, n, 0.2)) / np.sqrt(n)
    misses = sum(
        np.linalg.norm(points[rng.integers(0, 64, n)].mean(0) - mu) > eps for _ in range(500)
    )
    assert misses / 500 > 0.2


def test_samples_for_width_is_the_smallest_n():
    n = V.samples_for_width(0.01, 0.001, 0.95, "bernstein")
    assert V.deviation(0.95, n, 0.001) <= 0.01 < V.deviation(0.95, n - 1, 0.001)


def test_bad_input_is_a_clear_error():
    with pytest.raises(InputError, match="unknown vector bound"):
        V.coefficients(10, 0.1, "hoeffding")
    with pytest.raises(InputError, match="alpha"):
        V.coefficients(10, 1.5)
    with pytest.raises(InputError, match="positive integer"):
        V.coefficients(0, 0.1)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        V.norm_lower_bound(1.5, 10, 0.1)
