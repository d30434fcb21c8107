"""Hugging Face encoders on tiny random CLIP / SigLIP / LLaVA models saved to disk.

Every model is saved with ``save_pretrained`` and loaded back through ``load_encoder(path)``,
the path users take. Features are checked against transformers' own functions on inputs
preprocessed independently here (resize + the mean/std written to preprocessor_config.json,
deliberately not the library defaults, so a loader that ignores the file fails).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import mllm_checks as mc  # noqa: E402

from featsmooth.encoders.base import ImageEncoder  # noqa: E402
from featsmooth.encoders.hf import (  # noqa: E402
    CLIPEncoder,
    LlavaVisionTower,
    SiglipEncoder,
    embed_with_image_features,
    generate_with_image_features,
    logits_with_image_features,
    loglikelihood_with_image_features,
    restore_token_features,
    wrap_open_clip_model,
)
from featsmooth.encoders.registry import load_encoder  # noqa: E402
from featsmooth.errors import InputError  # noqa: E402

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "a", "photo", "of", "cat", "dog", "car"]
WORDS += ["USER:", "ASSISTANT:", "what", "is", "this", "?", "it", "the", "red", "blue", "big"]
PAD, UNK, BOS, EOS, IMAGE = 0, 1, 2, 3, 4
VOCAB = 32
MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)  # not CLIP's/SigLIP's: proves the file is read
SIZE, PATCH = 32, 8  # 16 patches (+ CLS)


def _vision(**extra):
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=SIZE,
        patch_size=PATCH,
        **extra,
    )


def _text(**extra):
    return dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        **extra,
    )


def _save(model, folder, tokenizer=None):
    torch.manual_seed(0)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    pre = {"image_mean": list(MEAN), "image_std": list(STD), "crop_size": [SIZE, SIZE]}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


def _reference_pixels(images: torch.Tensor) -> torch.Tensor:
    x = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _pooled(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=_text(eos_token_id=EOS, bos_token_id=BOS, pad_token_id=PAD),
        vision_config=_vision(),
        projection_dim=24,
    )
    return _save(
        transformers.CLIPModel(cfg).eval(),
        tmp_path_factory.mktemp("clip"),
        mc.tokenizer(words=WORDS, append_eos=True),
    )


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    torch.manual_seed(1)
    cfg = transformers.SiglipConfig(
        text_config=_text(projection_size=32, eos_token_id=EOS, pad_token_id=PAD),
        vision_config=_vision(),
    )
    model = transformers.SiglipModel(cfg).eval()
    return _save(
        model, tmp_path_factory.mktemp("siglip"), mc.tokenizer(words=WORDS, append_eos=True)
    )


def _llava_config(**extra):
    return transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**_vision(projection_dim=32)),
        text_config=transformers.LlamaConfig(
            **{**_text(num_key_value_heads=2), "max_position_embeddings": 64, "hidden_size": 48},
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        ),
        image_token_id=IMAGE,
        image_seq_length=16,
        **extra,
    )


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    torch.manual_seed(2)
    cfg = _llava_config(vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    return _save(model, tmp_path_factory.mktemp("llava"), mc.tokenizer(words=WORDS))


@pytest.fixture(scope="module")
def llava(llava_dir):
    return load_encoder(llava_dir)


def _images(b=2, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


# --------------------------------------------------------------------------- CLIP


def test_clip_features_match_transformers(clip_dir):
    enc = load_encoder(clip_dir)
    assert isinstance(enc, CLIPEncoder) and isinstance(enc, ImageEncoder)
    assert enc.name == str(clip_dir) and enc.image_size == (SIZE, SIZE)
    images = _images()
    feats = enc(images)
    assert feats.shape == (2, 24)
    with torch.no_grad():
        ref = _pooled(enc.model.get_image_features(pixel_values=_reference_pixels(images)))
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(feats[0], feats[1])


def test_clip_text_is_unit_norm_and_matches_transformers(clip_dir):
    enc = load_encoder(clip_dir)
    assert enc.supports_text
    texts = ["a photo of a cat", "a dog", "a red car"]
    emb = enc.encode_text(texts)
    assert emb.shape == (3, 24)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    tok = enc.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = _pooled(enc.model.get_text_features(tok["input_ids"], tok["attention_mask"]))
    torch.testing.assert_close(emb, F.normalize(ref, dim=-1), atol=1e-5, rtol=1e-5)
    assert (emb[0] - emb[1]).abs().max() > 1e-3


def test_clip_is_differentiable_wrt_images(clip_dir):
    enc = load_encoder(clip_dir)
    assert all(not p.requires_grad for p in enc.parameters())  # frozen ...
    images = _images().requires_grad_(True)
    enc(images).pow(2).sum().backward()  # ... but gradients reach the pixels
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0


def test_clip_vision_only_checkpoint(tmp_path):
    torch.manual_seed(3)
    cfg = transformers.CLIPVisionConfig(**_vision(projection_dim=16))
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    enc = load_encoder(_save(model, tmp_path))
    assert isinstance(enc, CLIPEncoder) and not enc.supports_text
    images = _images(1)
    with torch.no_grad():
        ref = enc.model(pixel_values=_reference_pixels(images)).image_embeds
    torch.testing.assert_close(enc(images), ref, atol=1e-5, rtol=1e-5)


def test_clip_bfloat16(clip_dir):
    enc32 = load_encoder(clip_dir)
    enc16 = load_encoder(clip_dir, dtype=torch.bfloat16)
    assert enc16.dtype == torch.bfloat16
    images = _images()
    f32, f16 = enc32(images), enc16(images)
    assert f16.dtype == torch.bfloat16
    assert F.cosine_similarity(f32, f16.float(), dim=1).min() > 0.98


# --------------------------------------------------------------------------- SigLIP


def test_siglip_features_and_text(siglip_dir):
    enc = load_encoder(siglip_dir)
    assert isinstance(enc, SiglipEncoder)
    images = _images(h=SIZE, w=SIZE)
    feats = enc(images)
    assert feats.shape == (2, 32)
    with torch.no_grad():
        ref = _pooled(enc.model.get_image_features(pixel_values=_reference_pixels(images)))
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)

    texts = ["a photo of a cat", "the big blue car"]
    emb = enc.encode_text(texts)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    ids = enc.tokenizer(texts, padding="max_length", max_length=16, return_tensors="pt")
    assert ids["input_ids"].shape == (2, 16)
    with torch.no_grad():
        ref_text = _pooled(enc.model.get_text_features(input_ids=ids["input_ids"]))
    torch.testing.assert_close(emb, F.normalize(ref_text, dim=-1), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- LLaVA


def _prompt_ids(tokenizer, prompt, n_image=16):
    ids = tokenizer(prompt)["input_ids"]
    at = ids.index(IMAGE)
    return torch.tensor([ids[:at] + [IMAGE] * n_image + ids[at + 1 :]])


def test_llava_tower_matches_model_features(llava):
    assert isinstance(llava, LlavaVisionTower) and llava.stage == "vision"
    images = _images()
    vision = llava(images)
    assert vision.shape == (2, 16, 32)  # 'default' drops CLS from 4x4 patches + CLS
    pixels = _reference_pixels(images)
    with torch.no_grad():
        ref = torch.stack(list(llava.model.get_image_features(pixel_values=pixels).pooler_output))
    torch.testing.assert_close(llava.project(vision), ref, atol=1e-5, rtol=1e-5)
    projected = LlavaVisionTower(llava.model, stage="projected", mean=MEAN, std=STD)
    torch.testing.assert_close(projected(images), ref, atol=1e-5, rtol=1e-5)


def test_llava_select_strategy_and_layers(llava):
    images = _images(1)
    pixels = _reference_pixels(images)
    full = LlavaVisionTower(
        llava.model, vision_feature_select_strategy="full", mean=MEAN, std=STD, stage="projected"
    )
    out = full(images)
    assert out.shape == (1, 17, 48)  # CLS kept; projected to the LM width
    with torch.no_grad():
        ref = llava.model.get_image_features(
            pixel_values=pixels, vision_feature_select_strategy="full"
        ).pooler_output[0]
    torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=1e-5)
    # a different layer gives different features
    last = LlavaVisionTower(llava.model, vision_feature_layer=-1, mean=MEAN, std=STD)
    assert not torch.allclose(last(images), llava(images))

    torch.manual_seed(4)
    multi = transformers.LlavaForConditionalGeneration(
        _llava_config(vision_feature_layer=[-3, -1], vision_feature_select_strategy="default")
    ).eval()
    tower = LlavaVisionTower(multi, mean=MEAN, std=STD)
    feats = tower(images)
    assert feats.shape == (1, 16, 64)  # two layers concatenated along D
    with torch.no_grad():
        ref = multi.get_image_features(pixel_values=pixels).pooler_output[0]
    torch.testing.assert_close(tower.project(feats)[0], ref, atol=1e-5, rtol=1e-5)


def test_handing_back_own_features_reproduces_model_logits(llava):
    prompt = "USER: <image> what is this ? ASSISTANT:"
    ids = _prompt_ids(llava.tokenizer, prompt)
    images = _images(1)
    with torch.no_grad():
        ref = llava.model(input_ids=ids, pixel_values=_reference_pixels(images)).logits
        for stage in ("vision", "projected"):
            tower = LlavaVisionTower(llava.model, stage=stage, mean=MEAN, std=STD)
            logits = logits_with_image_features(llava, ids, tower(images), stage=stage)
            torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
            # stage inferred from D (32 vision, 48 language model) when not given
            inferred = logits_with_image_features(llava.model, ids, tower(images))
            torch.testing.assert_close(inferred, ref, atol=1e-5, rtol=1e-5)
        other = logits_with_image_features(llava, ids, llava(_images(1, seed=9)))
    assert not torch.allclose(other, ref, atol=1e-4)


def test_loglikelihood_matches_model_forward_and_is_differentiable(llava):
    prompt, target = "USER: <image> what is this ? ASSISTANT:", "a red car"
    images = _images(1).requires_grad_(True)
    ll = loglikelihood_with_image_features(llava, llava.tokenizer, llava(images), prompt, target)
    assert ll.shape == (1,) and ll.item() < 0
    ll.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0

    target_ids = llava.tokenizer(target, add_special_tokens=False)["input_ids"]
    ids = torch.cat([_prompt_ids(llava.tokenizer, prompt), torch.tensor([target_ids])], dim=1)
    with torch.no_grad():
        logits = llava.model(input_ids=ids, pixel_values=_reference_pixels(images.detach())).logits
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    n = len(target_ids)
    expected = sum(logp[ids.shape[1] - 1 - n + k, t] for k, t in enumerate(target_ids))
    torch.testing.assert_close(ll.detach()[0], expected, atol=1e-4, rtol=1e-5)


def test_loglikelihood_batch_with_padding_equals_single(llava):
    prompts = ["USER: <image> what is this ? ASSISTANT:", "<image> it is"]
    targets = ["a cat", "the big blue dog"]
    feats = llava(_images(2))
    with torch.no_grad():
        batch = llava.loglikelihood(feats, prompts, targets)
        single = [llava.loglikelihood(feats[i : i + 1], prompts[i], targets[i]) for i in range(2)]
        mean = llava.loglikelihood(feats, prompts, targets, reduction="mean")
    torch.testing.assert_close(batch, torch.cat(single), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mean, batch / torch.tensor([2.0, 4.0]), atol=1e-5, rtol=1e-5)


def test_generate_with_own_features_matches_model_generate(llava):
    prompt = "USER: <image> what is this ? ASSISTANT:"
    images = _images(1)
    kwargs = dict(max_new_tokens=4, do_sample=False, eos_token_id=None)
    new = generate_with_image_features(llava, llava.tokenizer, llava(images), prompt, **kwargs)
    ids = _prompt_ids(llava.tokenizer, prompt)
    with torch.no_grad():
        full = llava.model.generate(
            input_ids=ids, pixel_values=_reference_pixels(images), pad_token_id=PAD, **kwargs
        )
    assert new.shape == (1, 4)
    assert new.tolist() == full[:, ids.shape[1] :].tolist()
    texts = llava.generate(llava(_images(2)), prompt, return_text=True, **kwargs)
    assert isinstance(texts, list) and len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_hand_back_rejects_bad_input(llava):
    feats = llava(_images(1))
    with pytest.raises(InputError, match="image token"):
        llava.loglikelihood(feats, "what is this ?", "a cat")
    with pytest.raises(InputError, match="D="):
        llava.loglikelihood(feats[..., :16], "<image> what", "a cat", stage="vision")
    with pytest.raises(InputError, match="prompts"):
        llava.loglikelihood(llava(_images(3)), ["<image> a", "<image> b"], "a cat")
    ids = _prompt_ids(llava.tokenizer, "<image> what", n_image=15)
    with pytest.raises(InputError, match="do not match"):
        embed_with_image_features(llava, ids, feats)


def test_restore_token_features_roundtrip(llava):
    feats = llava(_images(2))
    flat = F.normalize(feats.flatten(1), dim=1)
    restored = restore_token_features(flat, feats)
    torch.testing.assert_close(restored, feats, atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError):
        restore_token_features(flat[:, :-1], feats)


# --------------------------------------------------------------------------- open_clip adapter


class _FakeOpenClip(torch.nn.Module):
    """Stands in for an open_clip model: encode_image / encode_text on tokens."""

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Conv2d(3, 8, 8, stride=8)
        self.text = torch.nn.Embedding(10, 8)

    def encode_image(self, x):
        self.seen = x
        return self.visual(x).mean(dim=(2, 3))

    def encode_text(self, tokens):
        return self.text(tokens).mean(dim=1)


def test_open_clip_adapter():
    model = _FakeOpenClip()
    enc = wrap_open_clip_model(
        model,
        lambda texts: torch.tensor([[len(t) % 10, 1] for t in texts]),
        mean=MEAN,
        std=STD,
        image_size=16,
    )
    images = _images(2)
    out = enc(images)
    assert out.shape == (2, 8)
    x = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    expected = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(model.seen, expected)
    text = enc.encode_text(["a", "abc"])
    torch.testing.assert_close(text.norm(dim=1), torch.ones(2), atol=1e-6, rtol=0)
    assert enc.supports_text


# --------------------------------------------------------------------------- with smoothing


def test_smoothed_llava_features_hand_back_end_to_end(llava):
    from featsmooth import SmoothedEncoder

    smoothed = SmoothedEncoder(llava, sigma=0.25, batch_size=8)
    images = _images(2)
    flat = smoothed.predict_feature(images, n=4, seed=0)
    assert flat.shape == (2, 16 * 32)
    clean = llava(images)
    feats = restore_token_features(flat, clean)
    assert feats.shape == clean.shape
    cos = F.cosine_similarity(feats.flatten(1), clean.flatten(1), dim=1)
    assert (cos > 0).all() and (cos < 1).all()  # noise moved them, but not at random
    prompt = "USER: <image> what is this ? ASSISTANT:"
    ll = llava.loglikelihood(feats, prompt, "a cat")
    assert ll.shape == (2,) and torch.isfinite(ll).all()
    new = llava.generate(feats, prompt, max_new_tokens=2, do_sample=False)
    assert new.shape[0] == 2


def test_smoothed_clip_zero_shot_shapes(clip_dir):
    from featsmooth import SmoothedEncoder

    enc = load_encoder(clip_dir)
    smoothed = SmoothedEncoder(enc, sigma=0.25)
    images = _images(2).requires_grad_(True)
    noisy = smoothed.noisy_features(images, 3, generator=torch.Generator().manual_seed(0))
    assert noisy.shape == (2, 3, 24)
    scores = noisy @ enc.encode_text(["a cat", "a dog", "a car"]).T
    scores[:, :, 0].sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
