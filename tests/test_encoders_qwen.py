"""Qwen2-VL / Qwen2.5-VL on tiny random models saved to disk and loaded with load_encoder.

The reference patches come from transformers' own (PIL) Qwen2-VL image processor, run with
``do_resize=False`` on the image resized here, so the encoder's differentiable patchify and
normalisation (mean/std and min/max pixels read from preprocessor_config.json) are checked
against the processor's, and the features against the model's ``get_image_features``.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import mllm_checks as mc  # noqa: E402

from featsmooth.encoders.qwen2_vl import QwenVLEncoder, smart_resize  # noqa: E402
from featsmooth.encoders.registry import load_encoder  # noqa: E402
from featsmooth.errors import InputError  # noqa: E402

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>"]
WORDS += ["<|vision_end|>", "what", "is", "this", "?", "a", "cat", "dog", "red", "car", "it"]
PAD, BOS, EOS, IMAGE, VIDEO, START, END = 0, 2, 3, 4, 5, 6, 7
VOCAB = 40
MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
PATCH, MERGE, TEMPORAL = 4, 2, 2
MIN_PIXELS, MAX_PIXELS = 16 * 16, 64 * 64
PROMPT = "<|vision_start|> <|image_pad|> <|vision_end|> what is this ?"


def _text():
    return dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
    )


def _config(kind):
    common = dict(patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL)
    tokens = dict(
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=START,
        vision_end_token_id=END,
    )
    if kind == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, **common)
        return transformers.Qwen2VLConfig(text_config=_text(), vision_config=vision, **tokens)
    vision = dict(
        depth=2,
        hidden_size=32,
        out_hidden_size=32,
        intermediate_size=48,
        num_heads=2,
        window_size=16,
        fullatt_block_indexes=[1],
        **common,
    )
    return transformers.Qwen2_5_VLConfig(text_config=_text(), vision_config=vision, **tokens)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def qwen_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    config = _config(request.param)
    cls = {
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
    }[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    cls(config).eval().save_pretrained(folder)
    mc.tokenizer(specials=tuple(WORDS[4:8]), words=WORDS).save_pretrained(folder)
    pre = {
        "image_mean": list(MEAN),
        "image_std": list(STD),
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "patch_size": PATCH,
        "merge_size": MERGE,
        "temporal_patch_size": TEMPORAL,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    return load_encoder(qwen_dir)


def _images(b=2, h=30, w=40, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _reference(images):
    """The processor's pixel_values and grid_thw for ``images``, resized here."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    h, w = smart_resize(*images.shape[-2:], PATCH * MERGE, MIN_PIXELS, MAX_PIXELS)
    x = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
    proc = Qwen2VLImageProcessorPil(
        do_resize=False,
        do_rescale=False,
        image_mean=list(MEAN),
        image_std=list(STD),
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=TEMPORAL,
    )
    out = proc([im.numpy() for im in x], return_tensors="pt")
    return out["pixel_values"].float(), out["image_grid_thw"]


def _prompt_ids(qwen, tokens):
    ids = qwen.tokenizer(PROMPT)["input_ids"]
    at = ids.index(IMAGE)
    ids = torch.tensor([ids[:at] + [IMAGE] * tokens + ids[at + 1 :]])
    return ids, (ids == IMAGE).int()


