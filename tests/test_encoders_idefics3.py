"""Idefics3 and SmolVLM on tiny random models saved to disk and loaded through
``load_encoder(path)``.

The certified feature is the vision model's last hidden state (``stage="vision"``); the
projected stage is the connector output, ``get_image_features(...).pooler_output``. One
unsplit image at the vision model's resolution; handing features back is checked against the
model's own forward and ``generate`` on the processor's token layout for such an image.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import mllm_checks as mc  # noqa: E402

from featsmooth.encoders.idefics3 import Idefics3Encoder  # noqa: E402
from featsmooth.encoders.registry import load_encoder  # noqa: E402
from featsmooth.errors import InputError  # noqa: E402

SIZE, PATCH, TOKENS = 32, 8, 4  # 16 patches, pixel-shuffled by 2 into 4 tokens
SPECIALS = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")


def _config(kind):
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=SIZE,
        patch_size=PATCH,
    )
    text = dict(
        model_type="llama",
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
    cls = {"idefics3": transformers.Idefics3Config, "smolvlm": transformers.SmolVLMConfig}[kind]
    return cls(vision_config=vision, text_config=text, image_token_id=mc.IMAGE, scale_factor=2)


@pytest.fixture(scope="module", params=["idefics3", "smolvlm"])
def enc(request, tmp_path_factory):
    torch.manual_seed(0)
    cls = {
        "idefics3": transformers.Idefics3ForConditionalGeneration,
        "smolvlm": transformers.SmolVLMForConditionalGeneration,
    }[request.param]
    model = cls(_config(request.param)).eval()
    folder = tmp_path_factory.mktemp(request.param)
    return load_encoder(mc.save(model, folder, mc.tokenizer(specials=SPECIALS)))


def _ids(enc, prompt):
    """The processor's layout for one unsplit image placed at the start of the prompt."""
    ids = enc.tokenizer(prompt)["input_ids"]
    return ids[:1] + [mc.FAKE, mc.GLOBAL] + [mc.IMAGE] * TOKENS + [mc.FAKE] + ids[1:]


def test_features_match_model(enc):
    assert isinstance(enc, Idefics3Encoder) and enc.stage == "vision"
    assert enc.image_size == (SIZE, SIZE)
    x = mc.images()
    pixels = mc.reference_pixels(x, SIZE)
    with torch.no_grad():
        own = enc.model.get_image_features(pixel_values=pixels.unsqueeze(1))
    feats = enc(x)
    assert feats.shape == (2, 16, 32)
    torch.testing.assert_close(feats, own.last_hidden_state, atol=1e-5, rtol=1e-5)
    ref = torch.stack(list(own.pooler_output))
    assert ref.shape == (2, TOKENS, 48)
    torch.testing.assert_close(enc.project(feats), ref, atol=1e-5, rtol=1e-5)
    projected = Idefics3Encoder(enc.model, stage="projected", mean=mc.MEAN, std=mc.STD)
    torch.testing.assert_close(projected(x), ref, atol=1e-5, rtol=1e-5)


def test_gradients_and_certify(enc):
    mc.check_gradients_and_certify(enc)


def test_loglikelihood_matches_model_forward(enc):
    def forward_logits(ids, n_target, x):
        pixels = mc.reference_pixels(x, SIZE).unsqueeze(1)
        return enc.model(input_ids=ids, pixel_values=pixels).logits

    mc.check_loglikelihood(enc, lambda p: _ids(enc, p), forward_logits)


def test_generate_matches_model_generate(enc):
    def own_generate(x):
        ids = torch.tensor([_ids(enc, mc.PROMPT)])
        pixels = mc.reference_pixels(x, SIZE).unsqueeze(1)
        out = enc.model.generate(
            input_ids=ids, pixel_values=pixels, pad_token_id=mc.PAD, **mc.GREEDY
        )
        return out[:, ids.shape[1] :]

    mc.check_generate(enc, own_generate)


def test_prompt_layout(enc):
    tok = enc.tokenizer
    expected = _ids(enc, mc.PROMPT)
    assert enc.prompt_ids(tok, mc.PROMPT, TOKENS) == expected
    assert enc.prompt_ids(tok, "<image> " + mc.PROMPT, TOKENS) == expected
    assert enc.prompt_ids(tok, "User: <image> what", TOKENS)[1:4] == [
        tok.convert_tokens_to_ids("User:"),
        mc.FAKE,
        mc.GLOBAL,
    ]
    with pytest.raises(InputError, match="image tokens"):
        enc.prompt_ids(tok, "<image> <image> what", TOKENS)


def test_smoothed_features_hand_back(enc):
    mc.check_smoothed_hand_back(enc)
