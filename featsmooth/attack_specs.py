"""Attack specifications of the evaluation harness: :class:`AttackSpec`, its string form
(``"pgd:l2:0.5:steps=20"``, :func:`parse_attack`) and the source paper's protocol."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featsmooth.attacks import get_attack
from featsmooth.attacks.budget import parse_eps, parse_norm
from featsmooth.config import PAPER_ATTACKS
from featsmooth.errors import InputError


@dataclass(frozen=True)
class AttackSpec:
    """One attack configuration.

    Attributes:
        name: ``pgd``, ``apgd`` (untargeted or targeted on the task objective) or the
            targeted embedding-matching attacks ``mf-ii`` (AttackVLM), ``m-attack``,
            ``foa`` (these need ``target_images=`` in :func:`featsmooth.evaluate.evaluate`).
        norm: ``l2`` or ``linf``.
        eps: budget in pixel units (linf may be ``"k/255"``).
        steps: gradient steps.
        objective: ``auto`` (zero-shot cross-entropy when there are classes, else feature
            cosine), ``ce`` or ``cosine``; ignored by the embedding-matching attacks.
        target: targeted attack: the class index or indices whose prediction counts as
            success (the first one is the one the cross-entropy pulls towards).
        step_size: per-step size (default: the attack's own).
        restarts: independent restarts (best kept).
        label: optional name appended to the attack id.
    """

    name: str = "pgd"
    norm: str = "l2"
    eps: float | str = 0.5
    steps: int = 10
    objective: str = "auto"
    target: int | tuple[int, ...] | None = None
    step_size: float | str | None = None
    restarts: int = 1
    label: str | None = None

    def __post_init__(self) -> None:
        get_attack(self.name)  # a clear InputError for an unknown name
        object.__setattr__(self, "norm", parse_norm(self.norm))
        object.__setattr__(self, "eps", parse_eps(self.eps, self.norm))
        if self.objective not in ("auto", "ce", "cosine"):
            raise InputError(f"objective must be auto, ce or cosine, got {self.objective!r}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise InputError(f"steps must be an integer >= 0, got {self.steps!r}")
        if self.target is not None:
            t = (self.target,) if isinstance(self.target, (int, np.integer)) else self.target
            object.__setattr__(self, "target", tuple(int(v) for v in t))
            if not self.target:
                raise InputError("target must name at least one class")

    @property
    def targeted(self) -> bool:
        return self.target is not None or self.matches_target_embeddings

    @property
    def matches_target_embeddings(self) -> bool:
        """Whether the attack pulls features toward target images (needs target images)."""
        return get_attack(self.name).matches_target_embeddings

    @property
    def attack_id(self) -> str:
        """Stable identifier used in record keys, e.g. ``pgd-l2-0.5-s10``."""
        eps = f"{self.eps * 255:g}/255" if self.norm == "linf" else f"{self.eps:g}"
        text = f"{self.name}-{self.norm}-{eps}-s{self.steps}"
        if self.objective != "auto":
            text += f"-{self.objective}"
        if self.target is not None:
            text += "-t" + "+".join(str(t) for t in self.target)
        if self.restarts != 1:
            text += f"-r{self.restarts}"
        return text + (f"-{self.label}" if self.label else "")


def parse_attack(
    spec: str | dict[str, Any] | AttackSpec, class_names: Sequence[str] | None = None
) -> AttackSpec:
    """An :class:`AttackSpec` from itself, a dict of its fields, or a string
    ``"name:norm:eps[:key=value...]"`` such as ``"pgd:l2:0.5:steps=20"`` or
    ``"mf-ii:linf:16/255:steps=300:step_size=1/255:target=2"``. With ``class_names`` a
    target may also name classes: ``target=shark`` means every class whose name contains
    the word (:func:`classes_named`)."""
    if isinstance(spec, AttackSpec):
        return spec
    if isinstance(spec, dict):
        return AttackSpec(**spec)
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"cannot read an attack from {spec!r}")
    parts = spec.strip().split(":")
    fields: dict[str, Any] = {"name": parts[0]}
    positional = ("norm", "eps")
    for i, part in enumerate(parts[1:]):
        if "=" in part:
            k, v = part.split("=", 1)
            fields[k.strip()] = v.strip()
        elif i < len(positional):
            fields[positional[i]] = part
        else:
            raise InputError(f"cannot read attack field {part!r} in {spec!r}")
    for k in ("steps", "restarts"):
        if k in fields:
            fields[k] = int(fields[k])
    if "target" in fields and isinstance(fields["target"], str):
        found: list[int] = []
        for v in (v.strip() for v in re.split(r"[+,]", fields["target"]) if v.strip()):
            if v.lstrip("-").isdigit():
                found.append(int(v))
            elif class_names is None:
                raise InputError(f"target {v!r} is not a class index (no class names given)")
            else:
                found.extend(classes_named(class_names, v))
        fields["target"] = tuple(dict.fromkeys(found))  # first occurrence order, no repeats
    if isinstance(fields.get("eps"), str) and "/" not in fields["eps"]:
        fields["eps"] = float(fields["eps"])
    unknown = set(fields) - set(AttackSpec.__dataclass_fields__)
    if unknown:
        raise InputError(f"unknown attack field(s) {sorted(unknown)} in {spec!r}")
    return AttackSpec(**fields)


def classes_named(class_names: Sequence[str], word: str) -> tuple[int, ...]:
    """Indices of the classes whose name contains ``word`` as a whole word (case-insensitive),
    e.g. ``classes_named(imagenet_classes(), "shark") == (2, 3, 4)``."""
    pattern = re.compile(rf"\b{re.escape(word.strip().lower())}\b")
    found = tuple(i for i, n in enumerate(class_names) if pattern.search(n.lower()))
    if not found:
        raise InputError(f"no class name contains {word!r}")
    return found


def paper_protocol(
    target: int | Sequence[int],
    *,
    attacks: Sequence[str] = PAPER_ATTACKS,
    eps: str | float = "16/255",
    steps: int = 300,
    step_size: str | float = "1/255",
) -> list[AttackSpec]:
    """The source paper's targeted protocol: embedding matching toward a target image
    (MF-ii / M-Attack / FOA-Attack), linf 16/255, 300 steps of 1/255; success = the
    zero-shot prediction is one of ``target`` (e.g. ``classes_named(names, "shark")``).
    Pass the target image to :func:`featsmooth.evaluate.evaluate` as ``target_images=``."""
    tgt = (int(target),) if isinstance(target, (int, np.integer)) else tuple(target)
    return [
        AttackSpec(name, "linf", eps, steps, target=tgt, step_size=step_size) for name in attacks
    ]


DEFAULT_ATTACKS = (
    AttackSpec("pgd", "l2", 0.5, 10),
    AttackSpec("pgd", "linf", "4/255", 10),
)
