"""Smoothness mapper: a residual, sigma-conditioned module placed after a frozen encoder.

``M(z, sigma) = z + rms(z) * g(z / rms(z), sigma)``, where ``rms(z)`` is the per-sample
root-mean-square of the feature (so the mapper is equivariant to the feature's overall
scale) and ``g`` is a small FiLM-conditioned network whose last layer is zero-initialised:
an untrained mapper is **exactly** the identity.

Shapes: pooled embeddings ``(B, D)``; token sequences ``(B, T, D)`` (tokens are mixed by a
depthwise convolution along the sequence and one light multi-head self-attention layer,
as in the paper's residual block); feature maps ``(B, D, H, W)`` are treated as ``H*W``
tokens of width ``D`` and returned in their original layout.

Like the purifier, the mapper is part of the base encoder that smoothing certifies, so it
can raise or lower the certified score but never makes the certificate unsound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featsmooth.errors import InputError
from featsmooth.plugin.purifier import SigmaMLP, as_sigma_tensor


@dataclass
class MapperConfig:
    """Architecture hyper-parameters of :class:`SmoothnessMapper` (recorded in the card).

    ``dim``: feature width D; ``hidden``: width of g; ``tokens``: whether inputs are token
    sequences / feature maps (enables token mixing); ``heads``: attention heads (0 turns the
    attention off); ``kernel``: depthwise convolution length along tokens; ``emb_dim``:
    width of the sigma embedding.
    """

    dim: int
    hidden: int = 512
    tokens: bool = False
    heads: int = 4
    kernel: int = 3
    emb_dim: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


class SmoothnessMapper(nn.Module):
    """Residual FiLM-conditioned feature mapper (see the module docstring)."""

    kind = "residual-film-v1"

    def __init__(self, config: MapperConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = MapperConfig(**kwargs)
        elif kwargs:
            raise InputError("pass either a MapperConfig or keyword arguments, not both")
        if config.dim < 1 or config.hidden < 1:
            raise InputError("mapper dim and hidden must be positive")
        self.config = config
        d, h = config.dim, config.hidden
        self.sigma_mlp = SigmaMLP(config.emb_dim)
        self.norm_in = nn.LayerNorm(d)
        self.proj_in = nn.Linear(d, h)
        self.film1 = nn.Linear(config.emb_dim, 2 * h)
        if config.tokens:
            k = config.kernel
            self.token_conv = nn.Conv1d(h, h, k, padding=k // 2, groups=h)
            if config.heads > 0:
                if h % config.heads:
                    raise InputError("mapper hidden width must be divisible by heads")
                self.attn_norm = nn.LayerNorm(h)
                self.attn = nn.MultiheadAttention(h, config.heads, batch_first=True)
        self.mlp_norm = nn.LayerNorm(h)
        self.mlp = nn.Linear(h, h)
        self.film2 = nn.Linear(config.emb_dim, 2 * h)
        self.proj_out = nn.Linear(h, d)
        nn.init.zeros_(self.proj_out.weight)  # exact identity at init
        nn.init.zeros_(self.proj_out.bias)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.parameters())

    def residual(self, u: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``g(u, sigma)`` for unit-RMS features ``u`` of shape ``(B, T, D)``."""
        emb = self.sigma_mlp(sigma)
        s1, b1 = self.film1(F.silu(emb)).chunk(2, dim=-1)
        h = self.proj_in(self.norm_in(u))
        h = F.silu(h * (1 + s1[:, None, :]) + b1[:, None, :])
        if self.config.tokens:
            h = h + self.token_conv(h.transpose(1, 2)).transpose(1, 2)
            if self.config.heads > 0:
                a = self.attn_norm(h)
                h = h + self.attn(a, a, a, need_weights=False)[0]
        s2, b2 = self.film2(F.silu(emb)).chunk(2, dim=-1)
        m = self.mlp(self.mlp_norm(h))
        m = F.silu(m * (1 + s2[:, None, :]) + b2[:, None, :])
        return self.proj_out(m)

    def forward(self, z: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Map features ``z`` of shape ``(B, D)``, ``(B, T, D)`` or ``(B, D, H, W)``."""
        d = self.config.dim
        if z.ndim == 2:
            seq = z[:, None, :]
        elif z.ndim == 3:
            seq = z
        elif z.ndim == 4:
            seq = z.flatten(2).transpose(1, 2)
        else:
            raise InputError(f"the mapper takes (B, D), (B, T, D) or (B, D, H, W), got {z.shape}")
        if seq.shape[-1] != d:
            raise InputError(f"the mapper was built for features of width {d}, got {z.shape}")
        if z.ndim > 2 and not self.config.tokens:
            raise InputError("this mapper was built for pooled (B, D) features, got a sequence")
        s = as_sigma_tensor(sigma, z.shape[0], z.device)
        dtype = self.proj_out.weight.dtype
        rms = seq.to(torch.float32).pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-12)
        u = (seq.to(torch.float32) / rms).to(dtype)
        out = seq + (rms * self.residual(u, s).to(torch.float32)).to(seq.dtype)
        if z.ndim == 2:
            return out[:, 0, :]
        if z.ndim == 4:
            return out.transpose(1, 2).reshape(z.shape)
        return out
