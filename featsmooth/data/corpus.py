"""A corpus of real photographs for training and evaluating the plug-in, built offline.

Sources (all installed from package registries, nothing fetched from the web):

* Debian packages, unpacked without root or installing (``apt-get download NAME`` then
  ``dpkg-deb -x NAME_*.deb DIR``): ``mate-backgrounds`` (``nature/`` and the Elephants
  photo), ``lomiri-wallpapers-16.04`` (its photographs) and ``darknet`` (the sample photos
  of ``usr/share/darknet/data``). Each photo's licence is read from the package's own
  ``usr/share/doc/NAME/copyright`` (machine-readable DEP-5: the last ``Files:`` stanza that
  matches the file wins, as that format specifies).
* PyPI packages already used by :mod:`featsmooth.data.photos`: scikit-image, scikit-learn
  and matplotlib sample photos.

Art is dropped by a documented rule with two parts:

1. an explicit list, :data:`ART`, of files that are paintings, renders or abstract art
   (``darknet/scream.jpg`` is Munch's painting; two lomiri wallpapers are abstract);
2. a measurable test, :func:`flatness`: the fraction of pixels of the photo (grey, longer
   side 256 px) whose gradient magnitude is below 2/255. Flat vector-style art is mostly
   smooth gradients (fraction near 1); photographs carry sensor noise and texture almost
   everywhere. A photo is kept only if ``flatness < FLAT_LIMIT`` (0.8). Measured: the
   kept photographs score 0.01-0.76 (smooth skies and bokeh push some above 0.5); the
   abstract wallpapers of the same packages (mate ``abstract/``, ``desktop/``, lomiri's
   ``umang``) score 0.83-1.0, except patterned art such as ``analogpattern``, which is why
   the explicit list exists.

Split: every photo is assigned to ``train`` or ``held_out`` by the sha256 of its id (photos
sorted by that hash; every ``HELD_OUT_EVERY``-th one is held out), so the split is
deterministic and does not depend on which other photos are present. The seven labelled
demo photos of :mod:`featsmooth.data.photos` (and the second view of the stereo
motorcycle) are never in ``train``: they are the labelled evaluation set.

Crops: :meth:`Corpus.crops` draws seeded random square crops at the encoder's resolution
(side 0.3-1 of the photo's shorter side, bilinear + antialias, random flip), from the
train or the held-out photos only.

The unpacked files live in a user cache folder: ``$FEATSMOOTH_CACHE_DIR/corpus`` if set, else
``$XDG_CACHE_HOME/featsmooth/corpus`` or ``~/.cache/featsmooth/corpus``; pass ``cache_dir``
to choose another. Nothing is written inside the installed package.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featsmooth.errors import InputError, ModelUnavailableError

#: Debian packages and the photo files inside them (paths relative to the unpacked root).
DEBIAN_SOURCES: dict[str, tuple[str, ...]] = {
    "mate-backgrounds": (
        "usr/share/backgrounds/mate/nature/*.jpg",
        "usr/share/backgrounds/mate/abstract/Elephants.jpg",  # a photo; the others are art
    ),
    "lomiri-wallpapers-16.04": ("usr/share/backgrounds/*.jpg",),
    "darknet": ("usr/share/darknet/data/*.jpg",),
}

#: Files dropped as art whatever the flatness test says (package/relative path).
ART: dict[str, str] = {
    "darknet/usr/share/darknet/data/scream.jpg": "painting (Munch, The Scream)",
    "lomiri-wallpapers-16.04/usr/share/backgrounds/analogpattern_by_Peter_Nerlich.jpg": (
        "abstract pattern"
    ),
    "lomiri-wallpapers-16.04/usr/share/backgrounds/umang_by_Abhishek_Mudgal.jpg": (
        "abstract colour gradient"
    ),
}

#: A photo is kept only if fewer than this fraction of its pixels are flat.
FLAT_LIMIT = 0.8
#: Gradient magnitude (8-bit grey levels) under which a pixel counts as flat.
FLAT_GRADIENT = 2.0
#: One photo in this many (ordered by hash) is held out.
HELD_OUT_EVERY = 4
#: Photos loaded for crops are shrunk so their longer side is at most this (decoding speed).
MAX_SIDE = 1024

#: Labelled demo photos (featsmooth.data.photos) that must never be trained on.
LABELLED_DEMO = ("chelsea", "coffee", "rocket", "motorcycle", "camera", "china", "grace_hopper")

_PYPI_PHOTOS: dict[str, tuple[str, str]] = {
    # id: (source, licence); only photos that are not labelled demo photos
    "pypi/skimage/astronaut": ("skimage.data.astronaut", "public domain (NASA)"),
    "pypi/sklearn/flower.jpg": (
        "sklearn.datasets.load_sample_image('flower.jpg')",
        "CC BY 2.0 (vultilion)",
    ),
}


@dataclass(frozen=True)
class CorpusPhoto:
    """One photograph of the corpus.

    Attributes:
        id: stable identifier ``package/relative/path`` (or ``pypi/...``).
        package: Debian or PyPI package that ships it.
        file: path of the file on disk ('' for PyPI photos read through their package API).
        licence: licence as stated by the package (DEP-5 ``License:`` field for Debian).
        split: ``train`` or ``held_out``.
        width, height: native size in pixels.
        flatness: fraction of flat pixels (see :func:`flatness`).
    """

    id: str
    package: str
    file: str
    licence: str
    split: str
    width: int
    height: int
    flatness: float


# ----------------------------------------------------------------------------- helpers


def default_cache_dir() -> Path:
    """The ``corpus`` folder of the user cache (:func:`featsmooth.cache.cache_dir`)."""
    from featsmooth.cache import cache_dir

    return cache_dir("corpus")


def split_of(photo_id: str) -> str:
    """``train`` or ``held_out`` for a photo id (sha256 based; labelled demo photos: held out)."""
    name = photo_id.rsplit("/", 1)[-1].split(".")[0]
    if photo_id.startswith("pypi/") and name in LABELLED_DEMO:
        return "held_out"
    h = int(hashlib.sha256(photo_id.encode()).hexdigest()[:8], 16)
    return "held_out" if h % HELD_OUT_EVERY == 0 else "train"


def flatness(image: Image.Image | np.ndarray, side: int = 256) -> float:
    """Fraction of pixels with grey-level gradient magnitude below :data:`FLAT_GRADIENT`.

    The image is converted to grey and shrunk so its longer side is ``side`` pixels
    (antialiased), then central differences give the gradient. Photographs score low
    (noise and texture everywhere), flat vector art scores close to 1.
    """
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    pil = pil.convert("L")
    pil.thumbnail((side, side), Image.Resampling.BILINEAR)
    g = np.asarray(pil, dtype=np.float32)
    if min(g.shape) < 3:
        return 1.0
    gy = (g[2:, 1:-1] - g[:-2, 1:-1]) / 2
    gx = (g[1:-1, 2:] - g[1:-1, :-2]) / 2
    return float(np.mean(np.hypot(gx, gy) < FLAT_GRADIENT))


def parse_copyright(text: str) -> list[tuple[list[str], str]]:
    """``[(file patterns, licence), ...]`` from a DEP-5 ``copyright`` file, in file order."""
    stanzas: list[tuple[list[str], str]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        files: list[str] = []
        licence = ""
        field = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t"):
                if field == "Files":
                    files.extend(line.split())
                continue
            key, _, value = line.partition(":")
            field = key.strip()
            if field == "Files":
                files = value.split()
            elif field == "License" and not licence:
                licence = value.strip()
        if files and licence:
            stanzas.append((files, licence))
    return stanzas


def licence_for(stanzas: list[tuple[list[str], str]], relpath: str) -> str | None:
    """The licence of ``relpath`` (the last matching stanza wins; None when none matches).

    Patterns are matched against the end of the installed path (packages list paths of
    their source tree, e.g. ``nature/Aqua.jpg`` for ``usr/share/backgrounds/mate/nature/...``)
    or, for patterns with a directory the installed path lacks, against the file name.
    """
    found = None
    base = relpath.rsplit("/", 1)[-1]
    for patterns, lic in stanzas:
        for pat in patterns:
            pat = pat.removeprefix("./")
            if (
                pat == "*"
                or fnmatch.fnmatch(relpath, "*/" + pat)
                or ("*" not in pat and base == pat.rsplit("/", 1)[-1])
            ):
                found = lic
    return found


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise ModelUnavailableError(
            f"`{cmd[0]}` is not available: the photo corpus unpacks Debian packages with "
            "`apt-get download` and `dpkg-deb -x` (Debian/Ubuntu only); on other systems "
            "unpack them elsewhere and pass that folder as cache_dir"
        ) from err
    except subprocess.CalledProcessError as err:
        msg = (err.stderr or err.stdout or "").strip().splitlines()[-3:]
        raise ModelUnavailableError(f"`{' '.join(cmd)}` failed: {' | '.join(msg)}") from err


def extract_deb(deb: str | Path, dest: str | Path) -> Path:
    """Unpack a .deb into ``dest`` with ``dpkg-deb -x`` (no root needed); returns ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.which("dpkg-deb") is None:
        raise ModelUnavailableError(
            "`dpkg-deb` is not available: unpacking the photo corpus needs a Debian/Ubuntu "
            "system (or unpack the packages elsewhere and pass that folder as cache_dir)"
        )
    _run(["dpkg-deb", "-x", str(Path(deb).resolve()), str(dest)], dest)
    return dest


