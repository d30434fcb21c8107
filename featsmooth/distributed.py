"""Certify a whole dataset into one run folder, in one process or sharded across Ray workers.

:func:`certify_dataset` (single process) and :func:`certify_dataset_ray` (a Ray cluster,
local by default) take the same arguments and write the same records to the same
``records.jsonl`` through :class:`featsmooth.records.RunWriter` in the calling process
(the *driver*), so ``featsmooth certify`` can call either and a run started with one can
be resumed with the other.

Identical results. Both split the dataset into fixed *chunks* of ``images_per_call``
consecutive images (chunk ``j`` holds global indices ``j*c .. j*c + c - 1``) and certify
each chunk with one :meth:`featsmooth.SmoothedEncoder.certify` call whose per-image seeds
are given explicitly: the image with key ``k`` always gets
``featsmooth.seeds.noise_seed(seed, k, "certify")``, the seed ``featsmooth certify`` gives
the image file with that key and :func:`featsmooth.evaluate.evaluate` the image with that
name (with the default keys, the indices, it is the seed a single
``certify(all_images, seed=seed)`` call gives image ``i``). The chunking is part of
the result-defining settings because sequential stopping (``tolerance`` / ``target``) tests
its rules in rounds whose size depends on the number of images in a call. Hence every
record field except the timing (``seconds``) is the same whatever the number of workers,
the order in which chunks finish, or how often the run was interrupted and resumed, as
long as the encoder itself computes the same numbers in each process (true on one machine
for the encoders shipped here; different hardware or thread counts may change float
rounding of a network's forward pass, and that rounding then reaches the certificate).
With a fixed ``n`` (no sequential stopping) the results also match one ``certify`` call on
all images, up to the same float caveat for encoders whose outputs depend on batch layout.

Records are written in the order chunks complete (each carries its global ``index``), one
line per image, fsync'ed; an interrupted run resumes by skipping the keys already written
(a chunk with any missing key is certified again, whole, so its grouping never changes).

Ray is an optional dependency (``pip install 'ray>=2.9'``, the ``ray`` extra), imported only by
:func:`certify_dataset_ray`.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featsmooth import bounds
from featsmooth.certificates import Certificate
from featsmooth.errors import InputError, ModelUnavailableError
from featsmooth.progress import Bar
from featsmooth.records import RunWriter, read_settings, to_jsonable
from featsmooth.seeds import SCHEME as SEED_SCHEME
from featsmooth.seeds import noise_seed
from featsmooth.smoothing import SmoothedEncoder

__all__ = [
    "DEFAULT_IMAGES_PER_CALL",
    "DEFAULT_RADII",
    "ChunkCertifier",
    "certificate_record",
    "certify_dataset",
    "certify_dataset_ray",
    "ray_stream",
]

#: l2 radii (pixel units of [0, 1] images) at which records report the certified cosine.
DEFAULT_RADII: tuple[float, ...] = (0.0625, 0.125, 0.25, 0.5)
#: Images certified together in one ``certify`` call (the unit of work of a worker).
DEFAULT_IMAGES_PER_CALL = 8
RAY_PIP = "pip install 'ray>=2.9'"

ModelSpec = str | nn.Module | Callable[..., nn.Module]


# --------------------------------------------------------------------------------------
# Inputs


@dataclass
class _Items:
    """Random access to the images of a dataset and their keys/names."""

    count: int
    get: Callable[[Sequence[int]], torch.Tensor]  # global indices -> (k, C, H, W)
    keys: list[Any]
    names: list[str]


def _item_image(item: Any) -> torch.Tensor:
    if isinstance(item, Mapping):
        item = item.get("image")
    elif isinstance(item, (tuple, list)) and item and not isinstance(item[0], (int, float)):
        item = item[0]  # (image, label, ...) as torch datasets return
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not isinstance(item, torch.Tensor) or item.ndim != 3:
        raise InputError(
            "dataset items must be (C, H, W) tensors, (image, ...) tuples or {'image': ...} dicts"
        )
    return item


def _as_items(images: Any, keys: Sequence[Any] | None) -> _Items:
    names: list[str] | None = None
    if hasattr(images, "images") and isinstance(images.images, torch.Tensor):  # PhotoSet
        names = [str(n) for n in getattr(images, "names", [])] or None
        images = images.images
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise InputError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        tensor = images

        def get(idx: Sequence[int]) -> torch.Tensor:
            return tensor[list(idx)]

        count = tensor.shape[0]
    elif hasattr(images, "__len__") and hasattr(images, "__getitem__"):
        dataset = images
        count = len(dataset)

        def get(idx: Sequence[int]) -> torch.Tensor:
            return torch.stack([_item_image(dataset[i]) for i in idx])

    else:
        raise InputError(
            "images must be an (N, C, H, W) tensor, a PhotoSet or a dataset with "
            f"__len__/__getitem__, got {type(images).__name__}"
        )
    if count == 0:
        raise InputError("no images to certify")
    if keys is None:
        keys = names if names is not None and len(set(names)) == count else list(range(count))
    keys = [k.item() if isinstance(k, np.generic) else k for k in keys]
    if len(keys) != count:
        raise InputError(f"got {len(keys)} keys for {count} images")
    if len({str(k) for k in keys}) != count:
        raise InputError("keys must be unique (they identify records when a run resumes)")
    if any(not isinstance(k, (str, int)) or isinstance(k, bool) for k in keys):
        raise InputError("keys must be strings or integers")
    return _Items(count, get, list(keys), names or [str(k) for k in keys])


def _chunks(count: int, size: int) -> list[list[int]]:
    return [list(range(s, min(s + size, count))) for s in range(0, count, size)]


def _dtype(value: torch.dtype | str | None) -> torch.dtype:
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        return value
    name = str(value).removeprefix("torch.")
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    found = getattr(torch, aliases.get(name, name), None)
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise InputError(f"dtype must be a floating-point dtype (float32, bfloat16), got {value!r}")
    return found


def _model_name(model: ModelSpec) -> str:
    if isinstance(model, str):
        return model
    if isinstance(model, nn.Module):
        return str(getattr(model, "name", type(model).__name__))
    return str(getattr(model, "__name__", type(model).__name__))


def _load_model(model: ModelSpec, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A registry name, a module, or a loader ``(device=, dtype=) -> module`` -> module."""
    if isinstance(model, str):
        from featsmooth.encoders.registry import load_encoder

        module = load_encoder(model, device=device, dtype=dtype)
    elif isinstance(model, nn.Module):
        module = model
    elif callable(model):
        from featsmooth.encoders.registry import _call

        module = _call(model, device=device, dtype=dtype)
    else:
        raise InputError(
            "model must be a registry name, an nn.Module or a loader returning one, "
            f"got {type(model).__name__}"
        )
    module = module.to(device)
    if dtype != torch.float32:
        module = module.to(dtype=dtype)
    return module.eval()


