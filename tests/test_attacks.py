"""Tests of featsmooth.attacks on a tiny random conv net (CPU, a few seconds in all)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from featsmooth.attacks import (
    APGD,
    PGD,
    EmbeddingMatch,
    EoT,
    EoTObjective,
    FeatureCosine,
    FOAAttack,
    MAttack,
    TextLikelihood,
    ThreatModel,
    ZeroShotCrossEntropy,
    apgd_checkpoints,
    crop_boxes,
    crop_resize,
    judge_randomized,
    kmeans,
    parse_eps,
    parse_norm,
    sinkhorn,
)
from featsmooth.errors import InputError

TOL = 1e-6


class TinyNet(nn.Module):
    """Two strided convs + linear head: (B, 3, 16, 16) in [0, 1] -> (B, 16) features."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(64, 16)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.eval()

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 16 tokens, 16 dims) patch tokens."""
        h = torch.tanh(self.c2(torch.tanh(self.c1(x * 2 - 1))))
        return h.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tokens(x).transpose(1, 2).reshape(x.shape[0], 16, 4, 4)
        return self.fc(F.adaptive_avg_pool2d(h, 2).flatten(1))


@pytest.fixture(scope="module")
def net() -> TinyNet:
    return TinyNet()


def images(b: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def assert_in_budget(adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> None:
    """Budget and box checked directly on the stored tensors (independent of ThreatModel)."""
    d = (adv - x).reshape(x.shape[0], -1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert bool((dist <= eps + TOL).all()), dist
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), dim=1)


# ------------------------------------------------------------------ budgets


def test_parse_eps_and_norm():
    assert parse_eps("8/255", "linf") == pytest.approx(8 / 255, abs=0)
    assert parse_eps(" 16 / 255 ", "Linf") == 16 / 255
    assert parse_eps(0.5, "l2") == 0.5
    assert parse_eps("0.25", "l2") == 0.25
    assert ThreatModel("linf", "4/255").eps == 4 / 255
    assert parse_norm("L2") == "l2" and parse_norm("inf") == "linf"
    for bad, norm in (("8/255", "l2"), (-1.0, "linf"), ("abc", "linf"), ("1/0", "linf")):
        with pytest.raises(InputError):
            parse_eps(bad, norm)
    with pytest.raises(InputError):
        parse_norm("l1")


def _dykstra(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, eps: float, iters=4000):
    """Projection onto {||d|| <= eps} ∩ [lo, hi] by Dykstra's alternating projections."""
    d, p, q = v.copy(), np.zeros_like(v), np.zeros_like(v)
    for _ in range(iters):
        y = np.clip(d + p, lo, hi)
        p = d + p - y
        z = y + q
        n = np.linalg.norm(z)
        d = z * min(1.0, eps / n) if n > 0 else z
        q = y + q - d
    return d


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5), ("l2", 3.0)])
def test_projection_feasible_idempotent(norm, eps):
    tm = ThreatModel(norm, eps)
    x = images(6)
    far = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 2.0
    proj = tm.project(far, x)
    assert_in_budget(proj, x, norm, eps)
    assert torch.allclose(tm.project(proj, x), proj, atol=1e-6)
    inside = tm.random_start(x, torch.Generator().manual_seed(2))
    assert_in_budget(inside, x, norm, eps)
    assert torch.equal(tm.project(inside, x), inside) or norm == "l2"
    assert bool(tm.contains(proj, x).all())


def test_l2_projection_is_exact_euclidean_projection():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 12, generator=gen, dtype=torch.float64)
    x[:3, :4] = 0.02  # coordinates near the box edge: the box is active in rows 0-2
    x[3] = 0.5  # row 3: the box is inactive, the projection is a plain rescaling
    v = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    tm = ThreatModel("l2", 0.6)
    ours = (tm.project(x + v, x) - x).numpy()
    ours32 = (tm.project((x + v).float(), x.float()) - x.float()).double().numpy()
    for i in range(4):
        ref = _dykstra(v[i].numpy(), -x[i].numpy(), 1 - x[i].numpy(), 0.6)
        np.testing.assert_allclose(ours[i], ref, atol=2e-5)
        np.testing.assert_allclose(ours32[i], ref, atol=1e-4)
    # the box was active in rows 0-2: plain rescaling would not be the projection there
    plain = (v * (0.6 / v.norm(dim=1, keepdim=True))).numpy()
    assert not np.allclose(ours[:3], plain[:3], atol=1e-3)
    np.testing.assert_allclose(ours[3], plain[3], atol=1e-5)


