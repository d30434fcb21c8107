"""OpenFlamingo on a tiny random model (CLIP vision tower, Perceiver, gated cross-attention
Llama) saved as an OpenFlamingo folder and loaded back through ``load_encoder(path)``.

The certified feature is the Perceiver's latents (``stage="perceiver"``); the CLIP patch
tokens are the ``"vision"`` stage. Features are checked against the model's own vision path,
handing back against its own forward and ``generate``; the cross-attention gates are set
non-zero so that the image changes the text.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import mllm_checks as mc  # noqa: E402

from featsmooth.encoders.openflamingo import (  # noqa: E402
    EOC_TOKEN,
    MEDIA_TOKEN,
    Flamingo,
    OpenFlamingoEncoder,
    save_openflamingo,
)
from featsmooth.encoders.registry import load_encoder  # noqa: E402
from featsmooth.errors import InputError  # noqa: E402

SIZE, LATENTS = 32, 4
PROMPT = "<image> Question: what is this ? Answer:"


def build(seed=0):
    torch.manual_seed(seed)
    vision = transformers.CLIPVisionModel(
        transformers.CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=SIZE,
            patch_size=8,
        )
    ).eval()
    lang = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=mc.VOCAB,
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=mc.BOS,
            eos_token_id=mc.EOS,
            pad_token_id=mc.PAD,
        )
    ).eval()
    tok = mc.tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [EOC_TOKEN, MEDIA_TOKEN]})
    lang.resize_token_embeddings(len(tok))
    model = Flamingo(
        vision,
        lang,
        media_token_id=tok.convert_tokens_to_ids(MEDIA_TOKEN),
        eoc_token_id=tok.convert_tokens_to_ids(EOC_TOKEN),
        cross_attn_every_n_layers=1,
        perceiver=dict(depth=2, heads=2, dim_head=8, num_latents=LATENTS),
        cross_attention=dict(heads=2, dim_head=8, ff_mult=2),
    ).eval()
    with torch.no_grad():  # OpenFlamingo starts its gates at 0: open them
        for name, p in model.named_parameters():
            if name.endswith("_gate"):
                p.fill_(1.0)
    return model, tok


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    model, tok = build()
    folder = tmp_path_factory.mktemp("openflamingo")
    save_openflamingo(model, folder, tok)
    mc.save(model.vision_encoder, folder / "vision")  # with the test's mean/std
    return load_encoder(folder)


def _ids(enc, prompt=PROMPT):
    return torch.tensor([enc.tokenizer(prompt)["input_ids"]])


def test_loads_the_saved_weights_and_features_match(enc):
    assert isinstance(enc, OpenFlamingoEncoder) and enc.stage == "perceiver"
    original, _ = build()
    for key, value in original.state_dict().items():
        torch.testing.assert_close(enc.model.state_dict()[key], value, msg=key)
    x = mc.images()
    pixels = mc.reference_pixels(x, SIZE)
    with torch.no_grad():
        hidden = original.vision_encoder(pixel_values=pixels).last_hidden_state
        tower = getattr(original.vision_encoder, "vision_model", original.vision_encoder)
        tokens = tower.post_layernorm(hidden)[:, 1:]
        latents = original.perceiver(tokens[:, None, None])[:, 0]
    feats = enc(x)
    assert feats.shape == (2, LATENTS, 32)
    torch.testing.assert_close(feats, latents, atol=1e-5, rtol=1e-5)
    vision = OpenFlamingoEncoder(enc.model, stage="vision", mean=mc.MEAN, std=mc.STD)
    assert vision(x).shape == (2, 16, 32)
    torch.testing.assert_close(vision(x), tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vision.to_language(vision(x)), latents, atol=1e-5, rtol=1e-5)


def test_gradients_and_certify(enc):
    mc.check_gradients_and_certify(enc)


def test_loglikelihood_matches_model_forward(enc):
    def forward_logits(ids, n_target, x):
        return enc.model(mc.reference_pixels(x, SIZE), ids).logits

    def prompt_ids(prompt):
        return enc.tokenizer(prompt)["input_ids"]

    assert enc.prompt_ids(enc.tokenizer, mc.PROMPT, 0) == prompt_ids(PROMPT)
    mc.check_loglikelihood(enc, lambda p: enc.prompt_ids(enc.tokenizer, p, 0), forward_logits)
    # the image matters, and only after the <image> token
    x1, x2 = mc.images(1, seed=1), mc.images(1, seed=2)
    ids = _ids(enc, "what is <image> this ?")
    with torch.no_grad():
        a = enc.logits(ids, enc(x1))
        b = enc.logits(ids, enc(x2))
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:], atol=1e-4)


def test_generate_matches_model_generate(enc):
    def own_generate(x):
        ids = _ids(enc)
        out = enc.model.generate(
            mc.reference_pixels(x, SIZE), ids, pad_token_id=mc.PAD, **mc.GREEDY
        )
        return out[:, ids.shape[1] :]

    mc.check_generate(enc, own_generate)
    # beam search repeats the image for every beam
    new = enc.generate(enc(mc.images(1)), PROMPT, max_new_tokens=3, num_beams=2, do_sample=False)
    assert new.shape == (1, 3)


def test_prompt_checks(enc):
    with pytest.raises(InputError, match="one"):
        enc.generate(enc(mc.images(1)), "<image> a <image> b", max_new_tokens=1)


def test_smoothed_features_hand_back(enc):
    mc.check_smoothed_hand_back(enc)


def test_unknown_checkpoint_and_incomplete_folder(tmp_path):
    from featsmooth.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="OpenFlamingo-9B-vitl-mpt7b"):
        load_encoder("openflamingo/OpenFlamingo-1B-unknown")
    (tmp_path / "openflamingo.json").write_text('{"lang_encoder": "lang"}')
    with pytest.raises(ModelUnavailableError):
        load_encoder(tmp_path)
