"""The one certification run loop, with a local and a Ray back end.

Every path that certifies many images into a run folder goes through :func:`run`:
``featsmooth certify`` (with and without ``--ray``) and
:func:`featsmooth.distributed.certify_dataset` / ``certify_dataset_ray``. The loop

1. opens the run folder (:class:`~featsmooth.records.RunWriter`: settings checked,
   records of an interrupted run kept) and refuses inputs whose content changed;
2. groups the images into fixed *chunks* of ``images_per_call`` consecutive images and
   hands the chunks with a missing key to a back end;
3. writes one record per image as its chunk comes back (samples first, then the record
   line, fsync'ed), built by one function, :func:`certificate_record`.

A back end turns chunks into certificates: :class:`LocalBackend` (this process) or
:class:`RayBackend` (actors on a Ray cluster, a lost worker's chunks rerun on the
others). Both run the same :class:`ChunkCertifier` on each chunk with the per-image seeds
``noise_seed(seed, key, "certify")`` (:mod:`featsmooth.seeds`), so an image's noise, and
hence every field of its record but ``seconds``, depends only on the run seed, its key
and the chunking (sequential stopping tests its rules in rounds shared by a chunk), never
on the back end, the number of workers, the order chunks finish in, or interruptions.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from featsmooth.certificates import Certificate, PredictionCertificate
from featsmooth.errors import InputError, ModelUnavailableError
from featsmooth.loading import ModelSpec, load_module, torch_dtype
from featsmooth.progress import Bar
from featsmooth.records import to_jsonable
from featsmooth.seeds import noise_seed
from featsmooth.smoothing import SmoothedEncoder

__all__ = [
    "RAY_PIP",
    "Backend",
    "CertifyJob",
    "ChunkCertifier",
    "Items",
    "LocalBackend",
    "NoWriter",
    "RayBackend",
    "WorkerSpec",
    "as_items",
    "certificate_record",
    "chunks_of",
    "import_ray",
    "ray_stream",
    "run",
]

RAY_PIP = "pip install 'ray>=2.9'"
OnRecord = Callable[[dict[str, Any], bool], None]


# --------------------------------------------------------------------------------------
# What is certified and how


@dataclass(frozen=True)
class WorkerSpec:
    """How a worker builds its :class:`~featsmooth.SmoothedEncoder` (once, reused for every
    chunk). ``model``: a registry name, an encoder module, or a loader called as
    ``loader(device=..., dtype=...)``."""

    model: ModelSpec
    sigma: float
    device: str | None = None
    dtype: torch.dtype | str | None = None
    batch_size: int = 256
    center: Any = None
    plugin: Any = None


@dataclass(frozen=True)
class CertifyJob:
    """What each image's certificate depends on besides its seed: the keyword arguments of
    :meth:`~featsmooth.SmoothedEncoder.certify`, or, with ``class_embeddings``, of
    :meth:`~featsmooth.SmoothedEncoder.certify_prediction` (zero-shot prediction
    certificates, whose ``.features`` is the feature certificate of the same samples)."""

    n0: int
    n: int
    alpha: float
    method: str
    tolerance: float | None = None
    target: tuple[float, float] | None = None
    keep_samples: bool = False
    batch_size: int | None = None
    class_embeddings: torch.Tensor | None = field(default=None, repr=False)

    @property
    def sequential(self) -> bool:
        return self.tolerance is not None or self.target is not None


class ChunkCertifier:
    """Loads the encoder once and certifies chunks of images with explicit per-image seeds.

    The unit of work of both back ends (in-process, or as a Ray actor), so every path runs
    exactly the same code on each chunk. ``threads`` sets torch's thread count (a Ray
    actor's share of the CPUs); ``tune_allocator`` applies :mod:`featsmooth.allocator`'s
    start-up tuning in this process (Ray actors are processes of their own).
    """

    def __init__(
        self,
        model: ModelSpec,
        sigma: float,
        *,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
        batch_size: int = 256,
        center: Any = None,
        plugin: Any = None,
        threads: int | None = None,
        tune_allocator: bool = False,
    ) -> None:
        if tune_allocator:
            from featsmooth.allocator import tune_at_startup

            tune_at_startup()
        if threads is not None:
            torch.set_num_threads(int(threads))
        dev = torch.device(device) if device is not None else None  # None: the model's
        dt = torch_dtype(dtype)
        self.smoothed = SmoothedEncoder(
            load_module(model, dev, dt),
            sigma,
            device=dev,
            input_dtype=dt,
            center=center,
            batch_size=batch_size,
            plugin=plugin,
        )

    def certify(
        self,
        images: torch.Tensor,
        seeds: Sequence[int],
        job: CertifyJob | Mapping[str, Any],
        progress: bool | Bar = False,
    ) -> tuple[list[Certificate] | list[PredictionCertificate], float]:
        """Certify one chunk; returns its certificates and the wall-clock seconds taken.
        ``job`` may also be a mapping of :class:`CertifyJob`'s fields."""
        start = time.perf_counter()
        if not isinstance(job, CertifyJob):
            job = CertifyJob(**job)
        common = {
            "n0": job.n0, "n": job.n, "alpha": job.alpha, "method": job.method,
            "batch_size": job.batch_size, "seed": list(seeds), "progress": progress,
            "keep_samples": job.keep_samples,
        }  # fmt: skip
        if job.class_embeddings is not None:
            certs: Any = self.smoothed.certify_prediction(images, job.class_embeddings, **common)
        else:
            certs = self.smoothed.certify(
                images, tolerance=job.tolerance, target=job.target, **common
            )
        return certs, time.perf_counter() - start

    def info(self) -> dict[str, Any]:
        """Where this worker runs (for the run's settings)."""
        return {"device": str(self.smoothed.device), "torch_threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------
# Inputs


def _no_content(index: int) -> dict[str, str]:
    return {}


@dataclass
class Items:
    """Random access to the images of a run: ``get(indices) -> (k, C, H, W)``, one unique
    record key and a display name per image; ``content(i)``, the record fields that
    identify image ``i``'s content (its file's ``sha256``: a resumed run refuses a changed
    file); ``labels``/``acceptable``, the class of each image and the classes counted as
    correct (prediction records only; ``None``: unlabelled)."""

    count: int
    get: Callable[[Sequence[int]], torch.Tensor]
    keys: list[Any]
    names: list[str]
    content: Callable[[int], dict[str, str]] = _no_content
    labels: list[int | None] | None = None
    acceptable: list[list[int]] | None = None


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


def as_items(images: Any, keys: Sequence[Any] | None = None) -> Items:
    """A tensor ``(N, C, H, W)``, a :class:`~featsmooth.data.photos.PhotoSet` or a dataset
    (``len`` and indexing; items are ``(C, H, W)`` tensors, ``(image, ...)`` tuples or
    ``{"image": ...}`` dicts) as :class:`Items`. Default keys: photo names, else indices."""
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
    return Items(count, get, list(keys), names or [str(k) for k in keys])


# --------------------------------------------------------------------------------------
# Records


def certificate_record(
    cert: Certificate | PredictionCertificate,
    *,
    key: Any,
    index: int,
    image: str,
    model: str,
    radii: Sequence[float],
    seconds: float | None = None,
    content: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    label: int | None = None,
    acceptable: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The JSONL record of one certified image (schema in :mod:`featsmooth.records`): its
    key, index, name and model, the fields identifying its ``content``; the feature
    certificate (:meth:`Certificate.to_record`) and, for a prediction certificate, its
    prediction fields (:meth:`PredictionCertificate.to_record`: class names from
    ``class_names``, the image's ``label`` and its ``acceptable`` classes, default the
    label alone)."""
    record: dict[str, Any] = {"key": key, "index": int(index), "image": image, "model": model}
    record.update(content or {})
    features = cert.features if isinstance(cert, PredictionCertificate) else cert
    assert features is not None
    record.update(features.to_record(radii))
    if isinstance(cert, PredictionCertificate):
        if acceptable is None:
            acceptable = [] if label is None else [label]
        record.update(cert.to_record(class_names or [], label, acceptable))
    if seconds is not None:
        record["seconds"] = float(seconds)
    return to_jsonable(record)


class NoWriter:
    """Stand-in for :class:`~featsmooth.records.RunWriter` when no run folder is given:
    records are only kept in memory and returned."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._by_key: dict[Any, dict[str, Any]] = {}

    def __enter__(self) -> NoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    @staticmethod
    def _key(key: Any) -> Any:
        key = to_jsonable(key)
        return tuple(key) if isinstance(key, list) else key

    def __contains__(self, key: Any) -> bool:
        return self._key(key) in self._by_key

    def stored(self, key: Any) -> dict[str, Any] | None:
        return self._by_key.get(self._key(key))

    def check_content(self, fields: Mapping[Any, Mapping[str, Any]]) -> None:
        pass

    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        stored = to_jsonable(dict(record))
        self._by_key[self._key(stored["key"])] = stored
        self.records.append(stored)
        return stored

    def write_samples(self, key: Any, values: Any, name: str = "projections") -> None:
        pass


# --------------------------------------------------------------------------------------
# Back ends

Chunk = list[int]
#: what a back end is given per chunk: its images and their seeds
Work = Callable[[Chunk], tuple[torch.Tensor, list[int]]]
Results = Iterator[tuple[Chunk, list[Any], float]]


class Backend(Protocol):
    def execute(
        self, spec: WorkerSpec, chunks: list[Chunk], work: Work, job: CertifyJob, bar: Bar
    ) -> Results:
        """Certify ``chunks`` with encoders built from ``spec`` (``work(chunk)`` gives their
        images and seeds); yield ``(chunk, certificates, seconds)`` as each is done, every
        chunk exactly once. ``bar``: the run's progress bar, for detail lines under it."""
        ...

    def settings(self, spec: WorkerSpec) -> dict[str, Any]:
        """Where the work runs, for the run's settings (volatile: not result-defining)."""
        ...


@dataclass
class LocalBackend:
    """Certify the chunks one after another in this process (the encoder is loaded on the
    first chunk); each chunk's samples show as a detail line under the run's bar."""

    def settings(self, spec: WorkerSpec) -> dict[str, Any]:
        return {"num_workers": 1, "device": str(spec.device or "cpu")}

    def execute(
        self, spec: WorkerSpec, chunks: list[Chunk], work: Work, job: CertifyJob, bar: Bar
    ) -> Results:
        if not chunks:
            return
        worker = ChunkCertifier(
            spec.model, spec.sigma, device=spec.device, dtype=spec.dtype,
            batch_size=spec.batch_size, center=spec.center, plugin=spec.plugin,
        )  # fmt: skip
        for chunk in chunks:
            images, seeds = work(chunk)
            certs, seconds = worker.certify(images, seeds, job, progress=bar)
            yield chunk, certs, seconds


def import_ray() -> Any:
    """``import ray`` (no usage-statistics upload unless the user asked for it).

    Raises:
        ModelUnavailableError: Ray is not installed (the message says how to install it).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as exc:
        raise ModelUnavailableError(f"distributed certification needs Ray: {RAY_PIP}") from exc
    return ray


@dataclass
class RayBackend:
    """Certify the chunks on Ray actors, one :class:`ChunkCertifier` (one encoder) each.

    Each actor builds its encoder from the run's :class:`WorkerSpec` (a module is shipped
    once through the object store; a name or loader is loaded inside each worker).

    Args:
        address: an existing cluster (``"auto"``, ``"ray://host:10001"``); ``None`` starts
            a local one with ``num_workers * threads_per_worker`` CPUs and stops it after.
            A Ray already initialised in this process is used as it is.
        num_workers: actors; default one per GPU, else one per ``threads_per_worker`` CPUs.
        threads_per_worker: CPUs (and torch threads) per CPU actor.
        use_gpu: ``None``: GPUs when the cluster has any; one GPU per actor.
        ray_init: extra keyword arguments for ``ray.init``.
    """

    address: str | None = None
    num_workers: int | None = None
    threads_per_worker: int = 1
    use_gpu: bool | None = None
    ray_init: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        self.ray = import_ray()
        if not isinstance(self.threads_per_worker, int) or self.threads_per_worker < 1:
            raise InputError(
                f"threads_per_worker must be an integer >= 1, got {self.threads_per_worker!r}"
            )
        n = self.num_workers
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise InputError(f"workers must be an integer >= 1, got {n!r}")

    def settings(self, spec: WorkerSpec) -> dict[str, Any]:
        return {"num_workers": self.num_workers}

    def execute(
        self, spec: WorkerSpec, chunks: list[Chunk], work: Work, job: CertifyJob, bar: Bar
    ) -> Results:
        if not chunks:
            return
        ray, threads = self.ray, self.threads_per_worker
        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is None:
                kwargs["num_cpus"] = (self.num_workers or os.cpu_count() or 1) * threads
            else:
                kwargs["address"] = self.address
            kwargs.update(self.ray_init or {})
            ray.init(**kwargs)
            started = True
        actors: list[Any] = []
        try:
            actors = self._actors(spec, len(chunks))
            job_ref = ray.put(job)  # class embeddings shipped once, not once per chunk

            def call(actor: Any, chunk: Chunk) -> Any:
                images, seeds = work(chunk)
                return actor.certify.remote(images, seeds, job_ref)

            for chunk, (certs, seconds) in ray_stream(ray, actors, chunks, call):
                yield chunk, certs, seconds
        finally:
            for actor in actors:
                ray.kill(actor)
            if started:
                ray.shutdown()

    def _actors(self, spec: WorkerSpec, chunks: int) -> list[Any]:
        ray, threads = self.ray, self.threads_per_worker
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        use_gpu = self.use_gpu
        if use_gpu is None and spec.device is not None:
            use_gpu = str(spec.device).startswith("cuda")
        gpu = gpus > 0 if use_gpu is None else bool(use_gpu)
        if gpu and gpus == 0:
            raise InputError("GPU workers requested but the Ray cluster has no GPU")
        workers = self.num_workers or (gpus if gpu else max(1, cpus // threads))
        if gpu and workers > gpus:
            raise InputError(f"{workers} GPU workers requested but the cluster has {gpus} GPUs")
        if not gpu and workers * threads > cpus:
            raise InputError(
                f"{workers} workers x {threads} thread(s) exceed the Ray cluster's {cpus} CPUs; "
                "lower --workers"
            )
        model = spec.model
        if isinstance(model, nn.Module):
            model = ray.put(model)  # shipped once, not once per actor
        actor_cls = ray.remote(num_cpus=0 if gpu else threads, num_gpus=1 if gpu else 0)(
            ChunkCertifier
        )
        device = "cuda" if gpu else "cpu"
        options = {
            "device": device, "dtype": spec.dtype, "batch_size": spec.batch_size,
            "center": spec.center, "plugin": spec.plugin, "threads": None if gpu else threads,
            "tune_allocator": True,
        }  # fmt: skip
        return [actor_cls.remote(model, spec.sigma, **options) for _ in range(min(workers, chunks))]


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


# --------------------------------------------------------------------------------------
# The loop


def chunks_of(count: int, size: int) -> list[Chunk]:
    """Indices ``0..count-1`` in consecutive chunks of ``size`` (the last one shorter)."""
    return [list(range(s, min(s + size, count))) for s in range(0, count, size)]


def run(
    items: Items,
    writer: Any,
    backend: Backend,
    spec: WorkerSpec,
    job: CertifyJob,
    *,
    seed: int,
    model_name: str,
    radii: Sequence[float],
    images_per_call: int = 1,
    class_names: Sequence[str] | None = None,
    progress: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_record: OnRecord | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """Certify every image of ``items`` whose key ``writer`` does not hold yet.

    ``writer`` is an open :class:`~featsmooth.records.RunWriter` (or :class:`NoWriter`);
    ``backend`` runs the chunks on encoders built from ``spec``.
    A chunk with any missing key is certified again whole (its grouping never changes); an
    image already recorded keeps its stored record. ``on_start(done, todo)`` is called once
    the work is known, ``on_record(record, is_new)`` for every image in item order for those
    found done, then as records are written. ``progress`` shows one bar over the images.

    Returns:
        ``(records, new, skipped)``: the records of all images in item order, how many were
        certified now and how many were found done.
    """
    if not isinstance(images_per_call, int) or images_per_call < 1:
        raise InputError(f"images_per_call must be an integer >= 1, got {images_per_call!r}")
    keys = items.keys
    writer.check_content(
        {keys[i]: items.content(i) for i in range(items.count) if keys[i] in writer}
    )
    done = [i for i in range(items.count) if keys[i] in writer]
    todo = [
        c for c in chunks_of(items.count, images_per_call) if any(keys[i] not in writer for i in c)
    ]
    if on_start is not None:
        on_start(len(done), items.count - len(done))
    if on_record is not None:
        for i in done:
            on_record(writer.stored(keys[i]), False)

    def work(chunk: Chunk) -> tuple[torch.Tensor, list[int]]:
        return items.get(chunk), [noise_seed(seed, keys[i], "certify") for i in chunk]

    new = 0
    with Bar(progress, sum(len(c) for c in todo), "images", unit="images") as bar:
        for chunk, certs, seconds in backend.execute(spec, todo, work, job, bar):
            for i, cert in zip(chunk, certs):
                if keys[i] in writer:  # done before an interruption; recomputed only as a
                    continue  # member of its chunk, so its stored record stands
                features = cert.features if isinstance(cert, PredictionCertificate) else cert
                if features is not None and features.samples is not None:
                    writer.write_samples(keys[i], features.samples[0])
                    writer.write_samples(keys[i], features.samples[1], "clean")
                record = certificate_record(
                    cert, key=keys[i], index=i, image=items.names[i], model=model_name,
                    radii=radii, seconds=seconds / len(chunk), content=items.content(i),
                    class_names=class_names,
                    label=items.labels[i] if items.labels else None,
                    acceptable=items.acceptable[i] if items.acceptable else None,
                )  # fmt: skip
                stored = writer.write(record)
                new += 1
                if on_record is not None:
                    on_record(stored, True)
            bar.advance(len(chunk), info=str(items.names[chunk[-1]]))
    records = [writer.stored(k) for k in keys]
    return [r for r in records if r is not None], new, len(done)
