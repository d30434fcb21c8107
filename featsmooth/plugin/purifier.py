"""Purifier: a small noise-level-conditioned denoiser placed in front of a frozen encoder.

``P(x_noisy, sigma) = clamp(x_noisy - sigma * eps_hat(x_noisy, sigma), 0, 1)``: the network
predicts the (unit-variance) Gaussian noise and removes ``sigma`` times it (residual
prediction). Its last layer is zero-initialised, so an untrained purifier is exactly
``clamp(x_noisy, 0, 1)``, and at ``sigma = 0`` it is ``clamp(x, 0, 1)`` whatever its weights.

Shape: a small U-Net working after a pixel-unshuffle (space-to-depth) step, with a
sinusoidal embedding of ``sigma`` that sets a FiLM scale and shift in every residual block.
It is fully convolutional: any image size works (inputs are reflect-padded to a multiple of
the total down-sampling factor and cropped back). ``sigma`` is a float or a per-sample
tensor of shape ``(B,)``.

Threat model note: the purifier is part of the *base* encoder f' that Feature-space
Smoothing certifies, so the certificate holds for P followed by f whatever P does; the
purifier only changes how large the certified score is, never whether it is sound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from featsmooth.errors import InputError


def sigma_embedding(sigma: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` (float32) of noise levels ``sigma`` of shape ``(B,)``.

    ``sigma`` is multiplied by ``scale`` (so levels 0.01 apart are distinguished) and
    embedded with geometrically spaced frequencies, as for diffusion time steps.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(10_000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half
    )
    args = sigma.to(torch.float32)[:, None] * scale * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def as_sigma_tensor(
    sigma: float | torch.Tensor, batch: int, device: torch.device | str
) -> torch.Tensor:
    """Broadcast a float or a ``(B,)``/``(1,)`` tensor of noise levels to a ``(B,)`` tensor."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=device).flatten()
    if s.numel() == 1:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise InputError(f"sigma must be a float or a tensor of {batch} values, got {s.numel()}")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise InputError("sigma must be finite and non-negative")
    return s


class SigmaMLP(nn.Module):
    """Sinusoidal sigma embedding followed by a two-layer MLP: ``(B,) -> (B, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        emb = sigma_embedding(sigma, self.dim).to(self.net[0].weight.dtype)
        return self.net(emb)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, FiLM from the sigma embedding, GroupNorm-SiLU-conv, plus skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb)).chunk(2, dim=-1)
        h = self.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


@dataclass
class PurifierConfig:
    """Architecture hyper-parameters of :class:`Purifier` (recorded in the plug-in card)."""

    in_channels: int = 3
    base_channels: int = 32
    channel_mults: Sequence[int] = field(default_factory=lambda: (1, 2, 4))
    patch: int = 2
    emb_dim: int = 128
    sigma_data: float = 0.25

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        return d


class Purifier(nn.Module):
    """Sigma-conditioned denoiser ``(B, C, H, W), sigma -> (B, C, H, W)`` in [0, 1].

    Args (see :class:`PurifierConfig`): ``in_channels`` of the images; ``base_channels`` and
    ``channel_mults`` of the U-Net levels; ``patch`` the pixel-unshuffle factor (2 halves the
    cost of the full-resolution level); ``emb_dim`` of the sigma embedding; ``sigma_data``
    the assumed pixel standard deviation used to scale the network input to unit variance.
    Default: about 1.2 M parameters.
    """

    kind = "unet-film-v1"

    def __init__(self, config: PurifierConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = PurifierConfig(**kwargs)
        elif kwargs:
            raise InputError("pass either a PurifierConfig or keyword arguments, not both")
        self.config = config
        c, mults, p = config.in_channels, tuple(config.channel_mults), config.patch
        if c < 1 or p < 1 or not mults:
            raise InputError("in_channels, patch and channel_mults must be positive")
        widths = [config.base_channels * m for m in mults]
        self.sigma_mlp = SigmaMLP(config.emb_dim)
        self.stem = nn.Conv2d(c * p * p, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, w in enumerate(widths):
            self.down_blocks.append(ResBlock(widths[i - 1] if i else widths[0], w, config.emb_dim))
            if i < len(widths) - 1:
                self.downsamples.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid = ResBlock(widths[-1], widths[-1], config.emb_dim)
        self.up_blocks = nn.ModuleList()
        for i in range(len(widths) - 2, -1, -1):
            self.up_blocks.append(ResBlock(widths[i + 1] + widths[i], widths[i], config.emb_dim))
        self.out_norm = nn.GroupNorm(_groups(widths[0]), widths[0])
        self.out = nn.Conv2d(widths[0], c * p * p, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # untrained purifier == clamp(x, 0, 1)
        nn.init.zeros_(self.out.bias)
        self._multiple = p * 2 ** (len(widths) - 1)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.parameters())

    def predict_noise(self, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Unit-variance noise estimate ``(B, C, H, W)`` for ``noisy`` at levels ``sigma (B,)``."""
        cfg = self.config
        h, w = noisy.shape[-2:]
        dtype = self.out.weight.dtype
        c_in = torch.rsqrt(sigma.to(torch.float32) ** 2 + cfg.sigma_data**2)
        x = ((noisy.to(torch.float32) - 0.5) * c_in[:, None, None, None]).to(dtype)
        ph, pw = (-h) % self._multiple, (-w) % self._multiple
        if ph or pw:
            mode = "reflect" if h > ph and w > pw else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        if cfg.patch > 1:
            x = F.pixel_unshuffle(x, cfg.patch)
        emb = self.sigma_mlp(sigma)
        x = self.stem(x)
        skips = []
        for i, block in enumerate(self.down_blocks):
            x = block(x, emb)
            if i < len(self.downsamples):
                skips.append(x)
                x = self.downsamples[i](x)
        x = self.mid(x, emb)
        for block in self.up_blocks:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1), emb)
        x = self.out(F.silu(self.out_norm(x)))
        if cfg.patch > 1:
            x = F.pixel_shuffle(x, cfg.patch)
        return x[:, :, :h, :w]

    def forward(self, noisy: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        if noisy.ndim != 4:
            raise InputError(f"the purifier takes images (B, C, H, W), got {tuple(noisy.shape)}")
        if noisy.shape[1] != self.config.in_channels:
            raise InputError(
                f"the purifier was built for {self.config.in_channels}-channel images, "
                f"got {noisy.shape[1]} channels"
            )
        s = as_sigma_tensor(sigma, noisy.shape[0], noisy.device)
        eps = self.predict_noise(noisy, s).to(noisy.dtype)
        return (noisy - s.to(noisy.dtype)[:, None, None, None] * eps).clamp(0.0, 1.0)
