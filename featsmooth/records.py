"""Run records: JSON Lines results that survive a killed run and resume where it stopped.

A *run folder* holds

* ``settings.json`` — the effective settings of the run (command, model, sigma, n0, n,
  alpha, method, radii, seed, data, ...) plus ``"environment"`` (:func:`featsmooth.versions.
  environment_info`) and ``"created"``; written atomically (temporary file, fsync,
  ``os.replace``), so it is either the old or the new version, never half of one.
* ``records.jsonl`` — one JSON object per line, one line per input (image), appended,
  flushed and fsync'ed as soon as it is produced: a killed run loses at most the record in
  flight. :func:`read_records` drops a truncated *last* line with a :class:`RecordWarning`
  and :class:`RunWriter` cuts it off before it appends again; a bad line anywhere else is
  corruption and raises :class:`~featsmooth.errors.RecordError` naming the line number.
* ``samples/<key>.npy`` (optional) — the raw per-sample projections ``<v, f(x + eps_i)>``
  of the certification draws of one input, so certificates can be recomputed offline at
  another ``alpha`` or bound method (:func:`featsmooth.recompute.recompute_certificates`). Other named sample
  arrays go to ``samples/<name>/<key>.npy`` (``"clean"``: projections ``<f(x), f(x+eps_i)>``
  on the clean feature). ``<key>`` is the record key, percent-encoded to a safe file name.

Resuming. ``RunWriter(run_dir, settings)`` on an existing folder compares ``settings`` with
the saved ones on every key except the volatile ones (:data:`VOLATILE_KEYS`: environment,
timing, progress flags, device, batch size, output folder, ...). Any other difference
raises ``RecordError`` naming the keys, because mixing records of different settings in one
run would make its summary meaningless. :meth:`RunWriter.done_keys` lists the keys already
written; callers skip those inputs.

JSON values. Records are converted by :func:`to_jsonable`: numpy scalars and arrays and
torch tensors become numbers and (nested) lists, tuples and sets become lists, dataclasses
and objects with ``to_dict()`` become dicts, ``torch.device``/``torch.dtype`` become
strings. **NaN is stored as ``null``** (featsmooth uses NaN for "no certificate" /
"abstain", so ``null`` means the same); ``+inf`` / ``-inf`` are stored as the strings
``"inf"`` / ``"-inf"`` (strict JSON has no infinities; a certified radius is infinite when
S = 1). :func:`as_float` maps all of these back to floats. Integers beyond 2**53 (e.g.
derived seeds) are exact in Python but not in JavaScript readers.

Record schema: one JSON object per line, each field name with one meaning in every kind of
record; the table of all fields, the format version and the reader of older formats are in
:mod:`featsmooth.schema`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from featsmooth.errors import InputError, RecordError
from featsmooth.files import atomic_write_bytes, content_digest, write_error
from featsmooth.samples import (
    DEFAULT_SAMPLES,
    SAMPLES_DIR,
    load_samples,
    sample_path,
    save_samples,
)
from featsmooth.schema import RECORD_FORMAT, upgrade_record

try:  # POSIX advisory locks: released by the kernel when the process dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, documented
    fcntl = None  # type: ignore[assignment]

SETTINGS_FILE = "settings.json"
RECORDS_FILE = "records.jsonl"

#: Settings keys that do not change the results of a run and may differ on resume.
VOLATILE_KEYS: frozenset[str] = frozenset(
    {
        "environment",
        "created",
        "resumed",
        "timing",
        "seconds",
        "elapsed",
        "progress",
        "verbose",
        "quiet",
        "log_level",
        "resume",
        "overwrite",
        "out",
        "out_dir",
        "output",
        "run_dir",
        "device",
        "batch_size",
        "tune",
        "workers",
        "num_workers",
        "recomputed_from",
        "record_format",
    }
)


class RecordWarning(UserWarning):
    """Something in a run folder needed repair or care (e.g. a truncated last line)."""


# --------------------------------------------------------------------------------------
# JSON conversion


def _float_to_json(value: float) -> float | str | None:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` into plain JSON types (see the module docstring for the rules).

    Raises:
        InputError: for a value that has no JSON form (e.g. an arbitrary object).
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _float_to_json(float(obj))
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch.Tensor without importing torch
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v) for v in obj]
        with contextlib.suppress(TypeError):
            items.sort()
        return items
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if type(obj).__module__.split(".")[0] == "torch":  # torch.device, torch.dtype
        return str(obj)
    raise InputError(f"cannot store a value of type {type(obj).__name__} in a record")


def as_float(value: Any) -> float:
    """A stored number back as a float: ``null`` -> NaN, ``"inf"``/``"-inf"`` -> +-inf."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _dumps(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), allow_nan=False, ensure_ascii=False)