def test_random_start_l2_fills_the_ball():
    x = torch.full((200, 3, 4, 4), 0.5)
    tm = ThreatModel("l2", 0.3)
    d = (tm.random_start(x, torch.Generator().manual_seed(0)) - x).reshape(200, -1).norm(dim=1)
    assert float(d.max()) <= 0.3 + TOL and float(d.min()) < 0.29  # inside, not only the sphere


# ------------------------------------------------------------------ untargeted attacks


@pytest.mark.parametrize("cls", [PGD, APGD])
@pytest.mark.parametrize("norm,eps", [("linf", "8/255"), ("l2", 0.5)])
def test_untargeted_feature_attack_lowers_cosine(net, cls, norm, eps):
    x = images()
    attack = cls(net, FeatureCosine(), norm=norm, eps=eps, steps=10, seed=0)
    res = attack(x)
    eps_f = parse_eps(eps, norm)
    assert_in_budget(res.adv_images, x, norm, eps_f)
    with torch.no_grad():
        cos = cosine(net(res.adv_images), net(x))
    assert bool((cos < 0.99).all()), cos
    torch.testing.assert_close(res.objective, -cos, atol=1e-5, rtol=0)  # sign convention
    torch.testing.assert_close(res.clean_objective, -torch.ones(4), atol=1e-5, rtol=0)
    assert torch.allclose(res.distance, ThreatModel(norm, eps).distance(res.adv_images, x))


def test_pgd_default_step_size_and_validation(net):
    attack = PGD(net, FeatureCosine(), norm="l2", eps=1.0, steps=20)
    assert attack.step_size == pytest.approx(2.5 * 1.0 / 20)
    with pytest.raises(InputError):
        PGD(net, FeatureCosine(), steps=-1)
    with pytest.raises(InputError):
        PGD(net, FeatureCosine())(images() * 2)  # outside [0, 1]
    with pytest.raises(InputError):
        PGD(net, FeatureCosine(targeted=True))(images())  # no target


def test_zero_shot_cross_entropy_untargeted_and_targeted(net):
    x = images()
    classes = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(4)), dim=1)
    with torch.no_grad():
        clean_pred = (F.normalize(net(x), dim=1) @ classes.T).argmax(1)
    untargeted = APGD(net, ZeroShotCrossEntropy(classes), eps="8/255", steps=10)(
        x, labels=clean_pred
    )
    assert bool((untargeted.objective > untargeted.clean_objective).all())
    target = (clean_pred + 1) % 5
    obj = ZeroShotCrossEntropy(classes, targeted=True)
    res = PGD(net, obj, norm="l2", eps=1.0, steps=20)(x, labels=target)
    assert bool((res.objective > res.clean_objective).all())
    with torch.no_grad():
        pred = obj.logits(net(res.adv_images)).argmax(1)
    assert int((pred == target).sum()) >= 3


def test_text_likelihood_uses_pixels_and_sign():
    x = images(3)
    goal = images(3, seed=9)

    def loglik(imgs: torch.Tensor, texts: list[str]) -> torch.Tensor:
        assert len(texts) == imgs.shape[0]
        return -((imgs - goal) ** 2).flatten(1).sum(1)  # "likelihood" peaks at goal

    res = PGD(None, TextLikelihood(loglik, "a shark"), eps="8/255", steps=5)(x)
    assert bool((res.objective > res.clean_objective).all())
    away = PGD(None, TextLikelihood(loglik, targeted=False), eps="8/255", steps=5)(
        x, texts=["a", "b", "c"]
    )
    assert bool((away.objective > away.clean_objective).all())


