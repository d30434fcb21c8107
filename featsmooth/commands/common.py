"""What the subcommands share: settings resolution, the checks of their inputs, the run
folder's default name and the result object of a certification run."""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from featsmooth import config as C
from featsmooth.errors import InputError

Callback = Callable[[dict[str, Any], bool], None]
T = TypeVar("T")


def resolve(
    cls: type[T],
    command: str,
    model: str | None,
    config_file: str | Path | None,
    settings: dict[str, Any],
) -> T:
    """The settings of ``command``: ``cls``'s defaults, then ``config_file``, then
    ``settings`` (keyword arguments; ``None`` values ignored) and the positional ``model``."""
    overrides = dict(settings)
    if model is not None:
        overrides["model"] = model
    return C.resolve(cls, config_file=config_file, overrides=overrides, command=command)


def require_images(cfg: Any, what: str = "images") -> None:
    """Exactly one image source given, and an image path that exists.

    Raises:
        InputError: neither ``images`` nor ``photos``.
        FileNotFoundError: ``images`` names no file or folder.
    """
    if cfg.images is None and not cfg.photos:
        raise InputError(f"no {what}: give --images DIR (a folder or file) or --photos")
    if cfg.images is not None and not Path(cfg.images).exists():
        raise FileNotFoundError(f"image folder or file not found: {cfg.images}")


def slug(text: str) -> str:
    """``text`` as a folder-name part (letters, digits, dots and dashes)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "model"


def default_run_dir(cfg: Any, command: str | None = None) -> str:
    """The default run folder: ``runs/<model>-sigma<sigma>`` for ``certify``, else
    ``runs/<command>-<model>``; the same command resumes the same folder."""
    if command is None:
        return str(Path("runs") / f"{slug(cfg.model)}-sigma{cfg.sigma:g}")
    return str(Path("runs") / f"{command}-{slug(cfg.model)}")


def sanity_checks(
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


@dataclass(frozen=True)
class Callbacks:
    """What a long command reports while it runs; each is optional, and the commands take
    them as keyword arguments of the same names.

    Attributes:
        on_config: the effective settings, before any work.
        on_tuning: the measured batch size and dtype (``tune=True``).
        on_start: ``(done, todo)`` once the run folder is open.
        on_cost: the measured :class:`~featsmooth.cost.CostEstimate` of the work left.
        on_record: ``(record, is_new)`` for each record, found done or written now.
    """

    on_config: Callable[[Any], None] | None = None
    on_tuning: Callable[[Any], None] | None = None
    on_start: Callable[[int, int], None] | None = None
    on_cost: Callable[[Any], None] | None = None
    on_record: Callback | None = None

    @classmethod
    def take(cls, settings: dict[str, Any]) -> Callbacks:
        """The callbacks among the keyword arguments ``settings`` (removed from it)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: settings.pop(name) for name in names if name in settings})

    def config(self, cfg: Any) -> None:
        if self.on_config is not None:
            self.on_config(cfg)

    def tuning(self, tuning: Any) -> None:
        if self.on_tuning is not None and tuning is not None:
            self.on_tuning(tuning)


@dataclass
class RunResult:
    """What :func:`~featsmooth.api.certify`, :func:`~featsmooth.api.demo` and
    :func:`~featsmooth.api.attack` return.

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
