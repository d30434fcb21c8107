"""Attack objectives: small callables on model outputs, returning one value per image.

Sign convention (the whole package): **an attack maximises its objective.** Each objective
returns a ``(B,)`` float32 tensor that is larger when the attack is more successful:

- :class:`FeatureCosine` untargeted: ``-cos(f(x'), f(x))`` (push the feature off the clean one);
  targeted: ``+cos(f(x'), f_target)`` (pull it onto a target feature).
- :class:`ZeroShotCrossEntropy` untargeted: ``CE(logits, label)``;
  targeted: ``-CE(logits, target)``.
- :class:`TextLikelihood` targeted: ``log p(text | x')``; untargeted: ``-log p(text | x')``.

Per-image tensors that an objective needs (reference features, labels) are given either to
the constructor or as keyword arguments of the attack call (``attack(x, labels=y)``); call
arguments win. Values are always computed in float32, whatever the model's dtype.

For randomized models that return ``(B, k, ...)`` outputs (k noise draws per image), wrap
any objective in :class:`featsmooth.attacks.eot.EoTObjective`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from featsmooth.errors import InputError

Targets = dict[str, Any]


def _flat_unit(features: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` -> ``(B, D)`` float32, unit l2 norm per row (tokens flattened as one vector)."""
    flat = features.reshape(features.shape[0], -1).float()
    return F.normalize(flat, dim=1, eps=1e-12)


class Objective:
    """Base class. Subclasses implement :meth:`__call__` and may override :meth:`resolve`.

    Attributes:
        targeted: whether the objective pulls towards a target (for reports only).
        needs_clean_outputs: names of target keys that default to the clean outputs
            ``model_fn(x)`` when not given (the attack fills them in, once, without grad).
    """

    targeted: bool = False
    needs_clean_outputs: tuple[str, ...] = ()

    def __call__(self, outputs: torch.Tensor, **targets: Any) -> torch.Tensor:
        """Values to maximise, ``(B,)`` float32, for model outputs ``(B, ...)``."""
        raise NotImplementedError

    def resolve(self, targets: Targets, clean_outputs: Callable[[], torch.Tensor]) -> Targets:
        """Complete ``targets`` before the attack starts (default: fill ``needs_clean_outputs``)."""
        targets = dict(targets)
        for key in self.needs_clean_outputs:
            if targets.get(key) is None:
                targets[key] = clean_outputs().detach()
        return targets

    def __repr__(self) -> str:
        return f"{type(self).__name__}(targeted={self.targeted})"


class FeatureCosine(Objective):
    """Cosine between the attacked feature and a reference feature.

    Args:
        reference_features: ``(B, ...)`` (one per image) or ``(...)``/``(1, ...)`` (shared).
            Untargeted: the clean features; ``None`` means "compute ``model_fn(x)`` once at
            the start of the attack". Targeted: the target features (required, here or as
            the call argument ``reference_features=``).
        targeted: ``False``: value ``-cos`` (move away from the reference);
            ``True``: value ``+cos`` (move onto it).

    Features of any shape are flattened per image, so token sequences ``(B, T, D)`` are
    compared as one vector, exactly as :class:`featsmooth.SmoothedEncoder` normalises them.
    """

    def __init__(
        self, reference_features: torch.Tensor | None = None, targeted: bool = False
    ) -> None:
        self.reference_features = reference_features
        self.targeted = bool(targeted)
        self.needs_clean_outputs = () if targeted else ("reference_features",)

    def resolve(self, targets: Targets, clean_outputs: Callable[[], torch.Tensor]) -> Targets:
        targets = dict(targets)
        if targets.get("reference_features") is None and self.reference_features is not None:
            targets["reference_features"] = self.reference_features
        if targets.get("reference_features") is None and self.targeted:
            raise InputError(
                "targeted FeatureCosine needs target features: pass reference_features="
            )
        return super().resolve(targets, clean_outputs)

    def cosine(self, outputs: torch.Tensor, reference_features: torch.Tensor) -> torch.Tensor:
        """``(B,)`` cosine between ``outputs`` ``(B, ...)`` and the reference."""
        f = _flat_unit(outputs)
        ref = reference_features.to(f.device)
        if ref.ndim == outputs.ndim - 1 or ref.shape[0] != f.shape[0]:
            ref = ref.reshape(1, -1).float()
        ref = _flat_unit(ref)
        if ref.shape[1] != f.shape[1]:
            raise InputError(
                f"reference features have {ref.shape[1]} values per image, outputs {f.shape[1]}"
            )
        return (f * ref).sum(dim=1)

    def __call__(
        self, outputs: torch.Tensor, reference_features: torch.Tensor | None = None, **_: Any
    ) -> torch.Tensor:
        ref = reference_features if reference_features is not None else self.reference_features
        if ref is None:
            raise InputError("FeatureCosine has no reference features")
        cos = self.cosine(outputs, ref)
        return cos if self.targeted else -cos


