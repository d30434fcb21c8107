"""M-Attack: local random crops of the adversarial image matched to the target's feature.

Li, Zhao, Shen, Liu, "A Frustratingly Simple Yet Highly Effective Attack Baseline: Over 90%
Success Rate Against the Strong Black-box Models of GPT-4.5/4o/o1", 2025 (M-Attack). At each
step a random resized crop of the adversarial image (area fraction 0.5-0.9, resized back to
the full size) is encoded by one or several encoders (an ensemble) and its feature is pulled
towards the feature of the whole target image; the random local views spread the
perturbation's semantics over the image. Protocol: linf 16/255, 300 steps, step 1/255.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from featsmooth.attacks.base import ModelFn
from featsmooth.attacks.embedding_match import EmbeddingMatch
from featsmooth.attacks.objectives import Targets
from featsmooth.attacks.registry import register
from featsmooth.errors import InputError


def check_crop(scale: tuple[float, float], ratio: tuple[float, float]) -> None:
    """Raise InputError unless ``0 < scale[0] <= scale[1] <= 1`` and ``0 < ratio[0] <= ratio[1]``."""
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise InputError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise InputError(f"crop ratio must satisfy 0 < low <= high, got {ratio}")


def crop_boxes(
    batch: int,
    scale: tuple[float, float] = (0.5, 0.9),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop boxes as fractions of the image: ``(B, 4)`` = ``(cx, cy, w, h)``.

    The area fraction ``w * h`` is uniform in ``scale`` and the aspect ratio log-uniform in
    ``ratio`` (as in torchvision's RandomResizedCrop); ``w, h <= 1`` (clipped) and the
    centre ``(cx, cy)`` (in ``[-1, 1]`` grid coordinates) is uniform among positions that
    keep the box inside the image. Drawn on the CPU from ``generator``.
    """
    check_crop(scale, ratio)
    lo, hi = scale
    u = torch.rand(batch, 4, generator=generator, dtype=torch.float64)
    area = lo + (hi - lo) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - w)
    cy = (2 * u[:, 3] - 1) * (1 - h)
    return torch.stack([cx, cy, w, h], dim=1).float()


def crop_resize(
    images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Differentiable crop of ``boxes`` ``(B, 4)`` from ``images`` ``(B, C, H, W)``, resized
    bilinearly to ``size`` (default ``(H, W)``), with torch ops only (affine grid sampling).
    """
    b, c, height, width = images.shape
    size = size or (height, width)
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = boxes[:, 2]
    theta[:, 0, 2] = boxes[:, 0]
    theta[:, 1, 1] = boxes[:, 3]
    theta[:, 1, 2] = boxes[:, 1]
    grid = F.affine_grid(theta, [b, c, *size], align_corners=False)
    out = F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.to(images.dtype)


def random_resized_crop(
    images: torch.Tensor,
    scale: tuple[float, float] = (0.5, 0.9),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One random resized crop per image (see :func:`crop_boxes`), ``(B, C, *size)``."""
    return crop_resize(images, crop_boxes(images.shape[0], scale, ratio, generator), size)


@register
class MAttack(EmbeddingMatch):
    """M-Attack (Li et al. 2025): each step maximises
    ``mean_m w_m cos(f_m(crop(x')), f_m(x_target))`` over a fresh random crop.

    Threat model: ``||x' - x||_p <= eps`` (default linf 16/255) and ``x'`` in ``[0, 1]``.

    Args:
        model_fns: one encoder or a list (ensemble; the same crop is fed to all of them).
        norm, eps, steps, step_size: defaults linf, 16/255, 300, 1/255.
        crop_scale: range of the crop's area fraction (0.5, 0.9).
        crop_ratio: range of the crop's aspect ratio (3/4, 4/3).
        crop_target: also match a fresh crop of the target image (local-to-local) instead
            of the whole target (local-to-global, the default).
        weights, random_start, keep_best, **kwargs: see :class:`EmbeddingMatch`.

    Call: ``attack(images, target_images=...)`` (``(B, C, H, W)`` or ``(1, C, H, W)``) or
    ``attack(images, target_features=...)`` (not with ``crop_target``). The crops are drawn
    from the attack's seeded generator. ``AttackResult.objective`` is the cosine of the
    *whole* adversarial image's features to the whole target's (no crop).
    """

    name = "m-attack"
    stochastic_steps = True

    def __init__(
        self,
        model_fns: ModelFn | Sequence[ModelFn],
        norm: str = "linf",
        eps: float | str = "16/255",
        steps: int = 300,
        step_size: float | str | None = "1/255",
        *,
        crop_scale: tuple[float, float] = (0.5, 0.9),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        crop_target: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_fns, norm, eps, steps, step_size, **kwargs)
        check_crop(crop_scale, crop_ratio)
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.crop_target = bool(crop_target)

    def _prepare_targets(self, x: torch.Tensor, targets: Targets) -> Targets:
        if self.crop_target and targets.get("target_images") is None:
            raise InputError("crop_target=True needs target_images=")
        return super()._prepare_targets(x, targets)

    def _view(self, x_adv: torch.Tensor, step: int) -> torch.Tensor:
        return random_resized_crop(
            x_adv, self.crop_scale, self.crop_ratio, generator=self._generator
        )

    def _match(
        self, fn_index: int, x_view: torch.Tensor, targets: Targets, step: int | None
    ) -> torch.Tensor:
        if step is None or not self.crop_target:
            return super()._match(fn_index, x_view, targets, step)
        tgt = targets["target_images"]
        with torch.no_grad():
            crop = random_resized_crop(
                tgt, self.crop_scale, self.crop_ratio, generator=self._generator
            )
            t = F.normalize(
                self._forward(self.model_fns[fn_index], crop).reshape(crop.shape[0], -1),
                dim=1,
            )
        f = F.normalize(
            self._forward(self.model_fns[fn_index], x_view).reshape(x_view.shape[0], -1), dim=1
        )
        return (f * t).sum(dim=1)
