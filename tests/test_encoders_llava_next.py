"""LLaVA-NeXT and LLaVA-OneVision with any-res tiles, on tiny random models saved to disk.

The reference views (base image + tiles) are built here with transformers' own resolution
choice, resize-with-aspect and tiling functions, and fed to the model's
``get_image_features`` and ``generate``; the tower must give the same features and, with
its features handed back, the same greedy tokens.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import mllm_checks as mc  # noqa: E402

from featsmooth.encoders.llava_next import LlavaAnyResTower  # noqa: E402
from featsmooth.encoders.registry import load_encoder  # noqa: E402
from featsmooth.errors import InputError  # noqa: E402

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "a", "photo", "of", "cat", "dog", "car"]
WORDS += ["USER:", "ASSISTANT:", "what", "is", "this", "?", "it", "the", "red", "blue", "big"]
PAD, BOS, EOS, IMAGE = 0, 2, 3, 4
VOCAB = 32
MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
SIZE, PATCH = 32, 8
PINPOINTS = [[32, 64], [64, 32], [64, 64]]
PROMPT = "USER: <image> what is this ? ASSISTANT:"


def _vision():
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=SIZE,
        patch_size=PATCH,
    )


def _text():
    return dict(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )


def _model(kind):
    if kind == "llava_next":
        config = transformers.LlavaNextConfig(
            vision_config=transformers.CLIPVisionConfig(**_vision()),
            text_config=transformers.LlamaConfig(**_text()),
            image_token_id=IMAGE,
            image_grid_pinpoints=PINPOINTS,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        return transformers.LlavaNextForConditionalGeneration(config)
    config = transformers.LlavaOnevisionConfig(
        vision_config=transformers.SiglipVisionConfig(**_vision()),
        text_config=transformers.Qwen2Config(**_text()),
        image_token_id=IMAGE,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    return transformers.LlavaOnevisionForConditionalGeneration(config)


@pytest.fixture(scope="module", params=["llava_next", "llava_onevision"])
def anyres_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(request.param)
    _model(request.param).eval().save_pretrained(folder)
    mc.tokenizer(words=WORDS).save_pretrained(folder)
    pre = {"image_mean": list(MEAN), "image_std": list(STD)}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


@pytest.fixture(scope="module")
def tower(anyres_dir):
    return load_encoder(anyres_dir)


def _images(b=2, h=40, w=60, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _reference_views(images):
    """(B, V, C, S, S) views built with transformers' own any-res functions, normalised."""
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_transforms import divide_to_patches
    from transformers.image_utils import ChannelDimension

    out = []
    for image in images:
        h, w = image.shape[-2:]
        best = select_best_resolution((h, w), PINPOINTS)
        nh, nw = get_patch_output_size(image.numpy(), best, ChannelDimension.FIRST)
        resized = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)
        py, px = (best[0] - nh) // 2, (best[1] - nw) // 2
        padded = F.pad(resized, (px, best[1] - nw - px, py, best[0] - nh - py))[0]
        tiles = divide_to_patches(padded, patch_size=SIZE)
        base = F.interpolate(image[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        out.append(torch.stack([base[0], *tiles]))
    views = torch.stack(out)
    mean, std = torch.tensor(MEAN).view(1, 1, 3, 1, 1), torch.tensor(STD).view(1, 1, 3, 1, 1)
    return (views - mean) / std


def _model_features(tower, images):
    sizes = torch.tensor([list(images.shape[-2:])] * images.shape[0])
    with torch.no_grad():
        out = tower.model.get_image_features(
            pixel_values=_reference_views(images), image_sizes=sizes
        )
    return torch.stack(list(out.pooler_output)), sizes


def test_views_and_features_match_the_model(tower, anyres_dir):
    assert isinstance(tower, LlavaAnyResTower) and tower.stage == "vision"
    assert tower.name == str(anyres_dir)
    images = _images()
    views = tower.views(images)
    assert views.shape == (2, 5, 3, SIZE, SIZE)  # base + 2x2 tiles (40x60 best fits 64x64)
    torch.testing.assert_close(views, _reference_views(images), atol=1e-6, rtol=1e-6)
    feats = tower(images)
    assert feats.shape == (2, 5 * 16, 32)  # 'default' drops CLIP's CLS; SigLIP has none
    ref, _ = _model_features(tower, images)
    packed = torch.stack(tower.pack(feats, (40, 60)))
    torch.testing.assert_close(packed, ref, atol=1e-5, rtol=1e-5)
    projected = LlavaAnyResTower(tower.model, stage="projected", mean=MEAN, std=STD)
    torch.testing.assert_close(projected(images), ref, atol=1e-5, rtol=1e-5)


def test_gradients_reach_pixels(tower):
    assert all(not p.requires_grad for p in tower.parameters())
    images = _images(1).requires_grad_(True)
    tower(images).pow(2).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0


def test_smoothing_draws_one_noise_for_the_full_image(tower):
    """Base view and every tile come from the same noisy full image."""
    from featsmooth import SmoothedEncoder

    seen_images, seen_views = [], []
    views = tower.views

    def spy(images):
        seen_images.append(images.detach().clone())
        out = views(images)
        seen_views.append(out.detach().clone())
        return out

    tower.views = spy
    try:
        images = _images(1)
        gen = torch.Generator().manual_seed(0)
        SmoothedEncoder(tower, sigma=0.5).noisy_features(images, 3, generator=gen)
    finally:
        del tower.views
    noisy = torch.cat(seen_images)
    assert noisy.shape == (3, 3, 40, 60)  # the noise lives on the full image ...
    assert (noisy - images).std() > 0.3
    # ... and the base view and each tile are that noisy image resized / cropped
    torch.testing.assert_close(torch.cat(seen_views), _reference_views(noisy), atol=1e-5, rtol=0)


def _prompt_ids(tower, tokens):
    ids = tower.tokenizer(PROMPT)["input_ids"]
    at = ids.index(IMAGE)
    return torch.tensor([ids[:at] + [IMAGE] * tokens + ids[at + 1 :]])


def test_generate_with_own_features_matches_model_generate(tower):
    images = _images(2)
    kwargs = dict(max_new_tokens=4, do_sample=False, eos_token_id=None)
    new = tower.generate(tower(images), PROMPT, **kwargs)
    ref, sizes = _model_features(tower, images)
    pixels = _reference_views(images)
    for i in range(2):
        ids = _prompt_ids(tower, ref.shape[1])
        with torch.no_grad():
            full = tower.model.generate(
                input_ids=ids,
                pixel_values=pixels[i : i + 1],
                image_sizes=sizes[i : i + 1],
                pad_token_id=PAD,
                **kwargs,
            )
        assert new[i].tolist() == full[0, ids.shape[1] :].tolist()
    projected = tower.generate(ref, PROMPT, stage="projected", **kwargs)
    assert projected.tolist() == new.tolist()


def test_loglikelihood_matches_model_and_is_differentiable(tower):
    images = _images(1).requires_grad_(True)
    target = "a red car"
    ll = tower.loglikelihood(tower(images), PROMPT, target)
    ll.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    ref, sizes = _model_features(tower, images.detach())
    target_ids = tower.tokenizer(target, add_special_tokens=False)["input_ids"]
    ids = torch.cat([_prompt_ids(tower, ref.shape[1]), torch.tensor([target_ids])], dim=1)
    with torch.no_grad():
        logits = tower.model(
            input_ids=ids, pixel_values=_reference_views(images.detach()), image_sizes=sizes
        ).logits
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    n = len(target_ids)
    expected = sum(logp[ids.shape[1] - 1 - n + k, t] for k, t in enumerate(target_ids))
    torch.testing.assert_close(ll.detach()[0], expected, atol=1e-4, rtol=1e-5)
    with pytest.raises(InputError, match="views"):
        tower.loglikelihood(tower(images)[:, :-1], PROMPT, target)


def test_certify_runs(tower):
    from featsmooth import SmoothedEncoder

    certs = SmoothedEncoder(tower, sigma=0.25, batch_size=8).certify(_images(1), n0=4, n=8)
    assert len(certs) == 1 and certs[0].n_used == 8
