"""Loaders for evaluation data on disk: class folders, caption JSON files, HF datasets.

All loaders return images as float32 tensors ``(3, size, size)`` in [0, 1] (largest centred
square, bicubic resize; see :func:`featsmooth.data.photos.image_to_tensor`). Folder and
caption loaders are lazy: they list files at construction and read an image only when it
is indexed or iterated, so large sets stream in batches (:meth:`ImageFolderDataset.batches`); ``load()``
reads everything into one tensor for small sets.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from featsmooth.data.photos import image_to_tensor
from featsmooth.errors import InputError, ModelUnavailableError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass
class ClassificationData:
    """Labelled images in memory: ``images (N, 3, S, S)``, ``labels (N,)`` int64 indices
    into ``class_names``."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class CaptionData:
    """Captioned images in memory: ``images (N, 3, S, S)``, ``captions[i]`` the list of
    captions of image ``i`` (one or more), ``names[i]`` its file name or id."""

    images: torch.Tensor
    captions: list[list[str]]
    names: list[str]

    def __len__(self) -> int:
        return len(self.captions)


#: PIL modes that ``convert("RGB")`` maps without losing range (8 bits per channel)
_EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)


def image_pixels(image: Image.Image) -> Image.Image | np.ndarray:
    """An opened image in a form :func:`~featsmooth.data.photos.image_to_tensor` reads
    with its full range.

    8-bit modes are returned as they are. 16-bit grey images (PNG or TIFF, PIL modes
    ``I;16``, ``I;16B``, ``I;16L`` and a 16-bit PNG read as ``I``) become floats in [0, 1]
    (0..65535 scaled, not clipped at 255: ``convert("RGB")`` would turn almost every pixel
    white). 16-bit colour images are already scaled to 8 bits by PIL. Floating-point and
    32-bit integer images have no agreed range and are refused.

    Raises:
        InputError: a pixel format without a known range.
    """
    mode = image.mode
    if mode in _EIGHT_BIT_MODES:
        return image
    if mode.startswith("I;16") or (mode == "I" and image.format == "PNG"):
        return np.asarray(image, dtype=np.float64) / 65535.0
    raise InputError(
        f"image pixel format {mode!r} ({image.format or 'unknown'} file) has no known range; "
        "save it as an 8- or 16-bit PNG"
    )


