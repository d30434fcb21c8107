"""The registry of report formats: one module under :mod:`featsmooth.report.formats` each.

A format is a function ``write(ctx, out) -> [written paths]`` registered with
:func:`register`; :func:`formats` imports every module of the ``formats`` package once, so
adding a format is adding one file there. The command line derives the help and the
validation of ``featsmooth report --format`` from this registry (:func:`format_help`,
:func:`parse_formats`), and so does :func:`featsmooth.api.report`.

This module and the format modules import nothing heavy at import time (no numpy, no
matplotlib): ``featsmooth --help`` reads the registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featsmooth.errors import InputError

Writer = Callable[[Any, Path], list[Path]]


@dataclass(frozen=True)
class ReportFormat:
    """One output format of ``featsmooth report``.

    Attributes:
        name: what ``--format`` accepts (``"md"``, ``"tex"``, ...).
        help: one line naming the files it writes.
        write: ``write(ctx, out_dir)`` -> written files (``ctx``: :class:`featsmooth.report.
            build.ReportContext`).
        order: formats are written in increasing order (pages that link to other files
            come last).
        default: part of the default ``--format``.
    """

    name: str
    help: str
    write: Writer
    order: int = 50
    default: bool = True


_REGISTRY: dict[str, ReportFormat] = {}
_LOADED = False


def register(name: str, help: str, *, order: int = 50, default: bool = True):
    """Decorator registering ``write(ctx, out_dir)`` as the report format ``name``."""

    def wrap(write: Writer) -> Writer:
        if name in _REGISTRY and _REGISTRY[name].write is not write:
            raise ValueError(f"report format {name!r} is registered twice")
        _REGISTRY[name] = ReportFormat(name, help, write, order, default)
        return write

    return wrap


def formats() -> dict[str, ReportFormat]:
    """Every registered format, by name, in writing order."""
    global _LOADED
    if not _LOADED:
        package = importlib.import_module("featsmooth.report.formats")
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")
        _LOADED = True
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def format_names() -> tuple[str, ...]:
    """Names of every format, in writing order."""
    return tuple(formats())


def default_formats() -> tuple[str, ...]:
    """The formats written when none are named."""
    return tuple(name for name, f in formats().items() if f.default)


def format_help() -> str:
    """One line per format for ``--help``: ``name: files``; the defaults marked."""
    return "; ".join(
        f"{f.name}: {f.help}" + ("" if f.default else " (not by default)")
        for f in formats().values()
    )


def parse_formats(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"md,csv"`` or ``["md", "csv"]`` -> ``("md", "csv")`` (``None`` = the defaults;
    ``"all"`` = every format); duplicates dropped.

    Raises:
        InputError: an unknown or no format, naming the valid ones.
    """
    if spec is None:
        return default_formats()
    parts = spec.split(",") if isinstance(spec, str) else [str(p) for p in spec]
    names = [p.strip().lower().lstrip(".") for p in parts if p.strip()]
    if names == ["all"]:
        return format_names()
    known = formats()
    unknown = [n for n in names if n not in known]
    if unknown:
        error = InputError(
            f"unknown report format(s) {', '.join(unknown)}; choose from {', '.join(known)}"
        )
        error.hint = "featsmooth report --help says what each writes; all = every format"  # type: ignore[attr-defined]
        raise error
    if not names:
        raise InputError(f"no report format given; choose from {', '.join(known)}")
    return tuple(dict.fromkeys(names))


__all__ = [
    "ReportFormat",
    "default_formats",
    "format_help",
    "format_names",
    "formats",
    "parse_formats",
    "register",
]
