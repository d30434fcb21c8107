"""Image-text retrieval: recall@k from embeddings, for clean and smoothed image features.

Similarity is the cosine between image and text embeddings. Each image may own several
captions (COCO / Flickr30k have five):

* image -> text: an image scores a hit at ``k`` when any of its captions is among the ``k``
  texts most similar to it (the usual Karpathy-split protocol);
* text -> image: a caption scores a hit at ``k`` when its image is among the ``k`` images
  most similar to it.

Ties are broken against the correct answer (a rival with an equal score ranks above it),
so a constant encoder cannot score above chance. The smoothed variant ranks by the
direction of the Monte-Carlo smoothed feature ``f_hat(x)`` (``SmoothedEncoder.
predict_feature``); it is an *empirical* retrieval score, not a certificate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featsmooth.errors import InputError
from featsmooth.seeds import noise_seed

DEFAULT_KS = (1, 5, 10)


def flatten_captions(captions: Sequence[Sequence[str] | str]) -> tuple[list[str], np.ndarray]:
    """``(texts, owner)``: all captions in order and, for each, the index of its image."""
    texts: list[str] = []
    owner: list[int] = []
    for i, caps in enumerate(captions):
        caps = [caps] if isinstance(caps, str) else list(caps)
        if not caps:
            raise InputError(f"image {i} has no caption")
        texts.extend(str(c) for c in caps)
        owner.extend([i] * len(caps))
    return texts, np.asarray(owner, dtype=np.int64)


def _unit(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to(torch.float64).cpu()
    if t.ndim != 2:
        raise InputError(f"embeddings must be 2-D (N, D), got shape {tuple(t.shape)}")
    return F.normalize(t, dim=-1)


def recall_at_k(
    image_emb: torch.Tensor | np.ndarray,
    text_emb: torch.Tensor | np.ndarray,
    text_owner: Sequence[int] | np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Recall@k both ways from embeddings (normalised here).

    Args:
        image_emb: ``(N, D)`` image embeddings.
        text_emb: ``(M, D)`` text embeddings.
        text_owner: ``(M,)`` index of the image each text describes (every image needs at
            least one text).
        ks: the k values.

    Returns:
        ``{"i2t_r@k": ..., "t2i_r@k": ...}`` fractions in [0, 1] for each k, plus
        ``"i2t_mean_rank"``/``"t2i_mean_rank"`` (1 = always first).
    """
    img, txt = _unit(image_emb), _unit(text_emb)
    if img.shape[1] != txt.shape[1]:
        raise InputError(f"image dim {img.shape[1]} != text dim {txt.shape[1]}")
    owner = np.asarray(text_owner, dtype=np.int64)
    n, m = img.shape[0], txt.shape[0]
    if owner.shape != (m,) or (m and (owner.min() < 0 or owner.max() >= n)):
        raise InputError(f"text_owner must hold {m} image indices in [0, {n})")
    if set(owner.tolist()) != set(range(n)):
        raise InputError("every image needs at least one text")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise InputError("ks must be positive integers")
    sim = (img @ txt.T).numpy()  # (N, M)
    own = owner
    is_gt = own[None, :] == np.arange(n)[:, None]  # (N, M)
    # image -> text: rivals (texts of other images) scoring >= the best own caption
    best = np.where(is_gt, sim, -np.inf).max(axis=1)
    i2t_rank = np.sum((sim >= best[:, None]) & ~is_gt, axis=1)
    # text -> image: other images scoring >= the caption's own image
    own_score = sim[own, np.arange(m)]
    t2i_rank = np.sum(sim >= own_score[None, :], axis=0) - 1
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r@{k}"] = float(np.mean(i2t_rank < k))
        out[f"t2i_r@{k}"] = float(np.mean(t2i_rank < k))
    out["i2t_mean_rank"] = float(np.mean(i2t_rank) + 1)
    out["t2i_mean_rank"] = float(np.mean(t2i_rank) + 1)
    return out


def text_encoder(encoder: Any) -> Any:
    from featsmooth.tasks.zero_shot import text_encoder as find

    return find(encoder)


@torch.no_grad()
def image_embeddings(
    encoder: Any,
    images: torch.Tensor,
    *,
    smoothed: bool = False,
    n: int = 64,
    seed: int | None = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """``(N, D)`` float32 unit image embeddings: clean ``f(x)``, or with ``smoothed=True``
    the direction of ``f_hat(x)`` estimated from ``n`` noise draws (needs a SmoothedEncoder).
    """
    is_sm = hasattr(encoder, "predict_feature") and hasattr(encoder, "features")
    if smoothed and not is_sm:
        raise InputError("smoothed retrieval needs a SmoothedEncoder")
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        if smoothed:
            # image i: the seed one call on all images gives it (featsmooth.seeds, key i)
            s = (
                None
                if seed is None
                else [noise_seed(seed, start + j, "certify") for j in range(len(x))]
            )
            f = encoder.predict_feature(x, n=n, seed=s)
        elif is_sm:
            f = encoder.features(x)
        else:
            dev = getattr(encoder, "device", None)
            f = encoder(x.to(dev) if isinstance(dev, torch.device) else x)
        out.append(F.normalize(f.flatten(1).float(), dim=-1).cpu())
    return torch.cat(out)


def retrieval_scores(
    encoder: Any,
    images: torch.Tensor,
    captions: Sequence[Sequence[str] | str],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    smoothed: bool = False,
    n: int = 64,
    seed: int | None = 0,
) -> dict[str, float]:
    """Recall@k of a text-image encoder (or SmoothedEncoder of one) on captioned images.

    ``captions[i]`` is one caption or a list of captions of ``images[i]``. With
    ``smoothed=True`` the image side uses the smoothed feature (``n`` draws); the text side
    is always the clean text embedding.
    """
    if len(captions) != images.shape[0]:
        raise InputError(f"got {len(captions)} caption lists for {images.shape[0]} images")
    texts, owner = flatten_captions(captions)
    txt = text_encoder(encoder).encode_text(texts)
    img = image_embeddings(encoder, images, smoothed=smoothed, n=n, seed=seed)
    return recall_at_k(img, txt, owner, ks)
