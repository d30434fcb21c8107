"""Training data of the plug-in: clean images checked, folders and loaders batched.

:func:`featsmooth.plugin.train.train_plugin` takes a tensor of clean images, an iterable of
batches or a folder; the helpers here check the images (pixel units, ``(N, C, H, W)``) and
serve the batch of each step deterministically (a per-epoch permutation of a tensor, seeded
from the training seed; a loader is re-iterated each epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from featsmooth import seeds
from featsmooth.errors import InputError


def _as_image_tensor(x: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.is_tensor(x) or x.ndim != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise InputError(f"{what} must be a tensor of images (N, C, H, W), got {shape}")
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255.0
    x = x.to(torch.float32)
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise InputError(f"{what} must be in pixel units [0, 1] (clean images)")
    return x


class _FolderBatches:
    """Re-iterable batches ``(images, labels)`` of a dataset that has ``.batches(size)``."""

    def __init__(self, dataset: Any, batch_size: int) -> None:
        self.dataset, self.batch_size = dataset, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        return iter(self.dataset.batches(self.batch_size))


def _resolve_data(images_or_loader: Any, batch_size: int) -> torch.Tensor | Iterable:
    if isinstance(images_or_loader, (str, Path)):
        try:
            from featsmooth.data.loaders import load_image_folder
        except ImportError as err:
            raise InputError("loading an image folder needs featsmooth.data.loaders") from err
        images_or_loader = load_image_folder(images_or_loader)
    if hasattr(images_or_loader, "batches") and hasattr(images_or_loader, "__len__"):
        return _FolderBatches(images_or_loader, batch_size)
    if torch.is_tensor(images_or_loader):
        return _as_image_tensor(images_or_loader, "training images")
    if isinstance(images_or_loader, Iterable):
        return images_or_loader
    raise InputError("training data must be an image tensor, an iterable of batches or a folder")


def _batch_from(item: Any) -> torch.Tensor:
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, dict):
        item = item.get("images", item.get("pixel_values"))
    return _as_image_tensor(item, "a training batch")


class _Batches:
    """Deterministic batches from a tensor (per-epoch permutation) or a re-iterable loader."""

    def __init__(self, data: torch.Tensor | Iterable, batch_size: int, seed: int) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self._it = None

    @property
    def steps_per_epoch(self) -> int | None:
        if torch.is_tensor(self.data):
            return max(1, math.ceil(self.data.shape[0] / self.batch_size))
        return len(self.data) if hasattr(self.data, "__len__") else None  # type: ignore[arg-type]

    def get(self, step: int) -> torch.Tensor:
        if torch.is_tensor(self.data):
            n = self.data.shape[0]
            per = self.steps_per_epoch or 1
            epoch, i = divmod(step, per)
            perm = torch.randperm(
                n, generator=seeds.generator(self.seed, ("epoch", epoch), "train")
            )
            return self.data[perm[i * self.batch_size : (i + 1) * self.batch_size]]
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.data)
            try:
                return _batch_from(next(self._it))
            except StopIteration:
                self._it = None
        raise InputError("the training loader yielded no batches")


def _describe_data(data: torch.Tensor | Iterable) -> str:
    if torch.is_tensor(data):
        return f"tensor of {data.shape[0]} images of shape {tuple(data.shape[1:])}"
    return f"iterable {type(data).__name__}"
