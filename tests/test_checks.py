"""Sanity checks: each one fires on its pitfall and stays silent on good settings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from featsmooth import bounds
from featsmooth.checks import (
    CHECKS,
    SanityWarning,
    best_case_slack,
    check_alpha_vs_samples,
    check_attack_budget,
    check_n0,
    check_randomized_without_eot,
    check_sigma_scale,
    check_zero_gradients,
    is_randomized,
    run_checks,
)
from featsmooth.errors import InputError


def ids(found):
    return [w.check for w in found]


def natural_images(seed=0):
    """Smooth random images in [0,1] with a realistic pixel spread (std ~ 0.2-0.3)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(2, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=16, mode="bilinear", align_corners=False)


def test_warning_is_a_named_userwarning():
    w = check_n0(4)[0]
    assert isinstance(w, UserWarning) and w.check == "n0-small"
    assert str(w).startswith("[n0-small]") and "Hint:" in str(w)
    assert w.hint == CHECKS["n0-small"][1]


def test_alpha_and_samples():
    assert check_alpha_vs_samples(0.001, 100_000, "hoeffding") == []
    assert check_alpha_vs_samples(0.001, 1000, "betting") == []
    assert ids(check_alpha_vs_samples(0.1, 100_000, "betting")) == ["alpha-loose"]
    # Hoeffding: 2 sqrt(ln(1000)/(2n)) > 0.1  <=>  n < 1382
    assert ids(check_alpha_vs_samples(0.001, 1381, "hoeffding")) == ["samples-too-few"]
    assert check_alpha_vs_samples(0.001, 1382, "hoeffding") == []
    assert ids(check_alpha_vs_samples(0.2, 50, "bernstein")) == ["alpha-loose", "samples-too-few"]
    assert ids(check_alpha_vs_samples(0.001, 1, "bernstein")) == ["samples-too-few"]
    with pytest.raises(InputError):
        check_alpha_vs_samples(0.001, 100, "nonsense")
    with pytest.raises(InputError):
        check_alpha_vs_samples(1.5, 100, "betting")


@pytest.mark.parametrize("method", bounds.METHODS)
def test_best_case_slack_is_the_bound_on_perfect_samples(method):
    n, alpha = 500, 0.001
    expected = 1.0 - bounds.mean_lower_bound(np.ones(n), alpha, method, horizon=n)
    assert best_case_slack(alpha, n, method) == pytest.approx(expected, rel=1e-9)
    # more samples never loosen the floor
    assert best_case_slack(alpha, 2 * n, method) < best_case_slack(alpha, n, method)


def test_n0():
    assert check_n0(64) == [] and check_n0(16) == []
    assert ids(check_n0(15)) == ["n0-small"]


def test_sigma_scale():
    images = natural_images()
    assert check_sigma_scale(0.25, images) == []
    assert check_sigma_scale(0.5) == []
    assert ids(check_sigma_scale(1.0)) == ["sigma-large"]
    flat = torch.full((1, 3, 16, 16), 0.5) + 0.01 * natural_images()[:1].sub(0.5)
    assert ids(check_sigma_scale(0.25, flat)) == ["sigma-large"]  # noise >> image content
    assert ids(check_sigma_scale(0.25, images * 255)) == ["images-range"]
    normalised = (images - 0.45) / 0.22
    found = check_sigma_scale(0.25, normalised)
    assert ids(found) == ["images-range"] and "normalised" in str(found[0])


def test_zero_and_nonfinite_gradients():
    grads = torch.randn(4, 3, 8, 8)
    assert check_zero_gradients(grads) == []
    grads[1] = 0.0
    found = check_zero_gradients(grads)
    assert ids(found) == ["zero-gradients"] and "1 of 4" in str(found[0])
    assert check_zero_gradients(grads, max_fraction=0.5) == []
    grads[2, 0, 0, 0] = float("nan")
    assert ids(check_zero_gradients(grads)) == ["nonfinite-gradients", "zero-gradients"]
    assert ids(check_zero_gradients(np.zeros((2, 5)))) == ["zero-gradients"]


def test_randomized_without_eot():
    assert check_randomized_without_eot(True, 8) == []
    assert check_randomized_without_eot(False, 1) == []
    assert ids(check_randomized_without_eot(True, 1)) == ["randomized-without-eot"]
    x = torch.rand(2, 3)
    assert is_randomized(lambda t: t + torch.randn_like(t), x)
    assert not is_randomized(lambda t: 2 * t, x)


def test_attack_budget():
    clean = natural_images()
    delta = torch.randn_like(clean)
    linf = (clean + 8 / 255 * delta.sign()).clamp(0, 1)
    assert check_attack_budget(linf, clean, "linf", 8 / 255) == []
    flat = delta.flatten(1)
    l2 = (clean + 0.5 * (flat / flat.norm(dim=1, keepdim=True)).view_as(clean)).clamp(0, 1)
    assert check_attack_budget(l2, clean, "l2", 0.5) == []
    assert ids(check_attack_budget(l2, clean, "L2", 0.1)) == ["attack-budget"]
    assert ids(check_attack_budget(linf, clean, "inf", 4 / 255)) == ["attack-budget"]
    unclamped = clean + 8 / 255 * delta.sign()
    assert "attack-out-of-range" in ids(check_attack_budget(unclamped, clean, "linf", 8 / 255))
    assert ids(check_attack_budget(clean.clone(), clean, "linf", 8 / 255)) == [
        "attack-no-perturbation"
    ]
    assert ids(check_attack_budget(linf, clean, "linf", 16)) == ["eps-scale"]
    with pytest.raises(InputError):
        check_attack_budget(linf, clean, "l3", 0.1)
    with pytest.raises(InputError):
        check_attack_budget(linf[:1], clean, "linf", 0.1)


def test_run_checks_collects_emits_and_raises():
    good = dict(
        alpha=0.001,
        n=10_000,
        method="betting",
        n0=64,
        sigma=0.25,
        images=natural_images(),
        grads=torch.randn(2, 3),
        model_is_randomized=True,
        eot_draws=10,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_checks(**good) == []
    bad = {**good, "alpha": 0.2, "n0": 4, "eot_draws": 1}
    with pytest.warns(SanityWarning) as caught:
        found = run_checks(**bad)
    assert ids(found) == ["alpha-loose", "n0-small", "randomized-without-eot"]
    assert [w.message.check for w in caught] == ids(found)
    with pytest.raises(SanityWarning) as info:
        run_checks(**bad, strict=True, emit=False)
    assert info.value.check == "alpha-loose"
    assert set(ids(found)) <= set(CHECKS)
