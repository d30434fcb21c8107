"""Expectation over Transformation (EoT) for randomized models, and judging over fresh draws.

Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018;
Athalye et al., "Synthesizing Robust Adversarial Examples", ICML 2018.

A smoothed encoder ``x -> f(x + noise)`` is random: one gradient through one noise draw is a
noisy estimate of the gradient of the *expected* objective. EoT averages over ``k`` draws:

- :class:`EoT` turns a random model ``fn(images) -> (B, ...)`` into ``images -> (B, k, ...)``
  (k independent calls), e.g. for a model that draws its own noise;
- a smoothed encoder offers this directly: ``lambda x: sm.noisy_features(x, k)`` is
  ``(B, k, D)``, unit features, differentiable;
- :class:`EoTObjective` turns any per-image objective into one on ``(B, k, ...)`` outputs,
  either averaging the objective over the draws (``mode="mean_objective"``, the EoT
  gradient) or applying it to the mean feature (``mode="mean_feature"``, which attacks the
  Monte-Carlo estimate of the smoothed feature f_hat(x) directly).

The attacks' ``eot_iter`` argument is a third, memory-light route: it averages gradients
over sequential forward/backward passes.

An attack on a random model must be judged over **fresh** draws, not the draws it was
optimised on: :func:`judge_randomized` returns per image the fraction of fresh draws in
which the attack succeeds.

Example (an EoT attack on a smoothed encoder ``sm``, adaptive through its plug-in if it has
one, since ``noisy_features`` runs the whole wrapped module)::

    attack = PGD(lambda x: sm.noisy_features(x, 16), EoTObjective(FeatureCosine()),
                 norm="l2", eps=0.5, steps=50)
    adv = attack(images).adv_images
    clean = sm.features(images)
    rate = judge_randomized(lambda a: sm.noisy_features(a, 1)[:, 0], adv, 100,
                            lambda f: (f * clean).sum(1) < 0.5, seed=12345)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from featsmooth.attacks.objectives import Objective, Targets
from featsmooth.errors import InputError
from featsmooth.seeds import noise_seed


class EoT(nn.Module):
    """Stack ``k`` independent calls of a random model: ``(B, ...) -> (B, k, ...)``.

    Args:
        model_fn: random callable (or module) on images ``(B, C, H, W)``; its parameters
            are registered when it is an ``nn.Module`` (so dtype/device inference works).
        k: number of draws per image (>= 1).
        batched: call the model once on the batch repeated ``k`` times (``(k*B, C, H, W)``,
            faster) instead of ``k`` times; requires that the model draws independent
            randomness per row.
    """

    def __init__(
        self, model_fn: Callable[[torch.Tensor], torch.Tensor], k: int, batched: bool = False
    ):
        super().__init__()
        if not callable(model_fn):
            raise InputError("EoT needs a callable model")
        if not isinstance(k, int) or k < 1:
            raise InputError(f"EoT needs k >= 1 draws, got {k!r}")
        self.fn = model_fn
        self.k = k
        self.batched = bool(batched)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        if self.batched:
            out = self.fn(images.repeat(self.k, *([1] * (images.ndim - 1))))
            return out.reshape(self.k, b, *out.shape[1:]).transpose(0, 1)
        return torch.stack([self.fn(images) for _ in range(self.k)], dim=1)


def _repeat_target(value: Any, b: int, k: int) -> Any:
    """Repeat a per-image target ``(B, ...)`` to ``(B*k, ...)`` in draw-major-inside order."""
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == b:
        return value.repeat_interleave(k, dim=0)
    if isinstance(value, list | tuple) and len(value) == b and not isinstance(value, str):
        return [v for v in value for _ in range(k)]
    return value


class EoTObjective(Objective):
    """Lift a per-image objective to outputs with a draw axis, ``(B, k, ...)`` -> ``(B,)``.

    Args:
        objective: any objective on ``(B, ...)`` outputs.
        mode: ``"mean_objective"``: ``mean_j objective(outputs[:, j])`` (per-image targets
            are repeated over the draws; its gradient is the EoT gradient);
            ``"mean_feature"``: ``objective(mean_j outputs[:, j])`` (the objective of the
            Monte-Carlo smoothed feature).

    Targets that default to clean outputs (untargeted FeatureCosine) are filled in from the
    mean over draws of the clean outputs.
    """

    def __init__(self, objective: Objective, mode: str = "mean_objective") -> None:
        if mode not in ("mean_objective", "mean_feature"):
            raise InputError(f"mode must be 'mean_objective' or 'mean_feature', got {mode!r}")
        self.inner = objective
        self.mode = mode
        self.targeted = getattr(objective, "targeted", False)

    def resolve(self, targets: Targets, clean_outputs: Callable[[], torch.Tensor]) -> Targets:
        resolve = getattr(self.inner, "resolve", None)
        if resolve is None:
            return dict(targets)
        return resolve(targets, lambda: clean_outputs().mean(dim=1))

    def __call__(self, outputs: torch.Tensor, **targets: Any) -> torch.Tensor:
        if outputs.ndim < 3:
            raise InputError(
                "EoTObjective expects outputs (B, k, ...) with a draw axis, "
                f"got {tuple(outputs.shape)}"
            )
        b, k = outputs.shape[:2]
        if self.mode == "mean_feature":
            return self.inner(outputs.mean(dim=1), **targets)
        flat = outputs.reshape(b * k, *outputs.shape[2:])
        rep = {key: _repeat_target(v, b, k) for key, v in targets.items()}
        return self.inner(flat, **rep).reshape(b, k).mean(dim=1)

    def __repr__(self) -> str:
        return f"EoTObjective({self.inner!r}, mode={self.mode!r})"


def judge_randomized(
    fn: Callable[[torch.Tensor], Any],
    adv: torch.Tensor,
    num_draws: int,
    success_fn: Callable[[Any], torch.Tensor],
    *,
    seed: int | None = None,
) -> torch.Tensor:
    """Success rate per image of ``adv`` against a random model, over fresh draws.

    Args:
        fn: the random model, one draw per call: ``fn(adv) -> outputs``.
        adv: ``(B, C, H, W)`` adversarial images.
        num_draws: number of independent calls.
        success_fn: ``success_fn(outputs) -> (B,)`` bool (or 0/1) tensor, e.g.
            ``lambda f: zero_shot_argmax(f) == target``.
        seed: seeds the global RNG for the duration of the call (restored afterwards) with
            ``featsmooth.seeds.noise_seed(seed, "draws", "judge")``, so that the draws are
            reproducible and independent of the attack's (purpose ``attack``). ``None``:
            the current RNG state is used (and advanced).

    Returns:
        ``(B,)`` float32 fraction of draws in which the attack succeeded (on ``adv``'s device).
    """
    if not isinstance(num_draws, int) or num_draws < 1:
        raise InputError(f"num_draws must be an integer >= 1, got {num_draws!r}")
    adv = adv.detach()

    def run() -> torch.Tensor:
        hits = torch.zeros(adv.shape[0], device=adv.device)
        with torch.no_grad():
            for _ in range(num_draws):
                ok = torch.as_tensor(success_fn(fn(adv))).to(adv.device).reshape(-1)
                if ok.shape[0] != adv.shape[0]:
                    raise InputError(
                        f"success_fn must return one value per image, got {tuple(ok.shape)}"
                    )
                hits += ok.float()
        return hits / num_draws

    if seed is None:
        return run()
    devices = list(range(torch.cuda.device_count())) if adv.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(noise_seed(int(seed), "draws", "judge"))
        return run()
