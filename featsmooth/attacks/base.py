"""The base class of featsmooth's white-box attacks.

An :class:`Attack` perturbs a batch of images ``(B, C, H, W)`` in pixel units ``[0, 1]``
inside a :class:`~featsmooth.attacks.budget.ThreatModel` (l2 or linf ball of radius ``eps``
intersected with the box ``[0, 1]``) to **maximise** an objective (see
:mod:`featsmooth.attacks.objectives` for the sign convention). Every iterate is projected
onto the feasible set, so any returned image satisfies ``||x' - x|| <= eps`` and
``0 <= x' <= 1`` exactly as stored (float32).

Common behaviour of all attacks:

- Batched: each image has its own objective value, step size and best iterate.
- Restarts: ``restarts`` independent runs (random starts after the first), keeping per
  image the run with the highest objective value.
- Deterministic given ``seed`` (any integer, 64-bit and wider included): random starts and
  crops come from a CPU ``torch.Generator``; the global torch RNG (used by randomized
  models, e.g. a smoothed encoder's noise) is forked for the duration of the call and
  restored afterwards. The two are seeded with independent streams derived from ``seed``
  (:func:`featsmooth.seeds.noise_seed`, purpose ``attack``, keys ``"start"`` and
  ``"model"``). ``seed=None`` draws fresh randomness.
- Device- and dtype-agnostic: images and per-image targets are moved to ``device`` (default:
  the images' device); the model is fed its own floating dtype (e.g. bf16) and its outputs
  are cast to float32 before the objective, so losses and gradients are accumulated in fp32.
- Randomized models: ``eot_iter`` averages the gradient over that many forward/backward
  passes (Expectation over Transformation); see also :mod:`featsmooth.attacks.eot`.
- Gradients are taken with ``torch.autograd.grad`` with respect to the images only: the
  model's ``.grad`` buffers are never touched. Put the model in ``eval()`` mode yourself.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featsmooth.attacks.budget import ThreatModel
from featsmooth.attacks.objectives import Objective, Targets
from featsmooth.errors import InputError
from featsmooth.seeds import noise_seed

ModelFn = Callable[[torch.Tensor], Any]


@dataclass
class AttackResult:
    """What an attack returns.

    Attributes:
        adv_images: ``(B, C, H, W)`` float32 adversarial images, inside the threat model.
        objective: ``(B,)`` float32 objective value of ``adv_images`` (the value used to
            choose among iterates and restarts; larger = stronger attack).
        clean_objective: ``(B,)`` float32 objective value of the clean images.
        distance: ``(B,)`` ``||adv_images - images||`` in the attack's norm.
        best_restart: ``(B,)`` int64 index of the restart that produced ``adv_images``.
        history: ``(restarts, steps + 1, B)`` float32 objective value at every iterate of
            every restart (CPU), when the attack was built with ``record_history=True``.
    """

    adv_images: torch.Tensor
    objective: torch.Tensor
    clean_objective: torch.Tensor
    distance: torch.Tensor
    best_restart: torch.Tensor
    history: torch.Tensor | None = None

    @property
    def gain(self) -> torch.Tensor:
        """``objective - clean_objective`` per image (>= 0 when the attack helped)."""
        return self.objective - self.clean_objective


def module_dtype(fn: Any) -> torch.dtype | None:
    """Floating dtype of the first parameter of ``fn`` if it is an ``nn.Module`` (or a bound
    method of one, e.g. ``model.tokens``), else None."""
    owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    if isinstance(owner, nn.Module):
        for p in owner.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def call_model(fn: ModelFn | None, images: torch.Tensor, dtype: torch.dtype | None = None) -> Any:
    """``fn(images)`` with the input cast to ``dtype`` (or the module's dtype) and every
    floating output tensor (also inside tuples/lists/dicts) cast to float32.

    ``fn=None`` is the identity (for objectives that consume pixels, e.g. TextLikelihood).
    """
    if fn is None:
        return images.float()
    dtype = dtype or module_dtype(fn)
    x = images.to(dtype) if dtype is not None and dtype != images.dtype else images
    return _to_float32(fn(x))


def _to_float32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple | list):
        return type(out)(_to_float32(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float32(v) for k, v in out.items()}
    return out


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[torch.Generator]:
    """Yield a CPU generator seeded from ``seed`` while the global RNGs are forked and seeded.

    The generator and the global RNGs get independent streams of ``seed``
    (:func:`featsmooth.seeds.noise_seed` with keys ``"start"`` and ``"model"``, purpose
    ``attack``). With ``seed=None`` nothing is forked and the generator gets a fresh seed.
    """
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
        yield gen
        return
    gen.manual_seed(noise_seed(int(seed), "start", "attack"))
    devices: list[int] = []
    if device.type == "cuda" and torch.cuda.is_available():
        devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(noise_seed(int(seed), "model", "attack"))
        yield gen


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image ``where``: rows of ``a`` where ``mask`` (B,) else rows of ``b``."""
    return torch.where(mask.view(-1, *([1] * (a.ndim - 1))), a, b)


class Attack:
    """Base class: batched, restartable, seeded maximisation of an objective in a norm ball.

    Args:
        model_fn: callable (usually an ``nn.Module``) mapping images ``(B, C, H, W)`` in
            pixel units to outputs ``(B, ...)`` that ``objective`` consumes; ``None`` means
            the identity (the objective consumes pixels). Adaptive attacks on a defended
            model simply pass the whole defended pipeline (e.g. purifier -> encoder -> mapper).
        objective: an :class:`~featsmooth.attacks.objectives.Objective` (or any callable
            ``objective(outputs, **targets) -> (B,)``) to maximise. ``None`` (default) picks
            one per call, as torchattacks does: with labels, the cross-entropy of the model's
            outputs as logits (:class:`~featsmooth.attacks.objectives.CrossEntropy`);
            without, the untargeted feature cosine
            (:class:`~featsmooth.attacks.objectives.FeatureCosine`).
        norm: ``"linf"`` or ``"l2"``.
        eps: budget in pixel units (float, or ``"k/255"`` for linf).
        steps: gradient steps per restart.
        restarts: independent runs; per image the best is kept.
        random_start: start the first run at a random point of the ball (later runs always
            start at random points).
        seed: seed of all randomness of the call (``None``: fresh randomness).
        eot_iter: forward/backward passes averaged per gradient (EoT for randomized models).
        keep_best: return the best iterate seen (``True``) or the last one (``False``).
        record_history: also return the objective value at every iterate.
        input_dtype: dtype fed to ``model_fn`` (default: the dtype of its parameters).
        device: where to run (default: the device of the images).
        return_images: calls return the adversarial images ``(B, C, H, W)`` alone, as
            torchattacks does, instead of an :class:`AttackResult`.

    Call: ``attack(images, labels)`` or ``attack(images, **targets)``; labels may be given
    positionally (torchattacks style) or as ``labels=``.
    """

    name = "attack"
    #: call convention: ``attack(images, target_images=... | target_features=...)``
    #: (targeted embedding matching) instead of an objective's targets; see
    #: :mod:`featsmooth.attacks.registry`.
    matches_target_embeddings = False

    def __init__(
        self,
        model_fn: ModelFn | None,
        objective: Objective | Callable[..., torch.Tensor] | None = None,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        steps: int = 10,
        *,
        restarts: int = 1,
        random_start: bool = True,
        seed: int | None = 0,
        eot_iter: int = 1,
        keep_best: bool = True,
        record_history: bool = False,
        input_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        return_images: bool = False,
    ) -> None:
        if model_fn is not None and not callable(model_fn):
            raise InputError(f"model_fn must be callable, got {type(model_fn).__name__}")
        if objective is not None and not callable(objective):
            raise InputError(f"objective must be callable, got {type(objective).__name__}")
        for label, value, low in (("steps", steps, 0), ("restarts", restarts, 1)):
            if not isinstance(value, int) or value < low:
                raise InputError(f"{label} must be an integer >= {low}, got {value!r}")
        if not isinstance(eot_iter, int) or eot_iter < 1:
            raise InputError(f"eot_iter must be an integer >= 1, got {eot_iter!r}")
        self.model_fn = model_fn
        self.objective = objective
        self.threat = ThreatModel(norm, eps)
        self.steps = steps
        self.restarts = restarts
        self.random_start = bool(random_start)
        self.seed = seed
        self.eot_iter = eot_iter
        self.keep_best = bool(keep_best)
        self.record_history = bool(record_history)
        self.input_dtype = input_dtype
        self.device = torch.device(device) if device is not None else None
        self.return_images = bool(return_images)
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------ properties
    @property
    def norm(self) -> str:
        return self.threat.norm

    @property
    def eps(self) -> float:
        return self.threat.eps

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(norm={self.norm!r}, eps={self.eps:.6g}, steps={self.steps}, "
            f"restarts={self.restarts}, objective={self.objective!r})"
        )

    # ------------------------------------------------------------------ public API
    def __call__(
        self, images: torch.Tensor, labels: Any = None, /, **targets: Any
    ) -> AttackResult | torch.Tensor:
        """Attack ``images`` ``(B, C, H, W)`` in ``[0, 1]``; ``labels`` (positional) and
        ``targets`` are per-image tensors/lists the objective needs (e.g. ``labels=``,
        ``reference_features=``). Returns an :class:`AttackResult`, or the adversarial
        images alone when the attack was built with ``return_images=True``."""
        x = self._check_images(images)
        if labels is not None:
            if targets.get("labels") is not None:
                raise InputError("labels given twice: positionally and as labels=")
            targets["labels"] = labels
        with seeded(self.seed, x.device) as gen, self._objective_for(targets):
            self._generator = gen
            try:
                targets = self._prepare_targets(x, targets)
                clean = self._evaluate(x, targets)
                best_adv, best_val = x.clone(), torch.full_like(clean, -math.inf)
                best_restart = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                histories = []
                for r in range(self.restarts):
                    adv, val, hist = self._run(x, targets, restart=r)
                    better = val > best_val
                    if r == 0:
                        better = torch.ones_like(better)
                    best_adv = _select(better, adv, best_adv)
                    best_val = torch.where(better, val, best_val)
                    best_restart = torch.where(
                        better, torch.full_like(best_restart, r), best_restart
                    )
                    if self.record_history:
                        histories.append(torch.stack(hist).float().cpu())
            finally:
                self._generator = None
        if not bool(self.threat.contains(best_adv, x).all()):  # pragma: no cover - a bug guard
            raise RuntimeError(f"{self.name}: an adversarial image left the threat model")
        if self.return_images:
            return best_adv.detach()
        return AttackResult(
            adv_images=best_adv.detach(),
            objective=best_val.detach(),
            clean_objective=clean.detach(),
            distance=self.threat.distance(best_adv, x).detach(),
            best_restart=best_restart,
            history=torch.stack(histories) if self.record_history else None,
        )

    def gradient(self, images: torch.Tensor, **targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One gradient estimate of the objective at ``images`` (the one a step would use).

        Targets that default to the clean outputs are computed at ``images``. Returns the
        values ``(B,)`` and the gradient ``(B, C, H, W)``, both float32. Uses the global RNG
        as it is (no seeding), so repeated calls give independent estimates for randomized
        models.
        """
        x = self._check_images(images)
        with self._objective_for(targets):
            return self._gradient(x, targets)

    def _gradient(self, x: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(int(torch.randint(0, 2**63 - 1, (1,)).item()))
        try:
            targets = self._prepare_targets(x, targets)
            return self._value_and_grad(x, targets, step=0)
        finally:
            self._generator = None

    @contextlib.contextmanager
    def _objective_for(self, targets: Targets) -> Iterator[None]:
        """Within the block, ``self.objective`` is set: the attack's own, or for
        ``objective=None`` the torchattacks-style default for these targets."""
        if self.objective is not None:
            yield
            return
        from featsmooth.attacks.objectives import CrossEntropy, FeatureCosine

        self.objective = CrossEntropy() if targets.get("labels") is not None else FeatureCosine()
        try:
            yield
        finally:
            self.objective = None

    # ------------------------------------------------------------------ hooks
    def _run(
        self, x: torch.Tensor, targets: Targets, restart: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One run from one start: ``(adv (B,C,H,W), value (B,), history [steps+1 x (B,)])``."""
        raise NotImplementedError

    def _forward(self, fn: ModelFn | None, x: torch.Tensor) -> Any:
        return call_model(fn, x, self.input_dtype)

    def _step_values(self, x_adv: torch.Tensor, targets: Targets, step: int) -> torch.Tensor:
        """Differentiable ``(B,)`` values whose gradient drives step ``step`` (may be random)."""
        return self.objective(self._forward(self.model_fn, x_adv), **targets)

    def _evaluate(self, x_adv: torch.Tensor, targets: Targets) -> torch.Tensor:
        """``(B,)`` values used to compare iterates and restarts (no gradient)."""
        with torch.no_grad():
            return self.objective(self._forward(self.model_fn, x_adv), **targets).float()

    def _prepare_targets(self, x: torch.Tensor, targets: Targets) -> Targets:
        """Move per-image tensors to the device and let the objective fill in defaults."""
        moved = {
            k: v.to(x.device) if isinstance(v, torch.Tensor) else v for k, v in targets.items()
        }
        resolve = getattr(self.objective, "resolve", None)
        if resolve is None:
            return moved

        def clean_outputs() -> Any:
            with torch.no_grad():
                return self._forward(self.model_fn, x)

        return resolve(moved, clean_outputs)

    # ------------------------------------------------------------------ helpers
    def _value_and_grad(
        self, x_adv: torch.Tensor, targets: Targets, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Average over ``eot_iter`` passes of the values ``(B,)`` and their gradient."""
        grad = torch.zeros_like(x_adv)
        total = torch.zeros(x_adv.shape[0], device=x_adv.device)
        for _ in range(self.eot_iter):
            xa = x_adv.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                values = self._step_values(xa, targets, step).float()
                if values.shape != (x_adv.shape[0],):
                    raise InputError(
                        f"the objective must return one value per image, got {tuple(values.shape)}"
                    )
                (g,) = torch.autograd.grad(values.sum(), xa, allow_unused=True)
            if g is not None:
                grad += torch.nan_to_num(g.float(), nan=0.0, posinf=0.0, neginf=0.0)
            total += values.detach()
        return total / self.eot_iter, grad / self.eot_iter

    def _start(self, x: torch.Tensor, restart: int) -> torch.Tensor:
        if self.random_start or restart > 0:
            return self.threat.random_start(x, self._generator)
        return x.clone()

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise InputError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim < 2 or images.shape[0] == 0:
            raise InputError(f"expected a non-empty batch (B, C, H, W), got {tuple(images.shape)}")
        x = images.detach()
        if self.device is not None:
            x = x.to(self.device)
        x = x.float()
        if not bool(torch.isfinite(x).all()) or float(x.min()) < 0.0 or float(x.max()) > 1.0:
            raise InputError("images must be finite and in [0, 1] (pixel units, not normalised)")
        return x

    def _track(
        self,
        best_adv: torch.Tensor,
        best_val: torch.Tensor,
        x_adv: torch.Tensor,
        val: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        better = val > best_val
        return _select(better, x_adv, best_adv), torch.where(better, val, best_val)