# ------------------------------------------------------------------ restarts, seeds, dtypes


def test_restarts_keep_the_best_per_image(net):
    x = images()
    kw = dict(norm="l2", eps=0.5, steps=3, seed=5, record_history=True)
    one = PGD(net, FeatureCosine(), restarts=1, **kw)(x)
    many = PGD(net, FeatureCosine(), restarts=4, **kw)(x)
    assert many.history.shape == (4, 4, 4)  # (restarts, steps + 1, B)
    best_per_restart = many.history.amax(dim=1)  # (restarts, B)
    torch.testing.assert_close(many.objective, best_per_restart.amax(0))
    assert torch.equal(many.best_restart, best_per_restart.argmax(0))
    assert bool((many.objective >= one.objective - 1e-6).all())
    torch.testing.assert_close(many.history[0], one.history[0])  # same seed: same first run
    with torch.no_grad():  # the returned image really has the reported value
        torch.testing.assert_close(-cosine(net(many.adv_images), net(x)), many.objective)


def test_deterministic_given_seed_and_global_rng_untouched(net):
    x = images()
    state = torch.get_rng_state()
    a = APGD(net, FeatureCosine(), eps="4/255", steps=4, seed=11)(x)
    b = APGD(net, FeatureCosine(), eps="4/255", steps=4, seed=11)(x)
    c = APGD(net, FeatureCosine(), eps="4/255", steps=4, seed=12)(x)
    assert torch.equal(a.adv_images, b.adv_images)
    assert not torch.equal(a.adv_images, c.adv_images)
    assert torch.equal(torch.get_rng_state(), state)
    m1 = MAttack(net, steps=4, seed=3)(x, target_images=images(seed=7))
    m2 = MAttack(net, steps=4, seed=3)(x, target_images=images(seed=7))
    assert torch.equal(m1.adv_images, m2.adv_images)


def test_bf16_model_and_no_param_grads():
    model = TinyNet().to(torch.bfloat16)
    x = images()
    res = PGD(model, FeatureCosine(), eps="8/255", steps=5)(x)
    assert res.adv_images.dtype == torch.float32 and res.objective.dtype == torch.float32
    assert_in_budget(res.adv_images, x, "linf", 8 / 255)
    assert bool((res.objective > res.clean_objective).all())
    # a bound method of a bf16 module (patch tokens) is fed bf16 too
    foa = FOAAttack(model, model.tokens, steps=3, num_clusters=4)(x, target_images=images(seed=7))
    assert_in_budget(foa.adv_images, x, "linf", 16 / 255)
    assert all(p.grad is None for p in model.parameters())


def test_foa_dynamic_weights_follow_learning_speed():
    foa = FOAAttack([TinyNet(), TinyNet(seed=1)], steps=3)
    first = torch.tensor([[0.2, 0.4], [0.5, -0.5]])
    assert torch.equal(foa.dynamic_weights(first, 0), torch.ones(2, 2))  # first step
    last = torch.tensor([[0.4, 0.4], [0.5, -0.5]])
    assert torch.equal(foa.dynamic_weights(last, 0), torch.ones(2, 2))  # another EoT pass
    # step 1: ratios against the last pass of step 0
    now = torch.tensor([[0.8, 0.4], [0.5, -0.25]])
    w = foa.dynamic_weights(now, 1)
    expected = 2 * torch.softmax(torch.tensor([[2.0, 1.0], [1.0, -0.5]]), dim=1)
    assert torch.allclose(w, expected)
    assert torch.allclose(w.sum(1), torch.full((2,), 2.0))
    assert w[0, 0] > w[0, 1] and w[1, 0] > w[1, 1]  # the faster-improving encoder weighs more
    # a restart (step 0 again) forgets the history
    assert torch.equal(foa.dynamic_weights(now, 0), torch.ones(2, 2))
    with pytest.raises(InputError, match="temperature"):
        FOAAttack(TinyNet(), temperature=0.0)


