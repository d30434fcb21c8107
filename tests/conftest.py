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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for the whole suite. Its tensors are tiny, so torch's thread pool
    only adds overhead, and on a loaded machine it makes small forward passes hundreds of
    times slower. Tests that start a subprocess (the command line) keep torch's default."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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
