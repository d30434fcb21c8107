"""The plug-in object and the encoder it produces: purifier -> frozen encoder -> mapper.

``Plugin.wrap(encoder, sigma)`` returns a :class:`PluggedEncoder`, the base encoder

    f'(x_noisy) = M(f(P(x_noisy, sigma)), sigma)

that :class:`featsmooth.SmoothedEncoder` (``plugin=`` argument) smooths in place of ``f``.
SmoothedEncoder flattens and l2-normalises the output, so the certified object is exactly
``normalise(M(f(P(x + eps, sigma)), sigma))``; the plugged encoder itself keeps the
feature's own scale and layout so that downstream models (e.g. a language model reading
vision tokens) see familiar features.

A plug-in is trained for one frozen encoder and a range of noise levels. ``wrap`` refuses
(InputError) an encoder whose weights differ from the trained one (fingerprint check) and
a sigma outside the trained range unless ``allow_untrained_sigma=True``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featsmooth.encoders.base import CallableEncoder, ImageEncoder, as_encoder
from featsmooth.errors import InputError
from featsmooth.plugin.mapper import SmoothnessMapper
from featsmooth.plugin.purifier import Purifier

PARTS = ("purifier", "mapper")
_SIGMA_RTOL = 1e-6


def encoder_fingerprint(encoder: nn.Module, max_tensors: int = 8, max_values: int = 65_536) -> str:
    """A short hash that identifies an encoder's weights (not its dtype or device).

    Hashes the names and shapes of all parameters and buffers, and the values (rounded to
    bfloat16, so a float32 model and its bfloat16 copy match) of up to ``max_tensors``
    tensors spread evenly over the state dict, each subsampled to ``max_values`` entries.
    Cheap even for billion-parameter towers; two different trainings of the same
    architecture differ with overwhelming probability.
    """
    inner = getattr(encoder, "module", None)
    if isinstance(encoder, CallableEncoder) and isinstance(inner, nn.Module):
        encoder = inner  # as_encoder(m) identifies as m itself
    h = hashlib.sha256()
    h.update(type(encoder).__name__.encode())
    items = [(k, v) for k, v in encoder.state_dict().items() if torch.is_tensor(v)]
    for name, t in items:
        h.update(f"{name}:{tuple(t.shape)};".encode())
    floats = [(k, v) for k, v in items if v.is_floating_point() and v.numel() > 0]
    if floats:
        step = max(1, len(floats) // max_tensors)
        chosen = floats[::step][:max_tensors]
        if floats[-1] not in chosen:
            chosen[-1] = floats[-1]
        for _, t in chosen:
            flat = t.detach().flatten()
            if flat.numel() > max_values:
                flat = flat[:: -(-flat.numel() // max_values)]
            vals = flat.to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes()
            h.update(vals)
    return h.hexdigest()[:16]


def encoder_name(encoder: nn.Module) -> str:
    return str(getattr(encoder, "name", None) or type(encoder).__name__)


class PluggedEncoder(ImageEncoder):
    """``images (B, C, H, W) in pixel units -> M(f(P(images, sigma)), sigma)``.

    Output shape and scale are those of the wrapped encoder. ``encode_text`` is the wrapped
    encoder's (the plug-in maps image features back into the same space).
    """

    def __init__(
        self,
        encoder: nn.Module,
        sigma: float,
        purifier: Purifier | None = None,
        mapper: SmoothnessMapper | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.purifier = purifier
        self.mapper = mapper
        self.sigma = float(sigma)
        parts = [p for p, m in zip(PARTS, (purifier, mapper)) if m is not None]
        self.name = f"{encoder_name(encoder)}+plugin({'+'.join(parts) or 'none'})"
        self.image_size = getattr(encoder, "image_size", None)

    @property
    def supports_text(self) -> bool:
        return bool(getattr(self.encoder, "supports_text", hasattr(self.encoder, "encode_text")))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if not hasattr(self.encoder, "encode_text"):
            raise NotImplementedError(f"{encoder_name(self.encoder)} has no text encoder")
        return self.encoder.encode_text(texts)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.purifier(images, self.sigma) if self.purifier is not None else images
        z = self.encoder(x)
        return self.mapper(z, self.sigma) if self.mapper is not None else z


class Plugin:
    """A trained purifier and/or smoothness mapper for one frozen encoder.

    Attributes:
        purifier, mapper: the modules (either may be ``None``: purifier-only or mapper-only
            ablations).
        sigmas: the noise levels it was trained at (sorted); ``sigma_range`` their
            ``(min, max)``: the levels ``wrap`` accepts without an override.
        encoder_name, encoder_fingerprint: identity of the frozen encoder it was trained for
            (see :func:`encoder_fingerprint`).
        card: free-form metadata saved with it (loss weights, data, steps, seed, scores).
    """

    def __init__(
        self,
        purifier: Purifier | None,
        mapper: SmoothnessMapper | None,
        *,
        sigmas: Sequence[float],
        encoder_name: str,
        encoder_fingerprint: str,
        card: dict[str, Any] | None = None,
    ) -> None:
        if purifier is None and mapper is None:
            raise InputError("a plug-in needs a purifier, a mapper or both")
        sig = sorted(float(s) for s in sigmas)
        if not sig or any(s <= 0 for s in sig):
            raise InputError("a plug-in needs at least one positive training sigma")
        self.purifier = purifier
        self.mapper = mapper
        self.sigmas = sig
        self.encoder_name = encoder_name
        self.encoder_fingerprint = encoder_fingerprint
        self.card = dict(card or {})

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p, m in zip(PARTS, (self.purifier, self.mapper)) if m is not None)

    @property
    def sigma_range(self) -> tuple[float, float]:
        return self.sigmas[0], self.sigmas[-1]

    @property
    def num_parameters(self) -> dict[str, int]:
        return {p: m.num_parameters for p, m in zip(PARTS, (self.purifier, self.mapper)) if m}

    def modules(self) -> dict[str, nn.Module]:
        return {p: m for p, m in zip(PARTS, (self.purifier, self.mapper)) if m is not None}

    def select(self, parts: Sequence[str]) -> Plugin:
        """The same plug-in restricted to ``parts`` (shares the modules): for ablations."""
        parts = tuple(parts)
        unknown = set(parts) - set(PARTS)
        if unknown or not parts:
            raise InputError(f"parts must be a non-empty subset of {PARTS}, got {parts}")
        missing = set(parts) - set(self.parts)
        if missing:
            raise InputError(f"this plug-in has no {', '.join(sorted(missing))}")
        return Plugin(
            self.purifier if "purifier" in parts else None,
            self.mapper if "mapper" in parts else None,
            sigmas=self.sigmas,
            encoder_name=self.encoder_name,
            encoder_fingerprint=self.encoder_fingerprint,
            card={**self.card, "selected_parts": list(parts)},
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        for m in self.modules().values():
            m.to(device=device, dtype=dtype)
        return self

    def check_encoder(self, encoder: nn.Module) -> None:
        """Raise InputError unless ``encoder`` has the weights this plug-in was trained for."""
        fp = encoder_fingerprint(encoder)
        if fp != self.encoder_fingerprint:
            raise InputError(
                f"this plug-in was trained for encoder '{self.encoder_name}' (fingerprint "
                f"{self.encoder_fingerprint}), not '{encoder_name(encoder)}' (fingerprint {fp}); "
                "train a plug-in for this encoder"
            )

    def check_sigma(self, sigma: float) -> None:
        lo, hi = self.sigma_range
        if not (lo * (1 - _SIGMA_RTOL) <= sigma <= hi * (1 + _SIGMA_RTOL)):
            raise InputError(
                f"sigma={sigma:g} is outside the range this plug-in was trained for "
                f"[{lo:g}, {hi:g}]; pass allow_untrained_sigma=True to use it anyway"
            )

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Save to ``folder`` (safetensors weights + JSON card); see
        :func:`featsmooth.plugin.io.save_plugin`. Hugging Face naming."""
        from featsmooth.plugin.io import save_plugin

        return save_plugin(self, folder)

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike[str], *, device: torch.device | str | None = None
    ) -> Plugin:
        """Load a plug-in saved with :meth:`save_pretrained`; see
        :func:`featsmooth.plugin.io.load_plugin` (the card is checked before anything is
        built)."""
        from featsmooth.plugin.io import load_plugin

        return load_plugin(folder, device=device)

    def wrap(
        self, encoder: nn.Module, sigma: float, *, allow_untrained_sigma: bool = False
    ) -> PluggedEncoder:
        """Purifier -> ``encoder`` -> mapper at noise level ``sigma`` (pixel units).

        The plug-in modules are moved to the encoder's device and floating dtype and put in
        eval mode. Raises InputError for a different encoder or an untrained sigma.
        """
        sigma = float(sigma)
        if not sigma > 0:
            raise InputError(f"sigma must be positive, got {sigma}")
        self.check_encoder(encoder)
        if not allow_untrained_sigma:
            self.check_sigma(sigma)
        enc = as_encoder(encoder)
        device, dtype = _device_dtype(enc)
        for m in self.modules().values():
            m.to(device=device, dtype=dtype).eval()
        return PluggedEncoder(enc, sigma, self.purifier, self.mapper)

    def __repr__(self) -> str:
        return (
            f"Plugin(parts={self.parts}, sigmas={self.sigmas}, encoder={self.encoder_name!r}, "
            f"fingerprint={self.encoder_fingerprint}, params={self.num_parameters})"
        )


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            dtype = t.dtype if t.dtype in (torch.float32, torch.bfloat16, torch.float16) else None
            return t.device, dtype or torch.float32
    return torch.device("cpu"), torch.float32