def test_features_match_model_on_processor_patches(qwen, qwen_dir):
    assert isinstance(qwen, QwenVLEncoder) and qwen.name == str(qwen_dir)
    images = _images()
    feats = qwen(images)
    pixels, grid = _reference(images)
    assert grid.tolist() == [[1, 8, 10]] * 2  # 30x40 -> 32x40 at factor 8, patches of 4
    assert feats.shape == (2, 8 * 10 // MERGE**2, 32)
    flat, own_grid = qwen.pixel_values(images)
    torch.testing.assert_close(flat, pixels, atol=1e-6, rtol=1e-6)
    assert own_grid.tolist() == grid.tolist()
    with torch.no_grad():
        ref = qwen.model.get_image_features(pixel_values=pixels, image_grid_thw=grid)
    torch.testing.assert_close(feats, torch.stack(list(ref.pooler_output)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(feats[0], feats[1])


def test_gradients_reach_pixels(qwen):
    assert all(not p.requires_grad for p in qwen.parameters())
    images = _images(1).requires_grad_(True)
    qwen(images).pow(2).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0


def test_resolution_is_fixed_per_run_and_the_map_is_affine(qwen):
    images, noise = _images(1), 0.3 * torch.randn(1, 3, 30, 40)
    zero = torch.zeros_like(images)
    a = qwen.pixel_values(images + noise)[0]
    b = qwen.pixel_values(images)[0] + qwen.pixel_values(noise)[0] - qwen.pixel_values(zero)[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # noise in pixels maps linearly
    fixed = QwenVLEncoder(qwen.model, mean=MEAN, std=STD, image_size=(24, 32))
    assert fixed(_images(1, 40, 50)).shape == fixed(_images(1, 17, 23)).shape == (1, 12, 32)
    with pytest.raises(InputError, match="multiples"):
        QwenVLEncoder(qwen.model, image_size=(30, 32))


def test_generate_with_own_features_matches_model_generate(qwen):
    images = _images(2)
    feats = qwen(images)
    kwargs = dict(max_new_tokens=4, do_sample=False, eos_token_id=None)
    new = qwen.generate(feats, PROMPT, **kwargs)
    pixels, grid = _reference(images)
    per_image = pixels.shape[0] // 2
    for i in range(2):
        ids, types = _prompt_ids(qwen, feats.shape[1])
        with torch.no_grad():
            full = qwen.model.generate(
                input_ids=ids,
                pixel_values=pixels[i * per_image : (i + 1) * per_image],
                image_grid_thw=grid[i : i + 1],
                mm_token_type_ids=types,
                pad_token_id=PAD,
                **kwargs,
            )
        assert new[i].tolist() == full[0, ids.shape[1] :].tolist()
    texts = qwen.generate(feats, PROMPT, return_text=True, **kwargs)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # the generic entry point hands the features to the encoder's own method
    from featsmooth.encoders.hf import generate_with_image_features

    assert torch.equal(generate_with_image_features(qwen, None, feats, PROMPT, **kwargs), new)


def test_loglikelihood_matches_model_forward_and_is_differentiable(qwen):
    images = _images(1).requires_grad_(True)
    target = "a red car"
    ll = qwen.loglikelihood(qwen(images), PROMPT, target)
    ll.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    pixels, grid = _reference(images.detach())
    ids, _ = _prompt_ids(qwen, 20)
    target_ids = qwen.tokenizer(target, add_special_tokens=False)["input_ids"]
    ids = torch.cat([ids, torch.tensor([target_ids])], dim=1)
    with torch.no_grad():
        logits = qwen.model(
            input_ids=ids,
            pixel_values=pixels,
            image_grid_thw=grid,
            mm_token_type_ids=(ids == IMAGE).int(),
        ).logits
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    n = len(target_ids)
    expected = sum(logp[ids.shape[1] - 1 - n + k, t] for k, t in enumerate(target_ids))
    torch.testing.assert_close(ll.detach()[0], expected, atol=1e-4, rtol=1e-5)
    with pytest.raises(InputError, match="grid_thw"):
        qwen.loglikelihood(qwen(_images(1, 50, 60)), PROMPT, target, grid_thw=[1, 8, 10])


def test_certify_runs(qwen):
    from featsmooth import SmoothedEncoder

    certs = SmoothedEncoder(qwen, sigma=0.25, batch_size=8).certify(_images(1), n0=4, n=8)
    assert len(certs) == 1 and certs[0].n_used == 8
    assert -1.0 <= certs[0].score_lower <= 1.0
