"""A synthetic encoder whose smoothed output and worst-case cosine are known exactly.

``f(x) = (w_1 cos(a_1.x), w_1 sin(a_1.x), ..., w_m cos(a_m.x), w_m sin(a_m.x))`` with
``sum w_j^2 = 1`` is unit-norm for every input. For ``eps ~ N(0, sigma^2 I)``,
``E cos(a.(x+eps)) = exp(-sigma^2 |a|^2 / 2) cos(a.x)`` (the characteristic function of
a Gaussian), and likewise for sine, so::

    f_hat(x) = (w_j exp(-sigma^2 |a_j|^2 / 2) (cos a_j.x, sin a_j.x))_j,
    S = ||f_hat(x)|| = sqrt(sum_j w_j^2 exp(-sigma^2 |a_j|^2)),
    S_c = <f(x), f_hat(x)> = sum_j w_j^2 exp(-sigma^2 |a_j|^2 / 2),

independent of x. With one frequency (m = 1) the smoothed feature is ``f`` scaled by S, so
the true worst-case cosine between ``f_hat(x)`` and ``f_hat(x + delta)`` over
``||delta|| <= r`` is ``cos(|a| r)`` while ``|a| r <= pi``. With one frequency
``S_c = S``, so the two references cannot be told apart; :func:`make_two_score_encoder`
builds an encoder whose scores are far apart (e.g. S = 0.71, S_c = 0.55). Tests use
these encoders to check the certificates two independent ways; demos use them when no
pretrained model is installed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from featsmooth.encoders.base import ImageEncoder
from featsmooth.errors import InputError


class TrigEncoder(ImageEncoder):
    """``f(x)`` as in the module docstring for images of a fixed shape ``(C, H, W)``.

    Args:
        frequencies: ``(m, C, H, W)`` tensor of frequency vectors ``a_j``.
        weights: ``(m,)`` non-negative pair weights, rescaled to unit l2 norm.
    """

    name = "synthetic-trig"

    def __init__(self, frequencies: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        super().__init__()
        if frequencies.ndim != 4:
            raise InputError("frequencies must have shape (m, C, H, W)")
        m = frequencies.shape[0]
        weights = (
            torch.ones(m, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        if weights.shape != (m,) or torch.any(weights < 0) or weights.sum() <= 0:
            raise InputError("weights must be m non-negative numbers, not all zero")
        self.register_buffer("frequencies", frequencies.to(torch.float64))
        self.register_buffer("weights", (weights / weights.norm()).to(torch.float64))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.frequencies.shape[1:])  # type: ignore[return-value]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.input_shape:
            raise InputError(
                f"this synthetic encoder takes images of shape {self.input_shape}, "
                f"got {tuple(images.shape[1:])}"
            )
        freq = self.frequencies.to(images.device)
        phase = images.to(torch.float64).flatten(1) @ freq.flatten(1).T  # (B, m)
        w = self.weights.to(images.device)
        out = torch.stack([w * torch.cos(phase), w * torch.sin(phase)], dim=-1)  # (B, m, 2)
        return out.flatten(1).to(images.dtype if images.is_floating_point() else torch.float32)

    # ---- exact quantities -------------------------------------------------------------

    def _damping(self, sigma: float, power: float) -> np.ndarray:
        norms2 = self.frequencies.flatten(1).pow(2).sum(1).cpu().numpy()
        return np.exp(-power * sigma**2 * norms2 / 2.0)

    def true_score(self, sigma: float) -> float:
        """Exact ``S = ||f_hat(x)||`` (the same for every input)."""
        w2 = self.weights.cpu().numpy() ** 2
        return float(math.sqrt(np.sum(w2 * self._damping(sigma, 2.0))))

    def true_clean_score(self, sigma: float) -> float:
        """Exact ``S_c = <f(x), f_hat(x)>`` (the same for every input)."""
        w2 = self.weights.cpu().numpy() ** 2
        return float(np.sum(w2 * self._damping(sigma, 1.0)))

    def smoothed(self, images: torch.Tensor, sigma: float) -> torch.Tensor:
        """Exact ``f_hat(images)``, shape ``(B, 2m)``, float64."""
        damp = torch.as_tensor(self._damping(sigma, 1.0), device=images.device)
        out = self.forward(images.to(torch.float64)).view(images.shape[0], -1, 2)
        return (out * damp[None, :, None]).flatten(1)

    def worst_case_cosine(self, radius: float) -> float:
        """Exact worst case of ``cos(f_hat(x), f_hat(x+delta))`` over ``||delta|| <= r``.

        Only for one frequency (m = 1): ``cos(|a| r)`` for ``|a| r <= pi``, else -1.
        """
        if self.frequencies.shape[0] != 1:
            raise InputError("the closed-form worst case is implemented for one frequency")
        angle = float(self.frequencies.norm()) * radius
        return math.cos(angle) if angle <= math.pi else -1.0


def make_trig_encoder(
    score: float,
    sigma: float,
    shape: tuple[int, int, int] = (3, 8, 8),
    *,
    seed: int = 0,
) -> TrigEncoder:
    """One-frequency TrigEncoder whose exact score at ``sigma`` is ``score`` (0 < S < 1).

    ``|a| = sqrt(-2 ln S) / sigma`` in a random direction.
    """
    if not 0.0 < score < 1.0:
        raise InputError("score must lie strictly between 0 and 1")
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn((1, *shape), generator=gen, dtype=torch.float64)
    direction /= direction.norm()
    magnitude = math.sqrt(-2.0 * math.log(score)) / sigma
    return TrigEncoder(direction * magnitude)


def make_two_score_encoder(
    score: float,
    clean_score: float,
    sigma: float,
    shape: tuple[int, int, int] = (3, 8, 8),
    *,
    seed: int = 0,
) -> TrigEncoder:
    """Two-frequency TrigEncoder with exact ``S = score`` and ``S_c = clean_score`` at ``sigma``.

    With equal pair weights ``w_j^2 = 1/2`` and dampings ``d_j = exp(-sigma^2 |a_j|^2 / 2)``,
    ``S^2 = (d_1^2 + d_2^2)/2`` and ``S_c = (d_1 + d_2)/2``, so
    ``d_{1,2} = S_c +- sqrt(S^2 - S_c^2)``. This needs ``S_c <= S``, ``d_1 <= 1`` and
    ``d_2 > 0`` (i.e. ``S^2 < 2 S_c^2``). Example: ``S = 0.71, S_c = 0.55`` gives a
    nearly constant pair (``d_1 = 0.999``) and a strongly damped one (``d_2 = 0.101``).
    The two frequency directions are random (seeded).
    """
    if not 0.0 < clean_score <= score < 1.0:
        raise InputError("need 0 < clean_score <= score < 1")
    spread = math.sqrt(score**2 - clean_score**2)
    damping = (clean_score + spread, clean_score - spread)
    if damping[0] > 1.0 or damping[1] <= 0.0:
        raise InputError(
            f"no two-frequency encoder has S = {score} and S_c = {clean_score} "
            "(need S_c + sqrt(S^2 - S_c^2) <= 1 and S^2 < 2 S_c^2)"
        )
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn((2, *shape), generator=gen, dtype=torch.float64)
    directions /= directions.flatten(1).norm(dim=1)[:, None, None, None]
    magnitudes = torch.tensor(
        [math.sqrt(-2.0 * math.log(d)) / sigma for d in damping], dtype=torch.float64
    )
    return TrigEncoder(directions * magnitudes[:, None, None, None])


def load_synthetic_trig(device: str | torch.device | None = None, dtype=None) -> TrigEncoder:
    """Registry loader: a 3x32x32 TrigEncoder with S = 0.95 at sigma = 0.25 (demo only)."""
    encoder = make_trig_encoder(0.95, 0.25, shape=(3, 32, 32))
    return encoder.to(device) if device is not None else encoder
