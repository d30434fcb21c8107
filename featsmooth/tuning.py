"""Fast defaults that stay sound: batch size and dtype measured per (encoder, device).

Certification time is encoder forward passes, and their speed depends on the batch size
and dtype in ways no constant default gets right: on a 2-core CPU the offline default
encoder runs fastest at batch 8 (larger batches lose to memory traffic, not arithmetic),
while a GPU wants hundreds of images per pass. :func:`tune` measures a few candidates on
noisy copies of the run's own images and returns the fastest, and caches the choice per
(encoder weights, device, threads, image shape, torch version), so the warm-up is paid once.

Soundness. The certificate holds for the function actually smoothed (docs/theory.md, §7),
so running the encoder in bfloat16 certifies the bfloat16 encoder. That is only *useful*
when it is the same encoder to the user: bfloat16 is a candidate only if its features agree
with float32 ones on the probe images (cosine >= ``min_cosine``, 0.999 by default); the
measured agreement is recorded with the choice. Batch size never changes a result: noise
is drawn per image, so certificates are identical at every batch size.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featsmooth.cache import cache_dir
from featsmooth.errors import InputError
from featsmooth.files import atomic_write_bytes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: Batch sizes tried by default: powers of two, CPU-friendly to GPU-friendly.
BATCH_SIZES = {"cpu": (4, 8, 16, 32, 64), "cuda": (32, 64, 128, 256, 512)}
MIN_COSINE = 0.999
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Tuning:
    """A measured choice of batch size and dtype.

    Attributes:
        batch_size: noisy images per forward pass.
        dtype: ``"float32"`` or ``"bfloat16"``: the dtype the encoder runs in.
        images_per_second: measured speed of the choice (forward passes of noisy images).
        measured: ``"dtype/batch" -> images per second`` for every candidate tried.
        bf16_cosine: smallest cosine between bfloat16 and float32 features on the probe
            images, or ``None`` where bfloat16 was not tried or the encoder does not run in
            it.
        device: the device measured on.
        key: cache key (encoder weights, device, threads, image shape, torch version).
        cached: whether this came from the cache instead of a fresh measurement.
    """

    batch_size: int
    dtype: str
    images_per_second: float
    measured: dict[str, float] = field(default_factory=dict)
    bf16_cosine: float | None = None
    device: str = "cpu"
    key: str = ""
    cached: bool = False

    def describe(self) -> str:
        """One line for a run header."""
        agree = "" if self.bf16_cosine is None else f", bf16 cosine {self.bf16_cosine:.4f}"
        source = "cached" if self.cached else "measured"
        return (
            f"batch {self.batch_size}, {self.dtype} on {self.device}: "
            f"{self.images_per_second:.1f} images/s ({source}{agree})"
        )


def _key(encoder: nn.Module, device: torch.device, shape: Sequence[int]) -> str:
    from featsmooth.plugin.plugged import encoder_fingerprint

    parts = [
        encoder_fingerprint(encoder),
        device.type,
        torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        str(torch.get_num_threads()),
        "x".join(str(int(s)) for s in shape),
        torch.__version__,
        str(_CACHE_VERSION),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _features(encoder: nn.Module, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode():
        return encoder(images.to(dtype)).flatten(1).double()


def bf16_agreement(encoder: nn.Module, images: torch.Tensor) -> float:
    """Smallest cosine between the features of ``encoder`` in float32 and of a bfloat16
    copy of it, over ``images`` ``(B, C, H, W)`` (noisy copies are added by the caller)."""
    reference = _features(encoder, images, torch.float32)
    low = copy.deepcopy(encoder).to(torch.bfloat16)
    other = _features(low, images, torch.bfloat16)
    return float(torch.nn.functional.cosine_similarity(reference, other, dim=1).min())


def _speed(
    encoder: nn.Module, noisy: torch.Tensor, batch: int, dtype: torch.dtype, seconds: float
) -> float:
    """Images per second of forward passes at ``batch`` over at least ``seconds`` and two
    passes (one untimed pass first)."""
    x = noisy[:batch].to(dtype)
    if x.shape[0] < batch:
        x = x.repeat(math.ceil(batch / x.shape[0]), 1, 1, 1)[:batch]
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        encoder(x)
        sync()
        start, passes = time.perf_counter(), 0
        while passes < 2 or time.perf_counter() - start < seconds:
            encoder(x)
            passes += 1
        sync()
        return batch * passes / (time.perf_counter() - start)


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(path: Path, key: str, tuning: Tuning) -> None:
    """Add one entry; best effort (a read-only cache only costs a new warm-up)."""
    data = _load_cache(path)
    data[key] = {k: v for k, v in asdict(tuning).items() if k != "cached"}
    try:
        atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())
    except OSError:
        pass


def tune(
    encoder: nn.Module,
    images: torch.Tensor,
    sigma: float,
    *,
    device: str | torch.device | None = None,
    batch_sizes: Sequence[int] | None = None,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    min_cosine: float = MIN_COSINE,
    cache: str | os.PathLike[str] | bool | None = None,
    seconds: float = 0.5,
) -> Tuning:
    """Measure and return the fastest (batch size, dtype) for ``encoder`` on ``device``.

    Args:
        encoder: the float32 encoder (left unchanged; a bfloat16 copy is made to try).
        images: ``(B, C, H, W)`` in [0, 1]: the run's own images (the first four are used).
        sigma: noise level; speeds are measured on noisy copies, as certification runs.
        device: where to measure (default: the encoder's device).
        batch_sizes: candidates (default :data:`BATCH_SIZES` for the device type).
        dtypes: candidate dtypes; ``bfloat16`` is kept only where its features agree with
            float32 ones (cosine >= ``min_cosine`` on every probe image).
        cache: JSON file of measured choices (default: ``tuning.json`` in the user cache
            folder); ``False`` measures every time without storing.
        seconds: time spent on each candidate in each of the two rounds.

    Returns:
        :class:`Tuning`, from the cache when the same encoder weights, device, thread count,
        image shape and torch version were measured before.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise InputError(f"tune needs images (B, C, H, W), got {tuple(images.shape)}")
    unknown = sorted(set(dtypes) - set(DTYPES))
    if unknown or not dtypes:
        raise InputError(f"dtypes must be among {', '.join(DTYPES)}, got {list(dtypes)}")
    if device is None:
        device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    device = torch.device(device)
    sizes = tuple(batch_sizes or BATCH_SIZES.get(device.type, BATCH_SIZES["cuda"]))
    if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes):
        raise InputError(f"batch sizes must be positive integers, got {sizes}")
    key = _key(encoder, device, images.shape[1:])
    if cache is False:
        path = None
    elif cache is None or cache is True:
        path = cache_dir("tuning.json")
    else:
        path = Path(cache)
    if path is not None:
        entry = _load_cache(path).get(key)
        if isinstance(entry, dict):
            try:
                return Tuning(**{**entry, "cached": True})
            except TypeError:
                pass  # an entry of another version: measure again

    probe = images[:4].to(device, torch.float32)
    gen = torch.Generator(device="cpu").manual_seed(0)
    reps = math.ceil(max(sizes) / probe.shape[0])
    noise = torch.randn((reps * probe.shape[0], *probe.shape[1:]), generator=gen).to(device)
    noisy = probe.repeat(reps, 1, 1, 1) + sigma * noise
    candidates: dict[str, nn.Module] = {}
    bf16_cosine = None
    if "float32" in dtypes:
        candidates["float32"] = encoder
    if "bfloat16" in dtypes:
        try:
            bf16_cosine = bf16_agreement(encoder, noisy[: probe.shape[0]])
        except (RuntimeError, TypeError, NotImplementedError):
            bf16_cosine = None  # the encoder does not run in bfloat16 at all
        if bf16_cosine is not None and bf16_cosine >= min_cosine:
            candidates["bfloat16"] = copy.deepcopy(encoder).to(torch.bfloat16)
    if not candidates:
        why = (
            "does not run in bfloat16"
            if bf16_cosine is None
            else f"disagrees in bfloat16 (cosine {bf16_cosine:.4f} < {min_cosine})"
        )
        raise InputError(f"the encoder {why}, and float32 was not offered")
    measured: dict[str, float] = {}
    for _round in range(2):  # two interleaved rounds, best of each: robust to a busy machine
        for name, module in candidates.items():
            for b in sizes:
                speed = _speed(module, noisy, b, DTYPES[name], seconds)
                label = f"{name}/{b}"
                measured[label] = max(measured.get(label, 0.0), speed)
    best = max(measured, key=measured.__getitem__)
    dtype, batch = best.split("/")
    tuning = Tuning(
        batch_size=int(batch),
        dtype=dtype,
        images_per_second=round(measured[best], 3),
        measured={k: round(v, 3) for k, v in measured.items()},
        bf16_cosine=bf16_cosine,
        device=str(device),
        key=key,
    )
    if path is not None:
        _store(path, key, tuning)
    return tuning
