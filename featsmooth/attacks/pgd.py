"""Projected gradient descent (ascent) in an l2 or linf ball.

Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from featsmooth.attacks.base import Attack, ModelFn
from featsmooth.attacks.objectives import Objective, Targets
from featsmooth.attacks.registry import register
from featsmooth.errors import InputError


@register
class PGD(Attack):
    """PGD with steepest-ascent steps: ``x <- Proj(x + alpha * sign(g))`` (linf) or
    ``x <- Proj(x + alpha * g / ||g||_2)`` (l2), ``g`` the gradient of the objective.

    Threat model: ``||x' - x||_p <= eps`` (pixel units, p = inf or 2) and ``x'`` in ``[0, 1]``.

    Args:
        model_fn, objective, norm, eps, steps: see :class:`~featsmooth.attacks.base.Attack`.
        step_size: ``alpha`` in pixel units; default ``2.5 * eps / steps`` (Madry et al.).
            ``alpha=`` is accepted as an alias (torchattacks' name).
        **kwargs: ``restarts``, ``random_start``, ``seed``, ``eot_iter``, ``keep_best``,
            ``record_history``, ``input_dtype``, ``device`` (see the base class).

    Shapes: ``attack(images (B, C, H, W), **targets) -> AttackResult`` with ``adv_images``
    ``(B, C, H, W)`` and per-image ``objective`` ``(B,)``.

    Example::

        attack = PGD(encoder, FeatureCosine(), norm="l2", eps=0.5, steps=20)
        result = attack(images)            # untargeted: minimise cos(f(x'), f(x))

        # torchattacks style: a classifier, labels, the adversarial images back
        adv = PGD(classifier, eps=8 / 255, alpha=2 / 255, steps=10, return_images=True)(
            images, labels
        )
    """

    name = "pgd"
    #: step values are random (crops): compare iterates with :meth:`_evaluate` instead.
    stochastic_steps = False

    def __init__(
        self,
        model_fn: ModelFn | None,
        objective: Objective | None = None,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        steps: int = 10,
        step_size: float | str | None = None,
        *,
        alpha: float | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_fn, objective, norm, eps, steps, **kwargs)
        if alpha is not None:
            if step_size is not None:
                raise InputError("give the step size once: step_size= or its alias alpha=")
            step_size = alpha
        if step_size is None:
            step_size = 2.5 * self.eps / max(steps, 1)
        elif isinstance(step_size, str):
            from featsmooth.attacks.budget import parse_eps

            step_size = parse_eps(step_size, "linf")
        step_size = float(step_size)
        if not math.isfinite(step_size) or step_size < 0:
            raise InputError(f"step_size must be a finite number >= 0, got {step_size!r}")
        self.step_size = step_size

    def _direction(self, grad: torch.Tensor, step: int) -> torch.Tensor:
        return self.threat.ascent_direction(grad)

    def _run(
        self, x: torch.Tensor, targets: Targets, restart: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        x_adv = self._start(x, restart)
        best_adv, best_val = x_adv.clone(), torch.full((x.shape[0],), -math.inf, device=x.device)
        history: list[torch.Tensor] = []
        self._reset_state(x)
        for t in range(self.steps):
            val, grad = self._value_and_grad(x_adv, targets, step=t)
            if self.stochastic_steps and (self.keep_best or self.record_history):
                # compare iterates on the deterministic evaluation, not the random step value
                val = self._evaluate(x_adv, targets)
            history.append(val)
            if self.keep_best:
                best_adv, best_val = self._track(best_adv, best_val, x_adv, val)
            x_adv = self.threat.project(x_adv + self.step_size * self._direction(grad, t), x)
        final = self._evaluate(x_adv, targets)
        history.append(final)
        if self.keep_best:
            best_adv, best_val = self._track(best_adv, best_val, x_adv, final)
            return best_adv, best_val, history
        return x_adv, final, history

    def _reset_state(self, x: torch.Tensor) -> None:
        """Hook for attacks that keep state across steps (e.g. momentum)."""