# --------------------------------------------------------------------------------------
# The unit of work, shared by the local loop and the Ray actors


class ChunkCertifier:
    """Loads the encoder once and certifies chunks of images with explicit per-image seeds.

    Used in-process by :func:`certify_dataset` and as a Ray actor by
    :func:`certify_dataset_ray`, so both run exactly the same code on each chunk.
    """

    def __init__(
        self,
        model: ModelSpec,
        sigma: float,
        *,
        device: str | None,
        dtype: torch.dtype | str | None,
        batch_size: int,
        center: Any = None,
        plugin: Any = None,
        threads: int | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(int(threads))
        dev = torch.device(device) if device is not None else torch.device("cpu")
        dt = _dtype(dtype)
        self.smoothed = SmoothedEncoder(
            _load_model(model, dev, dt),
            sigma,
            device=dev,
            input_dtype=dt,
            center=center,
            batch_size=batch_size,
            plugin=plugin,
        )

    def certify(
        self, images: torch.Tensor, seeds: Sequence[int], options: Mapping[str, Any]
    ) -> tuple[list[Certificate], float]:
        """Certify one chunk; returns its certificates and the wall-clock seconds taken."""
        start = time.perf_counter()
        certs = self.smoothed.certify(images, seed=list(seeds), **options)
        return certs, time.perf_counter() - start

    def info(self) -> dict[str, Any]:
        """Where this worker runs (for the run's settings)."""
        return {"device": str(self.smoothed.device), "torch_threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------
# Records


def certificate_record(
    cert: Certificate,
    *,
    key: Any,
    index: int,
    image: str,
    model: str,
    radii: Sequence[float],
    seconds: float | None = None,
) -> dict[str, Any]:
    """The JSONL record of one certified image (schema in :mod:`featsmooth.records`)."""
    radii = [float(r) for r in radii]
    record: dict[str, Any] = {"key": key, "index": int(index), "image": image, "model": model}
    record.update(cert.to_dict())
    record["radii"] = radii
    record["fcsb"] = cert.fcsb(radii, "smoothed").tolist() if radii else []
    record["fcsb_clean"] = cert.fcsb(radii, "clean").tolist() if radii else []
    record["certified_radius_cos50"] = cert.certified_radius(0.5)
    if seconds is not None:
        record["seconds"] = float(seconds)
    return to_jsonable(record)


class _NoWriter:
    """Stand-in for RunWriter when no run folder is given (records are only returned)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._done: set[Any] = set()

    def __enter__(self) -> _NoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __contains__(self, key: Any) -> bool:
        return key in self._done

    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        stored = to_jsonable(dict(record))
        self._done.add(stored["key"])
        self.records.append(stored)
        return stored

    def write_samples(self, key: Any, values: Any, name: str = "projections") -> None:
        pass


@dataclass
class _Plan:
    """Everything both back ends agree on before any image is certified."""

    items: _Items
    model_name: str
    seed: int
    options: dict[str, Any]  # keyword arguments of SmoothedEncoder.certify
    radii: list[float]
    images_per_call: int
    settings: dict[str, Any]


def _plan(
    model: ModelSpec,
    images: Any,
    *,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    method: str,
    seed: int | None,
    run_dir: str | os.PathLike[str] | None,
    radii: Sequence[float] | None,
    tolerance: float | None,
    target: tuple[float, float] | None,
    batch_size: int,
    images_per_call: int,
    dtype: torch.dtype | str | None,
    keys: Sequence[Any] | None,
    save_samples: bool,
    settings: Mapping[str, Any] | None,
    backend: dict[str, Any],
) -> _Plan:
    bounds.get_method(method)  # a clear InputError for an unknown name
    if not isinstance(images_per_call, int) or images_per_call < 1:
        raise InputError(f"images_per_call must be an integer >= 1, got {images_per_call!r}")
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise InputError(f"sigma must be a positive number (pixel units), got {sigma!r}")
    items = _as_items(images, keys)
    if seed is None:  # reuse the seed of the run being resumed, else draw and record one
        saved = None
        if run_dir is not None and (Path(run_dir) / "settings.json").exists():
            saved = read_settings(run_dir).get("seed")
        seed = int(saved) if saved is not None else int(np.random.SeedSequence().entropy % 2**63)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise InputError(f"seed must be an integer (or None to draw one), got {seed!r}")
    radii_list = [float(r) for r in (DEFAULT_RADII if radii is None else radii)]
    dt = _dtype(dtype)
    options = {
        "n0": n0,
        "n": n,
        "alpha": alpha,
        "method": method,
        "batch_size": batch_size,
        "tolerance": tolerance,
        "target": tuple(target) if target is not None else None,
        "keep_samples": save_samples,
    }
    run_settings = {
        "command": "certify",
        "model": _model_name(model),
        "sigma": float(sigma),
        "n0": n0,
        "n": n,
        "alpha": alpha,
        "method": method,
        "seed": int(seed),
        "seeds": SEED_SCHEME,
        "radii": radii_list,
        "tolerance": tolerance,
        "target": list(target) if target is not None else None,
        "images_per_call": images_per_call,
        "dtype": str(dt).removeprefix("torch."),
        "batch_size": batch_size,
        "save_samples": save_samples,
        **backend,
        **(dict(settings) if settings else {}),
    }
    return _Plan(
        items, _model_name(model), int(seed), options, radii_list, images_per_call, run_settings
    )


def _drive(
    plan: _Plan,
    run_dir: str | os.PathLike[str] | None,
    execute: Callable[[list[list[int]]], Iterator[tuple[list[int], list[Certificate], float]]],
    *,
    resume: bool,
    overwrite: bool,
    progress: bool,
) -> list[dict[str, Any]]:
    """Write the records produced by ``execute`` and return all records of the dataset."""
    items = plan.items
    writer: Any = (
        RunWriter(run_dir, plan.settings, resume=resume, overwrite=overwrite)
        if run_dir is not None
        else _NoWriter()
    )
    with writer:
        todo = [
            chunk
            for chunk in _chunks(items.count, plan.images_per_call)
            if any(items.keys[i] not in writer for i in chunk)
        ]
        bar = Bar(progress, sum(len(c) for c in todo), "certify", unit="images")
        try:
            for chunk, certs, seconds in execute(todo):
                for i, cert in zip(chunk, certs):
                    key = items.keys[i]
                    if key in writer:  # done before an interruption; recomputed only as a
                        continue  # member of its chunk, so its stored record stands
                    if cert.samples is not None:
                        writer.write_samples(key, cert.samples[0])
                        writer.write_samples(key, cert.samples[1], "clean")
                    writer.write(
                        certificate_record(
                            cert,
                            key=key,
                            index=i,
                            image=items.names[i],
                            model=plan.model_name,
                            radii=plan.radii,
                            seconds=seconds / len(chunk),
                        )
                    )
                bar.advance(len(chunk))
        finally:
            bar.close()
        wanted = {_norm_key(k) for k in items.keys}
        by_key = {_norm_key(r["key"]): r for r in writer.records if _norm_key(r["key"]) in wanted}
    return [by_key[_norm_key(k)] for k in items.keys if _norm_key(k) in by_key]


def _norm_key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _seeds(plan: _Plan, chunk: Sequence[int]) -> list[int]:
    return [noise_seed(plan.seed, plan.items.keys[i], "certify") for i in chunk]


# --------------------------------------------------------------------------------------
# Public entry points


def certify_dataset(
    model_name_or_loader: ModelSpec,
    images: Any,
    sigma: float,
    n0: int = 64,
    n: int = 10_000,
    alpha: float = 0.001,
    method: str = bounds.DEFAULT_METHOD,
    seed: int | None = 0,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    radii: Sequence[float] | None = None,
    tolerance: float | None = None,
    target: tuple[float, float] | None = None,
    batch_size: int = 256,
    images_per_call: int = DEFAULT_IMAGES_PER_CALL,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    center: Any = None,
    plugin: Any = None,
    keys: Sequence[Any] | None = None,
    save_samples: bool = False,
    resume: bool = True,
    overwrite: bool = False,
    settings: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Certify every image of a dataset in this process and record one line per image.

    Args:
        model_name_or_loader: registry name (``"default"``, ``"efficientnet-lite0"``, ...),
            an encoder module, or a loader called as ``loader(device=..., dtype=...)``.
        images: ``(N, C, H, W)`` tensor in [0, 1] pixel units, a
            :class:`~featsmooth.data.photos.PhotoSet`, or a dataset (``len`` and indexing)
            whose items are ``(C, H, W)`` tensors, ``(image, ...)`` tuples or dicts with an
            ``"image"``; only one chunk of a dataset is in memory at a time.
        sigma, n0, n, alpha, method, tolerance, target, batch_size: as in
            :meth:`featsmooth.SmoothedEncoder.certify`.
        seed: run seed; the image with key ``k`` uses ``noise_seed(seed, k, "certify")``
            (:mod:`featsmooth.seeds`). ``None`` reuses the seed of the run being resumed,
            or draws one (recorded in the settings).
        run_dir: run folder (records.jsonl + settings.json); ``None`` writes nothing.
        radii: l2 radii at which each record reports the certified cosine.
        images_per_call: images per ``certify`` call (result-defining in sequential mode).
        device, dtype: where and in which precision the encoder runs (``dtype`` also sets
            the dtype of the noisy inputs, e.g. ``torch.bfloat16``).
        center, plugin: as in :class:`featsmooth.SmoothedEncoder`.
        keys: one unique key (str or int) per image; default: photo names, else indices.
        save_samples: also store the per-sample projections (``samples/``) so that
            :func:`featsmooth.records.recompute_certificates` can redo the bounds offline.
        resume, overwrite: as in :class:`featsmooth.records.RunWriter`.
        settings: extra settings to record (e.g. the data source); result-defining unless
            their keys are in :data:`featsmooth.records.VOLATILE_KEYS`.
        progress: show a progress bar of images.

    Returns:
        The records of all images of the dataset, in dataset order (those written by an
        earlier, interrupted run included).
    """
    plan = _plan(
        model_name_or_loader,
        images,
        sigma=sigma,
        n0=n0,
        n=n,
        alpha=alpha,
        method=method,
        seed=seed,
        run_dir=run_dir,
        radii=radii,
        tolerance=tolerance,
        target=target,
        batch_size=batch_size,
        images_per_call=images_per_call,
        dtype=dtype,
        keys=keys,
        save_samples=save_samples,
        settings=settings,
        backend={"num_workers": 1, "device": device or "cpu"},
    )

    def execute(chunks: list[list[int]]) -> Iterator[tuple[list[int], list[Certificate], float]]:
        if not chunks:
            return
        worker = ChunkCertifier(
            model_name_or_loader,
            sigma,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            center=center,
            plugin=plugin,
        )
        for chunk in chunks:
            certs, seconds = worker.certify(
                plan.items.get(chunk), _seeds(plan, chunk), plan.options
            )
            yield chunk, certs, seconds

    return _drive(plan, run_dir, execute, resume=resume, overwrite=overwrite, progress=progress)


def _import_ray() -> Any:
    # no usage-statistics upload from an offline tool, unless the user asked for it
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as exc:
        raise ModelUnavailableError(f"distributed certification needs Ray: {RAY_PIP}") from exc
    return ray


def certify_dataset_ray(
    model_name_or_loader: ModelSpec,
    images: Any,
    sigma: float,
    n0: int = 64,
    n: int = 10_000,
    alpha: float = 0.001,
    method: str = bounds.DEFAULT_METHOD,
    seed: int | None = 0,
    run_dir: str | os.PathLike[str] | None = None,
    address: str | None = None,
    num_workers: int | None = None,
    *,
    threads_per_worker: int = 1,
    use_gpu: bool | None = None,
    ray_init: Mapping[str, Any] | None = None,
    radii: Sequence[float] | None = None,
    tolerance: float | None = None,
    target: tuple[float, float] | None = None,
    batch_size: int = 256,
    images_per_call: int = DEFAULT_IMAGES_PER_CALL,
    dtype: torch.dtype | str | None = None,
    center: Any = None,
    plugin: Any = None,
    keys: Sequence[Any] | None = None,
    save_samples: bool = False,
    resume: bool = True,
    overwrite: bool = False,
    settings: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """:func:`certify_dataset` with the chunks spread over Ray workers; same records.

    Each worker is an actor that loads the encoder once (from the registry name or loader,
    inside the worker; a module is shipped once through the object store) and certifies
    whole chunks; the driver streams their certificates into one run folder as they
    arrive. With GPUs in the cluster each actor takes one (``num_gpus=1``) and runs on it;
    otherwise it takes ``threads_per_worker`` CPUs and as many torch threads.

    Args:
        address: an existing Ray cluster (``"auto"`` or ``"ray://host:10001"``); ``None``
            starts a local one with ``num_workers * threads_per_worker`` CPUs (and stops it
            afterwards). If Ray is already initialised in this process it is used as is.
        num_workers: actors to start; default one per GPU, else one per
            ``threads_per_worker`` CPUs of the cluster.
        use_gpu: ``None`` uses GPUs when the cluster has any; ``False`` forces CPU.
        ray_init: extra keyword arguments for ``ray.init``.
        Everything else: as in :func:`certify_dataset`.

    Raises:
        ModelUnavailableError: Ray is not installed (``pip install 'ray>=2.9'``).
        InputError: more workers than the cluster can hold, or invalid arguments.
    """
    ray = _import_ray()
    if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
        raise InputError(f"threads_per_worker must be an integer >= 1, got {threads_per_worker!r}")
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise InputError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    plan = _plan(
        model_name_or_loader,
        images,
        sigma=sigma,
        n0=n0,
        n=n,
        alpha=alpha,
        method=method,
        seed=seed,
        run_dir=run_dir,
        radii=radii,
        tolerance=tolerance,
        target=target,
        batch_size=batch_size,
        images_per_call=images_per_call,
        dtype=dtype,
        keys=keys,
        save_samples=save_samples,
        settings=settings,
        backend={"num_workers": num_workers},
    )

    def execute(chunks: list[list[int]]) -> Iterator[tuple[list[int], list[Certificate], float]]:
        if not chunks:
            return
        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                cpus = (num_workers or os.cpu_count() or 1) * threads_per_worker
                kwargs["num_cpus"] = max(cpus, threads_per_worker)
            else:
                kwargs["address"] = address
            kwargs.update(ray_init or {})
            ray.init(**kwargs)
            started = True
        actors: list[Any] = []
        try:
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            gpu = gpus > 0 if use_gpu is None else bool(use_gpu)
            if gpu and gpus == 0:
                raise InputError("use_gpu=True but the Ray cluster has no GPU")
            cpus = int(resources.get("CPU", 0))
            workers = num_workers or (gpus if gpu else max(1, cpus // threads_per_worker))
            if gpu and workers > gpus:
                raise InputError(f"{workers} GPU workers requested but the cluster has {gpus} GPUs")
            if not gpu and workers * threads_per_worker > cpus:
                raise InputError(
                    f"{workers} workers x {threads_per_worker} threads exceed the cluster's "
                    f"{cpus} CPUs; lower num_workers"
                )
            workers = min(workers, len(chunks))
            model = model_name_or_loader
            if isinstance(model, nn.Module):
                model = ray.put(model)  # shipped once, not once per actor
            actor_cls = ray.remote(num_cpus=threads_per_worker, num_gpus=1 if gpu else 0)(
                ChunkCertifier
            )
            actors = [
                actor_cls.remote(
                    model,
                    sigma,
                    device="cuda" if gpu else "cpu",
                    dtype=dtype,
                    batch_size=batch_size,
                    center=center,
                    plugin=plugin,
                    threads=threads_per_worker,
                )
                for _ in range(workers)
            ]

            def call(actor: Any, chunk: list[int]) -> Any:
                return actor.certify.remote(
                    plan.items.get(chunk), _seeds(plan, chunk), plan.options
                )

            for chunk, (certs, seconds) in ray_stream(ray, actors, chunks, call):
                yield chunk, certs, seconds
        finally:
            for actor in actors:
                ray.kill(actor)
            if started:
                ray.shutdown()

    return _drive(plan, run_dir, execute, resume=resume, overwrite=overwrite, progress=progress)


def ray_stream(
    ray: Any,
    actors: Sequence[Any],
    items: Sequence[Any],
    call: Callable[[Any, Any], Any],
    *,
    in_flight: int = 2,
) -> Iterator[tuple[Any, Any]]:
    """Run ``call(actor, item)`` for every item on a pool of Ray actors; yield
    ``(item, result)`` in the order results arrive, each item exactly once.

    ``in_flight`` calls are queued per actor, so none idles while the driver writes. A lost
    worker is survived: when a call fails because its actor died (its process was killed,
    its node was lost), that item, and every other item in flight on the dead actor, goes
    back to the queue and runs on a surviving actor; the dead actor gets no more work. The
    work is deterministic per item (certification with an explicit seed), so a rerun gives
    the record the lost call would have given. If every actor dies, :class:`RuntimeError`
    says how many items are left (what was yielded is kept: rerun to resume). Errors raised
    by the work itself (bad input, a broken encoder) propagate unchanged.
    """
    from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError

    lost_worker = (RayActorError, WorkerCrashedError, NodeDiedError)
    queue = deque(items)
    alive = list(actors)
    pending: dict[Any, tuple[Any, Any]] = {}

    def submit(actor: Any) -> None:
        item = queue.popleft()
        pending[call(actor, item)] = (actor, item)

    for _ in range(in_flight):
        for actor in alive:
            if queue:
                submit(actor)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        actor, item = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except lost_worker:
            queue.appendleft(item)  # run it again, first
            if actor in alive:
                alive.remove(actor)
            if not alive:
                raise RuntimeError(
                    f"every Ray worker died; {len(queue) + len(pending)} item(s) were not "
                    "finished (the records written so far are kept: rerun to resume)"
                ) from None
            for other in alive:  # keep the survivors busy with the returned work
                while queue and sum(a is other for a, _ in pending.values()) < in_flight:
                    submit(other)
            continue
        if queue:
            submit(actor)
        yield item, result
