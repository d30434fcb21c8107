"""Image encoders in pixel units (see :mod:`featsmooth.encoders.base` for the contract)."""

from featsmooth.encoders.base import CallableEncoder, ImageEncoder, Preprocess, as_encoder

__all__ = ["CallableEncoder", "ImageEncoder", "Preprocess", "as_encoder"]
