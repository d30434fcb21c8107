"""Durable files: atomic writes (a killed process leaves the old file or the new one, never
half of one), content digests, and one-line errors for a run folder that cannot be written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from featsmooth.errors import RecordError

__all__ = ["atomic_write_bytes", "content_digest", "write_error"]


def write_error(folder: str | os.PathLike[str], exc: OSError) -> RecordError:
    """A :class:`RecordError` (one line, with a hint) for a failed write in a run folder."""
    import errno

    reason = exc.strerror or str(exc)
    error = RecordError(f"cannot write to the run folder {folder}: {reason}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        error.hint = (  # type: ignore[attr-defined]
            "free some disk space and rerun the same command: the records written so far "
            "are kept and the run resumes"
        )
    else:
        error.hint = (  # type: ignore[attr-defined]
            "make the folder writable or choose another --run-dir; the records written so "
            "far are kept"
        )
    return error


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder + replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: readable like the records
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def content_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes: the ``sha256`` field of an image's record."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
