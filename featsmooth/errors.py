"""Exceptions that carry a one-line, actionable message for the user.

Every error that a user can cause (bad arguments, missing files, unknown model names,
an encoder that returns unusable features) derives from :class:`FeatsmoothError`, so the
command line can print it as one line with a meaningful exit code instead of a traceback.
"""

from __future__ import annotations


class FeatsmoothError(Exception):
    """Base class of user-facing errors. ``exit_code`` is what the command line returns."""

    exit_code: int = 2


class InputError(FeatsmoothError, ValueError):
    """An argument or input tensor is invalid (wrong range, shape, type or value)."""

    exit_code = 2


class FeatureError(FeatsmoothError, RuntimeError):
    """The encoder returned features that cannot be certified (non-finite or zero)."""

    exit_code = 3


class ModelUnavailableError(FeatsmoothError, RuntimeError):
    """A model cannot be loaded here (unknown name, hub unreachable, package missing)."""

    exit_code = 4


class RecordError(FeatsmoothError, RuntimeError):
    """A run's record file is corrupt or was written with different settings."""

    exit_code = 5