def _json_bytes(obj: Any, indent: int | None = None) -> bytes:
    """UTF-8 JSON of a JSON-safe ``obj``; a string that is not valid Unicode (a file name
    that is not UTF-8, decoded with lone surrogates) is written ``\\uXXXX``-escaped, which
    reads back as the same string."""
    try:
        text = json.dumps(obj, allow_nan=False, ensure_ascii=False, indent=indent)
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, allow_nan=False, ensure_ascii=True, indent=indent).encode("ascii")


# --------------------------------------------------------------------------------------
# Files


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON (via :func:`to_jsonable`) atomically."""
    atomic_write_bytes(path, _json_bytes(to_jsonable(obj), indent=2) + b"\n")


def _records_path(run_dir: str | os.PathLike[str]) -> Path:
    path = Path(run_dir)
    return path if path.is_file() else path / RECORDS_FILE


def read_settings(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The saved settings of a run folder.

    Raises:
        RecordError: when ``settings.json`` is missing or not a JSON object.
    """
    path = Path(run_dir) / SETTINGS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path} not found: {run_dir} is not a featsmooth run folder") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path} is not valid JSON ({exc}); restore it or rerun") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path} must hold a JSON object")
    version = data.get("record_format", 1)
    if not isinstance(version, int) or version > RECORD_FORMAT:
        raise RecordError(
            f"{run_dir} holds records of format {version!r}, written by a newer featsmooth; "
            f"this version reads formats 1 to {RECORD_FORMAT}: upgrade featsmooth"
        )
    return data


