"""Shared pieces of the tests of multimodal LLM encoders on tiny random models.

Each family test builds a tiny model from a config, saves it with ``save_pretrained`` (plus a
word-level tokenizer and a preprocessor_config.json whose mean/std are deliberately not the
family's defaults) and loads it back through ``load_encoder(path)``; the checks here compare
the encoder with the model's own functions on pixels preprocessed independently.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
import transformers

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "a", "photo", "of", "cat", "dog", "car"]
WORDS += ["Question:", "Answer:", "what", "is", "this", "?", "it", "the", "red", "blue", "big"]
WORDS += ["<fake_token_around_image>", "<global-img>", "User:", "Assistant:", "<end_of_utterance>"]
WORDS += ["<start_of_image>", "<end_of_image>"]
PAD, UNK, BOS, EOS, IMAGE = 0, 1, 2, 3, 4
FAKE, GLOBAL = WORDS.index("<fake_token_around_image>"), WORDS.index("<global-img>")
BOI, EOI = WORDS.index("<start_of_image>"), WORDS.index("<end_of_image>")
VOCAB = 40
MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)  # not any family's: proves the file is read
PROMPT = "Question: what is this ? Answer:"
GREEDY = dict(max_new_tokens=4, do_sample=False, eos_token_id=None)


def tokenizer(
    add_bos: bool = True,
    specials: tuple[str, ...] = ("<image>",),
    words: list[str] = WORDS,
    append_eos: bool = False,
):
    """A word-level fast tokenizer over ``words`` (which hold ``<pad> <unk> <s> </s>``),
    splitting on whitespace; ``<s>`` before and, with ``append_eos``, ``</s>`` after the text;
    ``specials`` are additional special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    ends = [w for w, on in (("<s>", add_bos), ("</s>", append_eos)) if on]
    if ends:
        single = " ".join(["<s>"] * add_bos + ["$A"] + ["</s>"] * append_eos)
        special = [(w, words.index(w)) for w in ends]
        tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=special)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=list(specials),
    )


def save(model, folder, tok=None, size=32, **extra):
    model.save_pretrained(folder)
    if tok is not None:
        tok.save_pretrained(folder)
    pre = {"image_mean": list(MEAN), "image_std": list(STD), "size": size, **extra}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


def reference_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def images(b=2, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


def check_gradients_and_certify(enc) -> None:
    """Frozen parameters, gradients reach the pixels, and certify runs on the features."""
    from featsmooth import SmoothedEncoder

    assert all(not p.requires_grad for p in enc.parameters())
    x = images(1).requires_grad_(True)
    enc(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    smoothed = SmoothedEncoder(enc, sigma=0.25, batch_size=16)
    cert = smoothed.certify(images(1), n0=8, n=32, alpha=0.01, seed=0)[0]
    assert -1.0 <= float(cert.score_lower) <= 1.0


def check_loglikelihood(enc, prompt_ids, forward_logits, target="a red car") -> None:
    """loglikelihood equals the model's own forward on the same tokens, and is differentiable.

    ``prompt_ids(prompt) -> list[int]`` builds the ids as the family's processor would;
    ``forward_logits(ids, pixels) -> logits`` runs the model's own forward.
    """
    x = images(1).requires_grad_(True)
    ll = enc.loglikelihood(enc(x), PROMPT, target)
    assert ll.shape == (1,) and ll.item() < 0
    ll.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    target_ids = enc.tokenizer(target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids(PROMPT) + target_ids])
    with torch.no_grad():
        logits = forward_logits(ids, len(target_ids), x.detach())
    logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    n = len(target_ids)
    expected = sum(logp[ids.shape[1] - 1 - n + k, t] for k, t in enumerate(target_ids))
    torch.testing.assert_close(ll.detach()[0], expected, atol=1e-4, rtol=1e-5)
    # a batch of two prompts of different lengths (left padding) equals the single runs
    feats = enc(images(2))
    prompts, targets = [PROMPT, "what is it ?"], ["a cat", "the big blue dog"]
    with torch.no_grad():
        batch = enc.loglikelihood(feats, prompts, targets)
        single = [enc.loglikelihood(feats[i : i + 1], prompts[i], targets[i]) for i in range(2)]
    torch.testing.assert_close(batch, torch.cat(single), atol=1e-4, rtol=1e-4)


def check_generate(enc, own_generate) -> None:
    """Greedy generation with the encoder's features handed back equals the model's own
    ``generate`` on the pixels (``own_generate(pixels_in_0_1) -> new token ids``)."""
    from featsmooth.encoders.hf import generate_with_image_features

    x = images(1)
    new = generate_with_image_features(enc, None, enc(x), PROMPT, **GREEDY)
    ref = own_generate(x)
    assert new.shape == (1, GREEDY["max_new_tokens"])
    assert new.tolist() == ref.tolist()
    texts = enc.generate(enc(images(2)), PROMPT, return_text=True, **GREEDY)
    assert isinstance(texts, list) and len(texts) == 2


def check_smoothed_hand_back(enc) -> None:
    """Smoothed features, restored to token shape, go back to the language model."""
    from featsmooth import SmoothedEncoder
    from featsmooth.encoders.hf import restore_token_features

    x = images(2)
    flat = SmoothedEncoder(enc, sigma=0.25, batch_size=8).predict_feature(x, n=4, seed=0)
    clean = enc(x)
    feats = restore_token_features(flat, clean)
    assert feats.shape == clean.shape
    ll = enc.loglikelihood(feats, PROMPT, "a cat")
    assert ll.shape == (2,) and torch.isfinite(ll).all()
    assert enc.generate(feats, PROMPT, max_new_tokens=2, do_sample=False).shape[0] == 2
