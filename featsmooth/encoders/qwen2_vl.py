"""Qwen2-VL and Qwen2.5-VL vision encoders in pixel units, with hand-back to the model.

Qwen2-VL reads images at dynamic resolution: the processor resizes each image so that both
sides are multiples of ``patch_size * spatial_merge_size`` (``smart_resize``, which also
keeps the pixel count within ``min_pixels``/``max_pixels``), then cuts it into flat
patches ``(N, C * temporal_patch_size * patch * patch)`` with a ``grid_thw`` per image.

**Where smoothing acts.** :class:`QwenVLEncoder` takes images ``(B, C, H, W)`` in pixel units
and does the resize (bilinear, differentiable), the mean/std normalisation and the
patchification *inside* its forward. The resolution is fixed for a run: it is
``image_size`` when given, otherwise ``smart_resize(H, W)`` of the input's *shape*, never a
function of pixel values. The map from the pixel image to the patches is therefore one
fixed linear map per run, and the Gaussian noise of smoothing is added to the pixel image
before it (the resized image is just a linear function of the noisy one): the certificate
is about the images you pass in, at the resolution of the run.

**Which feature is certified.** The output of the model's vision encoder, ``model.visual``,
including its patch merger: the merged patch tokens ``(B, T, D)`` with
``T = grid_h * grid_w / spatial_merge_size**2`` and ``D`` the language model's width,
exactly what ``get_image_features`` returns and the language model consumes.
:meth:`QwenVLEncoder.generate` and :meth:`QwenVLEncoder.loglikelihood` hand (smoothed)
features back through the model's own ``mm_encoder_outputs`` input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from featsmooth.encoders.base import ImageEncoder, Preprocess
from featsmooth.encoders.hf import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    _holder,
    load_pretrained_encoder,
)
from featsmooth.encoders.image_tokens import generate_with_outputs, loglikelihood_with_outputs
from featsmooth.encoders.prompts import _image_token_id
from featsmooth.errors import InputError

MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen2-VL's target size: sides multiples of ``factor``, pixel count within bounds."""
    if min(height, width) <= 0 or max(height, width) / min(height, width) > 200:
        raise InputError(f"cannot resize a {height}x{width} image for Qwen2-VL")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def _base(model: nn.Module) -> nn.Module:
    """The ``Qwen2VLModel`` inside a ``...ForConditionalGeneration`` (or the model itself)."""
    return _holder(model, "visual", "has no vision encoder 'visual' (Qwen2-VL layout)")


