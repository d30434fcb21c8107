"""The plug-in that raises the Gaussian robustness score of a frozen encoder.

A purifier ``P`` (sigma-conditioned pixel denoiser) in front of the encoder ``f`` and a
smoothness mapper ``M`` (residual, FiLM-conditioned, identity at init) after it; Feature-
space Smoothing then certifies ``f'(x) = normalise(M(f(P(x, sigma)), sigma))``::

    plugin = train_plugin(encoder, images, sigmas=(0.25,), steps=500)
    save_plugin(plugin, "my-plugin")
    smoothed = SmoothedEncoder(encoder, 0.25, plugin=load_plugin("my-plugin"))
"""

from featsmooth.plugin.classical import ClassicalPurifier, classical_plugin
from featsmooth.plugin.io import load_plugin, read_card, save_plugin
from featsmooth.plugin.losses import LossWeights
from featsmooth.plugin.mapper import MapperConfig, SmoothnessMapper
from featsmooth.plugin.plugged import PluggedEncoder, Plugin, encoder_fingerprint
from featsmooth.plugin.purifier import Purifier, PurifierConfig
from featsmooth.plugin.train import evaluate_plugin, pretrain_purifier, train_plugin

__all__ = [
    "ClassicalPurifier",
    "LossWeights",
    "MapperConfig",
    "PluggedEncoder",
    "Plugin",
    "Purifier",
    "PurifierConfig",
    "SmoothnessMapper",
    "classical_plugin",
    "encoder_fingerprint",
    "evaluate_plugin",
    "load_plugin",
    "pretrain_purifier",
    "read_card",
    "save_plugin",
    "train_plugin",
]
