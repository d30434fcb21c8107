"""LLaVA-NeXT and LLaVA-OneVision with any-res tiles, in pixel units.

The processors of both families read an image as several *views*: the whole image resized
to the vision tower's square input (the base view), and the tiles of the image resized
(aspect ratio kept) into the best-fitting resolution of ``config.image_grid_pinpoints``,
zero-padded to it and cut into squares of the tower's input size.

**Where smoothing acts: one noise draw of the full image.** :class:`LlavaAnyResTower`
takes the full image ``(B, C, H, W)`` in pixel units and derives every view from it inside
its forward (bilinear resize, zero pad, crop, then the model's mean/std). Smoothing adds one
Gaussian draw to the full image, so the base view and every tile carry the same noise,
resized and cropped: the certificate is about the one pixel image you pass in (per-tile
independent noise would certify a different, tile-wise input). The tiling depends only on
the input's shape (``H, W``), so it is one fixed map per run.

**Which feature is certified.** ``stage="vision"`` (default, as for LLaVA-1.5): the selected
vision-tower hidden states of all views, ``(B, V * T_view, D_vision)`` with the base view
first and tiles row by row. ``stage="projected"``: what the language model consumes, the
projected views packed by the model's own ``pack_image_features`` (unpadding, newline
tokens, and for OneVision the ``anyres_max`` pooling), ``(B, T, D_lm)``.
:meth:`LlavaAnyResTower.generate` / :meth:`LlavaAnyResTower.loglikelihood` hand features of
either stage back through the model's ``mm_encoder_outputs`` input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from featsmooth.encoders.base import Preprocess
from featsmooth.encoders.hf import (
    Stage,
    _check_stage,
    _holder,
    load_pretrained_encoder,
)
from featsmooth.encoders.image_tokens import generate_with_outputs, loglikelihood_with_outputs
from featsmooth.encoders.llava import Floats, LlavaTowerBase, _select_hidden_states
from featsmooth.errors import InputError

MODEL_CLASSES = {
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}


def select_best_resolution(size: tuple[int, int], candidates: Sequence[Sequence[int]]) -> tuple:
    """The pinpoint ``(h, w)`` keeping most of the image and wasting least (LLaVA-NeXT's rule)."""
    height, width = size
    best, best_effective, best_wasted = None, 0, float("inf")
    for h, w in candidates:
        scale = min(w / width, h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = w * h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (int(h), int(w)), effective, wasted
    return best


def fit_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Size of the image resized into ``target`` with its aspect ratio kept."""
    height, width = size
    th, tw = target
    if tw / width < th / height:
        return min(math.ceil(height * tw / width), th), tw
    return th, min(math.ceil(width * th / height), tw)


class LlavaAnyResTower(LlavaTowerBase):
    """Any-res image features of a LLaVA-NeXT / LLaVA-OneVision model (see the module).

    Args:
        model: ``LlavaNextForConditionalGeneration`` or ``LlavaOnevisionForConditionalGeneration``.
        stage: ``"vision"`` (default) or ``"projected"``.
        vision_feature_layer, vision_feature_select_strategy: default to the model config.
        tokenizer: the model's tokenizer or processor (for :meth:`generate`).
        mean, std: the processor's normalisation.
        image_size: the tile size of the vision tower (its default; any other is refused).
        name: default ``"llava_next"``.
    """

    #: :func:`featsmooth.encoders.hf.generate_with_image_features` calls our own methods
    hands_back_features = True

    default_name = "llava_next"

    def _setup(
        self, model: nn.Module, size: tuple[int, int] | None, mean: Floats, std: Floats
    ) -> None:
        base = _holder(model, "pack_image_features", "is not a LLaVA-NeXT / OneVision model")
        config = model.config
        self.kind = config.model_type
        self.tile = int(config.vision_config.image_size)
        if size is not None and tuple(size) != (self.tile, self.tile):
            raise InputError(f"image_size must be the tower's tile size {self.tile}, got {size}")
        self.image_size = (self.tile, self.tile)
        self.pinpoints = [tuple(int(v) for v in p) for p in config.image_grid_pinpoints]
        self.normalise = Preprocess(None, mean=mean, std=std)
        self._base = [base]  # plain list: registered through self.model already
        self.last_image_size: tuple[int, int] | None = None

    @property
    def dtype(self) -> torch.dtype:
        return next(self._base[0].vision_tower.parameters()).dtype

    def layout(self, height: int, width: int) -> dict[str, Any]:
        """Where the views of an ``height x width`` image come from (shape only)."""
        best = select_best_resolution((height, width), self.pinpoints)
        fitted = fit_size((height, width), best)
        pad_y, pad_x = (best[0] - fitted[0]) // 2, (best[1] - fitted[1]) // 2
        grid = (best[0] // self.tile, best[1] // self.tile)
        return {"best": best, "fitted": fitted, "offset": (pad_y, pad_x), "grid": grid}

    def views(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel-unit full images -> normalised views ``(B, V, C, S, S)``: the base view, then
        the tiles row by row; all from the same (possibly noisy) full image."""
        if not torch.is_floating_point(images) or images.ndim != 4:
            raise InputError(f"expected float images (B, C, H, W), got {tuple(images.shape)}")
        b, c, height, width = images.shape
        x = images.to(device=self.device, dtype=torch.float32)
        s = self.tile
        lay = self.layout(height, width)
        base = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        fitted = F.interpolate(x, size=lay["fitted"], mode="bilinear", align_corners=False)
        canvas = x.new_zeros(b, c, *lay["best"])  # zero padding in pixel units, as the processor
        oy, ox = lay["offset"]
        canvas[:, :, oy : oy + lay["fitted"][0], ox : ox + lay["fitted"][1]] = fitted
        rows, cols = lay["grid"]
        tiles = canvas.reshape(b, c, rows, s, cols, s).permute(0, 2, 4, 1, 3, 5)
        views = torch.cat([base.unsqueeze(1), tiles.reshape(b, rows * cols, c, s, s)], dim=1)
        v = views.shape[1]
        out = self.normalise(views.reshape(b * v, c, s, s)).reshape(b, v, c, s, s)
        return out.to(self.dtype)

    def _select(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _select_hidden_states(
            self._base[0].vision_tower,
            pixel_values,
            self.vision_feature_layer,
            self.vision_feature_select_strategy,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        views = self.views(images)
        b, v = views.shape[:2]
        feats = self._select(views.flatten(0, 1))  # (B*V, T, D_vis)
        self.last_image_size = (int(images.shape[-2]), int(images.shape[-1]))
        feats = feats.reshape(b, v * feats.shape[1], feats.shape[2])
        if self.stage == "projected":
            return torch.stack(self.pack(feats, self.last_image_size))
        return feats

    def pack(self, features: torch.Tensor, image_size: tuple[int, int]) -> list[torch.Tensor]:
        """Vision-stage features ``(B, V*T, D_vis)`` -> the model's packed language-model
        embeddings, one ``(T_packed, D_lm)`` per image (projector + ``pack_image_features``)."""
        base = self._base[0]
        lay = self.layout(*image_size)
        v = 1 + lay["grid"][0] * lay["grid"][1]
        b, vt, d = features.shape
        if vt % v:
            raise InputError(f"{vt} vision tokens do not split into {v} views")
        projector = base.multi_modal_projector
        proj = projector(features.reshape(b * v, vt // v, d).to(self.dtype))
        per_image = list(proj.reshape(b, v, vt // v, -1))
        sizes = torch.tensor([list(image_size)] * b, device=proj.device)
        if self.kind == "llava_onevision":
            packed, _ = base.pack_image_features(
                per_image,
                sizes,
                image_newline=base.image_newline,
                vision_aspect_ratio=self.model.config.vision_aspect_ratio,
            )
        else:
            packed, _ = base.pack_image_features(
                per_image,
                sizes,
                vision_feature_select_strategy=self.vision_feature_select_strategy,
                image_newline=base.image_newline,
            )
        return list(packed)

    # ------------------------------------------------------------------ hand-back

    def _language_features(
        self,
        image_features: torch.Tensor,
        stage: Stage | None,
        image_size: tuple[int, int] | None,
    ) -> list[torch.Tensor]:
        if image_features.ndim != 3:
            raise InputError(f"image_features must be (B, T, D), got {tuple(image_features.shape)}")
        stage = stage or self.stage
        _check_stage(stage)
        if stage == "projected":
            return list(image_features)
        size = image_size or self.last_image_size
        if size is None:
            raise InputError("pass image_size=(H, W) of the images the features come from")
        return self.pack(image_features, tuple(size))

    def generate(
        self,
        image_features: torch.Tensor,
        prompts: str | Sequence[str],
        *,
        processor_or_tokenizer: Any | None = None,
        stage: Stage | None = None,
        image_size: tuple[int, int] | None = None,
        return_text: bool = False,
        **generate_kwargs: Any,
    ) -> torch.Tensor | list[str]:
        """Generate with ``image_features`` (of ``stage``, default the tower's) as the image.

        Each prompt holds one image token (``<image>``), expanded to the packed length.
        ``image_size`` is the ``(H, W)`` of the images (default: the last forward's).
        """
        feats = self._language_features(image_features, stage, image_size)
        return generate_with_outputs(
            self.model,
            processor_or_tokenizer if processor_or_tokenizer is not None else self.tokenizer,
            feats,
            prompts,
            return_text=return_text,
            **generate_kwargs,
        )

    def loglikelihood(
        self,
        image_features: torch.Tensor,
        prompts: str | Sequence[str],
        targets: str | Sequence[str],
        *,
        processor_or_tokenizer: Any | None = None,
        stage: Stage | None = None,
        image_size: tuple[int, int] | None = None,
        reduction: Literal["sum", "mean"] = "sum",
    ) -> torch.Tensor:
        """Log-likelihood ``(B,)`` of ``targets`` after ``prompts``; differentiable."""
        feats = self._language_features(image_features, stage, image_size)
        return loglikelihood_with_outputs(
            self.model,
            processor_or_tokenizer if processor_or_tokenizer is not None else self.tokenizer,
            feats,
            prompts,
            targets,
            reduction=reduction,
        )


def load_llava_anyres(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    stage: Stage = "vision",
) -> LlavaAnyResTower:
    """Load a LLaVA-NeXT or LLaVA-OneVision checkpoint (hub name or folder), any-res tiles on."""
    return load_pretrained_encoder(
        name_or_path,
        model_types=MODEL_CLASSES,
        encoder_cls=LlavaAnyResTower,
        device=device,
        dtype=dtype,
        family="any-res LLaVA",
        stage=stage,
    )
