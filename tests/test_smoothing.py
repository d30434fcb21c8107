"""SmoothedEncoder: exact synthetic answers, certificate soundness, batching, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from featsmooth import ABSTAIN, SmoothedEncoder, bounds
from featsmooth.encoders.synthetic import TrigEncoder, make_trig_encoder
from featsmooth.errors import FeatureError, InputError

SIGMA = 0.25
RADII = np.linspace(0.0, 1.5, 31)


def test_predict_feature_matches_closed_form(trig90, images):
    smoothed = SmoothedEncoder(trig90, SIGMA)
    n = 20_000
    estimate = smoothed.predict_feature(images, n=n, seed=1).double()
    exact = trig90.smoothed(images, SIGMA)
    # each coordinate is a mean of n values in [-1, 1]: 5 standard errors at most
    assert torch.allclose(estimate, exact, atol=5 / math.sqrt(n))
    assert estimate.norm(dim=1).sub(trig90.true_score(SIGMA)).abs().max() < 0.02


@pytest.mark.parametrize("method", bounds.METHODS)
def test_certificate_is_below_truth_and_close_to_it(trig90, images, method):
    smoothed = SmoothedEncoder(trig90, SIGMA)
    certs = smoothed.certify(images, n0=64, n=4000, alpha=0.001, method=method, seed=3)
    true_s, true_sc = trig90.true_score(SIGMA), trig90.true_clean_score(SIGMA)
    for cert in certs:
        assert cert.score_lower <= true_s and cert.clean_score_lower <= true_sc
        assert abs(cert.score_estimate - true_s) < 0.01
        assert cert.n_used == 4000 and cert.n0 == 64 and cert.method == method
        # the certified cosine never exceeds the true worst case cos(|a| r), either reference
        worst = np.array([trig90.worst_case_cosine(r) for r in RADII])
        for reference in ("smoothed", "clean"):
            certified = cert.fcsb(RADII, reference=reference)
            ok = ~np.isnan(certified)
            assert ok[0] and np.all(certified[ok] <= worst[ok] + 1e-12)
    # variance-adaptive bounds land close to the truth
    if method != "hoeffding":
        assert max(true_s - c.score_lower for c in certs) < 0.03


def test_fcsb_is_tight_for_a_half_space_encoder():
    """For f = +u on a half-space and -u off it, <u, f_hat(x - r w)> equals B(S, r) exactly.

    Closed form (Gaussian CDF) against Monte Carlo of the smoothed encoder.
    """
    torch.manual_seed(0)
    w = torch.randn(3 * 4 * 4, dtype=torch.float64)
    w /= w.norm()
    u = torch.tensor([0.6, 0.8], dtype=torch.float64)

    def half_space(x: torch.Tensor) -> torch.Tensor:
        side = (x.double().flatten(1) @ w >= 0.5 * w.sum()).double() * 2 - 1
        return side[:, None] * u[None]

    x = torch.full((1, 3, 4, 4), 0.5) + 0.05 * w.view(1, 3, 4, 4).float()  # margin 0.05
    smoothed = SmoothedEncoder(half_space, SIGMA)
    n = 40_000
    s_true = 2 * torch.distributions.Normal(0, 1).cdf(torch.tensor(0.05 / SIGMA)).item() - 1
    for r in (0.0, 0.02, 0.04):
        moved = (x - r * w.view(1, 3, 4, 4)).float()
        mc = float(smoothed.predict_feature(moved, n=n, seed=5)[0].double() @ u)
        closed = float(bounds.fcsb(s_true, r, SIGMA))
        assert mc == pytest.approx(closed, abs=4 / math.sqrt(n))


def test_results_do_not_depend_on_batching(trig90, images):
    a = SmoothedEncoder(trig90, SIGMA, batch_size=7).certify(images, n0=10, n=300, seed=4)
    b = SmoothedEncoder(trig90, SIGMA, batch_size=1000).certify(images, n0=10, n=300, seed=4)
    one = SmoothedEncoder(trig90, SIGMA).certify(images[1:2], n0=10, n=300, seed=[a[1].seed])
    # per-sample values are identical; sums over chunks may differ in the last ulp
    for x, y in [*zip(a, b), (one[0], a[1])]:
        dx, dy = x.to_dict(), y.to_dict()
        assert dx.pop("score_estimate") == pytest.approx(dy.pop("score_estimate"), rel=1e-12)
        cx, cy = dx.pop("clean_smoothed_cosine"), dy.pop("clean_smoothed_cosine")
        assert cx == pytest.approx(cy, rel=1e-12) and dx == dy
    c = SmoothedEncoder(trig90, SIGMA).certify(images, n0=10, n=300, seed=5)
    assert c[0].score_lower != a[0].score_lower


def test_sequential_stopping_saves_samples_and_stays_sound(trig90, images):
    smoothed = SmoothedEncoder(trig90, SIGMA)
    certs = smoothed.certify(images, n0=64, n=100_000, alpha=0.001, tolerance=0.02, seed=6)
    for cert in certs:
        assert cert.stop_reason == "tolerance" and cert.n_used < 20_000
        assert cert.score_lower <= trig90.true_score(SIGMA)
        assert cert.score_estimate - cert.score_lower < 0.03
    reach = smoothed.certify(images, n=50_000, target=(0.5, 0.05), seed=7)
    assert all(c.stop_reason == "target_reached" and c.fcsb(0.05) >= 0.5 for c in reach)
    assert all(c.n_used < 2_000 for c in reach)
    never = smoothed.certify(images, n=50_000, target=(0.9, 0.5), seed=8)
    assert all(c.stop_reason == "target_unreachable" and c.n_used < 5_000 for c in never)


def test_sequential_needs_betting(trig90, images):
    with pytest.raises(InputError, match="anytime"):
        SmoothedEncoder(trig90, SIGMA).certify(images, n=100, method="bernstein", tolerance=0.1)


def test_result_names_and_serialises(trig90, images):
    cert = SmoothedEncoder(trig90, SIGMA).certify(images[:1], n0=8, n=50, seed=0)[0]
    data = cert.to_dict()
    assert "direction" not in data and data["n_used"] == 50 and data["sigma"] == SIGMA
    assert np.isnan(cert.fcsb(10.0)) and np.isnan(cert.certified_radius(0.99))
    with pytest.raises(InputError):
        cert.fcsb(0.1, reference="sideways")


def _two_class_setup(score: float, x: torch.Tensor):
    enc = make_trig_encoder(score, SIGMA)
    theta = float(enc.frequencies.flatten().double() @ x.flatten().double())
    t0 = torch.tensor([math.cos(theta), math.sin(theta)], dtype=torch.float64)
    return enc, torch.stack([t0, -t0]), math.pi / 2 / float(enc.frequencies.norm())


def test_prediction_certificates_are_sound_on_a_known_classifier():
    x = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(9))
    enc, classes, true_radius = _two_class_setup(0.9, x)
    cert = SmoothedEncoder(enc, SIGMA).certify_prediction(x, classes, n0=64, n=5000, seed=1)[0]
    assert cert.clean_prediction == 0 and cert.prediction == 0 and cert.fcsb_prediction == 0
    assert cert.cohen_prediction == 0
    # the exact smoothed classifier keeps class 0 exactly while |a.delta| < pi/2
    for radius in (cert.margin_radius, cert.fcsb_radius):
        assert 0 < radius <= true_radius
    # the closed form: margin radius -> sigma * Phi^-1((1 + S)/2) from below
    ideal = float(bounds.probability_radius((1 + 0.9) / 2, SIGMA))
    assert ideal - 0.05 < cert.margin_radius <= ideal
    assert cert.certified(0.0) and cert.certified(cert.margin_radius / 2, label=0)
    assert not cert.certified(cert.margin_radius) and not cert.certified(0.01, label=1)
    assert cert.to_dict()["prediction"] == 0


def test_cohen_certificate_uses_clopper_pearson(trig90):
    x = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(10))
    _, classes, _ = _two_class_setup(0.9, x)
    smoothed = SmoothedEncoder(trig90, SIGMA)
    n = 3000
    cert = smoothed.certify_prediction(x, classes, n0=32, n=n, alpha=0.01, seed=2)[0]
    # recount the votes with the same noise stream (n0 draws first, then n)
    gen = torch.Generator().manual_seed(cert.seed)
    torch.randn((32, 3, 8, 8), generator=gen)
    noisy = x + SIGMA * torch.randn((n, 3, 8, 8), generator=gen)
    feats = nn.functional.normalize(trig90(noisy).double(), dim=1)
    votes = int(((feats @ classes.T).argmax(1) == cert.cohen_prediction).sum())
    p_low = bounds.clopper_pearson_lower(votes, n, 0.01)
    assert cert.cohen_radius == pytest.approx(float(bounds.probability_radius(p_low, SIGMA)))


def test_prediction_abstains_without_evidence():
    x = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(11))
    enc = make_trig_encoder(0.05, SIGMA)  # noise scrambles the feature completely
    theta = float(enc.frequencies.flatten().double() @ x.flatten().double())
    t0 = torch.tensor([math.cos(theta), math.sin(theta)], dtype=torch.float64)
    cert = SmoothedEncoder(enc, SIGMA).certify_prediction(x, torch.stack([t0, -t0]), n=500)[0]
    assert cert.prediction == ABSTAIN and math.isnan(cert.margin_radius)
    assert cert.fcsb_prediction == ABSTAIN and cert.cohen_prediction == ABSTAIN
    assert not cert.certified(0.0)


def test_bf16_encoder_runs_and_bounds_are_float64():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten()).to(torch.bfloat16)
    smoothed = SmoothedEncoder(net, SIGMA, input_dtype=torch.bfloat16)
    x = torch.rand(2, 3, 8, 8)
    certs = smoothed.certify(x, n0=16, n=200, seed=0)
    assert all(0 < c.score_lower < 1 and isinstance(c.score_lower, float) for c in certs)
    assert smoothed.predict_feature(x, n=8).dtype == torch.float32


def test_noisy_features_are_differentiable_and_unit(trig90, images):
    smoothed = SmoothedEncoder(trig90, SIGMA)
    x = images.clone().requires_grad_(True)
    feats = smoothed.noisy_features(x, 5, generator=torch.Generator().manual_seed(0))
    assert feats.shape == (3, 5, 2)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3, 5))
    feats[..., 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_centering_changes_the_features(trig90, images):
    center = torch.tensor([0.3, 0.0])
    plain = SmoothedEncoder(trig90, SIGMA).features(images)
    centred = SmoothedEncoder(trig90, SIGMA, center=center).features(images)
    expected = nn.functional.normalize(trig90(images).float() - center, dim=1)
    assert torch.allclose(centred, expected, atol=1e-6) and not torch.allclose(plain, centred)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
    ],
)
def test_bad_sigma(trig90, kwargs, match):
    with pytest.raises(InputError, match=match):
        SmoothedEncoder(trig90, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"n0": 0}, "n0"),
        ({"n": 0}, "n must"),
        ({"method": "magic"}, "method"),
        ({"tolerance": -0.1}, "tolerance"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
    ],
)
def test_bad_certify_arguments(trig90, images, kwargs, match):
    with pytest.raises(InputError, match=match):
        SmoothedEncoder(trig90, SIGMA).certify(images, **{"n": 10, **kwargs})


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.rand(3, 8, 8) * 255, r"\[0, 1\]"),
        (torch.rand(2, 3, 8, 8) - 0.5, r"\[0, 1\]"),
        (torch.rand(8, 8), "shape"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.zeros((1, 3, 8, 8), dtype=torch.int64), "floating"),
        (torch.rand(0, 3, 8, 8), "empty"),
    ],
)
def test_bad_images(trig90, bad, match):
    with pytest.raises(InputError, match=match):
        SmoothedEncoder(trig90, SIGMA).certify(bad, n=10)


def test_wrong_image_shape_for_encoder(trig90):
    with pytest.raises(InputError, match="shape"):
        SmoothedEncoder(trig90, SIGMA).certify(torch.rand(1, 3, 9, 9), n=10)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda x: torch.full((x.shape[0], 4), float("nan")), "NaN"),
        (lambda x: torch.zeros((x.shape[0], 4)), "zero"),
        (lambda x: x.sum(), r"\(B, \.\.\.\)"),
    ],
)
def test_unusable_features_are_reported(images, fn, match):
    with pytest.raises(FeatureError, match=match):
        SmoothedEncoder(fn, SIGMA).certify(images, n=10)


def test_bad_class_embeddings(trig90, images):
    smoothed = SmoothedEncoder(trig90, SIGMA)
    with pytest.raises(InputError, match="K >= 2"):
        smoothed.certify_prediction(images, torch.ones(1, 2), n=10)
    with pytest.raises(InputError, match="dimension"):
        smoothed.certify_prediction(images, torch.eye(3), n=10)
    with pytest.raises(InputError, match="all zeros"):
        smoothed.certify_prediction(images, torch.tensor([[1.0, 0.0], [0.0, 0.0]]), n=10)


def test_token_features_are_flattened_and_unflattened():
    enc = TrigEncoder(torch.randn(3, 3, 4, 4) * 0.5)

    def tokens(x: torch.Tensor) -> torch.Tensor:
        return enc(x).view(x.shape[0], 3, 2)  # (B, T, D)

    smoothed = SmoothedEncoder(tokens, SIGMA)
    feats = smoothed.predict_feature(torch.rand(2, 3, 4, 4), n=16)
    assert feats.shape == (2, 6) and smoothed.unflatten(feats).shape == (2, 3, 2)


def test_prediction_pass_also_certifies_features(trig90, images):
    smoothed = SmoothedEncoder(trig90, SIGMA)
    classes = torch.eye(2, dtype=torch.float64)
    preds = smoothed.certify_prediction(images, classes, n0=16, n=300, seed=12)
    certs = smoothed.certify(images, n0=16, n=300, seed=12)
    for pred, cert in zip(preds, certs):
        assert pred.features.score_lower == cert.score_lower
        assert pred.features.clean_score_lower == cert.clean_score_lower
        assert pred.score_lower == cert.score_lower


def test_sequential_results_do_not_depend_on_batching(trig90, images):
    kwargs = {"n0": 16, "n": 20_000, "tolerance": 0.03, "seed": 13}
    a = SmoothedEncoder(trig90, SIGMA, batch_size=16).certify(images, **kwargs)
    b = SmoothedEncoder(trig90, SIGMA, batch_size=4096).certify(images, **kwargs)
    assert [c.n_used for c in a] == [c.n_used for c in b]
    assert [c.score_lower for c in a] == [c.score_lower for c in b]


def test_compiled_encoder_gives_the_same_certificates(trig90, images):
    eager = SmoothedEncoder(trig90, SIGMA).certify(images, n0=16, n=200, seed=14)
    compiled = SmoothedEncoder(trig90, SIGMA, compile=True).certify(images, n0=16, n=200, seed=14)
    for a, b in zip(eager, compiled):
        assert a.score_lower == pytest.approx(b.score_lower, abs=1e-9)
        assert a.clean_score_lower == pytest.approx(b.clean_score_lower, abs=1e-9)
