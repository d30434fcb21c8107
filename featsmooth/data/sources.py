"""Where the images of a command come from: files and folders, the shipped photos, or seeded
random images, as an :class:`ImageSource` read one image at a time."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from featsmooth.errors import InputError

__all__ = [
    "ImageSource",
    "folder_images",
    "photo_images",
    "random_images",
    "select_images",
]


@dataclass
class ImageSource:
    """Images to process, read one at a time.

    Attributes:
        keys: unique record keys (photo names or paths relative to the folder given).
        labels: class index per image (``None``: unlabelled); ``acceptable`` the indices
            counted as correct (several where classes overlap).
        description: how the images were chosen (saved with the run's settings).
    """

    keys: list[str]
    loader: Callable[[int], torch.Tensor] = field(repr=False)
    labels: list[int | None]
    acceptable: list[list[int]]
    description: str
    label_names: list[str | None] = field(default_factory=list)
    #: SHA-256 of image ``i``'s file (images read from files only)
    digest: Callable[[int], str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    def content(self, index: int) -> dict[str, str]:
        """Record fields identifying image ``index``'s content (``sha256`` of its file)."""
        return {} if self.digest is None else {"sha256": self.digest(index)}

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as ``(C, H, W)`` float32 in [0, 1]."""
        return self.loader(index)

    def all_images(self) -> torch.Tensor:
        return torch.stack([self.image(i) for i in range(len(self))])

    def subset(self, keep: Sequence[int]) -> ImageSource:
        """The images ``keep`` (indices, in that order) of this source."""
        keep = list(keep)
        return ImageSource(
            keys=[self.keys[i] for i in keep],
            loader=lambda j: self.image(keep[j]),
            labels=[self.labels[i] for i in keep],
            acceptable=[self.acceptable[i] for i in keep],
            description=f"{self.description} ({', '.join(self.keys[i] for i in keep)})",
            label_names=[self.label_names[i] for i in keep] if self.label_names else [],
            digest=None if self.digest is None else lambda j: self.digest(keep[j]),
        )

    def items(self) -> Any:
        """These images as the run loop's :class:`~featsmooth.runloop.Items` (keys, file
        digests, labels)."""
        from featsmooth.runloop import Items

        return Items(
            count=len(self),
            get=lambda idx: torch.stack([self.image(i) for i in idx]),
            keys=list(self.keys),
            names=list(self.keys),
            content=self.content,
            labels=list(self.labels),
            acceptable=[list(a) for a in self.acceptable],
        )


def _image_files(path: Path) -> list[Path]:
    from featsmooth.data.loaders import list_image_files

    return list_image_files(path)


def _read_image(path: Path, size: int) -> torch.Tensor:
    from featsmooth.data.loaders import open_image

    return open_image(path, size)


def _norm_name(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name).strip().lower()


def folder_images(
    paths: str | Path | Sequence[str | Path],
    size: int,
    class_names: Sequence[str] | None = None,
) -> ImageSource:
    """Image files (or folders of them, searched recursively) as an :class:`ImageSource`.

    Each image is centre-cropped to a square and resized to ``size`` (bicubic). In a class
    folder ``root/<class>/<image>`` whose folder name matches one of ``class_names``
    (case, ``_`` and ``-`` ignored) the image gets that class as its label.
    """
    from featsmooth.files import content_digest

    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise InputError("give at least one image file or folder")
    files: list[tuple[str, Path]] = []
    for item in items:
        root = Path(item)
        for f in _image_files(root):
            key = f.name if root.is_file() else f.relative_to(root).as_posix()
            if len(items) > 1 and root.is_dir():
                key = f"{root.name}/{key}"
            files.append((key, f))
    keys = [k for k, _ in files]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise InputError(f"two images have the same name {dup[0]!r}; pass their folder instead")
    lookup = {_norm_name(n): i for i, n in enumerate(class_names or [])}
    labels: list[int | None] = []
    for key, _ in files:
        parent = key.rsplit("/", 2)[-2] if "/" in key else None
        labels.append(lookup.get(_norm_name(parent)) if parent is not None else None)
    return ImageSource(
        keys=keys,
        loader=lambda i: _read_image(files[i][1], size),
        labels=labels,
        acceptable=[[label] if label is not None else [] for label in labels],
        description=", ".join(str(p) for p in items),
        label_names=[class_names[i] if i is not None and class_names else None for i in labels],
        digest=lambda i: content_digest(files[i][1]),
    )


def photo_images(size: int, class_names: Sequence[str] | None = None) -> ImageSource:
    """The photos that ship inside installed packages (:mod:`featsmooth.data.photos`).

    Labels are ImageNet-1k indices; with custom ``class_names`` a photo is labelled with
    the matching name, if any.
    """
    from featsmooth.data import imagenet_classes
    from featsmooth.data.photos import load_photos

    photos = load_photos(size=size)
    labels, acceptable = list(photos.labels), [sorted(a) for a in photos.acceptable]
    if class_names is not None and list(class_names) != imagenet_classes():
        lookup = {_norm_name(n): i for i, n in enumerate(class_names)}
        names = imagenet_classes()
        labels = [lookup.get(_norm_name(names[lb])) if lb is not None else None for lb in labels]
        acceptable = [
            sorted({lookup[_norm_name(names[a])] for a in acc if _norm_name(names[a]) in lookup})
            for acc in acceptable
        ]
    images = photos.images
    return ImageSource(
        keys=list(photos.names),
        loader=lambda i: images[i],
        labels=labels,
        acceptable=acceptable,
        description="photos",
        label_names=[class_names[lb] if lb is not None and class_names else None for lb in labels],
    )


def random_images(count: int, shape: tuple[int, int, int], seed: int = 0) -> ImageSource:
    """``count`` seeded uniform-noise images (the demo's fallback when no model is installed)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand((count, *shape), generator=gen)
    return ImageSource(
        keys=[f"random-{i}" for i in range(count)],
        loader=lambda i: images[i],
        labels=[None] * count,
        acceptable=[[] for _ in range(count)],
        description=f"random uniform images {count}x{'x'.join(map(str, shape))} (seed {seed})",
        label_names=[None] * count,
    )


def select_images(
    images: str | Sequence[str] | None,
    photos: bool,
    size: int,
    class_names: Sequence[str] | None,
) -> ImageSource:
    """The images a command was given: ``images`` (files or folders) or the shipped
    ``photos`` (exactly one of the two), at side ``size``, labelled by ``class_names``."""
    if photos and images:
        raise InputError("give either --images or --photos, not both")
    if photos:
        return photo_images(size, class_names)
    if not images:
        raise InputError("no images: give --images DIR (a folder or file) or --photos")
    return folder_images(images, size, class_names)
