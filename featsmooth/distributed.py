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

Both are thin entry points to the one run loop, :func:`featsmooth.runloop.run`, with its
local or its Ray back end; ``featsmooth certify`` uses the same loop.

Ray is an optional dependency (``pip install 'ray>=2.9'``, the ``ray`` extra), imported only by
:func:`certify_dataset_ray`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featsmooth import bounds
from featsmooth.errors import InputError
from featsmooth.loading import ModelSpec, model_name, torch_dtype
from featsmooth.records import RunWriter, read_settings
from featsmooth.runloop import (
    RAY_PIP,
    Backend,
    CertifyJob,
    ChunkCertifier,
    LocalBackend,
    NoWriter,
    RayBackend,
    WorkerSpec,
    as_items,
    certificate_record,
    ray_stream,
    run,
)
from featsmooth.seeds import SCHEME as SEED_SCHEME

__all__ = [
    "DEFAULT_IMAGES_PER_CALL",
    "DEFAULT_RADII",
    "RAY_PIP",
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


def _run_seed(seed: int | None, run_dir: str | os.PathLike[str] | None) -> int:
    """``seed``, or (``None``) the seed of the run being resumed, else a fresh one."""
    if seed is None:
        saved = None
        if run_dir is not None and (Path(run_dir) / "settings.json").exists():
            saved = read_settings(run_dir).get("seed")
        seed = int(saved) if saved is not None else int(np.random.SeedSequence().entropy % 2**63)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise InputError(f"seed must be an integer (or None to draw one), got {seed!r}")
    return int(seed)


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
    backend: Backend | None = None,
) -> list[dict[str, Any]]:
    """Certify every image of a dataset and record one line per image.

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
            the dtype of the noisy inputs, e.g. ``torch.bfloat16``); Ray workers choose
            their device themselves.
        center, plugin: as in :class:`featsmooth.SmoothedEncoder`.
        keys: one unique key (str or int) per image; default: photo names, else indices.
        save_samples: also store the per-sample projections (``samples/``) so that
            :func:`featsmooth.recompute.recompute_certificates` can redo the bounds offline.
        resume, overwrite: as in :class:`featsmooth.records.RunWriter`.
        settings: extra settings to record (e.g. the data source); result-defining unless
            their keys are in :data:`featsmooth.records.VOLATILE_KEYS`.
        progress: show a progress bar of images.
        backend: where the chunks run: :class:`~featsmooth.runloop.LocalBackend` (default,
            this process) or :class:`~featsmooth.runloop.RayBackend` (see
            :func:`certify_dataset_ray`); the records are the same.

    Returns:
        The records of all images of the dataset, in dataset order (those written by an
        earlier, interrupted run included).
    """
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise InputError(f"sigma must be a positive number (pixel units), got {sigma!r}")
    bounds.get_method(method)  # a clear InputError for an unknown name
    if not isinstance(images_per_call, int) or images_per_call < 1:
        raise InputError(f"images_per_call must be an integer >= 1, got {images_per_call!r}")
    backend = LocalBackend() if backend is None else backend
    spec = WorkerSpec(
        model_name_or_loader, sigma, device=device, dtype=dtype, batch_size=batch_size,
        center=center, plugin=plugin,
    )  # fmt: skip
    job = CertifyJob(
        n0=n0, n=n, alpha=alpha, method=method, tolerance=tolerance,
        target=tuple(target) if target is not None else None, keep_samples=save_samples,
        batch_size=batch_size,
    )  # fmt: skip
    items = as_items(images, keys)
    seed = _run_seed(seed, run_dir)
    radii_list = [float(r) for r in (DEFAULT_RADII if radii is None else radii)]
    run_settings = {
        "command": "certify",
        "model": model_name(model_name_or_loader),
        "sigma": float(sigma),
        "n0": n0,
        "n": n,
        "alpha": alpha,
        "method": method,
        "seed": seed,
        "seeds": SEED_SCHEME,
        "radii": radii_list,
        "tolerance": tolerance,
        "target": list(target) if target is not None else None,
        "images_per_call": images_per_call,
        "dtype": str(torch_dtype(dtype)).removeprefix("torch."),
        "batch_size": batch_size,
        "save_samples": save_samples,
        **backend.settings(spec),
        **(dict(settings) if settings else {}),
    }
    writer: Any = (
        RunWriter(run_dir, run_settings, resume=resume, overwrite=overwrite)
        if run_dir is not None
        else NoWriter()
    )
    with writer:
        records, _, _ = run(
            items, writer, backend, spec, job, seed=seed,
            model_name=model_name(model_name_or_loader), radii=radii_list,
            images_per_call=images_per_call, progress=progress,
        )  # fmt: skip
    return records


def certify_dataset_ray(
    model_name_or_loader: ModelSpec,
    images: Any,
    sigma: float,
    *args: Any,
    address: str | None = None,
    num_workers: int | None = None,
    threads_per_worker: int = 1,
    use_gpu: bool | None = None,
    ray_init: Mapping[str, Any] | None = None,
    **kwargs: Any,
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
        Everything else (positional too): as in :func:`certify_dataset`.

    Raises:
        ModelUnavailableError: Ray is not installed (``pip install 'ray>=2.9'``).
        InputError: more workers than the cluster can hold, or invalid arguments.
    """
    backend = RayBackend(
        address=address, num_workers=num_workers, threads_per_worker=threads_per_worker,
        use_gpu=use_gpu, ray_init=ray_init,
    )  # fmt: skip
    return certify_dataset(model_name_or_loader, images, sigma, *args, backend=backend, **kwargs)
