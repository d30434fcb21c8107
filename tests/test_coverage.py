"""Coverage: over many independent runs, S_low exceeds the truth in at most ~alpha of them.

The synthetic encoder with several frequencies has an exactly known smoothed feature, so
each run's target ``<v, f_hat(x)>`` (for the direction v that run chose) and ``S_c`` are
exact. A large alpha gives the test power: a bound that is anti-conservative by even a
small amount fails it (see ``test_coverage_test_has_power``).
"""

from __future__ import annotations

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
