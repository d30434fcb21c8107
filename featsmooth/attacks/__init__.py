"""White-box attacks on (smoothed) image encoders, torchattacks style.

Every attack maximises an objective (see :mod:`featsmooth.attacks.objectives` for the sign
convention) inside an l2 or linf ball in pixel units intersected with ``[0, 1]``::

    from featsmooth.attacks import PGD, APGD, FeatureCosine
    result = PGD(encoder, FeatureCosine(), norm="l2", eps=0.5, steps=20)(images)
    result.adv_images, result.objective, result.clean_objective

The torchattacks idiom works too (the objective then defaults to the cross-entropy of the
model's logits when labels are given, to the feature cosine otherwise)::

    adv = PGD(classifier, eps=8/255, alpha=2/255, steps=10, return_images=True)(images, labels)

Paper-protocol targeted attacks on the vision encoder (linf 16/255, 300 steps, step 1/255):
:class:`EmbeddingMatch` (AttackVLM MF-ii), :class:`MAttack` (local crops),
:class:`FOAAttack` (global + optimal-transport local alignment). Randomized (smoothed)
models: :class:`EoT`, :class:`EoTObjective`, ``eot_iter=``, and :func:`judge_randomized`.
"""

from featsmooth.attacks.apgd import APGD, apgd_checkpoints
from featsmooth.attacks.base import Attack, AttackResult
from featsmooth.attacks.budget import ThreatModel, flat_norm, parse_eps, parse_norm
from featsmooth.attacks.embedding_match import EmbeddingMatch
from featsmooth.attacks.eot import EoT, EoTObjective, judge_randomized
from featsmooth.attacks.foa_attack import FOAAttack, kmeans, sinkhorn
from featsmooth.attacks.m_attack import MAttack, crop_boxes, crop_resize, random_resized_crop
from featsmooth.attacks.objectives import (
    CrossEntropy,
    FeatureCosine,
    Objective,
    TextLikelihood,
    ZeroShotCrossEntropy,
)
from featsmooth.attacks.pgd import PGD
from featsmooth.attacks.registry import ATTACKS, attack_names, get_attack, register

__all__ = [
    "APGD",
    "ATTACKS",
    "PGD",
    "Attack",
    "AttackResult",
    "CrossEntropy",
    "EmbeddingMatch",
    "EoT",
    "EoTObjective",
    "FOAAttack",
    "FeatureCosine",
    "MAttack",
    "Objective",
    "TextLikelihood",
    "ThreatModel",
    "ZeroShotCrossEntropy",
    "apgd_checkpoints",
    "attack_names",
    "crop_boxes",
    "crop_resize",
    "flat_norm",
    "get_attack",
    "judge_randomized",
    "kmeans",
    "parse_eps",
    "parse_norm",
    "random_resized_crop",
    "register",
    "sinkhorn",
]
