"""Caption/VQA metrics on hand-computed cases, and the MLLM path on a tiny random LLaVA.

CIDEr-D cases are computed by hand from the definition (featsmooth/tasks/metrics.py):
with N images in the corpus an n-gram found in the references of exactly one image has
idf log(N) - log(1) = log(N), one found in all N has idf 0; a caption identical to its only
reference has cosine 1 at every n-gram order it has, so it scores 10 * (orders present)/4.
"""

from __future__ import annotations

import math

import pytest
import torch

from featsmooth.errors import InputError
from featsmooth.tasks.metrics import cider_d, normalize_answer, tokenize, vqa_accuracy, vqa_score

# ------------------------------------------------------------------ CIDEr-D


def test_cider_identical_caption_scores_ten():
    score, per = cider_d(
        ["a cat sits on the mat", "dog runs"], [["a cat sits on the mat"], ["bird flies"]]
    )
    # image 0: every order 1-4 present, cosine 1 each -> 10; image 1: no n-gram of its
    # candidate occurs in its references -> 0
    assert per.tolist() == pytest.approx([10.0, 0.0])
    assert score == pytest.approx(5.0)


def test_cider_three_words_lack_four_grams():
    _, per = cider_d(["red big car", "x"], [["red big car"], ["blue sky"]])
    assert per[0] == pytest.approx(7.5)  # orders 1-3 give 1, order 4 gives 0


def test_cider_clipping_of_repeated_words():
    # unigrams: hyp {cat: 2L}, ref {cat: L, dog: L} with L = log 2:
    # min(2L, L) * L / (2L * sqrt(2) L) = 1 / (2 sqrt 2); bigram "cat cat" is not in the
    # reference; same bigram length -> no penalty; mean over 4 orders, times 10.
    _, per = cider_d(["cat cat", "x"], [["cat dog"], ["bird fish"]])
    assert per[0] == pytest.approx(10 / (8 * math.sqrt(2)))
    # plain CIDEr (no clipping) would give 10 * (1/sqrt 2)/4; the clipped value is half
    assert per[0] == pytest.approx(0.5 * 10 * (1 / math.sqrt(2)) / 4)


def test_cider_shared_ngrams_have_zero_weight_and_single_image_is_zero():
    # "a photo" appears in both images' references: idf 0, so matching it scores nothing
    _, per = cider_d(["a photo", "a photo"], [["a photo of cats"], ["a photo of dogs"]])
    assert per.tolist() == pytest.approx([0.0, 0.0])
    score, _ = cider_d(["a cat"], [["a cat"]])  # log(1) = 0: the reference code's quirk
    assert score == 0.0


def test_cider_length_penalty_and_multiple_references():
    # candidate "cat dog" vs refs of image 0: "cat dog" (match) and "cat dog bird" (longer)
    _, per = cider_d(["cat dog", "x"], [["cat dog", "cat dog bird"], ["fish"]])
    L = math.log(2)
    # ref 1: identical -> orders 1 and 2 give 1 each -> 2/4
    s1 = 2 / 4
    # ref 2: unigrams cos = 2L^2/(sqrt2 L * sqrt3 L); bigrams cos = L^2/(L * sqrt2 L);
    # bigram lengths 1 vs 2 -> penalty exp(-1/72)
    pen = math.exp(-1 / 72)
    s2 = (2 / math.sqrt(6) + 1 / math.sqrt(2)) * pen / 4
    assert per[0] == pytest.approx(10 * (s1 + s2) / 2)
    assert L > 0


def test_cider_input_checks_and_tokenize():
    assert tokenize("A Cat, on the MAT!") == ["a", "cat", "on", "the", "mat"]
    with pytest.raises(InputError):
        cider_d(["a"], [["a"], ["b"]])
    with pytest.raises(InputError):
        cider_d(["a", "b"], [["a"], []])


# ------------------------------------------------------------------ VQA