def download_and_extract(package: str, dest: str | Path, *, update: bool = False) -> Path:
    """``apt-get download package`` into a temporary folder and unpack it into ``dest``."""
    if shutil.which("apt-get") is None:
        raise ModelUnavailableError(
            f"`apt-get` is not available, so Debian package {package!r} cannot be downloaded; "
            "the corpus needs a Debian/Ubuntu system with package lists (`apt-get update`), "
            "or a cache folder where the packages are already unpacked"
        )
    with tempfile.TemporaryDirectory(prefix="featsmooth-deb-") as tmp:
        if update:
            _run(["apt-get", "update", "-qq"], Path(tmp))
        _run(["apt-get", "download", package], Path(tmp))
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not debs:
            raise ModelUnavailableError(f"apt-get download {package} produced no .deb file")
        extract_deb(debs[-1], dest)
    return Path(dest)


# ------------------------------------------------------------------------------ corpus


def _pypi_loader(photo_id: str) -> Callable[[], np.ndarray]:
    from featsmooth.data.photos import _skimage, _sklearn

    if photo_id == "pypi/skimage/astronaut":
        return _skimage("astronaut")
    if photo_id == "pypi/sklearn/flower.jpg":
        return _sklearn("flower.jpg")
    raise InputError(f"unknown PyPI photo {photo_id}")


