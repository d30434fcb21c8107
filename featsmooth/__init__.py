"""featsmooth: Feature-space Smoothing, certified l2 robustness for feature encoders.

Quick use::

    from featsmooth import SmoothedEncoder
    smoothed = SmoothedEncoder(encoder, sigma=0.25)
    cert = smoothed.certify(images, n0=64, n=2000, alpha=0.001)[0]
    cert.fcsb([0.1, 0.25, 0.5])        # certified cosine of f_hat at each l2 radius

See docs/theory.md for the statements and proofs behind every number.
"""

from featsmooth import bounds
from featsmooth.certificates import ABSTAIN, Certificate, PredictionCertificate
from featsmooth.smoothing import SmoothedEncoder

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "Certificate",
    "PredictionCertificate",
    "SmoothedEncoder",
    "__version__",
    "bounds",
]