def test_vqa_accuracy_leave_one_out():
    assert vqa_accuracy("Two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    # 3 of 10 humans: 3/10 subsets keep 2 matches (2/3), 7/10 keep 3 (1) -> 0.9
    assert vqa_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("no", ["yes"] * 10) == 0.0
    score, per = vqa_score(["the dog.", "blue"], [["dog"] * 10, ["red"] * 10])
    assert per.tolist() == [1.0, 0.0] and score == 0.5


def test_vqa_normalisation():
    assert normalize_answer("The Dog.") == "dog"
    assert normalize_answer("an apple") == "apple"
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer("dont know") == "don't know"
    assert normalize_answer("yes!") == "yes"
    assert normalize_answer("10,000") == "10000"
    with pytest.raises(InputError):
        vqa_accuracy("a", ["a"])


# ------------------------------------------------------------------ tiny LLaVA end to end

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "a", "photo", "of", "cat", "dog", "car"]
WORDS += ["USER:", "ASSISTANT:", "what", "is", "this", "?", "it", "the", "red", "blue", "big"]
PAD, BOS, EOS, IMAGE = 0, 2, 3, 4
PROMPT = "USER: <image> what is this ? ASSISTANT:"


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", BOS)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<image>"],
    )


@pytest.fixture(scope="module")
def tower():
    from featsmooth.encoders.hf import LlavaVisionTower

    torch.manual_seed(3)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(
            **small, image_size=32, patch_size=8, projection_dim=32
        ),
        text_config=transformers.LlamaConfig(
            **{**small, "hidden_size": 48},
            vocab_size=32,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        ),
        image_token_id=IMAGE,
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    return LlavaVisionTower(model, tokenizer=_tokenizer()).eval()


def _images(b=2):
    return torch.rand((b, 3, 40, 40), generator=torch.Generator().manual_seed(0))


def test_caption_from_smoothed_features(tower):
    from featsmooth import SmoothedEncoder
    from featsmooth.tasks.captioning import caption, image_features

    sm = SmoothedEncoder(tower, sigma=0.25, batch_size=16)
    x = _images()
    clean = image_features(tower, x)
    smooth = image_features(tower, x, smoothed=sm, n=4, seed=1)
    assert smooth.shape == clean.shape == (2, 16, 32)
    # smoothed features keep the clean norm but differ in direction (noise moved them)
    assert torch.allclose(smooth.flatten(1).norm(dim=1), clean.flatten(1).norm(dim=1), rtol=1e-4)
    cos = torch.nn.functional.cosine_similarity(smooth.flatten(1), clean.flatten(1), dim=1)
    assert bool((cos < 0.9999).all()) and bool((cos > 0).all())
    refs = [["a photo of a cat"], ["a red car"]]
    res = caption(tower, x, refs, prompt=PROMPT, smoothed=sm, n=4, max_new_tokens=3)
    assert len(res.texts) == 2 and all(isinstance(t, str) for t in res.texts)
    assert res.smoothed == {"sigma": 0.25, "draws": 4}
    assert res.score is not None and math.isfinite(res.score) and res.per_item.shape == (2,)
    # greedy decoding from the same (seeded) smoothed features is reproducible
    again = caption(tower, x, refs, prompt=PROMPT, smoothed=sm, n=4, max_new_tokens=3)
    assert again.texts == res.texts


def test_vqa_answers(tower):
    from featsmooth.tasks.captioning import answer

    res = answer(
        tower,
        _images(),
        ["what is this ?", "what is this ?"],
        [["cat"] * 10, ["car"] * 10],
        template="USER: <image> {question} ASSISTANT:",
        max_new_tokens=2,
    )
    assert len(res.texts) == 2 and res.metric == "vqa_accuracy"
    assert 0.0 <= res.score <= 1.0


def test_text_attack_objective_is_differentiable(tower):
    from featsmooth import SmoothedEncoder
    from featsmooth.tasks.captioning import loglik_fn, text_attack

    sm = SmoothedEncoder(tower, sigma=0.25, batch_size=16)
    x = _images().requires_grad_(True)
    ll = loglik_fn(tower, PROMPT, smoothed=sm, eot_draws=2)(x, ["a cat", "a dog"])
    assert ll.shape == (2,) and torch.isfinite(ll).all()
    (grad,) = torch.autograd.grad(ll.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # a targeted PGD on the clean tower raises the target's log-likelihood
    res = text_attack(
        tower, _images(), "a cat", prompt=PROMPT, eps="16/255", steps=2, random_start=False
    )
    assert (res.objective >= res.clean_objective - 1e-6).all()
    assert float(res.objective.sum()) > float(res.clean_objective.sum())
    assert float((res.adv_images - _images()).abs().max()) <= 16 / 255 + 1e-6