class QwenVLEncoder(ImageEncoder):
    """Qwen2-VL / Qwen2.5-VL image features ``(B, T, D)`` in pixel units (see the module).

    Args:
        model: ``Qwen2VLForConditionalGeneration`` or ``Qwen2_5_VLForConditionalGeneration``.
        tokenizer: its tokenizer or processor (for :meth:`generate` / :meth:`loglikelihood`).
        mean, std: the processor's normalisation.
        image_size: fixed ``(H, W)`` the model reads (multiples of ``patch * merge``); by
            default ``smart_resize`` of each input's shape.
        min_pixels, max_pixels: bounds of ``smart_resize`` (the processor's).
    """

    #: :func:`featsmooth.encoders.hf.generate_with_image_features` calls our own methods
    hands_back_features = True

    def __init__(
        self,
        model: nn.Module,
        *,
        tokenizer: Any | None = None,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        image_size: int | Sequence[int] | None = None,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        name: str = "qwen2_vl",
    ) -> None:
        super().__init__()
        self.model = model
        base = _base(model)
        vc = base.visual.config
        self.patch_size = int(vc.patch_size)
        self.merge_size = int(vc.spatial_merge_size)
        self.temporal_patch_size = int(vc.temporal_patch_size)
        self.factor = self.patch_size * self.merge_size
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        if size is not None:
            size = (int(size[0]), int(size[1]))
            if size[0] % self.factor or size[1] % self.factor:
                raise InputError(f"image_size {size} must be multiples of {self.factor}")
        self.image_size = size
        self.normalise = Preprocess(None, mean=mean, std=std)
        self.tokenizer = tokenizer
        self.name = name
        self.stage = "vision"  # the vision encoder's output, which the language model consumes
        self.last_grid_thw: torch.Tensor | None = None

    @property
    def dtype(self) -> torch.dtype:
        return next(_base(self.model).visual.parameters()).dtype

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(H, W)`` the model reads for inputs of size ``height x width``."""
        if self.image_size is not None:
            return self.image_size
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def grid_thw(self, height: int, width: int, batch: int = 1) -> torch.Tensor:
        """``image_grid_thw`` ``(batch, 3)`` for inputs of size ``height x width``."""
        h, w = self.target_size(height, width)
        row = torch.tensor([[1, h // self.patch_size, w // self.patch_size]], dtype=torch.long)
        return row.repeat(batch, 1).to(self.device)

    def pixel_values(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-unit images -> ``(flat patches (B*N, C*t*p*p), image_grid_thw (B, 3))``,
        differentiable; the patch layout is the processor's."""
        if not torch.is_floating_point(images) or images.ndim != 4:
            raise InputError(f"expected float images (B, C, H, W), got {tuple(images.shape)}")
        b, c, height, width = images.shape
        h, w = self.target_size(height, width)
        x = images.to(device=self.device, dtype=torch.float32)
        if (height, width) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        x = self.normalise(x)
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        x = x.reshape(b, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1)
        flat = x.reshape(b * gh * gw, c * t * p * p)
        return flat.to(self.dtype), self.grid_thw(height, width, b)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flat, grid = self.pixel_values(images)
        out = _base(self.model).get_image_features(flat, grid, return_dict=True)
        self.last_grid_thw = grid[:1].detach()
        return torch.stack(list(out.pooler_output))

    # ------------------------------------------------------------------ hand-back

    def _features(self, image_features: torch.Tensor, stage: str | None) -> list[torch.Tensor]:
        if stage not in (None, "vision", "projected"):  # both name the one feature here
            raise InputError(f"stage must be 'vision' or 'projected', got {stage!r}")
        if image_features.ndim != 3:
            raise InputError(f"image_features must be (B, T, D), got {tuple(image_features.shape)}")
        return list(image_features)

    def _extra(self, image_features: torch.Tensor, grid_thw: torch.Tensor | None) -> Any:
        grid = grid_thw if grid_thw is not None else self.last_grid_thw
        if grid is None:
            raise InputError("pass grid_thw= (or run the encoder once on images of this size)")
        grid = torch.as_tensor(grid, dtype=torch.long).reshape(-1, 3)[:1]
        tokens = int(grid.prod()) // self.merge_size**2
        if tokens != image_features.shape[1]:
            raise InputError(
                f"grid_thw {grid.tolist()[0]} gives {tokens} image tokens, "
                f"the features have {image_features.shape[1]}"
            )
        image_id = _image_token_id(self.model.config)
        batch = image_features.shape[0]

        def extra(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
            return {
                "image_grid_thw": grid.repeat(batch, 1).to(ids.device),
                "mm_token_type_ids": (ids == image_id).int(),
            }

        return extra

    def generate(
        self,
        image_features: torch.Tensor,
        prompts: str | Sequence[str],
        *,
        processor_or_tokenizer: Any | None = None,
        stage: str | None = None,
        grid_thw: torch.Tensor | Sequence[int] | None = None,
        return_text: bool = False,
        **generate_kwargs: Any,
    ) -> torch.Tensor | list[str]:
        """Generate from the model with ``image_features`` ``(B, T, D)`` as the image.

        Each prompt holds one image token (``<|image_pad|>``, usually between
        ``<|vision_start|>`` and ``<|vision_end|>``), expanded here to T tokens.
        ``grid_thw`` (default: that of the encoder's last forward) gives the 3D positions.
        Returns the new token ids ``(B, L_new)`` or, with ``return_text``, their text.
        """
        return generate_with_outputs(
            self.model,
            processor_or_tokenizer if processor_or_tokenizer is not None else self.tokenizer,
            self._features(image_features, stage),
            prompts,
            extra=self._extra(image_features, grid_thw),
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
        stage: str | None = None,
        grid_thw: torch.Tensor | Sequence[int] | None = None,
        reduction: Literal["sum", "mean"] = "sum",
    ) -> torch.Tensor:
        """Log-likelihood ``(B,)`` of ``targets`` after ``prompts``; differentiable."""
        return loglikelihood_with_outputs(
            self.model,
            processor_or_tokenizer if processor_or_tokenizer is not None else self.tokenizer,
            self._features(image_features, stage),
            prompts,
            targets,
            extra=self._extra(image_features, grid_thw),
            position_ids_from_mask=False,  # the model's own 3D (M-RoPE) positions
            reduction=reduction,
        )


def _pixel_bounds(pre: dict[str, Any]) -> dict[str, int]:
    """``min_pixels``/``max_pixels`` of a Qwen2-VL ``preprocessor_config.json``."""
    size = pre.get("size") or {}
    min_pixels = pre.get("min_pixels") or size.get("shortest_edge") or DEFAULT_MIN_PIXELS
    max_pixels = pre.get("max_pixels") or size.get("longest_edge") or DEFAULT_MAX_PIXELS
    return {"min_pixels": int(min_pixels), "max_pixels": int(max_pixels)}


def load_qwen2_vl(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    image_size: int | Sequence[int] | None = None,
) -> QwenVLEncoder:
    """Load a Qwen2-VL / Qwen2.5-VL checkpoint (hub name or folder) as a QwenVLEncoder."""
    return load_pretrained_encoder(
        name_or_path,
        model_types=MODEL_CLASSES,
        encoder_cls=QwenVLEncoder,
        device=device,
        dtype=dtype,
        family="Qwen-VL",
        options=_pixel_bounds,
        image_size=image_size,
    )