def _load_pil(path: Path, max_side: int) -> Image.Image:
    with Image.open(path) as im:
        im.draft("RGB", (max_side, max_side))  # fast JPEG decode at reduced size
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return im.copy()


class Corpus:
    """Photos found in (or extracted into) a cache folder, with manifest and split.

    Build it with :func:`load_corpus`. Attributes: ``root`` (the cache folder), ``photos``
    (kept :class:`CorpusPhoto` entries, sorted by id), ``dropped`` (``{id: reason}``) and
    ``missing`` (packages that could not be found or extracted, with the reason).
    """

    def __init__(
        self,
        root: Path,
        photos: list[CorpusPhoto],
        dropped: dict[str, str],
        missing: dict[str, str],
    ) -> None:
        self.root, self.photos, self.dropped, self.missing = root, photos, dropped, missing
        self._cache: dict[tuple[str, int], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.photos)

    def split(self, name: str) -> list[CorpusPhoto]:
        if name not in ("train", "held_out"):
            raise InputError("split must be 'train' or 'held_out'")
        return [p for p in self.photos if p.split == name]

    def manifest(self) -> dict:
        """JSON-able manifest: every kept photo (source, file, licence, split) and every drop."""
        return {
            "photos": [asdict(p) for p in self.photos],
            "dropped": self.dropped,
            "missing": self.missing,
            "rule": {
                "art_list": ART,
                "flat_limit": FLAT_LIMIT,
                "flat_gradient": FLAT_GRADIENT,
                "held_out_every": HELD_OUT_EVERY,
                "never_train": list(LABELLED_DEMO),
            },
        }

    def image(self, photo: CorpusPhoto, max_side: int = MAX_SIDE) -> torch.Tensor:
        """``(3, H, W)`` float32 in [0, 1], longer side at most ``max_side`` (cached)."""
        key = (photo.id, max_side)
        if key not in self._cache:
            if photo.file:
                pil = _load_pil(Path(photo.file), max_side)
            else:
                pil = Image.fromarray(_pypi_loader(photo.id)()).convert("RGB")
                pil.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            arr = np.asarray(pil, dtype=np.float32) / 255.0
            self._cache[key] = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        return self._cache[key]

    def crops(
        self,
        split: str,
        count: int,
        size: int = 224,
        *,
        seed: int = 0,
        scale: tuple[float, float] = (0.3, 1.0),
        flip: bool = True,
        max_side: int = MAX_SIDE,
        return_sources: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
        """``count`` seeded random square crops ``(count, 3, size, size)`` of one split.

        Photos are drawn uniformly, then a side of ``scale`` times the photo's shorter side,
        a uniform position and (with ``flip``) a mirror with probability 1/2. The result
        depends only on the corpus content, the split and ``seed``. With
        ``return_sources`` the photo id of every crop is returned too.
        """
        photos = self.split(split)
        if not photos:
            raise InputError(f"the corpus has no {split} photos")
        from featsmooth.data.crops import random_crops

        images = [self.image(p, max_side) for p in photos]
        gen = torch.Generator().manual_seed(seed)
        which = torch.randint(len(photos), (count,), generator=gen).tolist()
        out = torch.empty((count, 3, size, size), dtype=torch.float32)
        for j, i in enumerate(which):
            sub_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
            out[j] = random_crops([images[i]], 1, size, scale=scale, flip=flip, seed=sub_seed)[0]
        if return_sources:
            return out, [photos[i].id for i in which]
        return out


def _scan_package(
    package: str, root: Path, photos: list[CorpusPhoto], dropped: dict[str, str]
) -> None:
    pkg_root = root / package
    cfile = pkg_root / "usr/share/doc" / package / "copyright"
    stanzas = parse_copyright(cfile.read_text("utf-8", "replace")) if cfile.is_file() else []
    files: list[Path] = []
    for pattern in DEBIAN_SOURCES[package]:
        files.extend(sorted(pkg_root.glob(pattern)))
    for path in files:
        rel = path.relative_to(pkg_root).as_posix()
        pid = f"{package}/{rel}"
        if pid in ART:
            dropped[pid] = f"art (listed): {ART[pid]}"
            continue
        try:
            with Image.open(path) as im:
                width, height = im.size
                im.draft("RGB", (512, 512))
                flat = flatness(im.convert("RGB"))
        except OSError as err:
            dropped[pid] = f"unreadable ({err})"
            continue
        if flat >= FLAT_LIMIT:
            dropped[pid] = f"art (flatness {flat:.2f} >= {FLAT_LIMIT})"
            continue
        lic = licence_for(stanzas, rel) or f"see usr/share/doc/{package}/copyright"
        photos.append(CorpusPhoto(pid, package, str(path), lic, split_of(pid), width, height, flat))


def load_corpus(
    cache_dir: str | Path | None = None,
    *,
    packages: Sequence[str] | None = None,
    extract: bool = True,
    apt_update: bool = False,
    pypi: bool = True,
    strict: bool = False,
) -> Corpus:
    """Find the corpus photos under ``cache_dir`` or extract them there.

    Args:
        cache_dir: folder holding one sub-folder per Debian package (the unpacked .deb);
            default :func:`default_cache_dir`.
        packages: Debian packages to use (default: all of :data:`DEBIAN_SOURCES`).
        extract: download (``apt-get download``) and unpack (``dpkg-deb -x``) packages that
            are not in the cache yet. ``apt_update`` runs ``apt-get update`` first.
        pypi: add the unlabelled scikit-image / scikit-learn photos (astronaut, flower).
        strict: raise ModelUnavailableError when a package is missing instead of recording
            it in ``Corpus.missing``.

    Returns a :class:`Corpus`; its manifest is also written to ``cache_dir/manifest.json``.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    packages = list(DEBIAN_SOURCES) if packages is None else list(packages)
    unknown = [p for p in packages if p not in DEBIAN_SOURCES]
    if unknown:
        raise InputError(f"unknown corpus package(s) {unknown}; known: {list(DEBIAN_SOURCES)}")
    photos: list[CorpusPhoto] = []
    dropped: dict[str, str] = {}
    missing: dict[str, str] = {}
    updated = not apt_update
    for package in packages:
        pkg_root = root / package
        done = pkg_root / ".extracted"
        if not done.exists():
            if not extract:
                missing[package] = "not in the cache (extract=False)"
                continue
            try:
                tmp = root / f".{package}.partial"
                shutil.rmtree(tmp, ignore_errors=True)
                download_and_extract(package, tmp, update=not updated)
                updated = True
                shutil.rmtree(pkg_root, ignore_errors=True)
                os.replace(tmp, pkg_root)
                done.write_text("ok\n")
            except ModelUnavailableError as err:
                if strict:
                    raise
                missing[package] = str(err)
                continue
        _scan_package(package, root, photos, dropped)
    if pypi:
        for pid, (source, lic) in _PYPI_PHOTOS.items():
            try:
                arr = _pypi_loader(pid)()
            except (ImportError, ModelUnavailableError, OSError) as err:
                missing[pid] = str(err)
                continue
            h, w = arr.shape[:2]
            flat = flatness(arr)
            if flat >= FLAT_LIMIT:
                dropped[pid] = f"art (flatness {flat:.2f} >= {FLAT_LIMIT})"
                continue
            photos.append(
                CorpusPhoto(pid, source.split(".")[0], "", lic, split_of(pid), w, h, flat)
            )
    photos.sort(key=lambda p: p.id)
    corpus = Corpus(root, photos, dropped, missing)
    try:
        (root / "manifest.json").write_text(json.dumps(corpus.manifest(), indent=2) + "\n")
    except OSError:  # pragma: no cover - a read-only cache still works
        pass
    return corpus
