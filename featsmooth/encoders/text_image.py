"""Text-image encoders in pixel units: CLIP, SigLIP and open_clip-style models.

* :class:`CLIPEncoder` / :class:`SiglipEncoder`: image features ``(B, D)`` are the projected
  image embeddings (the space where zero-shot classification compares with text), and
  :meth:`CLIPEncoder.encode_text` returns unit-norm text embeddings ``(K, D)`` in the same space.
* :func:`wrap_open_clip_model` adapts an already-loaded open_clip-style model object
  (``encode_image`` / ``encode_text``) without importing open_clip.

The loaders :func:`load_clip` and :func:`load_siglip` take a hub name or a local folder and
go through :func:`featsmooth.encoders.hf.load_pretrained_encoder` (offline handling, frozen
float32 weights, one-line :class:`~featsmooth.errors.ModelUnavailableError`). Every name here
is importable from :mod:`featsmooth.encoders.hf` as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featsmooth.encoders.base import ImageEncoder
from featsmooth.encoders.hf import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    SIGLIP_MEAN,
    SIGLIP_STD,
    _as_size,
    _finish,
    _image_size_of,
    _set_input,
    load_pretrained_encoder,
)
from featsmooth.errors import InputError, ModelUnavailableError


def _pooled(out: Any, field: str) -> torch.Tensor:
    """Projected embedding from a transformers output (tensor in 4.x, ModelOutput in 5.x)."""
    if isinstance(out, torch.Tensor):
        return out
    value = getattr(out, field, None)
    if value is None:
        value = out.pooler_output
    return value


class _TextImageEncoder(ImageEncoder):
    """Shared machinery: preprocessing, dtype handling and unit-norm text embeddings.

    ``mean``/``std``/``name`` default to the class's ``default_*``; ``image_size`` to the
    model config's (its ``vision_config``'s when it has one).
    """

    default_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    default_std: tuple[float, ...] = OPENAI_CLIP_STD
    default_name: str = "encoder"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        image_size: int | Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        size = self._input_size(model, image_size)
        super().__init__()
        self.tokenizer = tokenizer
        _set_input(self, size, mean, std, name)
        self.model = model

    @staticmethod
    def _input_size(model: nn.Module, image_size: int | Sequence[int] | None) -> Any:
        config = model.config
        return _as_size(image_size) or _image_size_of(getattr(config, "vision_config", config))

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel-unit images ``(B, C, H, W)`` -> the model's normalised input, model dtype."""
        if not torch.is_floating_point(images):
            raise InputError(f"images must be a float tensor, got {images.dtype}")
        if images.ndim != 4 or images.shape[1] != self.preprocess.mean.shape[1]:
            raise InputError(
                f"expected images of shape (B, {self.preprocess.mean.shape[1]}, H, W), "
                f"got {tuple(images.shape)}"
            )
        x = self.preprocess(images.to(device=self.device, dtype=torch.float32))
        return x.to(self.dtype)

    def _has_text(self) -> bool:  # overridden
        return False

    #: the field of a vision-only model's output that holds the image embeddings
    vision_output: str = "image_embeds"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pixel_values(images)
        if hasattr(self.model, "get_image_features"):
            return _pooled(self.model.get_image_features(pixel_values=x), "image_embeds")
        return getattr(self.model(pixel_values=x), self.vision_output)

    @property
    def supports_text(self) -> bool:
        return self.tokenizer is not None and self._has_text()

    def _tokenize(self, texts: Sequence[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if not self.supports_text:
            raise ModelUnavailableError(f"{self.name} was loaded without a text encoder/tokenizer")
        if len(texts) == 0:
            raise InputError("encode_text needs at least one text")
        enc = self.tokenizer(list(texts), return_tensors="pt", truncation=True, **kwargs)
        return {
            k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")
        }


class CLIPEncoder(_TextImageEncoder):
    """CLIP image encoder in pixel units; features are the projected ``image_embeds`` ``(B, D)``.

    Args:
        model: a transformers ``CLIPModel`` or ``CLIPVisionModelWithProjection``.
        tokenizer: the CLIP tokenizer (needed for :meth:`encode_text`).
        text_model: a ``CLIPTextModelWithProjection`` when ``model`` is vision-only.
        mean, std: per-channel normalisation of the model (CLIP's by default).
        image_size: the model's input size (default: ``vision_config.image_size``).
    """

    default_name = "clip"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any | None = None,
        *,
        text_model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, tokenizer, **kwargs)
        self.text_model = text_model
        self._full = hasattr(model, "get_text_features") and hasattr(model, "text_model")

    def _has_text(self) -> bool:
        return self._full or self.text_model is not None

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(K, D)`` in the space of the image features."""
        text_cfg = getattr(self.model.config, "text_config", None) or self.text_model.config
        max_len = getattr(text_cfg, "max_position_embeddings", 77)
        enc = self._tokenize(texts, padding=True, max_length=max_len)
        if self._full:
            emb = _pooled(self.model.get_text_features(**enc), "text_embeds")
        else:
            emb = self.text_model(**enc).text_embeds
        return F.normalize(emb.float(), dim=-1)


class SiglipEncoder(_TextImageEncoder):
    """SigLIP image encoder in pixel units; features are the pooled image embeddings ``(B, D)``.

    Args:
        model: a transformers ``SiglipModel`` (image + text) or ``SiglipVisionModel``.
        tokenizer: the SigLIP tokenizer; texts are padded to ``max_length`` as SigLIP was
            trained (its text pooling reads the last position).
        mean, std: default 0.5 / 0.5 (SigLIP's own).
    """

    default_mean = SIGLIP_MEAN
    default_std = SIGLIP_STD
    default_name = "siglip"
    vision_output = "pooler_output"

    def _has_text(self) -> bool:
        return hasattr(self.model, "get_text_features")

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(K, D)`` (padding="max_length", as SigLIP expects)."""
        max_len = getattr(self.model.config.text_config, "max_position_embeddings", 64)
        enc = self._tokenize(texts, padding="max_length", max_length=max_len)
        enc.pop("attention_mask", None)  # SigLIP was trained without a text attention mask
        emb = _pooled(self.model.get_text_features(**enc), "text_embeds")
        return F.normalize(emb.float(), dim=-1)


class OpenClipEncoder(_TextImageEncoder):
    """Adapter for an already-loaded open_clip-style model (``encode_image``/``encode_text``).

    open_clip itself is never imported: pass the model object, its tokenizer (a callable
    ``texts -> LongTensor``) and its preprocessing numbers: ``mean``/``std`` (CLIP's by
    default), ``image_size`` (default 224) and ``name`` (default ``"open_clip"``).
    """

    default_name = "open_clip"
    default_image_size = 224

    @classmethod
    def _input_size(cls, model: nn.Module, image_size: int | Sequence[int] | None) -> Any:
        if not callable(getattr(model, "encode_image", None)):
            raise InputError("an open_clip-style model needs an encode_image method")
        # open_clip models carry no transformers config
        return _as_size(cls.default_image_size if image_size is None else image_size)

    def _has_text(self) -> bool:
        return callable(getattr(self.model, "encode_text", None))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self.pixel_values(images))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(K, D)`` from ``model.encode_text(tokenizer(texts))``."""
        if isinstance(texts, str):
            texts = [texts]
        if not self.supports_text:
            raise ModelUnavailableError(f"{self.name} was given no tokenizer or encode_text")
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


def wrap_open_clip_model(
    model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    *,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    image_size: int | Sequence[int] = 224,
    name: str = "open_clip",
    device: torch.device | str | None = None,
) -> OpenClipEncoder:
    """Wrap an open_clip-style model object as a pixel-unit :class:`ImageEncoder`.

    ``mean``/``std``/``image_size`` are those of the model's preprocess transform
    (``model.visual.preprocess_cfg`` in open_clip). The model is frozen and put in eval mode.
    """
    enc = OpenClipEncoder(model, tokenizer, mean=mean, std=std, image_size=image_size, name=name)
    _finish(enc, device)
    return enc


def load_clip(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> CLIPEncoder:
    """Load a CLIP checkpoint (``CLIPModel`` or vision-only with projection) as a CLIPEncoder."""
    types = {"clip_vision_model": "CLIPVisionModelWithProjection", "*": "CLIPModel"}
    return load_pretrained_encoder(
        name_or_path,
        model_types=types,
        encoder_cls=CLIPEncoder,
        device=device,
        dtype=dtype,
        no_text={"clip_vision_model"},
    )


def load_siglip(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> SiglipEncoder:
    """Load a SigLIP checkpoint (``SiglipModel`` or ``SiglipVisionModel``) as a SiglipEncoder."""
    return load_pretrained_encoder(
        name_or_path,
        model_types={"siglip_vision_model": "SiglipVisionModel", "*": "SiglipModel"},
        encoder_cls=SiglipEncoder,
        mean=SIGLIP_MEAN,
        std=SIGLIP_STD,
        device=device,
        dtype=dtype,
        no_text={"siglip_vision_model"},
    )
