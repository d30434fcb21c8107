"""Self-supervised losses of the plug-in (no labels; the encoder f stays frozen).

Shapes: ``noisy`` unit features ``(B, K, D)`` of K noise draws per image (flattened and
l2-normalised, as smoothing sees them), ``clean`` unit features ``(B, D)`` of the frozen
encoder on the clean images. Each loss is a scalar to minimise, 0 at its optimum.

- :func:`clean_consistency_loss`: ``1 - mean cos(f'(x+eps), f(x))`` (the paper's l_rb; it
  raises the clean-reference score S_c, and S >= S_c).
- :func:`pairwise_consistency_loss`: ``1 - mean_{i != j} <f'(x+eps_i), f'(x+eps_j)>``; the
  mean pairwise cosine is an unbiased estimate of ``S(x)^2 = ||E f'(x+eps)||^2``, so this
  raises the Gaussian robustness score directly.
- :func:`utility_loss`: ``1 - cos(f'(x), f(x))`` on clean images (the plug-in must not
  change what the encoder says about clean inputs).
- :func:`pixel_mse_loss`: ``mean (P(x+eps) - x)^2`` (denoising term for the purifier).
- :func:`stats_loss`: per-dimension mean/std of mapped noisy features match those of the
  clean features (the paper's l_stats: downstream models see familiar statistics).
- :func:`identity_loss`: ``||M(z, 0) - z||^2 / ||z||^2`` (the paper's l_id).
- :func:`agreement_loss`: ``KL(q(f(x)) || q(f'(x+eps)))`` for the zero-shot class
  distribution ``q(z) = softmax(scale * <z, t_c>)`` over class embeddings ``t_c``: the
  stability objective of denoised smoothing (Salman et al., 2020) with the clean encoder's
  soft prediction as the target. Cosine terms reward being near the right class embedding;
  this one rewards ranking it first, which is what top-1 agreement measures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from featsmooth.errors import InputError


@dataclass
class LossWeights:
    """Weights of the plug-in training objective (all recorded in the plug-in card)."""

    clean_consistency: float = 1.0
    pairwise_consistency: float = 1.0
    utility: float = 1.0
    pixel_mse: float = 1.0
    stats: float = 0.0
    identity: float = 0.1
    agreement: float = 0.0

    @property
    def needs_features(self) -> bool:
        """Whether any term needs the encoder (False: a pixel-only denoising stage)."""
        return any(v > 0 for k, v in asdict(self).items() if k != "pixel_mse")

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict | None) -> LossWeights:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown loss weights {sorted(unknown)}")
        out = cls(**{k: float(v) for k, v in d.items()})
        if any(v < 0 for v in asdict(out).values()):
            raise InputError("loss weights must be non-negative")
        return out


def unit_flat(features: torch.Tensor, start_dim: int = 1) -> torch.Tensor:
    """Flatten dims from ``start_dim`` on and scale to unit l2 norm (float32)."""
    flat = features.flatten(start_dim).to(torch.float32)
    return F.normalize(flat, dim=-1, eps=1e-12)


def clean_consistency_loss(noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``1 - mean_{b,k} <noisy[b,k], clean[b]>`` for unit rows; ``(B,K,D), (B,D) -> ()``."""
    return 1.0 - (noisy * clean[:, None, :]).sum(-1).mean()


def pairwise_consistency_loss(noisy: torch.Tensor) -> torch.Tensor:
    """``1 - `` unbiased estimate of ``S^2`` from K >= 2 unit draws per image; ``(B,K,D) -> ()``."""
    k = noisy.shape[1]
    if k < 2:
        raise InputError("the pairwise consistency loss needs at least 2 draws per image")
    total = noisy.sum(1)
    pair_mean = (total.pow(2).sum(-1) - k) / (k * (k - 1))
    return 1.0 - pair_mean.mean()


def score_estimate(noisy: torch.Tensor) -> torch.Tensor:
    """Plug-in estimate ``||mean_k noisy[b,k]||`` of S per image; ``(B,K,D) -> (B,)``."""
    return noisy.mean(1).norm(dim=-1)


def utility_loss(plugged_clean: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``1 - mean cos`` between unit rows ``(B, D)`` and ``(B, D)``."""
    return 1.0 - (plugged_clean * clean).sum(-1).mean()


def pixel_mse_loss(purified: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel error; ``purified (B*K, C, H, W)`` against ``images`` repeated."""
    reps = purified.shape[0] // images.shape[0]
    target = images.repeat_interleave(reps, dim=0) if reps > 1 else images
    return (purified.to(torch.float32) - target.to(torch.float32)).pow(2).mean()


def stats_loss(mapped: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per-dimension mean/std matching of unit features scaled to unit RMS.

    ``mapped (N, D)`` and ``clean (M, D)``: rows are scaled by ``sqrt(D)`` so each entry is
    O(1); the loss is ``mean_d (mu_d - mu'_d)^2 + (sd_d - sd'_d)^2`` over the batch.
    """
    d = mapped.shape[-1]
    a = mapped.reshape(-1, d) * d**0.5
    b = clean.reshape(-1, d) * d**0.5
    mean_term = (a.mean(0) - b.mean(0)).pow(2).mean()
    std_term = (a.std(0, unbiased=False) - b.std(0, unbiased=False)).pow(2).mean()
    return mean_term + std_term


def identity_loss(mapper: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``||M(z, 0) - z||^2 / ||z||^2`` averaged over the batch (``z`` raw encoder features)."""
    out = mapper(z, 0.0)
    diff = (out - z).flatten(1).to(torch.float32).pow(2).sum(-1)
    return (diff / z.flatten(1).to(torch.float32).pow(2).sum(-1).clamp_min(1e-12)).mean()


def zero_shot_log_probs(
    features: torch.Tensor, classes: torch.Tensor, scale: float
) -> torch.Tensor:
    """``log softmax(scale * <features, t_c>)`` over the unit class rows ``classes (C, D)``."""
    return torch.log_softmax(scale * features @ classes.T, dim=-1)


def agreement_loss(
    noisy: torch.Tensor, clean: torch.Tensor, classes: torch.Tensor, scale: float
) -> torch.Tensor:
    """Mean ``KL(q(clean[b]) || q(noisy[b, k]))``; ``(B,K,D), (B,D), (C,D) -> ()``.

    ``q(z) = softmax(scale * z @ classes.T)``; 0 exactly when every draw yields the clean
    class distribution, so minimising it pushes each noisy draw to the clean top-1 class.
    """
    target = zero_shot_log_probs(clean, classes, scale)[:, None, :]
    pred = zero_shot_log_probs(noisy, classes, scale)
    return (target.exp() * (target - pred)).sum(-1).mean()
