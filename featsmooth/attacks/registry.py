"""The attack registry: every attack class, keyed by its ``Attack.name``.

An attack file decorates its class with :func:`register`, and ``featsmooth.attacks``
imports the file: that is all it takes for the evaluation harness, ``featsmooth attack``,
``featsmooth evaluate --attacks`` and the tests parametrised over :data:`ATTACKS` to
offer it. ``Attack.matches_target_embeddings`` says which call convention it has:
``False``: ``attack(images, **objective_targets)`` with an objective (PGD, APGD);
``True``: ``attack(images, target_images=... | target_features=...)`` (targeted
embedding matching: MF-ii, M-Attack, FOA-Attack).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from featsmooth.errors import InputError

if TYPE_CHECKING:
    from featsmooth.attacks.base import Attack

A = TypeVar("A", bound="type[Attack]")

#: name -> attack class, in registration order.
ATTACKS: dict[str, type[Attack]] = {}


def register(cls: A) -> A:
    """Class decorator: add ``cls`` under ``cls.name`` (which must be new)."""
    name = cls.name
    if name in ATTACKS and ATTACKS[name] is not cls:
        raise ValueError(f"an attack named {name!r} is already registered")
    ATTACKS[name] = cls
    return cls


def attack_names(*, embedding: bool | None = None) -> tuple[str, ...]:
    """Registered names; ``embedding=True/False`` keeps only the embedding-matching ones
    or only the objective ones."""
    return tuple(
        name
        for name, cls in ATTACKS.items()
        if embedding is None or cls.matches_target_embeddings == embedding
    )


def get_attack(name: str, *, embedding: bool | None = None) -> type[Attack]:
    """The attack class called ``name``; a clear :class:`InputError` otherwise."""
    choices = attack_names(embedding=embedding)
    if name not in choices:
        raise InputError(f"unknown attack {name!r}; choose one of {', '.join(choices)}")
    return ATTACKS[name]
