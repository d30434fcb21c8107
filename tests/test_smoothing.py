"""SmoothedEncoder: exact synthetic answers, certificate soundness, batching, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from featsmooth import ABSTAIN, SmoothedEncoder, bounds
from featsmooth.encoders.synthetic import TrigEncoder, make_trig_encoder, make_two_score_encoder
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


# ------------------------------------------------------------------ references and draws
# The one-frequency encoders above have S_c = S exactly: a certificate that swapped the
# two references would pass their tests. These use an encoder whose references are far
# apart, and replay the noise stream to check which draws each number comes from.

S_TWO, S_C_TWO = 0.71, 0.55


@pytest.fixture(scope="module")
def two_scores():
    """Two-frequency encoder with exact S = 0.71 and S_c = 0.55 at sigma 0.25, images 3x8x8."""
    return make_two_score_encoder(S_TWO, S_C_TWO, SIGMA)


def _unit(features: torch.Tensor) -> torch.Tensor:
    features = features.double()
    return features / features.norm(dim=-1, keepdim=True)


def _replay(enc, x: torch.Tensor, seed: int, n0: int, n: int):
    """Unit features of a certificate's n0 first-stage draws and its n fresh draws.

    The documented stream of one image: ``n0`` standard normal images, then ``n`` more, from
    a ``torch.Generator`` seeded with the certificate's ``seed``; noisy input ``x + sigma e``.
    """
    gen = torch.Generator().manual_seed(seed)
    first = torch.randn((n0, *x.shape), generator=gen)
    second = torch.randn((n, *x.shape), generator=gen)
    return _unit(enc(x + SIGMA * first)), _unit(enc(x + SIGMA * second))


@pytest.mark.parametrize("method", bounds.METHODS)
def test_each_reference_bounds_its_own_score(two_scores, images, method):
    assert two_scores.true_score(SIGMA) == pytest.approx(S_TWO, abs=1e-12)
    assert two_scores.true_clean_score(SIGMA) == pytest.approx(S_C_TWO, abs=1e-12)
    smoothed = SmoothedEncoder(two_scores, SIGMA, batch_size=4096)
    # n0 = 1024: the direction is then within ~1e-3 of f_hat / S whatever the noise stream
    certs = smoothed.certify(images, n0=1024, n=4000, alpha=0.001, method=method, seed=15)
    exact = two_scores.smoothed(images, SIGMA).numpy()  # (B, 4), norm S
    clean = smoothed.features(images).double().numpy()
    slack = 0.1 if method == "hoeffding" else 0.05  # the bounds' widths at n = 4000
    for cert, f_hat, f in zip(certs, exact, clean):
        assert f_hat @ f == pytest.approx(S_C_TWO, abs=1e-6)  # S_c = <f(x), f_hat(x)>
        assert S_TWO - slack < cert.score_lower <= f_hat @ cert.direction <= S_TWO
        assert S_C_TWO - slack < cert.clean_score_lower <= S_C_TWO
        assert cert.score_estimate == pytest.approx(S_TWO, abs=0.02)
        assert cert.clean_score_estimate == pytest.approx(S_C_TWO, abs=0.03)
        assert cert.clean_smoothed_cosine == pytest.approx(S_C_TWO / S_TWO, abs=0.02)
        assert f_hat @ cert.direction / S_TWO > 0.99  # v estimates f_hat / S


@pytest.mark.parametrize("method", bounds.METHODS)
def test_bound_uses_fresh_draws_not_those_that_chose_the_direction(two_scores, images, method):
    """Replays the noise: v from the n0 first draws, the samples from the next n draws."""
    n0, n, alpha = 32, 500, 0.01
    certs = SmoothedEncoder(two_scores, SIGMA, batch_size=100).certify(
        images, n0=n0, n=n, alpha=alpha, method=method, seed=16, keep_samples=True
    )
    for x, cert in zip(images, certs):
        first, second = _replay(two_scores, x, cert.seed, n0, n)
        v = first.sum(0) / first.sum(0).norm()
        np.testing.assert_allclose(cert.direction, v.numpy(), atol=1e-12)
        clean = _unit(two_scores(x[None]))[0]
        expected = torch.stack([second @ v, second @ clean]).numpy()
        np.testing.assert_allclose(cert.samples, expected, atol=1e-12)
        # and the bounds are the chosen method's, the betting bets tuned to the n fixed
        # in advance; in the same order as the references
        horizon = n if method == "betting" else None
        for j, low in enumerate((cert.score_lower, cert.clean_score_lower)):
            assert low == bounds.mean_lower_bound(cert.samples[j], alpha, method, horizon=horizon)


def test_a_near_zero_score_stays_below_its_exact_value():
    """Reusing the direction's draws for the bound would certify a score of 1e-3 at ~0.02.

    With S ~ 0 the mean of n0 unit features has norm ~ 1/sqrt(n0) whatever the direction,
    so on those same draws ``<v, f_i>`` averages ~ 1/sqrt(n0); 64 frequency pairs make the
    samples' variance ~ 1/128, so the bound's slack is a third of that bias.
    """
    gen = torch.Generator().manual_seed(17)
    freq = torch.randn((64, 3, 8, 8), generator=gen, dtype=torch.float64)
    # |a_j| sigma = sqrt(2 ln 1000): every pair is damped to 1e-3, so S = 1e-3 exactly
    freq *= (
        math.sqrt(2.0 * math.log(1000.0)) / SIGMA / freq.flatten(1).norm(dim=1)[:, None, None, None]
    )
    enc = TrigEncoder(freq)
    true_s = enc.true_score(SIGMA)
    assert true_s == pytest.approx(1e-3, rel=1e-9)
    x = torch.rand((3, 3, 8, 8), generator=torch.Generator().manual_seed(18))
    n0 = n = 2000
    alpha = 0.001
    certs = SmoothedEncoder(enc, SIGMA, batch_size=4096).certify(
        x, n0=n0, n=n, alpha=alpha, seed=19
    )
    exact = enc.smoothed(x, SIGMA).numpy()
    for xi, cert, f_hat in zip(x, certs, exact):
        assert cert.score_lower <= f_hat @ cert.direction <= true_s
        # the test has power: the bound computed on the direction's own draws is far above S
        first, _ = _replay(enc, xi, cert.seed, n0, 1)
        v = first.sum(0) / first.sum(0).norm()
        reused = bounds.mean_lower_bound((first @ v).numpy(), alpha, "betting", horizon=n0)
        assert reused > 10 * true_s


def test_sequential_bounds_are_the_anytime_bounds_of_the_kept_samples(two_scores, images):
    """A data-dependent stop is sound only with bets that do not depend on the stop."""
    smoothed = SmoothedEncoder(two_scores, SIGMA)
    alpha = 0.001
    runs = [
        smoothed.certify(
            images, n0=32, n=50_000, alpha=alpha, tolerance=0.03, seed=20, keep_samples=True
        ),
        smoothed.certify(
            images, n0=32, n=50_000, alpha=alpha, target=(0.5, 0.02), seed=21, keep_samples=True
        ),
    ]
    for certs in runs:
        for cert in certs:
            assert cert.stop_reason in ("tolerance", "target_reached")
            assert cert.samples.shape == (2, cert.n_used) and cert.n_used < 50_000
            anytime = bounds.betting_lower_bounds(cert.samples, alpha, None)
            assert cert.score_lower == anytime[0] and cert.clean_score_lower == anytime[1]
            # bets tuned to the realised sample size would give another (unsound) number
            tuned = bounds.betting_lower_bounds(cert.samples, alpha, cert.n_used)
            assert np.all(np.abs(tuned - anytime) > 1e-6)
