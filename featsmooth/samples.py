"""Raw samples beside a run's records: one ``.npy`` array per record and name, written
atomically, so certificates can be recomputed offline (:mod:`featsmooth.recompute`)."""

from __future__ import annotations

import io
import os
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from featsmooth.errors import InputError, RecordError
from featsmooth.files import atomic_write_bytes

__all__ = ["DEFAULT_SAMPLES", "SAMPLES_DIR", "load_samples", "sample_path", "save_samples"]

SAMPLES_DIR = "samples"
DEFAULT_SAMPLES = "projections"


def sample_path(run_dir: str | os.PathLike[str], key: Any, name: str = DEFAULT_SAMPLES) -> Path:
    """Where the sample array ``name`` of record ``key`` lives in ``run_dir``."""
    text = str(key)
    if not text:
        raise InputError("a record key must not be empty")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise InputError(f"sample name {name!r} must be letters, digits, '-' or '_'")
    filename = urllib.parse.quote(text, safe="-_.", errors="surrogateescape") + ".npy"
    if filename.startswith("."):  # never a hidden file or '..'
        filename = "%2E" + filename[1:]
    folder = Path(run_dir) / SAMPLES_DIR
    return folder / filename if name == DEFAULT_SAMPLES else folder / name / filename


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch.Tensor (bf16 has no numpy dtype: go through float32)
        values = values.detach().cpu()
        if str(values.dtype) in ("torch.bfloat16", "torch.float16"):
            values = values.float()
        values = values.numpy()
    return np.asarray(values)


def save_samples(
    run_dir: str | os.PathLike[str], key: Any, values: Any, name: str = DEFAULT_SAMPLES
) -> Path:
    """Store ``values`` (array or tensor) as ``.npy`` for record ``key``, atomically."""
    array = _to_numpy(values)
    if array.dtype == object:
        raise InputError("samples must be a numeric array")
    path = sample_path(run_dir, key, name)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_samples(
    run_dir: str | os.PathLike[str], key: Any, name: str = DEFAULT_SAMPLES
) -> np.ndarray:
    """Load the sample array ``name`` stored for record ``key`` (no pickles are loaded).

    Raises:
        RecordError: when no samples were stored for ``key``.
    """
    path = sample_path(run_dir, key, name)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RecordError(
            f"no {name} samples stored for record {key!r} in {run_dir} "
            "(run with sample storage enabled to recompute certificates offline)"
        ) from None
