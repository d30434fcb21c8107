"""One noise seed per (run seed, key, purpose): where every random draw of a run comes from.

:func:`noise_seed` maps a run seed (any Python integer, never truncated: seeds ``s`` and
``s + 2**32`` give unrelated streams), a *key* naming what is drawn for, and a *purpose*
naming why, to a 63-bit seed (a non-negative int64, exact in JSON for Python readers), by a
keyed BLAKE2b hash of the three. It depends on nothing else (not on the order of the images,
the batch an image is in, the process, the number of workers or an interruption), so a
resumed, reordered or distributed run draws exactly the noise of an uninterrupted one.
:func:`generator` returns a ``torch.Generator`` seeded with it.

Keys are bytes-safe. A key is ``bytes``, ``str``, an ``int``, a path, or a tuple/list of
those (its *parts*; a single value is a one-part key). A ``str`` is encoded as UTF-8 with
``surrogateescape``, so a file name that is not valid UTF-8 (which Python decodes to lone
surrogates on Linux) gives the seed of its raw bytes: ``"caf\\udce9.png"`` and
``b"caf\\xe9.png"`` are the same key. An ``int`` is its decimal text (``3`` and ``"3"``
are the same key, as record keys are compared as text). Parts are length-prefixed, so
``("a/b", "c")`` and ``("a", "b/c")`` differ.

Who draws what (purpose: key):

=========== ===============================================================================
purpose     keys and callers
=========== ===============================================================================
certify     the image's record key: ``featsmooth certify`` (file path relative to the folder
            given, or photo name; local and ``--ray`` alike) and ``predict``;
            :func:`featsmooth.distributed.certify_dataset` and
            ``certify_dataset_ray`` (the dataset key: photo name, given key, else the
            index); :func:`featsmooth.evaluate.evaluate` (the image name). The ``n0`` and the
            ``n`` draws of one image come from this one stream, so the four paths give an
            image bit-identical noise, samples and bounds. ``SmoothedEncoder.certify`` /
            ``certify_prediction`` / ``predict_feature`` given one integer seed use the
            image's index in the call as its key (as ``certify_dataset`` does by default,
            and :mod:`featsmooth.tasks` for zero-shot and retrieval batches).
judge       fresh draws judging a smoothed output: evaluate, ``(image name, setting,
            "clean")`` for the clean output, ``(image name, setting, attack id)`` for the
            attacked one, ``("target", j, setting)`` for embedding targets; ``featsmooth
            attack``, ``(image key, "reference")`` for the clean output and the record key
            for the attacked one; :func:`featsmooth.attacks.judge_randomized`, ``"draws"``
            under the seed it is given.
attack      the seed handed to an attack: evaluate, ``(setting, attack id, *image names of
            the block)`` (blocks of ``batch_size`` images fixed by image order, so a
            resumed run attacks the same blocks); ``featsmooth attack``, the record key.
            Inside an attack (:func:`featsmooth.attacks.base.seeded`) that seed is split
            into ``"start"`` (random starts and crops) and ``"model"`` (the global RNG,
            e.g. EoT noise) streams with the same purpose.
check       the consistency check: its record key (evaluate: ``(image name, setting,
            attack id)``), else the image's index in the call.
train       plug-in training: ``("init",)`` module initialisation, ``("epoch", e)`` batch
            order, ``("step", t)`` step ``t``'s noise and noise levels; ``("score",)``
            the common random numbers of :func:`featsmooth.plugin.train.evaluate_plugin`.
=========== ===============================================================================
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence

import numpy as np
import torch

from featsmooth.errors import InputError

__all__ = ["PURPOSES", "SCHEME", "Key", "KeyPart", "generator", "key_bytes", "noise_seed"]

#: The purposes in use (see the module docstring); others must match ``[a-z][a-z0-9-]*``.
PURPOSES = ("certify", "judge", "attack", "check", "train")
#: Recorded in run settings as ``seeds``: a run written with another derivation is refused
#: on resume instead of being continued with different noise.
SCHEME = "noise_seed v1: blake2b(purpose, run seed, key)"

KeyPart = bytes | str | int | os.PathLike
Key = KeyPart | Sequence[KeyPart]

_PURPOSE = re.compile(r"[a-z][a-z0-9-]*\Z")
_PERSON = b"featsmooth-seed1"  # 16 bytes: separates these hashes from any other use


def _part_bytes(part: object) -> bytes:
    if isinstance(part, os.PathLike):
        part = os.fspath(part)
    if isinstance(part, (bytes, bytearray, memoryview)):
        return bytes(part)
    if isinstance(part, str):
        try:
            return part.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
            return part.encode("utf-8", "surrogatepass")
    if isinstance(part, (int, np.integer)) and not isinstance(part, (bool, np.bool_)):
        return str(int(part)).encode("ascii")
    raise InputError(f"a seed key part must be bytes, str, int or a path, got {part!r}")


def key_bytes(key: Key) -> bytes:
    """The canonical byte string of ``key`` (length-prefixed parts)."""
    parts = list(key) if isinstance(key, (tuple, list)) else [key]
    if not parts:
        raise InputError("a seed key needs at least one part")
    out = bytearray()
    for part in parts:
        data = _part_bytes(part)
        out += len(data).to_bytes(8, "little") + data
    return bytes(out)


def noise_seed(run_seed: int, key: Key, purpose: str) -> int:
    """The 63-bit seed of the draws made for ``key`` and ``purpose`` in run ``run_seed``.

    Args:
        run_seed: the run's seed, any integer (negative and over 64 bits included).
        key: what the draws are for (see the module docstring): bytes, str (non-UTF-8 file
            names included), int, path, or a tuple of those.
        purpose: why they are drawn: one of :data:`PURPOSES` (or another lowercase word).

    Returns:
        An int in ``[0, 2**63)``, the same in every process, platform and version of this
        scheme (:data:`SCHEME`).
    """
    if isinstance(run_seed, (bool, np.bool_)) or not isinstance(run_seed, (int, np.integer)):
        raise InputError(f"the run seed must be an integer, got {run_seed!r}")
    if not isinstance(purpose, str) or not _PURPOSE.match(purpose):
        raise InputError(f"a seed purpose must be a lowercase word, got {purpose!r}")
    h = hashlib.blake2b(digest_size=8, person=_PERSON)
    h.update(purpose.encode("ascii") + b"\0" + str(int(run_seed)).encode("ascii") + b"\0")
    h.update(key_bytes(key))
    return int.from_bytes(h.digest(), "little") >> 1


def generator(
    run_seed: int, key: Key, purpose: str, device: torch.device | str | None = None
) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (default CPU) seeded with :func:`noise_seed`."""
    gen = torch.Generator(device=device if device is not None else "cpu")
    return gen.manual_seed(noise_seed(run_seed, key, purpose))