def test_apgd_checkpoints_match_autoattack_schedule():
    # AutoAttack, 100 iterations: checks after 22, 41, 57, 70, 80, 87, 93, 99 iterations
    assert apgd_checkpoints(100) == [21, 40, 56, 69, 79, 86, 92, 98]
    assert apgd_checkpoints(1) == [0]


# ------------------------------------------------------------------ paper-protocol attacks


def test_paper_attack_defaults():
    model = TinyNet()
    for cls in (EmbeddingMatch, MAttack, FOAAttack):
        a = cls(model)
        assert (a.norm, a.eps, a.steps, a.step_size) == ("linf", 16 / 255, 300, 1 / 255)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: EmbeddingMatch(m, steps=15),
        lambda m: EmbeddingMatch([m, TinyNet(seed=1)], steps=15, weights=[2, 1]),
        lambda m: MAttack([m, TinyNet(seed=1)], steps=15),
        lambda m: MAttack(m, steps=80, crop_target=True),  # local-to-local: slower
        lambda m: FOAAttack(m, steps=15, num_local_crops=3),
        lambda m: FOAAttack(m, m.tokens, steps=15, num_clusters=4),
        lambda m: FOAAttack([m, TinyNet(seed=1)], steps=15, num_local_crops=3),
    ],
    ids=[
        "mf-ii",
        "mf-ii-ensemble",
        "m-attack-ensemble",
        "m-attack-local",
        "foa-crops",
        "foa-tok",
        "foa-dynamic-ensemble",
    ],
)
def test_targeted_embedding_attacks_raise_target_cosine(net, make):
    x, target = images(), images(seed=7)
    attack = make(net)
    res = attack(x, target_images=target)
    assert_in_budget(res.adv_images, x, "linf", 16 / 255)
    with torch.no_grad():
        before, after = cosine(net(x), net(target)), cosine(net(res.adv_images), net(target))
    assert bool((after > before + 0.02).all()), (before, after)
    assert bool((res.objective > res.clean_objective).all())


def test_embedding_match_accepts_target_features(net):
    x, target = images(), images(seed=7)
    with torch.no_grad():
        feats = net(target)
    a = EmbeddingMatch(net, steps=5)(x, target_features=feats)
    b = EmbeddingMatch(net, steps=5)(x, target_images=target)
    torch.testing.assert_close(a.adv_images, b.adv_images)
    with pytest.raises(InputError):
        EmbeddingMatch(net, steps=5)(x)


def test_crop_resize_is_exact_on_pixel_grids():
    x = images(2)
    full = crop_resize(x, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2))
    torch.testing.assert_close(full, x)
    left = crop_resize(x, torch.tensor([[-0.5, 0.0, 0.5, 1.0]] * 2), size=(16, 8))
    torch.testing.assert_close(left, x[..., :8])
    boxes = crop_boxes(500, (0.5, 0.9), generator=torch.Generator().manual_seed(0))
    area = boxes[:, 2] * boxes[:, 3]
    assert float(area.min()) >= 0.5 - 1e-6 and float(area.max()) <= 0.9 + 1e-6
    assert bool((boxes[:, 0].abs() + boxes[:, 2] <= 1 + 1e-6).all())
    assert bool((boxes[:, 1].abs() + boxes[:, 3] <= 1 + 1e-6).all())


def test_sinkhorn_marginals_and_exact_ot_limit():
    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 6, 5, generator=gen, dtype=torch.float64)
    a = torch.softmax(torch.randn(3, 6, generator=gen, dtype=torch.float64), 1)
    b = torch.softmax(torch.randn(3, 5, generator=gen, dtype=torch.float64), 1)
    plan = sinkhorn(cost, a, b, reg=0.1, iters=20)
    assert bool((plan >= 0).all())
    torch.testing.assert_close(plan.sum(1), b, atol=1e-12, rtol=0)  # last update: columns
    torch.testing.assert_close(plan.sum(2), a, atol=1e-3, rtol=0)
    plan = sinkhorn(cost, a, b, reg=0.1, iters=500)
    torch.testing.assert_close(plan.sum(2), a, atol=1e-9, rtol=0)
    # constant cost: the plan is the independent coupling a b^T
    flat = sinkhorn(torch.ones(3, 6, 5, dtype=torch.float64), a, b, reg=0.5, iters=5)
    torch.testing.assert_close(flat, a[:, :, None] * b[:, None, :])
    # small reg, uniform square marginals: cost -> optimal assignment cost / n
    c = torch.rand(1, 5, 5, generator=gen, dtype=torch.float64)
    rows, cols = linear_sum_assignment(c[0].numpy())
    exact = c[0].numpy()[rows, cols].sum() / 5
    approx = float((sinkhorn(c, reg=1e-3, iters=3000) * c).sum())
    assert approx == pytest.approx(exact, abs=2e-3)


