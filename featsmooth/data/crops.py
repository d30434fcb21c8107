"""Unlabelled training images for the plug-in: extra shipped images and random crops.

The plug-in trains without labels, so any real image helps it learn natural-image
statistics. Besides the labelled photos of :mod:`featsmooth.data.photos`, scikit-image
installs a few more real images (astronomy, microscopy, textures, a clock, coins; all read
from files the package installs, none downloaded). They are *training* material only: none has an ImageNet label, and none is a view of a labelled photo (the
right view of ``stereo_motorcycle`` is left out on purpose, so that evaluating on the
labelled photos stays held out).

:func:`random_crops` turns a few large images into many training images: random squares
covering ``scale`` of the shorter side, resized with antialiasing, randomly flipped; the
result depends only on ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from featsmooth.data.photos import PHOTOS, _skimage
from featsmooth.errors import InputError

#: scikit-image images that load offline, with the licence its documentation states.
EXTRA_IMAGES: dict[str, str] = {
    "hubble_deep_field": "public domain (NASA)",
    "immunohistochemistry": "no known copyright restrictions",
    "retina": "CC0 (Wikimedia Commons)",
    "coins": "no known copyright restrictions (Brooklyn Museum)",
    "clock": "public domain (Stefan van der Walt)",
    "brick": "CC0 (CC0Textures)",
    "grass": "CC0 (DeviantArt, linolafett)",
    "gravel": "CC0 (CC0Textures)",
    "cell": "CC0",
}


def _native(array: np.ndarray, max_side: int) -> torch.Tensor:
    """``(3, H, W)`` float32 in [0, 1] of a whole 8-bit image, shrunk to ``max_side``."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise InputError(f"expected an 8-bit image, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    x = torch.from_numpy(np.array(arr[..., :3])).permute(2, 0, 1).float() / 255.0
    side = max(x.shape[1:])
    if side > max_side:
        h, w = (round(s * max_side / side) for s in x.shape[1:])
        x = F.interpolate(x[None], size=(h, w), mode="bilinear", antialias=True)[0]
    return x.clamp(0, 1)


def load_training_pool(
    photos: Sequence[str] = (), extras: Sequence[str] | None = None, max_side: int = 512
) -> list[tuple[str, torch.Tensor]]:
    """Named images ``(3, H, W)`` at (nearly) native size for :func:`random_crops`.

    Args:
        photos: names from :data:`featsmooth.data.photos.PHOTOS` to include.
        extras: names from :data:`EXTRA_IMAGES` (default: all of them).
        max_side: larger images are shrunk so their longer side is at most this.
    """
    extras = list(EXTRA_IMAGES) if extras is None else list(extras)
    unknown = [n for n in photos if n not in PHOTOS] + [n for n in extras if n not in EXTRA_IMAGES]
    if unknown:
        raise InputError(
            f"unknown image(s) {unknown}; photos: {', '.join(PHOTOS)}; "
            f"extras: {', '.join(EXTRA_IMAGES)}"
        )
    if not photos and not extras:
        raise InputError("the training pool is empty")
    out = [(n, _native(PHOTOS[n].loader(), max_side)) for n in photos]
    out += [(n, _native(_skimage(n)(), max_side)) for n in extras]
    return out


def random_crops(
    images: Sequence[torch.Tensor],
    count: int,
    size: int,
    *,
    scale: tuple[float, float] = (0.3, 1.0),
    flip: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """``count`` random square crops ``(count, 3, size, size)`` in [0, 1].

    Each crop picks an image uniformly, a side of ``scale`` times the image's shorter side
    (uniform in that range), a uniform position, resizes to ``size`` (bilinear with
    antialiasing) and, with ``flip``, mirrors it with probability 1/2.
    """
    if not images:
        raise InputError("no images to crop")
    if count < 1 or size < 1:
        raise InputError("count and size must be positive")
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise InputError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty((count, 3, size, size), dtype=torch.float32)
    for j in range(count):
        img = images[int(torch.randint(len(images), (1,), generator=gen))]
        _, h, w = img.shape
        frac = lo + (hi - lo) * float(torch.rand(1, generator=gen))
        side = max(4, int(min(h, w) * frac))
        top = int(torch.randint(h - side + 1, (1,), generator=gen))
        left = int(torch.randint(w - side + 1, (1,), generator=gen))
        crop = img[None, :, top : top + side, left : left + side]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
        if flip and float(torch.rand(1, generator=gen)) < 0.5:
            crop = crop.flip(-1)
        out[j] = crop[0].clamp(0, 1)
    return out
