"""One declaration per setting: default, help text, constraint and command-line flag.

A setting is declared once as a :class:`Setting` and becomes a field of a command's
settings dataclass (:mod:`featsmooth.config`) through :meth:`Setting.__call__`, which
stores the declaration in the field's metadata. Everything else is generated from it:
the ``featsmooth`` options (flag, help, ``[default: ...]``), the keys a config file
accepts, and the checks of :func:`featsmooth.config.validate` with their messages.

A setting shared by several commands is declared once and used in each dataclass; where
its meaning differs the use overrides the default or the help (``N(300, help=...)``).

Constraints follow scikit-learn's declarative parameter constraints: :class:`Interval`,
:class:`OneOf` and :class:`Folder` each check a value and say what they expect in the
error message, naming the setting. A list value is checked element by element.

Nothing here imports torch or typer: the command line builds its options from
:func:`declared` without paying for either.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from featsmooth.errors import InputError

#: the field-metadata key holding a field's :class:`Setting`
KEY = "setting"

_KEEP: Any = object()


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def dashed(name: str) -> str:
    """The user-facing spelling of a field name: ``batch_size`` -> ``batch-size``."""
    return name.replace("_", "-")


# --------------------------------------------------------------------------------------
# Constraints


class Constraint:
    """A condition on a setting's value (``None``, "not set", is never checked)."""

    def holds(self, value: Any) -> bool:
        """Whether one (scalar) value satisfies the constraint."""
        raise NotImplementedError

    def message(self, name: str, value: Any) -> str:
        """The error message for a bad ``value`` of the setting ``name`` (dashed)."""
        raise NotImplementedError

    def check(self, name: str, value: Any) -> None:
        """Raise :class:`InputError` naming ``name`` unless ``value`` (each element of a
        list) satisfies the constraint."""
        values = value if isinstance(value, (list, tuple)) else [value]
        if not all(self.holds(v) for v in values):
            raise InputError(self.message(name, value))


@dataclass(frozen=True)
class Interval(Constraint):
    """A number between ``low`` and ``high`` (either may be ``None``: unbounded);
    ``closed`` says which ends belong to the interval, as in scikit-learn."""

    low: float | None = None
    high: float | None = None
    closed: Literal["left", "right", "both", "neither"] = "neither"
    #: what the number means, appended to the error message
    note: str = ""

    def holds(self, value: Any) -> bool:
        left = self.closed in ("left", "both")
        right = self.closed in ("right", "both")
        if self.low is not None and (value < self.low or (value == self.low and not left)):
            return False
        return not (
            self.high is not None and (value > self.high or (value == self.high and not right))
        )

    def describe(self) -> str:
        """``> 0``, ``>= 0``, ``strictly between 0 and 1`` or ``in [0, 1)``."""
        left = self.closed in ("left", "both")
        right = self.closed in ("right", "both")
        if self.high is None:
            return f"{'>=' if left else '>'} {_fmt(self.low)}"
        if self.low is None:
            return f"{'<=' if right else '<'} {_fmt(self.high)}"
        if not left and not right:
            return f"strictly between {_fmt(self.low)} and {_fmt(self.high)}"
        return (
            f"in {'[' if left else '('}{_fmt(self.low)}, {_fmt(self.high)}{']' if right else ')'}"
        )

    def message(self, name: str, value: Any) -> str:
        verb = "must lie" if self.low is not None and self.high is not None else "must be"
        note = f" ({self.note})" if self.note else ""
        return f"{name} {verb} {self.describe()}, got {_fmt(value)}{note}"


@dataclass(frozen=True)
class OneOf(Constraint):
    """One of a fixed set of names, or of a registry read when checked (a callable)."""

    choices: Sequence[str] | Callable[[], Sequence[str]]

    def names(self) -> list[str]:
        """The accepted names (a registry is read now)."""
        return list(self.choices() if callable(self.choices) else self.choices)

    def holds(self, value: Any) -> bool:
        return value in self.names()

    def message(self, name: str, value: Any) -> str:
        return f"unknown {name} {value!r}; choose one of {', '.join(self.names())}"


