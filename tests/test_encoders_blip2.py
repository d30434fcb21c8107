"""BLIP-2 on a tiny random model saved to disk and loaded back through ``load_encoder(path)``.

The certified feature is the Q-Former output (``stage="qformer"``); the ViT tokens and the
projected language-model embeddings are the other stages. Each is checked against
``Blip2ForConditionalGeneration.get_image_features``; handing features back is checked
against the model's own forward and ``generate``.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import mllm_checks as mc  # noqa: E402

from featsmooth.encoders.blip2 import Blip2Encoder, InstructBlipEncoder  # noqa: E402
from featsmooth.encoders.registry import load_encoder  # noqa: E402
from featsmooth.errors import InputError  # noqa: E402

SIZE, QUERIES = 32, 4


def _config(cls):
    return cls(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=SIZE,
            patch_size=8,
        ),
        qformer_config=dict(
            vocab_size=mc.VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            encoder_hidden_size=32,
            max_position_embeddings=64,
        ),
        text_config=transformers.OPTConfig(
            vocab_size=mc.VOCAB,
            hidden_size=48,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            word_embed_proj_dim=48,
            bos_token_id=mc.BOS,
            eos_token_id=mc.EOS,
            pad_token_id=mc.PAD,
        ),
        num_query_tokens=QUERIES,
        image_token_index=mc.IMAGE,
    )


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.Blip2ForConditionalGeneration(_config(transformers.Blip2Config)).eval()
    return mc.save(model, tmp_path_factory.mktemp("blip2"), mc.tokenizer())


@pytest.fixture(scope="module")
def blip2(blip2_dir):
    return load_encoder(blip2_dir)


def _ids(enc, prompt):
    """What Blip2Processor builds: the query image tokens, then the tokenized prompt."""
    return [mc.IMAGE] * QUERIES + enc.tokenizer(prompt)["input_ids"]


def test_features_match_model_at_every_stage(blip2, blip2_dir):
    assert isinstance(blip2, Blip2Encoder) and blip2.stage == "qformer"
    assert blip2.name == str(blip2_dir) and blip2.image_size == (SIZE, SIZE)
    x = mc.images()
    pixels = mc.reference_pixels(x, SIZE)
    with torch.no_grad():
        own = blip2.model.get_image_features(pixel_values=pixels)
    feats = blip2(x)
    assert feats.shape == (2, QUERIES, 32)
    torch.testing.assert_close(feats, own.qformer_outputs.last_hidden_state, atol=1e-5, rtol=1e-5)
    for stage, ref in (("vision", own.last_hidden_state), ("projected", own.pooler_output)):
        enc = Blip2Encoder(blip2.model, stage=stage, mean=mc.MEAN, std=mc.STD)
        torch.testing.assert_close(enc(x), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(enc.to_language(enc(x)), own.pooler_output, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(feats[0], feats[1])


def test_gradients_and_certify(blip2):
    mc.check_gradients_and_certify(blip2)


def test_loglikelihood_matches_model_forward(blip2):
    def forward_logits(ids, n_target, x):
        pixels = mc.reference_pixels(x, SIZE)
        return blip2.model(pixel_values=pixels, input_ids=ids).logits

    mc.check_loglikelihood(blip2, lambda p: _ids(blip2, p), forward_logits)


@pytest.mark.parametrize("stage", ["qformer", "vision"])
def test_generate_matches_model_generate(blip2, stage):
    enc = Blip2Encoder(
        blip2.model, stage=stage, tokenizer=blip2.tokenizer, mean=mc.MEAN, std=mc.STD
    )

    def own_generate(x):
        ids = torch.tensor([_ids(blip2, mc.PROMPT)])
        out = blip2.model.generate(
            pixel_values=mc.reference_pixels(x, SIZE),
            input_ids=ids,
            pad_token_id=mc.PAD,
            **mc.GREEDY,
        )
        return out[:, ids.shape[1] :]

    mc.check_generate(enc, own_generate)


def test_prompt_with_explicit_image_token(blip2):
    feats = blip2(mc.images(1))
    with torch.no_grad():
        a = blip2.loglikelihood(feats, "<image> " + mc.PROMPT, "a cat")
        ids = [mc.IMAGE] * QUERIES + blip2.tokenizer(mc.PROMPT)["input_ids"]
        assert blip2.prompt_ids(blip2.tokenizer, mc.PROMPT, QUERIES) == ids
    assert torch.isfinite(a).all()
    with pytest.raises(InputError, match="stage"):
        blip2.loglikelihood(feats, mc.PROMPT, "a cat", stage="pixels")


def test_smoothed_features_hand_back(blip2):
    mc.check_smoothed_hand_back(blip2)


# --------------------------------------------------------------------------- InstructBLIP


@pytest.fixture(scope="module")
def instructblip(tmp_path_factory):
    torch.manual_seed(1)
    cfg = _config(transformers.InstructBlipConfig)
    model = transformers.InstructBlipForConditionalGeneration(cfg).eval()
    folder = mc.save(model, tmp_path_factory.mktemp("instructblip"), mc.tokenizer())
    mc.tokenizer().save_pretrained(folder / "qformer_tokenizer")  # as the processor saves it
    return load_encoder(folder)


def _own_instructblip(enc, x, text):
    q = enc.qformer_tokenizer([text], return_tensors="pt")
    pixels = mc.reference_pixels(x, SIZE)
    return pixels, q["input_ids"], q["attention_mask"]


def test_instructblip_features_match_model(instructblip):
    enc = instructblip
    assert isinstance(enc, InstructBlipEncoder) and enc.stage == "vision"
    x = mc.images()
    pixels, q_ids, q_mask = _own_instructblip(enc, x, "")
    with torch.no_grad():
        own = enc.model.get_image_features(
            pixel_values=pixels,
            qformer_input_ids=q_ids.repeat(2, 1),
            qformer_attention_mask=q_mask.repeat(2, 1),
        )
    torch.testing.assert_close(enc(x), own.last_hidden_state, atol=1e-5, rtol=1e-5)
    queries = own.qformer_outputs.last_hidden_state[:, :QUERIES]
    for stage, ref in (("qformer", queries), ("projected", own.pooler_output)):
        other = InstructBlipEncoder(
            enc.model,
            stage=stage,
            mean=mc.MEAN,
            std=mc.STD,
            qformer_tokenizer=enc.qformer_tokenizer,
        )
        torch.testing.assert_close(other(x), ref, atol=1e-5, rtol=1e-5)
    mc.check_gradients_and_certify(enc)


def test_instructblip_hand_back_uses_the_prompt_as_instruction(instructblip):
    enc = instructblip

    def forward_logits(ids, n_target, x):
        pixels, q_ids, q_mask = _own_instructblip(enc, x, mc.PROMPT)
        return enc.model(
            pixel_values=pixels,
            input_ids=ids,
            qformer_input_ids=q_ids,
            qformer_attention_mask=q_mask,
        ).logits

    def own_generate(x):
        pixels, q_ids, q_mask = _own_instructblip(enc, x, mc.PROMPT)
        ids = torch.tensor([_ids(enc, mc.PROMPT)])
        out = enc.model.generate(
            pixel_values=pixels,
            qformer_input_ids=q_ids,
            qformer_attention_mask=q_mask,
            input_ids=ids,
            pad_token_id=mc.PAD,
            **mc.GREEDY,
        )
        return out[:, ids.shape[1] :]

    mc.check_loglikelihood(enc, lambda p: _ids(enc, p), forward_logits)
    mc.check_generate(enc, own_generate)
    mc.check_smoothed_hand_back(enc)


# --------------------------------------------------------------------------- Flan-T5 variant


@pytest.fixture(scope="module")
def blip2_t5(tmp_path_factory):
    torch.manual_seed(2)
    cfg = _config(transformers.Blip2Config)
    cfg.text_config = transformers.T5Config(
        vocab_size=mc.VOCAB,
        d_model=48,
        d_kv=24,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        decoder_start_token_id=mc.PAD,
        eos_token_id=mc.EOS,
        pad_token_id=mc.PAD,
    )
    cfg.use_decoder_only_language_model = False
    model = transformers.Blip2ForConditionalGeneration(cfg).eval()
    return load_encoder(mc.save(model, tmp_path_factory.mktemp("blip2_t5"), mc.tokenizer()))


def test_flan_t5_variant_hands_back_through_encoder_and_decoder(blip2_t5):
    enc = blip2_t5
    assert enc.seq2seq and enc.stage == "qformer"
    x = mc.images(1)
    pixels = mc.reference_pixels(x, SIZE)
    ids = torch.tensor([_ids(enc, mc.PROMPT)])
    new = enc.generate(enc(x), mc.PROMPT, **mc.GREEDY)
    own = enc.model.generate(pixel_values=pixels, input_ids=ids, **mc.GREEDY)
    assert new.tolist() == own[:, 1:].tolist()

    target = enc.tokenizer("a red car", add_special_tokens=False)["input_ids"]
    ll = enc.loglikelihood(enc(x), mc.PROMPT, "a red car")
    with torch.no_grad():
        logits = enc.model(pixel_values=pixels, input_ids=ids, labels=torch.tensor([target])).logits
    expected = torch.log_softmax(logits[0], -1)[torch.arange(3), torch.tensor(target)].sum()
    torch.testing.assert_close(ll.detach()[0], expected, atol=1e-4, rtol=1e-5)
    feats = enc(mc.images(2))
    with torch.no_grad():
        batch = enc.loglikelihood(feats, [mc.PROMPT, "what is it ?"], ["a cat", "the big dog"])
        one = enc.loglikelihood(feats[1:], "what is it ?", "the big dog")
    torch.testing.assert_close(batch[1:], one, atol=1e-4, rtol=1e-4)
