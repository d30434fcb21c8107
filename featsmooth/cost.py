"""What a run will cost, measured before it starts: a short timed warm-up of the smoothed
encoder gives the seconds per noisy forward pass on this machine, and the run's size gives
the number of passes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CostEstimate", "estimate_cost", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class CostEstimate:
    """The forward passes a run needs and how long they take here.

    Attributes:
        images: images still to certify.
        passes_per_image: noisy forward passes per image (``n0 + n``; at most ``n`` in
            sequential mode) plus the clean one.
        seconds_per_pass: measured by :func:`estimate_cost` (warm-up excluded).
    """

    images: int
    passes_per_image: int
    seconds_per_pass: float

    @property
    def seconds(self) -> float:
        """Estimated wall-clock time of the forward passes (the bounds add little)."""
        return self.images * self.passes_per_image * self.seconds_per_pass

    def describe(self) -> str:
        """E.g. ``9 image(s) x 10,065 forward passes ~ 40 min here (38 noisy images/s)``."""
        rate = 1.0 / self.seconds_per_pass if self.seconds_per_pass > 0 else float("inf")
        return (
            f"{self.images} image(s) x {self.passes_per_image:,} forward passes ~ "
            f"{format_seconds(self.seconds)} on this machine ({rate:,.0f} noisy images/s "
            "measured in a warm-up)"
        )


def estimate_cost(
    smoothed: Any,
    image: torch.Tensor,
    images: int,
    passes_per_image: int,
    *,
    batch: int = 16,
    budget_s: float = 1.0,
) -> CostEstimate:
    """Time noisy forward passes of ``smoothed`` (a :class:`~featsmooth.SmoothedEncoder`)
    on ``image`` ``(C, H, W)``: one untimed batch of ``min(batch, smoothed.batch_size)``
    draws (allocations, lazy initialisation), then timed batches until ``budget_s`` has
    passed (at least one). The rate of small batches is a rough guide to that of the run's
    batch size: read the estimate as an order of magnitude."""
    size = max(1, min(batch, smoothed.batch_size))
    x = image.unsqueeze(0)
    smoothed.predict_feature(x, size, seed=[0], batch_size=size)
    start, draws = time.perf_counter(), 0
    while draws == 0 or time.perf_counter() - start < budget_s:
        smoothed.predict_feature(x, size, seed=[draws + 1], batch_size=size)
        draws += size
    return CostEstimate(images, passes_per_image, (time.perf_counter() - start) / draws)
