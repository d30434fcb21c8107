"""Scoring a plug-in on held-out images, and the digest that proves the encoder stayed frozen.

:func:`evaluate_plugin` measures the mean score ``S`` and the clean agreement of the plugged
encoder (or of the plain one) with common random numbers; :func:`weights_digest` hashes every
tensor of a module, compared bit for bit before and after training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import nn

from featsmooth import seeds
from featsmooth.plugin import losses as L
from featsmooth.plugin.batches import _as_image_tensor
from featsmooth.plugin.plugged import Plugin


def _encoder_dtype(encoder: nn.Module) -> torch.dtype:
    for t in list(encoder.parameters()) + list(encoder.buffers()):
        if t.is_floating_point() and t.dtype in (torch.float16, torch.bfloat16):
            return t.dtype
    return torch.float32


@torch.no_grad()
def evaluate_plugin(
    encoder: nn.Module,
    plugin: Plugin | None,
    images: torch.Tensor,
    sigmas: float | Sequence[float],
    *,
    draws: int = 16,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    allow_untrained_sigma: bool = False,
    classes: torch.Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """Mean score ``S`` and clean agreement of ``f'`` (or of ``f`` when ``plugin`` is None).

    For each sigma returns ``{"score": mean_x ||mean_i f'(x+eps_i)||, "clean_score": mean
    cos(f'(x+eps), f(x)), "clean_cos": mean cos(f'(x), f(x)), "draws", "images"}`` with unit
    flattened features. The noise draws depend only on ``seed`` (common random numbers), so
    two calls with the same seed compare encoders on the same perturbations. With unit class
    rows ``classes (C, D)`` it also reports ``"agreement"``: the fraction of images whose
    smoothed top-1 class (of the mean plugged feature) is the plain encoder's clean top-1
    class. ``score`` is
    the Monte-Carlo point estimate (biased up by about (1-S^2)/(2 S draws)); it is not a
    certificate.
    """
    images = _as_image_tensor(images, "validation images")
    device = torch.device(device) if device is not None else _first_device(encoder)
    dtype = _encoder_dtype(encoder)
    sig_list = [float(sigmas)] if isinstance(sigmas, (int, float)) else [float(s) for s in sigmas]
    out: dict[str, dict[str, float]] = {}
    for sigma in sig_list:
        model = (
            plugin.wrap(encoder, sigma, allow_untrained_sigma=allow_untrained_sigma)
            if plugin is not None
            else encoder
        )
        gen = seeds.generator(seed, ("score",), "train")
        scores, clean_scores, clean_cos, agree = [], [], [], []
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size]
            b = x.shape[0]
            noise = torch.randn((b * draws, *x.shape[1:]), generator=gen) * sigma
            x = x.to(device)
            ref = L.unit_flat(encoder(x.to(dtype)))
            clean = L.unit_flat(model(x.to(dtype)))
            noisy_in = (x.repeat_interleave(draws, 0) + noise.to(device)).to(dtype)
            feats = torch.cat(
                [L.unit_flat(model(c)) for c in noisy_in.split(batch_size * draws)]
            ).view(b, draws, -1)
            scores.append(L.score_estimate(feats))
            clean_scores.append((feats * ref[:, None, :]).sum(-1).mean(1))
            clean_cos.append((clean * ref).sum(-1))
            if classes is not None:
                rows = classes.to(device=feats.device, dtype=feats.dtype)
                agree.append((feats.mean(1) @ rows.T).argmax(-1) == (ref @ rows.T).argmax(-1))
        out[f"{sigma:g}"] = {
            "score": float(torch.cat(scores).mean()),
            "clean_score": float(torch.cat(clean_scores).mean()),
            "clean_cos": float(torch.cat(clean_cos).mean()),
            "draws": draws,
            "images": int(images.shape[0]),
        }
        if agree:
            out[f"{sigma:g}"]["agreement"] = float(torch.cat(agree).float().mean())
    return out


def _first_device(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def weights_digest(module: nn.Module) -> str:
    """sha256 of every tensor of ``module``'s state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        if not torch.is_tensor(t):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
