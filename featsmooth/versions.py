"""The software and hardware a result was produced with, recorded beside every run.

:func:`environment_info` returns a JSON-safe dictionary that :class:`featsmooth.records.
RunWriter` stores in each run's ``settings.json`` under ``"environment"``. It is
informational: resuming a run on another machine is allowed (the key is ignored when the
saved and current settings are compared), but a report can always say which versions and
which accelerator produced a number.

Versions are read from installed package metadata where possible, so this module does not
import transformers (slow) just to learn its version; torch is imported to ask for the
accelerator.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

from featsmooth.allocator import allocator_tuned

_PACKAGES = ("torch", "transformers", "numpy", "scipy", "safetensors", "matplotlib")


def package_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        return str(version) if version is not None else None


def featsmooth_version() -> str:
    """The featsmooth version: package metadata, else ``featsmooth.__version__``, else 'unknown'."""
    version = package_version("featsmooth")
    if version is not None:
        return version
    try:
        import featsmooth

        return str(getattr(featsmooth, "__version__", "unknown"))
    except Exception:  # pragma: no cover - a broken package import must not stop a run
        return "unknown"


def _cpu_count() -> dict[str, int | None]:
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):  # macOS / Windows
        usable = os.cpu_count()
    return {"cpu_count": os.cpu_count(), "cpu_usable": usable}


def _accelerator(device: Any = None) -> dict[str, Any]:
    """Accelerator facts from torch; empty values when torch is missing."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but stay informative
        return {"device": None, "cuda": None, "cuda_devices": []}
    info: dict[str, Any] = {
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_devices": [],
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ]
    dev = torch.device(device) if device is not None else None
    if dev is None:
        info["device"] = None
    elif dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        info["device"] = f"{dev} ({torch.cuda.get_device_name(index)})"
    else:
        info["device"] = str(dev)
    return info


def environment_info(device: Any = None) -> dict[str, Any]:
    """Describe the software and hardware of this process as a JSON-safe dict.

    Args:
        device: the torch device the run uses (``"cpu"``, ``"cuda:0"``, a ``torch.device``)
            or ``None``; when it is a CUDA device its product name is recorded.

    Returns:
        ``{"featsmooth", "python", "torch", "transformers", "numpy", "scipy", "safetensors",
        "matplotlib", "platform", "machine", "cpu_count", "cpu_usable", "device", "cuda",
        "cudnn", "cuda_devices", "mps", "torch_threads", "malloc_tuned"}``; a package that is not
        installed is ``None``. No host name, user name or path is recorded.
    """
    info: dict[str, Any] = {
        "featsmooth": featsmooth_version(),
        "python": platform.python_version(),
    }
    for name in _PACKAGES:
        info[name] = package_version(name)
    info["platform"] = platform.platform()
    info["machine"] = platform.machine()
    info.update(_cpu_count())
    info.update(_accelerator(device))
    info["malloc_tuned"] = allocator_tuned()
    return info
