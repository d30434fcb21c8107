"""Coverage of the pairwise-margin prediction certificate without a split over rivals.

docs/theory.md, Proposition 5: with every rival's bound at level ``alpha``, the reported
``min_B p_B,low`` exceeds the true ``p* = min_B p_B`` with probability at most ``alpha``
(only the bound of the closest rival has to hold). Checked two ways:

* end to end through :meth:`SmoothedEncoder.certify_prediction` with ``K = 12`` classes on
  a synthetic encoder whose smoothed feature is known exactly, so every ``p_B`` and the
  closest rival are closed forms;
* on :func:`featsmooth.bounds.min_lower_bound` alone, with rival samples of known
  means, where the individual bounds are also computed: *some* rival's bound fails in far
  more than ``alpha`` of the runs (a statement about all rivals at once would need the
  union bound), while the minimum fails in at most ``alpha`` of them.

A large alpha gives the checks power, as in tests/test_coverage.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from featsmooth import SmoothedEncoder, bounds
from featsmooth.certificates import ABSTAIN
from featsmooth.encoders.synthetic import TrigEncoder

SIGMA = 0.25
ALPHA = 0.1
RUNS = 400
N0, N = 16, 300
# angles between t_A and each rival: the closest rival, a near tie, then farther ones
ANGLES = (1.15, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0)
NUM_CLASSES = len(ANGLES) + 1


def _allowed_failures(runs: int, alpha: float) -> int:
    """Upper 0.999 quantile of Binomial(runs, alpha): exceeding it means miscoverage."""
    return int(stats.binom.ppf(0.999, runs, alpha))


@pytest.fixture(scope="module")
def setup():
    """Encoder, image, class embeddings ``(K, 6)`` and the exact smoothed feature."""
    gen = torch.Generator().manual_seed(0)
    freq = torch.randn((3, 3, 4, 4), generator=gen, dtype=torch.float64)
    freq *= torch.tensor([0.6, 1.5, 3.0], dtype=torch.float64)[:, None, None, None] / 4.0
    encoder = TrigEncoder(freq, weights=torch.tensor([3.0, 1.0, 1.0]))
    x = torch.rand((1, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    exact = encoder.smoothed(x, SIGMA)[0]  # f_hat(x), norm S
    u = exact / exact.norm()
    # t_B = cos(beta) u + sin(beta) e_B with e_B a unit vector orthogonal to u: then
    # <t_A - t_B, f_hat> / ||t_A - t_B|| = S sin(beta / 2) for t_A = u.
    rng = torch.Generator().manual_seed(2)
    rows = [u]
    for beta in ANGLES:
        e = torch.randn(6, generator=rng, dtype=torch.float64)
        e -= (e @ u) * u
        rows.append(math.cos(beta) * u + math.sin(beta) * e / e.norm())
    return encoder, x, torch.stack(rows), exact


def _exact_p(classes: torch.Tensor, exact: torch.Tensor, a: int) -> np.ndarray:
    """Exact ``p_B = (1 + <t_a - t_B, f_hat> / ||t_a - t_B||) / 2`` of every rival of ``a``."""
    rivals = torch.arange(classes.shape[0]) != a
    diffs = classes[a] - classes[rivals]
    return ((1.0 + (diffs @ exact) / diffs.norm(dim=1)) / 2.0).numpy()


def test_exact_rival_probabilities_match_the_closed_form(setup):
    encoder, _, classes, exact = setup
    p = _exact_p(classes, exact, 0)
    score = encoder.true_score(SIGMA)
    closed = (1.0 + score * np.sin(np.array(ANGLES) / 2.0)) / 2.0
    np.testing.assert_allclose(p, closed, atol=1e-12)
    assert int(np.argmin(p)) == 0 and 0.7 < p.min() < 0.8  # the closest rival is known


def _certify(setup, method: str, alpha: float, seed: int):
    encoder, x, classes, _ = setup
    images = x.expand(RUNS, -1, -1, -1).contiguous()
    return SmoothedEncoder(encoder, SIGMA, batch_size=4096).certify_prediction(
        images, classes, n0=N0, n=N, alpha=alpha, method=method, seed=seed
    )


@pytest.mark.parametrize("method", bounds.METHODS)
def test_margin_certificate_coverage_without_split(setup, method):
    _, _, classes, exact = setup
    certs = _certify(setup, method, ALPHA, seed=300)
    # The largest radius the truth supports for the class each run chose: sigma Phi^-1(p*).
    # A reported radius above it means min_B p_B,low > p*, the failure of Proposition 5.
    failures = 0
    for cert in certs:
        p_star = float(_exact_p(classes, exact, cert.estimate).min())
        if not math.isnan(cert.margin_radius):
            assert cert.prediction == cert.estimate
            true_radius = SIGMA * stats.norm.ppf(p_star) if p_star > 0.5 else 0.0
            failures += cert.margin_radius > true_radius
    assert failures <= _allowed_failures(RUNS, ALPHA)
    # the check has something to bite on: most runs certify, at radii near the truth
    radii = np.array([c.margin_radius for c in certs])
    certified = ~np.isnan(radii)
    assert certified.mean() > 0.9
    p_star0 = float(_exact_p(classes, exact, 0).min())
    assert np.median(radii[certified]) > 0.5 * SIGMA * stats.norm.ppf(p_star0)

    # power: the old Bonferroni certificate (each rival at alpha / (K - 1)) from the same
    # samples (same seed) abstains at least as often and certifies smaller radii
    old = _certify(setup, method, ALPHA / (NUM_CLASSES - 1), seed=300)
    old_radii = np.array([c.margin_radius for c in old])
    old_certified = ~np.isnan(old_radii)
    assert old_certified.sum() <= certified.sum()
    assert np.nanmean(np.where(certified, radii, 0.0)) > np.nanmean(
        np.where(old_certified, old_radii, 0.0)
    )
    both = certified & old_certified
    assert np.mean(radii[both] >= old_radii[both]) > 0.95
    if method != "betting":  # closed-form bounds are monotone in alpha sample by sample
        assert np.all(radii[both] >= old_radii[both])
    assert all(c.prediction != ABSTAIN for c, ok in zip(certs, certified) if ok)


def _bernoulli_columns(p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, len(p))`` values in {-1, 1}; column ``j`` has ``E (1 + Z)/2 = p[j]``."""
    return np.where(rng.random((n, len(p))) < p[None, :], 1.0, -1.0)


