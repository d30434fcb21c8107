"""Zero-training purifiers: classical Gaussian denoisers with the purifier interface.

Each is a module ``(B, C, H, W) noisy images, sigma -> (B, C, H, W)`` in [0, 1], like the
learned :class:`featsmooth.plugin.Purifier`, so it can stand in front of a frozen encoder
(``classical_plugin("tv", encoder)`` gives a :class:`featsmooth.plugin.Plugin` for
:class:`featsmooth.SmoothedEncoder`): every table can carry a row that anyone reproduces
without training.

==========  ==============================================================  =============
kind        denoiser                                                        parameters
==========  ==============================================================  =============
``tv``      total variation, Chambolle's projection                         weight =
            (``skimage.restoration.denoise_tv_chambolle``)                  0.8 * sigma
``nlm``     non-local means, fast mode, 5x5 patches, 13x13 search window     h = 0.8 * sigma
            (``skimage.restoration.denoise_nl_means``)
``bm3d``    BM3D, colour (``bm3d.bm3d_rgb``; optional: ``pip install bm3d``) sigma_psd =
                                                                            sigma
==========  ==============================================================  =============

The default parameters scale with the noise level ``sigma`` (pixel units, images in
[0, 1]); the factors were chosen by PSNR on held-out corpus crops at sigma 0.25 and 0.5
(TV's weight from {0.3, 0.5, 0.7, 1.0} * sigma, NLM's h from {0.6, 0.8, 1.0} * sigma).
Pass ``scale=`` to change the factor. The denoisers run on the CPU in NumPy (float64),
image by image; inputs on another device are copied to the CPU and back.

**Gradients: BPDA.** None of these denoisers is differentiable in torch. Their backward
pass is the identity (Backward Pass Differentiable Approximation, Athalye et al., ICML
2018): ``d P(x) / d x`` is replaced by ``I``. White-box attacks through a classical
purifier therefore use BPDA for the purifier (and EoT over the smoothing noise); state
this next to any attack result. The certificate of Feature-space Smoothing does not use
gradients and is unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from featsmooth.errors import InputError, ModelUnavailableError
from featsmooth.plugin.plugged import Plugin, encoder_fingerprint, encoder_name
from featsmooth.plugin.purifier import as_sigma_tensor

KINDS = ("tv", "nlm", "bm3d")
_DEFAULT_SCALE = {"tv": 0.8, "nlm": 0.8, "bm3d": 1.0}
#: The classical purifiers are not trained: they accept any noise level in this range.
SIGMA_RANGE = (1e-3, 10.0)


@dataclass
class ClassicalConfig:
    """Settings of a :class:`ClassicalPurifier` (recorded in cards and bench results)."""

    kind: str
    scale: float
    patch_size: int = 5
    patch_distance: int = 6

    def to_dict(self) -> dict:
        return asdict(self)


def _denoise_fn(cfg: ClassicalConfig):
    try:
        from skimage.restoration import denoise_nl_means, denoise_tv_chambolle
    except ImportError as err:  # pragma: no cover - scikit-image is a dependency here
        raise ModelUnavailableError(
            "classical purifiers need scikit-image: pip install scikit-image"
        ) from err
    if cfg.kind == "tv":
        return lambda img, s: denoise_tv_chambolle(img, weight=cfg.scale * s, channel_axis=-1)
    if cfg.kind == "nlm":
        return lambda img, s: denoise_nl_means(
            img,
            h=cfg.scale * s,
            sigma=s,
            fast_mode=True,
            patch_size=cfg.patch_size,
            patch_distance=cfg.patch_distance,
            channel_axis=-1,
        )
    try:
        import bm3d
    except ImportError as err:
        raise ModelUnavailableError(
            "the BM3D purifier needs the optional package bm3d: pip install bm3d "
            "(or pip install featsmooth[bm3d])"
        ) from err

    def run(img: np.ndarray, s: float) -> np.ndarray:
        if img.shape[-1] == 3:
            return bm3d.bm3d_rgb(img, cfg.scale * s)
        return np.stack(
            [bm3d.bm3d(img[..., c], cfg.scale * s) for c in range(img.shape[-1])], axis=-1
        )

    return run


class _BPDA(torch.autograd.Function):
    """Forward: the classical denoiser; backward: identity (BPDA)."""

    @staticmethod
    def forward(ctx, noisy: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        return denoised

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class ClassicalPurifier(nn.Module):
    """A classical denoiser with the purifier interface (see the module docstring).

    Args:
        kind: ``"tv"``, ``"nlm"`` or ``"bm3d"``.
        scale: the denoiser's strength divided by sigma (default per kind, see the table).
        patch_size, patch_distance: non-local means patch and search half-window.

    ``forward(noisy (B, C, H, W), sigma float or (B,)) -> (B, C, H, W)`` in [0, 1], same
    dtype and device as ``noisy``; gradients pass straight through (BPDA).
    """

    kind = "classical"

    def __init__(
        self,
        kind: str = "tv",
        scale: float | None = None,
        patch_size: int = 5,
        patch_distance: int = 6,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise InputError(f"unknown classical purifier {kind!r}; choose from {KINDS}")
        scale = _DEFAULT_SCALE[kind] if scale is None else float(scale)
        if not scale > 0:
            raise InputError(f"scale must be positive, got {scale}")
        self.config = ClassicalConfig(kind, scale, patch_size, patch_distance)
        self._fn = _denoise_fn(self.config)

    @property
    def num_parameters(self) -> int:
        return 0

    @torch.no_grad()
    def denoise(self, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        arr = noisy.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
        out = np.empty_like(arr)
        for i in range(arr.shape[0]):
            s = float(sigma[i])
            out[i] = self._fn(arr[i], s) if s > 0 else arr[i]
        res = torch.from_numpy(out).permute(0, 3, 1, 2)
        return res.to(noisy.device, noisy.dtype).clamp(0.0, 1.0)

    def forward(self, noisy: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        if noisy.ndim != 4:
            raise InputError(f"the purifier takes images (B, C, H, W), got {tuple(noisy.shape)}")
        s = as_sigma_tensor(sigma, noisy.shape[0], noisy.device)
        denoised = self.denoise(noisy, s)
        if noisy.requires_grad:
            return _BPDA.apply(noisy, denoised)
        return denoised

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())


def classical_plugin(
    kind: str,
    encoder: nn.Module,
    *,
    scale: float | None = None,
    sigmas: Sequence[float] = SIGMA_RANGE,
    **kwargs,
) -> Plugin:
    """A purifier-only :class:`Plugin` built around :class:`ClassicalPurifier` for ``encoder``.

    Nothing is trained, so it accepts any sigma in ``sigmas`` (default a wide range) and
    is built from its name, not saved: ``SmoothedEncoder(encoder, 0.5,
    plugin=classical_plugin("nlm", encoder))``.
    """
    purifier = ClassicalPurifier(kind, scale, **kwargs)
    return Plugin(
        purifier,
        None,
        sigmas=sigmas,
        encoder_name=encoder_name(encoder),
        encoder_fingerprint=encoder_fingerprint(encoder),
        card={"classical": purifier.config.to_dict()},
    )
