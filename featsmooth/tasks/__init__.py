"""Downstream tasks: zero-shot classification (clean and certified) and image-text retrieval."""

from featsmooth.tasks.retrieval import (
    flatten_captions,
    image_embeddings,
    recall_at_k,
    retrieval_scores,
)
from featsmooth.tasks.zero_shot import (
    ZeroShotRecord,
    certified_accuracy,
    class_embeddings,
    clean_accuracy,
    zero_shot_certify,
    zero_shot_predict,
)

__all__ = [
    "ZeroShotRecord",
    "certified_accuracy",
    "class_embeddings",
    "clean_accuracy",
    "flatten_captions",
    "image_embeddings",
    "recall_at_k",
    "retrieval_scores",
    "zero_shot_certify",
    "zero_shot_predict",
]
