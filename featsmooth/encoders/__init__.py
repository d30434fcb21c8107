"""Image encoders in pixel units (see :mod:`featsmooth.encoders.base` for the contract).

Load one by name with :func:`load_encoder` (``featsmooth models`` lists the names), or wrap
any module or callable with :func:`as_encoder`.
"""

from featsmooth.encoders.base import CallableEncoder, ImageEncoder, Preprocess, as_encoder
from featsmooth.encoders.registry import ModelInfo, list_models, load_encoder, register

__all__ = [
    "CallableEncoder",
    "ImageEncoder",
    "ModelInfo",
    "Preprocess",
    "as_encoder",
    "list_models",
    "load_encoder",
    "register",
]