def test_kmeans_masses_and_centroids():
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 8, generator=gen), dim=1)
    pts = centres.repeat_interleave(4, 0) + 0.01 * torch.randn(12, 8, generator=gen)
    cent, mass = kmeans(pts[None], 3)
    torch.testing.assert_close(mass.sum(1), torch.ones(1))
    torch.testing.assert_close(mass, torch.full((1, 3), 1 / 3))
    sims = F.normalize(cent[0], dim=1) @ centres.T
    assert float(sims.max(1).values.min()) > 0.99


# ------------------------------------------------------------------ randomized models, EoT


class NoisyNet(nn.Module):
    """A randomized model: the tiny net evaluated at x + sigma * N(0, I) (global RNG)."""

    def __init__(self, sigma: float = 0.25) -> None:
        super().__init__()
        self.net = TinyNet()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + self.sigma * torch.randn_like(x))


def _grad_variance(attack, x, reps: int = 12) -> float:
    grads = torch.stack([attack.gradient(x)[1] for _ in range(reps)])
    return float(grads.var(dim=0).mean())


def test_eot_reduces_gradient_variance():
    torch.manual_seed(0)
    noisy = NoisyNet()
    x = images(2)
    with torch.no_grad():
        ref = noisy.net(images(2, seed=5))
    obj = FeatureCosine(ref, targeted=True)
    v1 = _grad_variance(PGD(EoT(noisy, 1), EoTObjective(obj)), x)
    v16 = _grad_variance(PGD(EoT(noisy, 16, batched=True), EoTObjective(obj)), x)
    v16_seq = _grad_variance(PGD(noisy, obj, eot_iter=16), x)
    assert v16 < v1 / 4, (v1, v16)  # ~1/16 expected
    assert v16_seq < v1 / 4, (v1, v16_seq)


def test_eot_objective_modes_and_attack_on_randomized_model():
    torch.manual_seed(0)
    noisy = NoisyNet(sigma=0.1)
    x = images(3)
    outs = EoT(noisy, 4)(x)
    assert outs.shape == (3, 4, 16)
    mean_obj = EoTObjective(FeatureCosine(targeted=True), "mean_objective")
    mean_feat = EoTObjective(FeatureCosine(targeted=True), "mean_feature")
    ref = outs[:, 0]
    v_obj = mean_obj(outs, reference_features=ref)
    v_feat = mean_feat(outs, reference_features=ref)
    manual = torch.stack([cosine(outs[:, j], ref) for j in range(4)], 1).mean(1)
    torch.testing.assert_close(v_obj, manual)
    torch.testing.assert_close(v_feat, cosine(outs.mean(1), ref))
    # untargeted attack through EoT: clean reference = mean of clean noisy outputs
    res = PGD(
        EoT(noisy, 4, batched=True), EoTObjective(FeatureCosine()), norm="l2", eps=1.0, steps=10
    )(x)
    assert_in_budget(res.adv_images, x, "l2", 1.0)

    def far(f: torch.Tensor) -> torch.Tensor:  # success: noisy feature far from the clean one
        with torch.no_grad():
            return cosine(f, noisy.net(x)) < 0.9

    rate_adv = judge_randomized(noisy, res.adv_images, 20, far, seed=123)
    rate_clean = judge_randomized(noisy, x, 20, far, seed=123)
    assert rate_adv.shape == (3,) and float(rate_adv.mean()) > float(rate_clean.mean())