def _scan(data: bytes, source: str) -> tuple[list[dict[str, Any]], int, int | None]:
    """Parse JSON Lines ``data``.

    Returns ``(records, good_end, bad_last_line)``: ``good_end`` is the byte offset just
    after the last valid record (including its newline if present), ``bad_last_line`` the
    1-based number of an unparseable final line (a record cut by a kill) or ``None``.
    Raises RecordError for an unparseable line that is not the last non-blank one.
    """
    lines = data.split(b"\n")
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    records: list[dict[str, Any]] = []
    offset = good_end = 0
    for i, raw in enumerate(lines):
        end = offset + len(raw) + (1 if i < len(lines) - 1 else 0)
        if raw.strip():
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise ValueError("a record must be a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                if i == last:
                    return records, good_end, i + 1
                reason = str(exc).splitlines()[0][:80]
                raise RecordError(
                    f"{source}: line {i + 1} is corrupt ({reason}); only a killed run's last "
                    "line can be repaired: fix or remove that line, or start a new run folder"
                ) from None
            records.append(upgrade_record(obj))
        good_end = end
        offset = end
    return records, good_end, None


def read_records(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a run folder (or of a ``records.jsonl`` path), in file order.

    A truncated or unparseable *last* line (a run killed while writing) is dropped with a
    :class:`RecordWarning`. A missing records file means an empty run.

    Raises:
        RecordError: a line other than the last cannot be parsed (message names the line).
    """
    path = _records_path(run_dir)
    if (path.parent / SETTINGS_FILE).is_file():
        read_settings(path.parent)  # refuses a format newer than this version reads
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not Path(run_dir).is_dir():
            raise RecordError(f"run folder {run_dir} does not exist") from None
        return []
    records, _, bad = _scan(data, str(path))
    if bad is not None:
        warnings.warn(
            f"{path}: dropped incomplete line {bad} (the run was interrupted while writing it)",
            RecordWarning,
            stacklevel=2,
        )
    return records


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        if value is None:  # an unset option equals a missing one
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def settings_differences(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    volatile: Iterable[str] = VOLATILE_KEYS,
) -> list[str]:
    """Result-defining keys whose values differ (dotted paths for nested settings).

    Both sides go through :func:`to_jsonable` first, so ``(0.25, 0.5)`` equals ``[0.25, 0.5]``
    and ``np.float64(0.25)`` equals ``0.25``; a ``None`` value equals a missing key (an
    unset option). Top-level keys in ``volatile`` are ignored.
    """
    skip = set(volatile)
    a = _flatten({k: v for k, v in to_jsonable(dict(saved)).items() if k not in skip})
    b = _flatten({k: v for k, v in to_jsonable(dict(current)).items() if k not in skip})
    return sorted(k for k in a.keys() | b.keys() if not _same_setting(k, a, b))


_MISSING = object()

#: Settings naming a file or folder: the same place written two ways (``dir``, ``dir/``,
#: ``../x/dir``, a symlink to it) is the same setting. The images themselves are checked
#: by content (``sha256`` in each record, :meth:`RunWriter.check_content`).
PATH_KEYS = frozenset({"images", "plugin", "target_image", "val_images"})


def _same_setting(key: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    x, y = a.get(key, _MISSING), b.get(key, _MISSING)
    if x == y:
        return True
    if key in PATH_KEYS and isinstance(x, str) and isinstance(y, str) and x and y:
        with contextlib.suppress(OSError, ValueError):
            return os.path.realpath(x) == os.path.realpath(y)
    return False


def _short(value: Any) -> str:
    text = "missing" if value is _MISSING else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------
# Writer


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunWriter:
    """Append records to a run folder, resuming an interrupted run safely.

    Use as a context manager::

        with RunWriter(out, settings) as run:
            for key, image in inputs:
                if key in run:          # already written before an interruption
                    continue
                run.write_samples(key, projections)   # optional, before the record
                run.write({"key": key, **certificate.to_dict()})

    Args:
        run_dir: the run folder (created if missing).
        settings: the effective settings of this run (JSON-convertible mapping).
        resume: continue an existing run with the same result-defining settings. With
            ``resume=False`` an existing run that already holds records is refused
            unless ``overwrite=True``, which deletes its records and samples.
        overwrite: start afresh even if records exist (only with ``resume=False``).
        key_field: the record field that identifies an input (default ``"key"``).
        volatile: settings keys ignored when comparing with the saved settings.
        environment: add :func:`featsmooth.versions.environment_info` to the settings.

    Guarantees: each :meth:`write` is flushed and fsync'ed before it returns, so after a
    kill the folder holds every record written, plus at most one partial line that the
    next writer cuts off. Two writers on one folder are refused (POSIX ``flock``; not
    enforced on Windows).

    Raises:
        RecordError: settings differ from the saved ones (the message names the keys), the
            records are corrupt, another process writes to the folder, or a non-resumed
            run would overwrite records.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        settings: Mapping[str, Any],
        *,
        resume: bool = True,
        overwrite: bool = False,
        key_field: str = "key",
        volatile: Iterable[str] = VOLATILE_KEYS,
        environment: bool = True,
    ) -> None:
        if not isinstance(settings, Mapping):
            raise InputError("settings must be a mapping of names to values")
        self.run_dir = Path(run_dir)
        self.settings: dict[str, Any] = to_jsonable(dict(settings))
        self.resume = resume
        self.overwrite = overwrite
        self.key_field = key_field
        self.volatile = frozenset(volatile)
        self._environment = environment
        self._fh: Any = None
        self._done: dict[Any, dict[str, Any]] = {}  # key -> its stored record
        self.records: list[dict[str, Any]] = []
        self.resumed = False

    # -- lifecycle -----------------------------------------------------------------

    def open(self) -> RunWriter:
        """Validate the folder, repair a cut last line, and open the records for append."""
        if self._fh is not None:
            return self
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RecordError(f"{self.run_dir} exists and is not a folder")
        records_path = self.run_dir / RECORDS_FILE
        settings_path = self.run_dir / SETTINGS_FILE
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fh = open(records_path, "a+b", buffering=0)  # unbuffered: no half line later
        except OSError as exc:
            raise write_error(self.run_dir, exc) from None
        try:
            self._lock(fh)
            fh.seek(0)
            data = fh.read()
            records, good_end, bad = _scan(data, str(records_path))
            has_records = bool(records) or bad is not None
            if has_records and not settings_path.exists():
                raise RecordError(
                    f"{self.run_dir} holds records but no {SETTINGS_FILE}; "
                    "cannot check they match: use a new run folder"
                )
            if has_records and not self.resume:
                if not self.overwrite:
                    raise RecordError(
                        f"{self.run_dir} already holds {len(records)} records; resume it or "
                        "choose a new run folder (or overwrite to delete them)"
                    )
                fh.truncate(0)
                self._remove_samples()
                records, good_end, bad, data = [], 0, None, b""
            saved = read_settings(self.run_dir) if settings_path.exists() else None
            resuming = saved is not None and has_records and self.resume
            if resuming:
                self._check_settings(saved)
            if bad is not None:
                warnings.warn(
                    f"{records_path}: cut off incomplete line {bad} left by an interrupted "
                    "run; that input will be processed again",
                    RecordWarning,
                    stacklevel=3,
                )
            if good_end < len(data):
                fh.truncate(good_end)
                fh.flush()
                os.fsync(fh.fileno())
            if good_end > 0 and not data[:good_end].endswith(b"\n"):
                fh.write(b"\n")  # a complete last record whose newline was lost
            self.records = records
            self._done = {self._key_of(r): r for r in records if self.key_field in r}
            self.resumed = resuming
            self._write_settings(saved if resuming else None)
        except OSError as exc:
            fh.close()
            raise write_error(self.run_dir, exc) from None
        except BaseException:
            fh.close()
            raise
        self._fh = fh
        return self

    def close(self, *, quiet: bool = False) -> None:
        """Flush and close the records file (releases the lock); ``quiet`` ignores a failing
        flush (an error is already on its way up)."""
        if self._fh is not None:
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as exc:
                if not quiet:
                    raise write_error(self.run_dir, exc) from None
            finally:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> RunWriter:
        return self.open()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(quiet=exc_type is not None)

    # -- API -------------------------------------------------------------------------

    def done_keys(self) -> set[Any]:
        """Keys of the records already in the folder (including those written now).

        Returns a copy; for membership tests in a loop use ``key in writer`` (no copy)."""
        return set(self._done)

    def __contains__(self, key: Any) -> bool:
        return self._key_of({self.key_field: to_jsonable(key)}) in self._done

    def __len__(self) -> int:
        return len(self.records)

    def stored(self, key: Any) -> dict[str, Any] | None:
        """The record written under ``key`` (now or by an earlier run), or None."""
        return self._done.get(self._key_of({self.key_field: to_jsonable(key)}))

    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record (converted by :func:`to_jsonable`), flushed and fsync'ed.

        Returns the stored (JSON-safe) record.

        Raises:
            InputError: ``record`` lacks the key field or repeats an already written key.
        """
        if self._fh is None:
            raise InputError("RunWriter is not open: use it in a 'with' block or call open()")
        if not isinstance(record, Mapping) or record.get(self.key_field) is None:
            raise InputError(f"a record must be a mapping with a {self.key_field!r} field")
        stored = to_jsonable(dict(record))
        key = self._key_of(stored)
        if key in self._done:
            raise InputError(f"record {key!r} was already written to {self.run_dir}")
        line = _json_bytes(stored) + b"\n"
        start = self._fh.seek(0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[self._fh.write(view) :]
            os.fsync(self._fh.fileno())
        except OSError as exc:  # a full disk: take back the part written, keep the rest
            with contextlib.suppress(OSError):
                self._fh.truncate(start)
                self._fh.seek(start)
            raise write_error(self.run_dir, exc) from None
        self._done[key] = stored
        self.records.append(stored)
        return stored

    def check_content(self, fields: Mapping[Any, Mapping[str, Any]]) -> None:
        """Refuse to resume records made from other inputs than those given now.

        ``fields[key]`` holds the content fields of input ``key`` now (e.g. ``{"sha256":
        ...}`` of an image file); a written record of that key with a different value of
        one of them means the input was replaced under the same name, and its certificate
        is not the new input's. Fields a record lacks (written before they existed) are not
        checked.

        Raises:
            RecordError: naming the first changed input.
        """
        stored = {self._key_of(r): r for r in self.records if self.key_field in r}
        changed = []
        for key, now in fields.items():
            record = stored.get(self._key_of({self.key_field: to_jsonable(key)}))
            if record is None:
                continue
            if any(k in record and record[k] != v for k, v in now.items() if v is not None):
                changed.append(key)
        if changed:
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            error = RecordError(
                f"{_short(changed[0])}{more} changed since its record in {self.run_dir} was "
                "written (different file content under the same name)"
            )
            error.hint = (  # type: ignore[attr-defined]
                "certify the new images in a new --run-dir, or delete their lines from "
                "records.jsonl to certify them again here"
            )
            raise error

    def write_samples(self, key: Any, values: Any, name: str = DEFAULT_SAMPLES) -> Path:
        """Store raw samples for ``key`` (see :func:`save_samples`); call before :meth:`write`
        so that a record never exists without its samples."""
        try:
            return save_samples(self.run_dir, key, values, name)
        except OSError as exc:
            raise write_error(self.run_dir, exc) from None

    # -- internals ---------------------------------------------------------------------

    def _key_of(self, record: Mapping[str, Any]) -> Any:
        key = record[self.key_field]
        return tuple(key) if isinstance(key, list) else key

    def _lock(self, fh: Any) -> None:
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RecordError(
                f"another process is writing to {self.run_dir}; wait for it or use another folder"
            ) from None

    def _check_settings(self, saved: Mapping[str, Any]) -> None:
        diff = settings_differences(saved, self.settings, self.volatile)
        if diff:
            a = _flatten(to_jsonable(dict(saved)))
            b = _flatten(self.settings)
            parts = [
                f"{k} (saved {_short(a.get(k, _MISSING))}, now {_short(b.get(k, _MISSING))})"
                for k in diff
            ]
            raise RecordError(
                f"{self.run_dir} was written with different settings: {'; '.join(parts)}; "
                "use the saved settings to resume, or a new run folder"
            )

    def _write_settings(self, saved: Mapping[str, Any] | None) -> None:
        from featsmooth.versions import environment_info

        env = environment_info(self.settings.get("device")) if self._environment else None
        if saved is None:
            settings = dict(self.settings)
            settings.setdefault("record_format", RECORD_FORMAT)
            settings.setdefault("created", _utc_now())
            if env is not None:
                settings.setdefault("environment", env)
        else:
            settings = dict(saved)
            changed = {
                k: v
                for k, v in self.settings.items()
                if k in self.volatile
                and k not in ("environment", "created", "resumed")
                and saved.get(k, _MISSING) != v
            }
            entry: dict[str, Any] = {"time": _utc_now(), "records": len(self.records)}
            if changed:
                entry["changed"] = changed
            if env is not None and env != saved.get("environment"):
                entry["environment"] = env
            settings["resumed"] = [*saved.get("resumed", []), entry]
        self.settings = to_jsonable(settings)
        atomic_write_json(self.run_dir / SETTINGS_FILE, self.settings)

    def _remove_samples(self) -> None:
        folder = self.run_dir / SAMPLES_DIR
        if not folder.is_dir():
            return
        for path in sorted(folder.rglob("*.npy"), reverse=True):
            path.unlink()
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()


__all__ = [
    "DEFAULT_SAMPLES",
    "RECORDS_FILE",
    "SAMPLES_DIR",
    "SETTINGS_FILE",
    "VOLATILE_KEYS",
    "RecordError",
    "RecordWarning",
    "RunWriter",
    "as_float",
    "atomic_write_bytes",
    "atomic_write_json",
    "content_digest",
    "load_samples",
    "read_records",
    "read_settings",
    "sample_path",
    "save_samples",
    "settings_differences",
    "to_jsonable",
    "write_error",
]
