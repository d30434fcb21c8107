"""featsmooth: Feature-space Smoothing, certified l2 robustness for feature encoders.

Quick use::

    from featsmooth import SmoothedEncoder
    smoothed = SmoothedEncoder(encoder, sigma=0.25)
    cert = smoothed.certify(images, n0=64, n=2000, alpha=0.001)[0]
    cert.fcsb([0.1, 0.25, 0.5])        # certified cosine of f_hat at each l2 radius

See docs/theory.md for the statements and proofs behind every number.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featsmooth import bounds
    from featsmooth.certificates import ABSTAIN, Certificate, PredictionCertificate
    from featsmooth.smoothing import SmoothedEncoder

__version__ = "0.1.0"

# Imported on first use, so that ``featsmooth --help`` and a Ctrl-C while the command line
# starts do not wait for torch and scipy.
_LAZY = {
    "ABSTAIN": "featsmooth.certificates",
    "Certificate": "featsmooth.certificates",
    "PredictionCertificate": "featsmooth.certificates",
    "SmoothedEncoder": "featsmooth.smoothing",
    "bounds": "featsmooth.bounds",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'featsmooth' has no attribute {name!r}")
    value = importlib.import_module(module)
    if name != "bounds":
        value = getattr(value, name)
    globals()[name] = value
    return value


__all__ = [
    "ABSTAIN",
    "Certificate",
    "PredictionCertificate",
    "SmoothedEncoder",
    "__version__",
    "bounds",
]