def test_judge_randomized_rates_and_seed():
    p = torch.tensor([0.0, 0.3, 1.0])
    state = torch.get_rng_state()

    def fn(adv):
        return torch.rand(adv.shape[0])

    rate = judge_randomized(fn, torch.zeros(3, 1, 2, 2), 400, lambda u: u < p, seed=1)
    again = judge_randomized(fn, torch.zeros(3, 1, 2, 2), 400, lambda u: u < p, seed=1)
    assert torch.equal(rate, again) and torch.equal(torch.get_rng_state(), state)
    assert rate[0] == 0.0 and rate[2] == 1.0 and abs(float(rate[1]) - 0.3) < 0.08
    with pytest.raises(InputError):
        judge_randomized(fn, torch.zeros(3, 1, 2, 2), 0, lambda u: u < p)


def test_eot_with_smoothed_encoder_noisy_features():
    featsmooth = pytest.importorskip("featsmooth")
    if not hasattr(featsmooth, "SmoothedEncoder"):
        pytest.skip("featsmooth.SmoothedEncoder not available yet")
    sm = featsmooth.SmoothedEncoder(TinyNet(), sigma=0.1)
    x = images(2)
    model = lambda imgs: sm.noisy_features(imgs, 4)  # noqa: E731  (B, 4, D)
    res = PGD(model, EoTObjective(FeatureCosine()), norm="l2", eps=0.5, steps=5)(x)
    assert_in_budget(res.adv_images, x, "l2", 0.5)
    assert bool((res.objective > res.clean_objective).all())
    again = PGD(model, EoTObjective(FeatureCosine()), norm="l2", eps=0.5, steps=5)(x)
    assert torch.equal(res.adv_images, again.adv_images)  # the smoothing noise is seeded too
    clean = sm.features(x)

    def judge(seed: int) -> torch.Tensor:
        return judge_randomized(
            lambda a: sm.noisy_features(a, 1)[:, 0],
            res.adv_images,
            8,
            lambda f: (f * clean).sum(1) < -res.objective,  # below the attack-time mean cosine
            seed=seed,
        )

    rate = judge(1)
    assert rate.shape == (2,) and torch.equal(rate, judge(1))
    assert bool(((rate * 8) == (rate * 8).round()).all())  # a fraction of the 8 fresh draws


# ------------------------------------------------------------------ analytic optimum, devices