def _beta_columns(p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, len(p))`` values in [-1, 1] with ``E (1 + Z)/2 = p[j]`` (Beta, large variance)."""
    conc = 4.0
    return 2.0 * rng.beta(conc * p[None, :], conc * (1.0 - p[None, :]), (n, len(p))) - 1.0


@pytest.mark.parametrize("draw", [_bernoulli_columns, _beta_columns])
def test_min_of_rival_bounds_covers_where_single_bounds_do_not(draw):
    # one closest rival, a few near it, many far ones: the configuration in which the
    # no-split minimum is closest to failing (far rivals never pull it down)
    p = np.concatenate([[0.7, 0.71, 0.72], np.linspace(0.75, 0.95, 37)])
    rng = np.random.default_rng(17)
    runs, n = 300, 200
    low_min = np.empty(runs)
    any_single_fails = np.zeros(runs, dtype=bool)
    for r in range(runs):
        values = draw(p, n, rng)
        low_min[r] = (1.0 + bounds.min_lower_bound(values.T, ALPHA, "betting", n)) / 2.0
        singles = (1.0 + bounds.betting_lower_bounds(values.T, ALPHA, n)) / 2.0
        any_single_fails[r] = bool(np.any(singles > p))
        # skipping rivals never raises the result above the minimum of the full bounds
        assert low_min[r] <= singles.min() + 1e-12
        assert low_min[r] >= singles.min() - 1e-12
    limit = _allowed_failures(runs, ALPHA)
    assert int(np.sum(low_min > p.min())) <= limit
    # "every rival's bound holds" fails far more often than alpha: that statement would
    # need the union bound; the minimum does not
    assert int(any_single_fails.sum()) > 2 * limit


@pytest.mark.parametrize("method", ["hoeffding", "bernstein"])
def test_min_lower_bound_closed_form_methods(method):
    rng = np.random.default_rng(3)
    p = np.array([0.8, 0.6, 0.9])
    values = _beta_columns(p, 100, rng)
    singles = [bounds.mean_lower_bound(values[:, j], ALPHA, method) for j in range(3)]
    expected = (1.0 + min(singles)) / 2.0
    assert (1.0 + bounds.min_lower_bound(values.T, ALPHA, method, 100)) / 2.0 == pytest.approx(
        expected, abs=0
    )
