"""Shared fixtures: small synthetic encoders whose smoothed outputs are known exactly."""

from __future__ import annotations

import pytest
import torch

from featsmooth.encoders.synthetic import make_trig_encoder

SIGMA = 0.25


@pytest.fixture
def trig90():
    """One-frequency encoder with exact S = 0.9 at sigma 0.25, images 3x8x8."""
    return make_trig_encoder(0.9, SIGMA)


@pytest.fixture
def images():
    return torch.rand((3, 3, 8, 8), generator=torch.Generator().manual_seed(0))
