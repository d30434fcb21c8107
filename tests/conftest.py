"""Shared fixtures: small synthetic encoders whose smoothed outputs are known exactly, and
folders of random PNGs for the command-line tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featsmooth.encoders.synthetic import make_trig_encoder

SIGMA = 0.25


@pytest.fixture
def trig90():
    """One-frequency encoder with exact S = 0.9 at sigma 0.25, images 3x8x8."""
    return make_trig_encoder(0.9, SIGMA)


@pytest.fixture
def images():
    return torch.rand((3, 3, 8, 8), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def make_pngs() -> Callable[..., Path]:
    """``make_pngs(folder, count, seed, pattern="img{i}.png")``: random 32x32 RGB PNGs."""

    def make(folder: Path, count: int, seed: int, pattern: str = "img{i}.png") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        for i in range(count):
            pixels = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / pattern.format(i=i))
        return folder

    return make
