"""The consistency check, on an encoder whose two references are far apart.

``make_two_score_encoder`` gives ``S = 0.71`` and ``S_c = 0.55`` exactly, and ``f_hat`` in
closed form, so both inner products the check tests, ``<v, f_hat(x + delta)>`` (smoothed
reference) and ``<f(x), f_hat(x + delta)>`` (clean reference), are known exactly at every
attacked input. With ``S_c = S`` (every one-frequency encoder) a check that compared one
reference's measurement with the other's certificate could not be told from a correct
one; here the two differ by 0.16. And a certificate inflated by only
0.025 above the exact value must be caught once the check draws enough samples.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from featsmooth import SmoothedEncoder, bounds
from featsmooth.consistency import ConsistencyWarning, check_consistency, count_violations
from featsmooth.encoders.synthetic import make_two_score_encoder

SIGMA = 0.25
S_TWO, S_C_TWO = 0.71, 0.55


@pytest.fixture(scope="module")
def setup():
    enc = make_two_score_encoder(S_TWO, S_C_TWO, SIGMA)
    sm = SmoothedEncoder(enc, SIGMA, batch_size=4096)
    # centred in [0.3, 0.7], so perturbations of norm <= 0.1 stay inside [0, 1]
    x = 0.3 + 0.4 * torch.rand((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    certs = sm.certify(x, n0=64, n=4000, alpha=0.001, seed=1)
    return enc, sm, x, certs


def _attack(enc, x: torch.Tensor, radius: float) -> tuple[torch.Tensor, np.ndarray]:
    """Move along the high frequency (the pair that noise damps to 0.1); actual radii."""
    a = enc.frequencies[1].float()
    adv = x + radius * a / a.norm()
    return adv, (adv.double() - x.double()).flatten(1).norm(dim=1).numpy()


def _exact(enc, sm, x, adv, certs) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``<v, f_hat(adv)>`` and ``<f(x), f_hat(adv)>`` per image (closed form)."""
    f_hat = enc.smoothed(adv, SIGMA)
    v = torch.as_tensor(np.stack([c.direction for c in certs]))
    clean = sm.features(x).double()
    return (f_hat * v).sum(1).numpy(), (f_hat * clean).sum(1).numpy()


def test_silent_on_sound_certificates_of_distinct_references(setup):
    enc, sm, x, certs = setup
    for cert in certs:
        assert cert.score_lower > S_C_TWO + 0.1  # the references are far apart
    for radius in (0.0, 0.03):
        adv, radii = _attack(enc, x, radius)
        results = check_consistency(sm, x, adv, certs, n=2000, seed=5, chunk=4096)
        assert count_violations(results) == {"total": 2, "checked": 2, "violations": 0}
        smooth_truth, clean_truth = _exact(enc, sm, x, adv, certs)
        for res, cert, r, t, tc in zip(results, certs, radii, smooth_truth, clean_truth):
            assert res.radius == pytest.approx(r, abs=1e-12)
            # each reference is tested against its own certificate...
            assert res.certified_bound == float(cert.fcsb(r, "smoothed"))
            assert res.clean_certified_bound == float(cert.fcsb(r, "clean"))
            assert 0 < res.certified_bound <= t and 0 < res.clean_certified_bound <= tc
            # ...with its own measurement (two independent ways: Monte Carlo, closed form)
            assert res.estimate == pytest.approx(t, abs=0.02)
            assert res.clean_estimate == pytest.approx(tc, abs=0.03)
            assert res.upper >= t and res.clean_upper >= tc
            # the smoothed certificate is above the clean reference's true value: a check
            # that crossed the references would report a violation here
            assert res.certified_bound > tc + 0.05


@pytest.mark.parametrize("reference", ["smoothed", "clean"])
def test_fires_on_a_subtle_inflation(setup, reference):
    """Certificates 0.025 above the exact value at the tested radius fire; 0.025 below don't.

    With n = 20000 draws the check's upper bound lies within ~0.012 of the exact value
    (alpha = 0.001), so an inflation of 0.025 is well beyond the check's own error.
    """
    enc, sm, x, certs = setup
    adv, radii = _attack(enc, x, 0.05)
    smooth_truth, clean_truth = _exact(enc, sm, x, adv, certs)
    truth = smooth_truth if reference == "smoothed" else clean_truth
    field = "score_lower" if reference == "smoothed" else "clean_score_lower"
    for excess, fires in [(0.025, True), (-0.025, False)]:
        broken = [
            dataclasses.replace(c, **{field: float(bounds.required_score(t + excess, r, SIGMA))})
            for c, r, t in zip(certs, radii, truth)
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConsistencyWarning)
            results = check_consistency(sm, x, adv, broken, n=20_000, seed=6, chunk=4096)
        for res, t in zip(results, truth):
            if reference == "smoothed":
                certified, upper = res.certified_bound, res.upper
                other_ok = res.clean_upper >= res.clean_certified_bound
            else:
                certified, upper = res.clean_certified_bound, res.clean_upper
                other_ok = res.upper >= res.certified_bound
            assert certified == pytest.approx(t + excess, abs=1e-9)
            assert t <= upper < t + 0.015
            assert other_ok and res.violation is fires