def open_image(path: str | os.PathLike[str], size: int | None) -> torch.Tensor:
    """Read an image file as ``(3, size, size)`` float32 in [0, 1] (see :func:`image_pixels`).

    Raises:
        InputError: unreadable, not an image, an unknown pixel format, or more pixels than
            PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, twice that
            refused; between the two a warning).
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            return image_to_tensor(image_pixels(im), size)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as exc:
        reason = " ".join(str(exc).split()).rstrip(".")
        raise InputError(f"{path} is too large to read safely ({reason}); downscale it") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL: not an image, truncated, ...
        if isinstance(exc, InputError):
            raise
        raise InputError(f"cannot read image {path}: {exc}") from None


def list_image_files(
    path: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> list[Path]:
    """``path`` itself if it is a file, else the image files under it (recursively, sorted).

    Symbolic links to folders are not followed (a link may lead back into the tree); each
    one found prints a warning naming it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        InputError: a folder without image files.
    """
    import warnings

    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileNotFoundError(f"image folder or file not found: {path}")
    exts = tuple(e.lower() for e in extensions)
    files: list[Path] = []
    for folder, dirs, names in os.walk(path):
        for d in sorted(dirs):
            if os.path.islink(os.path.join(folder, d)):
                link = Path(folder, d)
                warnings.warn(
                    f"skipped the linked folder {link} (links to folders are not followed); "
                    f"pass it as its own --images {link} to certify its images",
                    UserWarning,
                    stacklevel=2,
                )
        for name in names:
            f = Path(folder, name)
            if f.suffix.lower() in exts and f.is_file():
                files.append(f)
    files.sort()
    if not files:
        raise InputError(f"no image files in {path} (looked for {', '.join(exts)})")
    return files


def _read_image(path: Path, size: int | None) -> torch.Tensor:
    try:
        return open_image(path, size)
    except FileNotFoundError as exc:
        raise InputError(f"image file not found: {path}") from exc


def _batched(n: int, batch_size: int) -> Iterator[range]:
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield range(start, min(start + batch_size, n))


class ImageFolderDataset:
    """ImageNet-style folder ``root/<class>/<image>``: classes are the sub-folders in sorted
    order (label ``i`` = ``class_names[i]``), images are read lazily. A folder with images
    directly inside and no sub-folders is read as one class (label 0), e.g. unlabelled
    training images. Files directly in ``root`` are ignored when it has class sub-folders.

    Attributes:
        root: the folder.
        folders: sub-folder names in label order.
        class_names: names used for prompts (folder names with ``_`` read as spaces unless
            ``class_names`` was given).
        paths, labels: one per image, sorted by class then file name.
        size: side of the square images returned.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: int | None = 224,
        *,
        class_names: Sequence[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        limit_per_class: int | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"image folder not found: {self.root}")
        exts = tuple(e.lower() for e in extensions)

        def images_in(folder: Path) -> list[Path]:
            return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)

        self.folders = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        flat = not self.folders and bool(images_in(self.root))
        if flat:  # unlabelled images directly in root: one class named after the folder
            self.folders = ["."]
        if not self.folders:
            raise InputError(f"{self.root} has no images and no class sub-folders")
        self.paths: list[Path] = []
        self.labels: list[int] = []
        for label, folder in enumerate(self.folders):
            files = images_in(self.root / folder)
            if limit_per_class is not None:
                files = files[:limit_per_class]
            self.paths.extend(files)
            self.labels.extend([label] * len(files))
        if not self.paths:
            raise InputError(f"no images ({', '.join(exts)}) found under {self.root}")
        if class_names is not None:
            if len(class_names) != len(self.folders):
                raise InputError(
                    f"got {len(class_names)} class names for {len(self.folders)} class folders"
                )
            self.class_names = list(class_names)
        elif flat:
            self.class_names = [self.root.resolve().name.replace("_", " ")]
        else:
            self.class_names = [f.replace("_", " ") for f in self.folders]
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _read_image(self.paths[index], self.size), self.labels[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        for i in range(len(self)):
            yield self[i]

    def batches(self, batch_size: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images (b, 3, S, S), labels (b,))`` in file order."""
        for idx in _batched(len(self), batch_size):
            images = torch.stack([_read_image(self.paths[i], self.size) for i in idx])
            yield images, torch.tensor([self.labels[i] for i in idx], dtype=torch.long)

    def load(self, limit: int | None = None) -> ClassificationData:
        """Read the first ``limit`` images (all when None) into memory."""
        n = len(self) if limit is None else min(limit, len(self))
        images = torch.stack([_read_image(self.paths[i], self.size) for i in range(n)])
        labels = torch.tensor(self.labels[:n], dtype=torch.long)
        return ClassificationData(images, labels, list(self.class_names))


def load_image_folder(
    root: str | os.PathLike[str],
    size: int | None = 224,
    *,
    class_names: Sequence[str] | None = None,
    limit_per_class: int | None = None,
) -> ImageFolderDataset:
    """Open an ImageNet-style class folder lazily (see :class:`ImageFolderDataset`).

    For the ImageNet validation set laid out as 1000 WordNet-id folders (``n01440764`` ...),
    sorted folder order is the standard class order: pass
    ``class_names=featsmooth.data.imagenet_classes()``.
    """
    return ImageFolderDataset(root, size, class_names=class_names, limit_per_class=limit_per_class)


class CaptionDataset:
    """Images with one or more captions each, read lazily from ``image_root``.

    Attributes:
        paths: image files; ``captions[i]`` the captions of ``paths[i]``; ``names[i]`` the
            file name as written in the JSON file.
    """

    def __init__(
        self, paths: list[Path], captions: list[list[str]], names: list[str], size: int | None
    ) -> None:
        self.paths, self.captions, self.names, self.size = paths, captions, names, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[str]]:
        return _read_image(self.paths[index], self.size), self.captions[index]

    def batches(self, batch_size: int = 64) -> Iterator[tuple[torch.Tensor, list[list[str]]]]:
        """Yield ``(images (b, 3, S, S), captions)`` in file order."""
        for idx in _batched(len(self), batch_size):
            images = torch.stack([_read_image(self.paths[i], self.size) for i in idx])
            yield images, [self.captions[i] for i in idx]

    def load(self, limit: int | None = None) -> CaptionData:
        """Read the first ``limit`` images (all when None) into memory."""
        n = len(self) if limit is None else min(limit, len(self))
        images = torch.stack([_read_image(self.paths[i], self.size) for i in range(n)])
        return CaptionData(images, [list(c) for c in self.captions[:n]], self.names[:n])


def _coco_entries(data: dict[str, Any]) -> list[tuple[str, list[str]]]:
    captions: dict[Any, list[str]] = {}
    for ann in data.get("annotations", []):
        if "image_id" not in ann or "caption" not in ann:
            raise InputError("COCO annotations need 'image_id' and 'caption' fields")
        captions.setdefault(ann["image_id"], []).append(str(ann["caption"]).strip())
    entries = []
    for img in data["images"]:
        if "file_name" not in img or "id" not in img:
            raise InputError("COCO images need 'id' and 'file_name' fields")
        if img["id"] in captions:
            entries.append((str(img["file_name"]), captions[img["id"]]))
    return entries


def _karpathy_entries(data: dict[str, Any], split: str | None) -> list[tuple[str, list[str]]]:
    entries = []
    for img in data["images"]:
        if split is not None and img.get("split") != split:
            continue
        sentences = img.get("sentences")
        if not isinstance(sentences, list):
            raise InputError("Karpathy-style images need a 'sentences' list")
        caps = [str(s["raw"]).strip() if isinstance(s, dict) else str(s) for s in sentences]
        name = os.path.join(img.get("filepath", ""), img["filename"])
        if caps:
            entries.append((name, caps))
    return entries


def load_caption_json(
    path: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    size: int | None = 224,
    *,
    split: str | None = None,
    limit: int | None = None,
) -> CaptionDataset:
    """Open a caption file lazily; images are read from ``image_root``.

    Two layouts are recognised:

    * COCO captions: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
      "caption"}]}``; images without a caption are skipped.
    * Karpathy splits (COCO / Flickr30k): ``{"images": [{"filename", "filepath"?, "split"?,
      "sentences": [{"raw"}]}]}``; ``split`` keeps only that split (e.g. ``"test"``).

    Every image keeps all its captions (retrieval counts a hit on any of them).
    """
    path, image_root = Path(path), Path(image_root)
    if not path.is_file():
        raise InputError(f"caption file not found: {path}")
    if not image_root.is_dir():
        raise InputError(f"image folder not found: {image_root}")
    try:
        data = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path}: expected a JSON object with an 'images' list")
    if "annotations" in data:
        entries = _coco_entries(data)
    else:
        entries = _karpathy_entries(data, split)
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise InputError(
            f"{path} has no captioned images" + (f" in split {split!r}" if split else "")
        )
    paths = [image_root / name for name, _ in entries]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} image(s) listed in {path} are missing, e.g. {missing[0]}")
    return CaptionDataset(paths, [c for _, c in entries], [n for n, _ in entries], size)


def load_hf_dataset(
    name_or_path: str,
    split: str = "test",
    *,
    image_column: str = "image",
    label_column: str | None = None,
    caption_column: str | None = None,
    size: int | None = 224,
    limit: int | None = None,
) -> ClassificationData | CaptionData:
    """Load a Hugging Face dataset (a local folder/script, or a hub name where the hub is
    reachable) with the optional ``datasets`` library, into memory.

    Give exactly one of ``label_column`` (returns :class:`ClassificationData`; class names
    from the column's ``ClassLabel`` feature when it has one) or ``caption_column``
    (returns :class:`CaptionData`; the column may hold a string or a list of strings).
    ``limit`` keeps the first rows only.
    """
    if (label_column is None) == (caption_column is None):
        raise InputError("give exactly one of label_column or caption_column")
    try:
        import datasets
    except ImportError as exc:
        raise ModelUnavailableError(
            "loading Hugging Face datasets needs the datasets library: pip install datasets"
        ) from exc
    try:
        ds = datasets.load_dataset(name_or_path, split=split)
    except Exception as exc:  # network, unknown name or split: one actionable line
        raise ModelUnavailableError(
            f"cannot load dataset {name_or_path!r} split {split!r}: {exc}"
        ) from exc
    columns = set(getattr(ds, "column_names", []) or [])
    for col in (image_column, label_column or caption_column):
        if columns and col not in columns:
            raise InputError(f"dataset has no column {col!r}; columns: {sorted(columns)}")
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise InputError(f"dataset {name_or_path!r} split {split!r} is empty")
    rows = [ds[i] for i in range(n)]
    images = torch.stack([image_to_tensor(_as_pil(r[image_column]), size) for r in rows])
    if label_column is not None:
        labels = torch.tensor([int(r[label_column]) for r in rows], dtype=torch.long)
        feature = getattr(ds, "features", {}).get(label_column) if hasattr(ds, "features") else None
        names = list(getattr(feature, "names", []) or [])
        if not names:
            names = [str(i) for i in range(int(labels.max()) + 1)]
        return ClassificationData(images, labels, names)
    captions = []
    for r in rows:
        cap = r[caption_column]
        captions.append([str(c) for c in cap] if isinstance(cap, (list, tuple)) else [str(cap)])
    return CaptionData(images, captions, [str(i) for i in range(n)])


def _as_pil(value: Any) -> Image.Image | np.ndarray:
    """A dataset cell as something :func:`image_to_tensor` reads (PIL image or array)."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes"):
        with Image.open(io.BytesIO(value["bytes"])) as im:
            return im.convert("RGB")
    if isinstance(value, dict) and value.get("path"):
        value = value["path"]
    if isinstance(value, (str, os.PathLike)):
        with Image.open(value) as im:
            return im.convert("RGB")
    try:
        return np.asarray(value)
    except Exception as exc:
        raise InputError(f"cannot read an image from a {type(value).__name__} cell") from exc
