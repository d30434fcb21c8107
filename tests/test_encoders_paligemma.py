"""PaliGemma and Gemma 3 on tiny random models saved to disk and loaded through
``load_encoder(path)``.

The certified feature is the SigLIP tower's last hidden state (``stage="vision"``); the
projected stage is ``get_image_features(...).pooler_output``. Handing features back is
checked against the model's own forward (with the processor's ``token_type_ids``) and
``generate``.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import mllm_checks as mc  # noqa: E402

from featsmooth.encoders.paligemma import Gemma3Encoder, PaliGemmaEncoder  # noqa: E402
from featsmooth.encoders.registry import load_encoder  # noqa: E402

SIZE, PATCH = 32, 8  # 16 patches


def _vision():
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=SIZE,
        patch_size=PATCH,
        vision_use_head=False,
    )


def _text(**extra):
    return dict(
        vocab_size=mc.VOCAB,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=24,
        max_position_embeddings=128,
        bos_token_id=mc.BOS,
        eos_token_id=mc.EOS,
        pad_token_id=mc.PAD,
        **extra,
    )


@pytest.fixture(scope="module")
def paligemma(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.PaliGemmaConfig(
        vision_config=transformers.SiglipVisionConfig(**_vision()),
        text_config=transformers.GemmaConfig(**_text()),
        image_token_index=mc.IMAGE,
        projection_dim=48,
        hidden_size=48,
        vocab_size=mc.VOCAB,
    )
    model = transformers.PaliGemmaForConditionalGeneration(cfg).eval()
    folder = mc.save(model, tmp_path_factory.mktemp("paligemma"), mc.tokenizer(add_bos=False))
    return load_encoder(folder)


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    torch.manual_seed(1)
    cfg = transformers.Gemma3Config(
        vision_config=transformers.SiglipVisionConfig(**_vision()),
        text_config=transformers.Gemma3TextConfig(**_text(sliding_window=8)),
        mm_tokens_per_image=4,
        image_token_index=mc.IMAGE,
        boi_token_index=mc.BOI,
        eoi_token_index=mc.EOI,
    )
    model = transformers.Gemma3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # initialised to zeros: give the image a say
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.5)
    specials = ("<image>", "<start_of_image>", "<end_of_image>")
    folder = mc.save(model, tmp_path_factory.mktemp("gemma3"), mc.tokenizer(specials=specials))
    return load_encoder(folder)


def _paligemma_ids(enc, prompt):
    """What PaliGemmaProcessor builds: image tokens, BOS, the prompt and a newline."""
    return (
        [mc.IMAGE] * 16
        + [mc.BOS]
        + enc.tokenizer(prompt + "\n", add_special_tokens=False)["input_ids"]
    )


def _gemma3_ids(enc, prompt):
    """What Gemma3Processor builds from ``<start_of_image>`` (the word-level test tokenizer
    has no newline token, so the "\\n\\n" around the image are empty here)."""
    ids = enc.tokenizer(prompt)["input_ids"]
    return ids[:1] + [mc.BOI] + [mc.IMAGE] * 4 + [mc.EOI] + ids[1:]


CASES = {
    "paligemma": (PaliGemmaEncoder, 16, _paligemma_ids),
    "gemma3": (Gemma3Encoder, 4, _gemma3_ids),
}


@pytest.fixture(params=sorted(CASES))
def case(request, paligemma, gemma3):
    enc = {"paligemma": paligemma, "gemma3": gemma3}[request.param]
    cls, tokens, ids = CASES[request.param]
    return enc, cls, tokens, ids


def test_features_match_model(case):
    enc, cls, tokens, _ = case
    assert isinstance(enc, cls) and enc.stage == "vision" and enc.image_size == (SIZE, SIZE)
    x = mc.images()
    with torch.no_grad():
        own = enc.model.get_image_features(pixel_values=mc.reference_pixels(x, SIZE))
    feats = enc(x)
    assert feats.shape == (2, 16, 32)
    torch.testing.assert_close(feats, own.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.project(feats), own.pooler_output, atol=1e-5, rtol=1e-5)
    projected = cls(enc.model, stage="projected", mean=mc.MEAN, std=mc.STD)
    assert projected(x).shape == (2, tokens, 48)
    torch.testing.assert_close(projected(x), own.pooler_output, atol=1e-5, rtol=1e-5)


def test_gradients_and_certify(case):
    mc.check_gradients_and_certify(case[0])


def test_loglikelihood_matches_model_forward(case):
    enc, _, _, build = case

    def forward_logits(ids, n_target, x):
        types = (ids == mc.IMAGE).long()
        if isinstance(enc, Gemma3Encoder):
            pass  # Gemma3Processor: 1 on image tokens
        else:  # PaliGemmaProcessor with a suffix: 0 on the prefix, 1 on the suffix
            types = torch.zeros_like(ids)
            types[:, ids.shape[1] - n_target :] = 1
        pixels = mc.reference_pixels(x, SIZE)
        return enc.model(input_ids=ids, pixel_values=pixels, token_type_ids=types).logits

    mc.check_loglikelihood(enc, lambda p: build(enc, p), forward_logits)


def test_generate_matches_model_generate(case):
    enc, _, _, build = case

    def own_generate(x):
        ids = torch.tensor([build(enc, mc.PROMPT)])
        types = (ids == mc.IMAGE).long() if isinstance(enc, Gemma3Encoder) else ids * 0
        out = enc.model.generate(
            input_ids=ids,
            pixel_values=mc.reference_pixels(x, SIZE),
            token_type_ids=types,
            pad_token_id=mc.PAD,
            **mc.GREEDY,
        )
        return out[:, ids.shape[1] :]

    mc.check_generate(enc, own_generate)


def test_explicit_image_token_in_prompt(paligemma, gemma3):
    tok = paligemma.tokenizer
    assert paligemma.prompt_ids(tok, "<image> " + mc.PROMPT, 16) == _paligemma_ids(
        paligemma, mc.PROMPT
    )
    tok = gemma3.tokenizer
    expected = _gemma3_ids(gemma3, mc.PROMPT)
    assert gemma3.prompt_ids(tok, "<start_of_image> " + mc.PROMPT, 4) == expected
    assert gemma3.prompt_ids(tok, mc.PROMPT, 4) == expected


def test_smoothed_features_hand_back(case):
    mc.check_smoothed_hand_back(case[0])
