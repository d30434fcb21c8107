"""Auto-PGD: PGD with momentum and an automatic step-size schedule.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (the APGD of AutoAttack), l2 and linf versions.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from featsmooth.attacks.base import Attack, ModelFn
from featsmooth.attacks.objectives import Objective, Targets
from featsmooth.attacks.registry import register
from featsmooth.errors import InputError


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations (0-based, after which the step size may be halved) of APGD's schedule.

    The first check comes after ``max(int(0.22 * steps), 1)`` iterations; each following
    interval shrinks by ``max(int(0.03 * steps), 1)`` down to ``max(int(0.06 * steps), 1)``
    (the integer form of p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) used by AutoAttack).
    """
    interval = max(int(0.22 * steps), 1)
    minimum = max(int(0.06 * steps), 1)
    decrease = max(int(0.03 * steps), 1)
    points, at = [], 0
    while True:
        at += interval
        if at > steps:
            return points
        points.append(at - 1)
        interval = max(interval - decrease, minimum)


@register
class APGD(Attack):
    """APGD (Croce & Hein 2020), maximising any objective in an l2 or linf ball.

    Per image: the step size starts at ``2 * eps``; the update is the projected steepest
    ascent step ``z = Proj(x_k + eta * dir(g))`` followed by momentum
    ``x_{k+1} = Proj(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))`` with
    ``alpha = momentum = 0.75`` (1 at the first step). At each checkpoint
    (:func:`apgd_checkpoints`) the step size is halved and the iterate reset to the best
    point found when (1) the objective increased in fewer than ``rho`` of the steps since
    the last checkpoint, or (2) the step size was not reduced at the last checkpoint and the
    best value has not improved since. The best iterate per image is returned.

    Threat model: ``||x' - x||_p <= eps`` (pixel units, p = inf or 2) and ``x'`` in ``[0, 1]``.

    Args:
        model_fn, objective, norm, eps, steps: see :class:`~featsmooth.attacks.base.Attack`
            (AutoAttack uses 100 steps).
        rho: oscillation threshold of condition (1) (0.75).
        momentum: ``alpha`` of the momentum update (0.75).
        initial_step: initial step size as a multiple of ``eps`` (2).
        **kwargs: ``restarts``, ``random_start``, ``seed``, ``eot_iter``, ``record_history``,
            ``input_dtype``, ``device``.

    Shapes: ``attack(images (B, C, H, W), **targets) -> AttackResult``.
    """

    name = "apgd"

    def __init__(
        self,
        model_fn: ModelFn | None,
        objective: Objective | None = None,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        steps: int = 100,
        *,
        rho: float = 0.75,
        momentum: float = 0.75,
        initial_step: float = 2.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("keep_best", True)
        if not kwargs["keep_best"]:
            raise InputError("APGD always returns its best iterate (keep_best=True)")
        super().__init__(model_fn, objective, norm, eps, steps, **kwargs)
        for label, value in (("rho", rho), ("momentum", momentum)):
            if not 0.0 <= float(value) <= 1.0:
                raise InputError(f"{label} must be in [0, 1], got {value!r}")
        if not math.isfinite(initial_step) or initial_step <= 0:
            raise InputError(f"initial_step must be > 0, got {initial_step!r}")
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.initial_step = float(initial_step)

    def _run(
        self, x: torch.Tensor, targets: Targets, restart: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        proj, direction = self.threat.project, self.threat.ascent_direction
        b = x.shape[0]
        shape = (b, *([1] * (x.ndim - 1)))
        x_adv = self._start(x, restart)
        val, grad = self._value_and_grad(x_adv, targets, step=0)
        history = [val]
        x_best, val_best, grad_best = x_adv.clone(), val.clone(), grad.clone()
        step = torch.full(shape, self.initial_step * self.eps, device=x.device)
        x_prev = x_adv.clone()
        checkpoints = set(apgd_checkpoints(self.steps))
        since_check = 0
        increases = torch.zeros(b, device=x.device)
        best_at_last_check = val_best.clone()
        reduced_last_check = torch.ones(b, dtype=torch.bool, device=x.device)
        val_prev = val
        for i in range(self.steps):
            with torch.no_grad():
                a = self.momentum if i > 0 else 1.0
                z = proj(x_adv + step * direction(grad), x)
                x_new = proj(x_adv + a * (z - x_adv) + (1.0 - a) * (x_adv - x_prev), x)
                x_prev, x_adv = x_adv, x_new
            val, grad = self._value_and_grad(x_adv, targets, step=i + 1)
            history.append(val)
            with torch.no_grad():
                increases += (val > val_prev).float()
                val_prev = val
                improved = val > val_best
                x_best = torch.where(improved.view(shape), x_adv, x_best)
                grad_best = torch.where(improved.view(shape), grad, grad_best)
                val_best = torch.where(improved, val, val_best)
                since_check += 1
                if i in checkpoints:
                    oscillating = increases <= since_check * self.rho
                    stalled = (~reduced_last_check) & (best_at_last_check >= val_best)
                    reduce = oscillating | stalled
                    reduced_last_check = reduce
                    best_at_last_check = val_best.clone()
                    step = torch.where(reduce.view(shape), step / 2.0, step)
                    x_adv = torch.where(reduce.view(shape), x_best, x_adv)
                    grad = torch.where(reduce.view(shape), grad_best, grad)
                    increases.zero_()
                    since_check = 0
        return x_best, val_best, history