class CrossEntropy(Objective):
    """Cross-entropy of a classifier's logits: the loss torchattacks maximises by default.

    Args:
        labels: ``(B,)`` int64 true classes (untargeted) or target classes (targeted); may be
            given at call time (``attack(images, labels)``).
        targeted: ``False``: value ``CE(logits, labels)``; ``True``: ``-CE(logits, labels)``.

    Model outputs are logits ``(B, K)``. For a feature encoder, use
    :class:`ZeroShotCrossEntropy` with class embeddings instead.
    """

    def __init__(self, labels: torch.Tensor | None = None, targeted: bool = False) -> None:
        self.labels = labels
        self.targeted = bool(targeted)

    def resolve(self, targets: Targets, clean_outputs: Callable[[], torch.Tensor]) -> Targets:
        targets = dict(targets)
        if targets.get("labels") is None:
            targets["labels"] = self.labels
        if targets["labels"] is None:
            raise InputError(f"{type(self).__name__} needs labels= (true or target classes)")
        targets["labels"] = torch.as_tensor(targets["labels"]).long()
        return targets

    def __call__(
        self, outputs: torch.Tensor, labels: torch.Tensor | None = None, **_: Any
    ) -> torch.Tensor:
        labels = labels if labels is not None else self.labels
        if labels is None:
            raise InputError(f"{type(self).__name__} needs labels=")
        logits = self.logits(outputs)
        ce = F.cross_entropy(logits, labels.to(logits.device).long(), reduction="none")
        return -ce if self.targeted else ce

    def logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` float32 logits (here: the model outputs themselves)."""
        if outputs.ndim != 2:
            raise InputError(
                f"cross-entropy needs logits (B, K), got outputs of shape {tuple(outputs.shape)}"
            )
        return outputs.float()


class ZeroShotCrossEntropy(CrossEntropy):
    """Cross-entropy of zero-shot logits ``logit_scale * cos(f(x'), t_c)``.

    Args:
        class_embeddings: ``(K, D)`` text embeddings of the K class prompts (normalised here).
        labels: ``(B,)`` int64: the true classes (untargeted) or the attacker's target
            classes (targeted); may be given at call time as ``labels=``.
        targeted: ``False``: value ``CE(logits, labels)`` (leave the true class);
            ``True``: value ``-CE(logits, labels)`` (reach the target class).
        logit_scale: CLIP's temperature (100 for OpenAI CLIP).

    Model outputs are image features ``(B, D)`` (or ``(B, ...)`` flattening to ``D``).
    """

    def __init__(
        self,
        class_embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        targeted: bool = False,
        logit_scale: float = 100.0,
    ) -> None:
        if class_embeddings.ndim != 2:
            raise InputError(
                f"class_embeddings must be (K, D), got {tuple(class_embeddings.shape)}"
            )
        super().__init__(labels, targeted)
        self.class_embeddings = F.normalize(class_embeddings.detach().float(), dim=1)
        self.logit_scale = float(logit_scale)

    def logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` float32 zero-shot logits."""
        f = _flat_unit(outputs)
        t = self.class_embeddings.to(f.device)
        if t.shape[1] != f.shape[1]:
            raise InputError(f"class embeddings have dim {t.shape[1]}, features {f.shape[1]}")
        return self.logit_scale * f @ t.T


class TextLikelihood(Objective):
    """Log-likelihood of a text given the image, for multimodal LLMs.

    Use it with ``model_fn=None`` (the identity): the "outputs" it receives are the
    adversarial images themselves, which it passes to ``loglik_fn``.

    Args:
        loglik_fn: ``loglik_fn(images (B, C, H, W) in [0,1], texts: list[str]) -> (B,)``
            differentiable log-likelihood of ``texts[i]`` given ``images[i]`` (e.g. the
            LLaVA adapter's teacher-forced answer log-probability).
        texts: one string per image (or one shared string); may be given at call as
            ``texts=``.
        targeted: ``True``: value ``+loglik`` (make the model say the target text);
            ``False``: value ``-loglik`` (move the model off e.g. its clean caption).
    """

    def __init__(
        self,
        loglik_fn: Callable[[torch.Tensor, list[str]], torch.Tensor],
        texts: str | Sequence[str] | None = None,
        targeted: bool = True,
    ) -> None:
        if not callable(loglik_fn):
            raise InputError("loglik_fn must be callable: (images, texts) -> (B,) log-likelihood")
        self.loglik_fn = loglik_fn
        self.texts = texts
        self.targeted = bool(targeted)

    def resolve(self, targets: Targets, clean_outputs: Callable[[], torch.Tensor]) -> Targets:
        targets = dict(targets)
        if targets.get("texts") is None:
            targets["texts"] = self.texts
        if targets["texts"] is None:
            raise InputError("TextLikelihood needs texts= (one string per image)")
        return targets

    def __call__(
        self, outputs: torch.Tensor, texts: str | Sequence[str] | None = None, **_: Any
    ) -> torch.Tensor:
        texts = texts if texts is not None else self.texts
        if texts is None:
            raise InputError("TextLikelihood needs texts=")
        b = outputs.shape[0]
        if isinstance(texts, str):
            texts = [texts] * b
        texts = list(texts)
        if len(texts) != b:
            raise InputError(f"got {len(texts)} texts for {b} images")
        ll = self.loglik_fn(outputs, texts).float().reshape(b)
        return ll if self.targeted else -ll