@dataclass(frozen=True)
class Folder(Constraint):
    """A path that is a folder or does not exist yet (a run or output folder)."""

    def holds(self, value: Any) -> bool:
        return not (isinstance(value, str) and os.path.exists(value) and not os.path.isdir(value))

    def message(self, name: str, value: Any) -> str:
        return f"--{name} {value} exists and is not a folder"


POSITIVE = Interval(0, None, closed="neither")
NON_NEGATIVE = Interval(0, None, closed="left")
PROBABILITY = Interval(0, 1, closed="neither")


# --------------------------------------------------------------------------------------
# Declarations


@dataclass(frozen=True)
class Setting:
    """The declaration of one setting; call it to make the dataclass field.

    Attributes:
        default: the value when neither a config file nor a flag sets it (a list is
            copied for each settings object).
        help: one sentence for ``--help``; the default is appended, never typed here.
        check: the constraint :func:`featsmooth.config.validate` applies.
        flag: the option's spelling where the field name does not give it: a bare switch
            ``"--photos"``; a boolean otherwise gets ``--name/--no-name``.
        default_text: words shown as the default where ``default`` is ``None`` ("the
            model's"); without them no default is shown.
        cli: whether ``featsmooth`` offers it as an option (else config files only).
    """

    default: Any
    help: str
    check: Constraint | None = None
    flag: str | None = None
    default_text: str | None = None
    cli: bool = True

    def but(self, default: Any = _KEEP, **changes: Any) -> Setting:
        """This declaration with ``default`` and any other attribute (``help=...``)
        overridden, for a use where the meaning differs."""
        if default is not _KEEP:
            changes["default"] = default
        return dataclasses.replace(self, **changes) if changes else self

    def __call__(self, default: Any = _KEEP, **changes: Any) -> Any:
        """A dataclass field holding this declaration (overridden as :meth:`but`)."""
        spec = self.but(default, **changes)
        value = spec.default
        meta = {KEY: spec}
        if isinstance(value, list):
            return dataclasses.field(default_factory=lambda: list(value), metadata=meta)
        return dataclasses.field(default=value, metadata=meta)

    def flags(self, name: str, kind: type) -> str:
        """The option's spelling for the field ``name`` of type ``kind``."""
        if self.flag is not None:
            return self.flag
        flag = f"--{dashed(name)}"
        return f"{flag}/--no-{dashed(name)}" if kind is bool else flag

    def render(self, name: str, kind: type, value: Any = _KEEP) -> str | None:
        """How ``--help`` shows ``value`` (default: the declared default); ``None``: shown
        as nothing. Reads back to the value: a list as ``0.1,0.25``, a boolean as the flag
        that sets it (``no-tune``; ``off`` for a bare switch)."""
        value = self.default if value is _KEEP else value
        if value is None:
            return self.default_text
        if isinstance(value, bool):
            on, _, off = self.flags(name, kind).partition("/")
            if not off:
                return "on" if value else "off"
            return (on if value else off).lstrip("-")
        if isinstance(value, (list, tuple)):
            return ",".join(_fmt(v) for v in value)
        return _fmt(value)


def setting(default: Any, help: str, **kwargs: Any) -> Any:
    """A field declared in place: ``sigma: float = setting(0.25, help="...")``."""
    return Setting(default, help, **kwargs)()


def declared(cls: type) -> dict[str, Setting]:
    """The declaration of every field of the settings dataclass ``cls``, in field order.

    Raises:
        TypeError: a field declared without :class:`Setting` (a plain default).
    """
    out: dict[str, Setting] = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(KEY)
        if not isinstance(spec, Setting):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with a Setting")
        out[f.name] = spec
    return out


def check(cfg: Any) -> None:
    """Apply every field's declared constraint to its value (``None`` is not checked).

    Raises:
        InputError: the first value outside its constraint, naming the setting.
    """
    for name, spec in declared(type(cfg)).items():
        value = getattr(cfg, name)
        if spec.check is not None and value is not None:
            spec.check.check(dashed(name), value)


__all__ = [
    "NON_NEGATIVE",
    "POSITIVE",
    "PROBABILITY",
    "Constraint",
    "Folder",
    "Interval",
    "OneOf",
    "Setting",
    "check",
    "dashed",
    "declared",
    "setting",
]
