"""The encoder contract that the whole of featsmooth relies on.

An *image encoder* is a ``torch.nn.Module`` whose ``forward`` takes a float tensor of
images of shape ``(B, C, H, W)`` in **pixel units** (values in [0, 1] for clean images;
noisy images leave that range and must be accepted as they are, never clamped by the
caller) and returns features of shape ``(B, *feature_shape)``. Any resizing and any
mean/std normalisation happen *inside* the encoder, so that the smoothing noise level
``sigma`` is always measured in pixel units of the images the user passes in.

Features need not be normalised: :class:`featsmooth.SmoothedEncoder` flattens them per
image and scales them to unit l2 norm (a token sequence ``(T, D)`` is normalised as one
vector of length ``T*D``).

Text-image encoders additionally implement ``encode_text(texts) -> (K, D)`` returning
embeddings in the same space as the image features (used for zero-shot prompts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from featsmooth.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageEncoder(nn.Module):
    """Base class of featsmooth encoders (see the module docstring for the contract).

    Attributes:
        name: registry name or a free-form description, recorded with every result.
        image_size: ``(H, W)`` the model works at, or ``None`` if it accepts any size.
    """

    name: str = "encoder"
    image_size: tuple[int, int] | None = None

    @property
    def supports_text(self) -> bool:
        """Whether :meth:`encode_text` is available (text-image models)."""
        return type(self).encode_text is not ImageEncoder.encode_text

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``texts`` into the image-feature space; ``(K, D)``, unit rows."""
        raise NotImplementedError(f"{self.name} has no text encoder")

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32


class Preprocess(nn.Module):
    """Differentiable resize + mean/std normalisation, from pixel units to model units.

    Bilinear resizing is a linear map, so it composes with the Gaussian noise added in
    pixel units without changing what sigma means. ``size=None`` keeps the input size.
    """

    def __init__(
        self,
        size: tuple[int, int] | int | None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise InputError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        if self.size is not None and tuple(images.shape[-2:]) != tuple(self.size):
            images = F.interpolate(images, size=self.size, mode="bilinear", align_corners=False)
        mean = self.mean.to(images.dtype)
        std = self.std.to(images.dtype)
        return (images - mean) / std


class CallableEncoder(ImageEncoder):
    """Wraps any callable or module mapping pixel-unit images to features."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str | None = None):
        super().__init__()
        self.fn = fn
        if isinstance(fn, nn.Module):
            self.module = fn  # registers parameters so .to()/.eval() reach them
        self.name = name or getattr(fn, "name", None) or type(fn).__name__

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)


def as_encoder(obj: Callable[[torch.Tensor], torch.Tensor], name: str | None = None) -> nn.Module:
    """Return ``obj`` as an image encoder: ImageEncoders pass through, callables are wrapped."""
    if isinstance(obj, ImageEncoder):
        return obj
    if not callable(obj):
        raise InputError(f"an encoder must be callable on images, got {type(obj).__name__}")
    return CallableEncoder(obj, name=name)
