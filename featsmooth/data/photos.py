"""Real photos that ship inside installed packages, so demos and tests run offline.

Every photo here is read from a file that the package installs; nothing is downloaded
(scikit-image functions that fetch with pooch, e.g. ``eagle``, are deliberately absent).
Each photo carries a free-text caption (for retrieval) and, where an ImageNet-1k class
fits, a label: ``label`` is the primary class index and ``acceptable`` the set of indices
counted as correct (ImageNet has several near-duplicate classes, e.g. the three house
cats, or no exact class, e.g. a motorcycle is "moped" or "motor scooter").

Sources and licences (from the packages' own documentation):

========== ====================================================== ========================
name       source                                                 licence
========== ====================================================== ========================
astronaut  scikit-image ``data.astronaut`` (NASA, Eileen Collins)  public domain
chelsea    scikit-image ``data.chelsea`` (Stefan van der Walt)     CC0
coffee     scikit-image ``data.coffee`` (Rachel Michetti)          CC0
rocket     scikit-image ``data.rocket`` (SpaceX, DSCOVR launch)    public domain
motorcycle scikit-image ``data.stereo_motorcycle`` left image      Middlebury 2014 stereo
           (Scharstein et al., GCPR 2014)                          benchmark, research use
camera     scikit-image ``data.camera`` (Lav Varshney), grey       CC0
china      scikit-learn ``load_sample_images`` china.jpg           CC BY 2.0 (danielbuechele)
flower     scikit-learn ``load_sample_images`` flower.jpg          CC BY 2.0 (vultilion)
grace      matplotlib ``sample_data/grace_hopper.jpg`` (US Navy)   public domain
========== ====================================================== ========================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from featsmooth.errors import InputError, ModelUnavailableError


def image_to_tensor(image: Image.Image | np.ndarray, size: int | None = 224) -> torch.Tensor:
    """Convert a photo to a ``(3, size, size)`` float32 tensor in [0, 1].

    The largest centred square is cropped, then resized with PIL's bicubic filter (which
    low-pass filters when it shrinks). Grey images are repeated over three channels; an
    alpha channel is dropped. ``size=None`` keeps the cropped square at its own size.
    Integer arrays are read as 8-bit (0..255), boolean arrays as 0/255, float arrays as
    values in [0, 1].
    """
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        arr = np.asarray(image)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        elif np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
        elif arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise InputError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {arr.shape}")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        pil = Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    w, h = pil.size
    side = min(w, h)
    if side == 0:
        raise InputError("cannot use an empty image")
    left, top = (w - side) // 2, (h - side) // 2
    pil = pil.crop((left, top, left + side, top + side))
    if size is not None:
        if size < 1:
            raise InputError(f"size must be a positive number of pixels, got {size}")
        pil = pil.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.array(pil, dtype=np.float32) / 255.0  # a writable copy
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


# ---- where each photo comes from ------------------------------------------------------


def _from_package(name: str, package: str, module: str, read: Callable[[Any], np.ndarray]):
    """A loader of photo ``name``: ``read(importlib.import_module(module))``; a missing
    ``package`` is a :class:`ModelUnavailableError` naming the pip line."""

    def load() -> np.ndarray:
        import importlib

        try:
            found = importlib.import_module(module)
        except ImportError as exc:
            raise ModelUnavailableError(
                f"photo {name!r} needs {package}: pip install {package}"
            ) from exc
        return read(found)

    return load


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def read(data: Any) -> np.ndarray:
        image = getattr(data, name)()
        return image[0] if name == "stereo_motorcycle" else image  # the left view

    return _from_package(name, "scikit-image", "skimage.data", read)


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    return _from_package(
        filename, "scikit-learn", "sklearn.datasets", lambda m: m.load_sample_image(filename)
    )


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib

        with Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", filename)) as im:
            return np.asarray(im.convert("RGB"))

    return load


@dataclass(frozen=True)
class PhotoInfo:
    """Catalogue entry of one shipped photo.

    Attributes:
        name: short name used by :func:`load_photos`.
        source: package and function/file it is read from.
        licence: licence as stated by that package.
        caption: a free caption (for image-text retrieval).
        label: primary ImageNet-1k class index, ``None`` when no class fits.
        acceptable: class indices counted as a correct prediction (contains ``label``).
    """

    name: str
    source: str
    licence: str
    caption: str
    label: int | None
    acceptable: frozenset[int]
    loader: Callable[[], np.ndarray] = field(repr=False, compare=False)


def _photo(
    name: str,
    source: str,
    licence: str,
    caption: str,
    label: int | None,
    acceptable: Sequence[int],
    loader: Callable[[], np.ndarray],
) -> PhotoInfo:
    acc = frozenset(acceptable) | ({label} if label is not None else set())
    return PhotoInfo(name, source, licence, caption, label, acc, loader)


PHOTOS: dict[str, PhotoInfo] = {
    p.name: p
    for p in (
        _photo(
            "astronaut",
            "skimage.data.astronaut",
            "public domain (NASA)",
            "a portrait of an astronaut in a spacesuit in front of a flag",
            None,
            (),
            _skimage("astronaut"),
        ),
        _photo(
            "chelsea",
            "skimage.data.chelsea",
            "CC0 (Stefan van der Walt)",
            "a photo of a tabby cat",
            285,  # Egyptian cat; the model splits between the three house cats
            (281, 282, 285),  # tabby cat, tiger cat, Egyptian cat
            _skimage("chelsea"),
        ),
        _photo(
            "coffee",
            "skimage.data.coffee",
            "CC0 (Rachel Michetti)",
            "a cup of coffee on a saucer",
            967,  # espresso
            (),
            _skimage("coffee"),
        ),
        _photo(
            "rocket",
            "skimage.data.rocket",
            "public domain (SpaceX)",
            "a rocket on a launch pad at night",
            657,  # missile; ImageNet has no "rocket"
            (744, 812),  # projectile, space shuttle
            _skimage("rocket"),
        ),
        _photo(
            "motorcycle",
            "skimage.data.stereo_motorcycle (left view)",
            "Middlebury 2014 stereo benchmark (research use)",
            "a red motorcycle parked in a garage",
            665,  # moped; ImageNet has no "motorcycle"
            (670,),  # motor scooter
            _skimage("stereo_motorcycle"),
        ),
        _photo(
            "camera",
            "skimage.data.camera (greyscale)",
            "CC0 (Lav Varshney)",
            "a black and white photo of a man with a camera on a tripod",
            872,  # tripod
            (759,),  # reflex camera
            _skimage("camera"),
        ),
        _photo(
            "china",
            "sklearn.datasets.load_sample_image('china.jpg')",
            "CC BY 2.0 (danielbuechele)",
            "a Chinese temple tower on a hill above a lake",
            698,  # palace (the Summer Palace, Beijing)
            (663, 832),  # monastery, stupa
            _sklearn("china.jpg"),
        ),
        _photo(
            "flower",
            "sklearn.datasets.load_sample_image('flower.jpg')",
            "CC BY 2.0 (vultilion)",
            "an orange dahlia flower",
            None,  # a dahlia; ImageNet-1k has no dahlia class
            (),
            _sklearn("flower.jpg"),
        ),
        _photo(
            "grace_hopper",
            "matplotlib sample_data/grace_hopper.jpg",
            "public domain (US Navy)",
            "a portrait of an elderly woman in a navy uniform",
            652,  # military uniform
            (),
            _matplotlib("grace_hopper.jpg"),
        ),
    )
}


@dataclass
class PhotoSet:
    """A batch of photos with their metadata.

    Attributes:
        images: ``(N, 3, size, size)`` float32 in [0, 1].
        names, captions: one per image.
        labels: primary ImageNet index or ``None``; ``label_names`` the matching names.
        acceptable: the indices counted as correct for each image (empty: unlabelled).
    """

    images: torch.Tensor
    names: list[str]
    captions: list[str]
    labels: list[int | None]
    label_names: list[str | None]
    acceptable: list[frozenset[int]]

    def __len__(self) -> int:
        return len(self.names)

    def labelled(self) -> PhotoSet:
        """The photos that have an ImageNet label."""
        keep = [i for i, label in enumerate(self.labels) if label is not None]
        return self.subset(keep)

    def subset(self, indices: Sequence[int]) -> PhotoSet:
        idx = list(indices)
        return PhotoSet(
            images=self.images[idx],
            names=[self.names[i] for i in idx],
            captions=[self.captions[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            label_names=[self.label_names[i] for i in idx],
            acceptable=[self.acceptable[i] for i in idx],
        )

    def correct(self, predictions: Sequence[int] | torch.Tensor) -> list[bool | None]:
        """Per photo: whether the predicted class index is acceptable (``None``: no label)."""
        preds = [int(p) for p in predictions]
        if len(preds) != len(self):
            raise InputError(f"got {len(preds)} predictions for {len(self)} photos")
        return [
            (p in acc) if label is not None else None
            for p, acc, label in zip(preds, self.acceptable, self.labels)
        ]


def load_photos(names: Sequence[str] | None = None, size: int = 224) -> PhotoSet:
    """Load shipped photos (all of :data:`PHOTOS` when ``names`` is None), in that order.

    Each is centre-cropped to a square and resized to ``size`` (see :func:`image_to_tensor`).
    Raises InputError for an unknown name and ModelUnavailableError (with the pip line) when
    the package that ships a photo is not installed.
    """
    from featsmooth.data import imagenet_classes

    if isinstance(names, str):
        names = [names]
    names = list(PHOTOS) if names is None else list(names)
    if not names:
        raise InputError("no photo names given")
    if not isinstance(size, int) or size < 1:
        raise InputError(f"size must be a positive number of pixels, got {size!r}")
    unknown = [n for n in names if n not in PHOTOS]
    if unknown:
        raise InputError(f"unknown photo(s) {unknown}; available: {', '.join(PHOTOS)}")
    classes = imagenet_classes()
    infos = [PHOTOS[n] for n in names]
    images = torch.stack([image_to_tensor(info.loader(), size) for info in infos])
    return PhotoSet(
        images=images,
        names=names,
        captions=[info.caption for info in infos],
        labels=[info.label for info in infos],
        label_names=[classes[info.label] if info.label is not None else None for info in infos],
        acceptable=[info.acceptable for info in infos],
    )