@pytest.mark.parametrize("cls", [PGD, APGD])
@pytest.mark.parametrize("norm,eps", [("l2", 1.0), ("linf", 4 / 255)])
def test_attacks_reach_the_analytic_worst_case_of_a_trig_encoder(cls, norm, eps):
    """cos(f(x), f(x+d)) = cos(a.d) for the one-frequency TrigEncoder: the worst case over the
    ball is cos(|a| eps) (l2) or cos(eps |a|_1) (linf), reached at d = eps a/|a| or eps sign(a)
    (the box is inactive at x = 0.5)."""
    from featsmooth.encoders.synthetic import make_trig_encoder

    enc = make_trig_encoder(0.9, 0.25, shape=(3, 8, 8))
    a = enc.frequencies.flatten()
    angle = float(a.norm()) * eps if norm == "l2" else float(a.abs().sum()) * eps
    assert angle < math.pi
    x = torch.full((2, 3, 8, 8), 0.5)
    # l2 PGD's default step (2.5 eps / steps) turns the iterate towards a too slowly to get
    # within 2e-3 in 20 steps from a typical random start; eps / 2 gets there from any
    kw = {"step_size": eps / 2} if cls is PGD and norm == "l2" else {}
    res = cls(enc, FeatureCosine(), norm=norm, eps=eps, steps=20, seed=0, **kw)(x)
    assert_in_budget(res.adv_images, x, norm, eps)
    assert -float(res.objective.max()) == pytest.approx(math.cos(angle), abs=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attacks_on_cuda(dtype):
    model = TinyNet().to("cuda", dtype)
    x, target = images(), images(seed=7)
    for attack in (
        PGD(model, FeatureCosine(), norm="l2", eps=0.5, steps=5),
        APGD(model, FeatureCosine(), eps="8/255", steps=5),
        MAttack(model, steps=5),
        FOAAttack(model, model.tokens, steps=5, num_clusters=4),
    ):
        kw = {"target_images": target.cuda()} if attack.matches_target_embeddings else {}
        res = attack(x.cuda(), **kw)
        assert res.adv_images.device.type == "cuda" and res.adv_images.dtype == torch.float32
        assert_in_budget(res.adv_images.cpu(), x, attack.norm, attack.eps)
        assert bool((res.objective > res.clean_objective).all())
    if dtype == torch.float32:  # same seed, same random start: CPU and CUDA agree
        cpu = PGD(TinyNet(), FeatureCosine(), norm="l2", eps=0.5, steps=5)(x)
        gpu = PGD(model, FeatureCosine(), norm="l2", eps=0.5, steps=5)(x.cuda())
        torch.testing.assert_close(gpu.adv_images.cpu(), cpu.adv_images, atol=1e-3, rtol=0)


# ------------------------------------------------------------------ torchattacks idiom


def test_torchattacks_idiom_on_a_classifier(net):
    x, labels = images(), torch.tensor([0, 3, 5, 7])
    attack = PGD(net, eps=8 / 255, alpha=2 / 255, steps=10)
    assert attack.step_size == pytest.approx(2 / 255)
    res = attack(x, labels)  # positional labels; objective: cross-entropy of the logits
    assert_in_budget(res.adv_images, x, "linf", 8 / 255)
    ce = lambda z: F.cross_entropy(net(z), labels, reduction="none")  # noqa: E731
    assert bool((ce(res.adv_images) > ce(x)).all())
    assert torch.allclose(res.objective, ce(res.adv_images), atol=1e-4)
    assert attack.objective is None  # the default is chosen per call, not kept
    # the tensor return option gives the same images
    adv = PGD(net, eps=8 / 255, alpha=2 / 255, steps=10, return_images=True)(x, labels)
    assert isinstance(adv, torch.Tensor) and torch.equal(adv, res.adv_images)
    for cls in (APGD,):
        assert_in_budget(cls(net, eps=8 / 255, steps=5)(x, labels).adv_images, x, "linf", 8 / 255)


def test_torchattacks_idiom_without_labels_attacks_the_features(net):
    x = images()
    res = PGD(net, norm="l2", eps=0.5, steps=5)(x)
    explicit = PGD(net, FeatureCosine(), norm="l2", eps=0.5, steps=5)(x)
    assert torch.equal(res.adv_images, explicit.adv_images)


def test_torchattacks_idiom_rejects_ambiguous_arguments(net):
    with pytest.raises(InputError, match="step size once"):
        PGD(net, eps=8 / 255, alpha=2 / 255, step_size=1 / 255)
    with pytest.raises(InputError, match="labels given twice"):
        PGD(net, steps=1)(images(), torch.zeros(4, dtype=torch.long), labels=torch.zeros(4))
    with pytest.raises(InputError, match="logits"):
        PGD(lambda z: z, steps=1)(images(), torch.zeros(4, dtype=torch.long))


def test_smoothed_encoder_is_a_module_other_attack_code_can_take(net):
    from featsmooth import SmoothedEncoder

    smoothed = SmoothedEncoder(net, sigma=0.25, forward_draws=4)
    assert isinstance(smoothed, nn.Module) and smoothed.encoder in smoothed.modules()
    x = images().requires_grad_(True)
    out = smoothed(x)
    assert out.shape == (4, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=0.5)  # a mean of unit vectors
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.abs().sum() > 0  # gradients reach the pixels through the noise
    smoothed.eval()
    res = PGD(smoothed, norm="l2", eps=0.5, steps=3, eot_iter=2)(images())
    assert_in_budget(res.adv_images, images(), "l2", 0.5)
