"""Targeted embedding matching on the vision encoder (AttackVLM, MF-ii).

Zhao, Pang, Du, Yang, Li, Cheung, Lin, "On Evaluating Adversarial Robustness of Large
Vision-Language Models", NeurIPS 2023 (AttackVLM). MF-ii ("matching image-image features")
perturbs a clean image so that its encoder feature matches the feature of a *target image*
(in the paper, an image generated from the target caption); the multimodal model then
describes the target. Protocol used by the Feature-space Smoothing paper: linf 16/255,
300 steps of signed gradient ascent with step 1/255, starting at the clean image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from featsmooth.attacks.base import ModelFn
from featsmooth.attacks.objectives import FeatureCosine, Targets
from featsmooth.attacks.pgd import PGD
from featsmooth.attacks.registry import register
from featsmooth.errors import InputError


def _as_list(x: Any) -> list[Any]:
    if isinstance(x, Sequence) and not isinstance(x, str | torch.Tensor):
        return list(x)
    return [x]


def _flat_unit(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.reshape(features.shape[0], -1).float(), dim=1, eps=1e-12)


@register
class EmbeddingMatch(PGD):
    """Targeted feature matching: maximise ``mean_m w_m cos(f_m(x'), f_m(x_target))``.

    Threat model: ``||x' - x||_p <= eps`` (default linf 16/255) and ``x'`` in ``[0, 1]``.

    Args:
        model_fns: one image encoder ``(B, C, H, W) -> (B, ...)`` or a list of them (an
            ensemble; features of each are flattened and normalised). To attack a smoothed
            encoder, pass a random model (e.g. ``lambda x: sm.encoder(x + sigma * noise)``)
            with ``eot_iter=k``, or an adaptive pipeline (purifier -> encoder -> mapper).
        norm, eps, steps, step_size: budget and schedule (defaults: linf, 16/255, 300, 1/255).
        weights: ensemble weights (default uniform; normalised to sum 1).
        random_start: start at a random point of the ball (default ``False``: the clean image).
        keep_best: return the iterate with the highest cosine (default ``False``: the last
            iterate, as in the paper).
        **kwargs: ``restarts``, ``seed``, ``eot_iter``, ``record_history``, ``input_dtype``,
            ``device``.

    Call: ``attack(images, target_images=...)`` with ``target_images`` ``(B, C, H, W)`` (or one
    image ``(1, C, H, W)`` for all), or ``attack(images, target_features=...)`` with one
    ``(B, ...)`` tensor per encoder (a list for ensembles). ``AttackResult.objective`` is the
    weighted mean cosine to the target features (in [-1, 1]; larger = closer to the target).
    """

    name = "mf-ii"
    matches_target_embeddings = True

    def __init__(
        self,
        model_fns: ModelFn | Sequence[ModelFn],
        norm: str = "linf",
        eps: float | str = "16/255",
        steps: int = 300,
        step_size: float | str | None = "1/255",
        *,
        weights: Sequence[float] | None = None,
        random_start: bool = False,
        keep_best: bool = False,
        **kwargs: Any,
    ) -> None:
        fns = _as_list(model_fns)
        if not fns or not all(callable(f) for f in fns):
            raise InputError("model_fns must be one callable encoder or a list of them")
        super().__init__(
            fns[0],
            FeatureCosine(targeted=True),
            norm,
            eps,
            steps,
            step_size,
            random_start=random_start,
            keep_best=keep_best,
            **kwargs,
        )
        self.model_fns = fns
        w = (
            torch.ones(len(fns))
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float32)
        )
        if w.shape != (len(fns),) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise InputError(f"weights must be {len(fns)} non-negative numbers, not all zero")
        self.weights = (w / w.sum()).tolist()

    # -------------------------------------------------------------- targets
    def _prepare_targets(self, x: torch.Tensor, targets: Targets) -> Targets:
        unknown = set(targets) - {"target_images", "target_features"}
        if unknown:
            raise InputError(f"{self.name} takes target_images= or target_features=, got {unknown}")
        feats = targets.get("target_features")
        images = targets.get("target_images")
        if feats is None and images is None:
            raise InputError(f"{self.name} is targeted: pass target_images= or target_features=")
        out: Targets = {}
        if images is not None:
            images = self._check_target_images(images, x)
            out["target_images"] = images
        if feats is None:
            with torch.no_grad():
                feats = [self._forward(fn, images) for fn in self.model_fns]
        feats = _as_list(feats)
        if len(feats) != len(self.model_fns):
            raise InputError(f"need {len(self.model_fns)} target feature tensors, got {len(feats)}")
        out["target_features"] = [_flat_unit(f.to(x.device)) for f in feats]
        return out

    def _check_target_images(self, images: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images).detach().to(x.device).float()
        if images.ndim != x.ndim or images.shape[0] not in (1, x.shape[0]):
            raise InputError(
                f"target_images must be (B, C, H, W) or (1, C, H, W), got {tuple(images.shape)}"
            )
        if float(images.min()) < 0.0 or float(images.max()) > 1.0:
            raise InputError("target_images must be in [0, 1] (pixel units)")
        return images

    # -------------------------------------------------------------- objective
    def _view(self, x_adv: torch.Tensor, step: int) -> torch.Tensor:
        """The view of the adversarial image that is matched at ``step`` (here: all of it)."""
        return x_adv

    def _match(
        self, fn_index: int, x_view: torch.Tensor, targets: Targets, step: int | None
    ) -> torch.Tensor:
        """``(B,)`` value of encoder ``fn_index`` on a view of ``x'`` (``step=None``: evaluate)."""
        f = _flat_unit(self._forward(self.model_fns[fn_index], x_view))
        t = targets["target_features"][fn_index]
        if t.shape[1] != f.shape[1]:
            raise InputError(f"target features have dim {t.shape[1]}, encoder gives {f.shape[1]}")
        return (f * t).sum(dim=1)

    def _combine(self, x_view: torch.Tensor, targets: Targets, step: int | None) -> torch.Tensor:
        total = torch.zeros(x_view.shape[0], device=x_view.device)
        for m, w in enumerate(self.weights):
            if w > 0:
                total = total + w * self._match(m, x_view, targets, step)
        return total

    def _step_values(self, x_adv: torch.Tensor, targets: Targets, step: int) -> torch.Tensor:
        return self._combine(self._view(x_adv, step), targets, step)

    def _evaluate(self, x_adv: torch.Tensor, targets: Targets) -> torch.Tensor:
        """Weighted mean cosine of the *whole* image's features to the target features."""
        with torch.no_grad():
            return self._combine(x_adv, targets, None).float()
