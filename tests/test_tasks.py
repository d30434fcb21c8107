"""Zero-shot and retrieval tasks on small hand-made encoders with known answers."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featsmooth import ABSTAIN, SmoothedEncoder
from featsmooth.encoders.base import ImageEncoder
from featsmooth.errors import InputError
from featsmooth.tasks import (
    ZeroShotRecord,
    certified_accuracy,
    class_embeddings,
    clean_accuracy,
    flatten_captions,
    recall_at_k,
    retrieval_scores,
    zero_shot_certify,
    zero_shot_predict,
)

# ---- a tiny text-image encoder with an exactly known geometry ------------------------


class ChannelMeans(ImageEncoder):
    """``f(x)`` = the mean of each colour channel; texts are words naming a channel."""

    name = "channel-means"
    WORDS: ClassVar[dict[str, int]] = {"red": 0, "green": 1, "blue": 2}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))

    def encode_text(self, texts):
        out = torch.zeros(len(texts), 3)
        for i, t in enumerate(texts):
            for word, c in self.WORDS.items():
                if word in t:
                    out[i, c] += 1.0
            if "dark" in t:
                out[i] -= 0.25
        return F.normalize(out + 1e-3, dim=-1)


def _coloured(channel: int, high: float = 0.9, low: float = 0.1, size: int = 8) -> torch.Tensor:
    x = torch.full((3, size, size), low)
    x[channel] = high
    return x


@pytest.fixture
def enc():
    return ChannelMeans()


def test_class_embeddings_prompt_ensemble(enc):
    names = ["red", "green", "blue"]
    one = class_embeddings(enc, names)
    torch.testing.assert_close(one, enc.encode_text([f"a photo of a {n}." for n in names]))
    two = class_embeddings(enc, names, templates=("a {} thing", "a dark {} thing"))
    expected = F.normalize(
        enc.encode_text(["a red thing"]) + enc.encode_text(["a dark red thing"]), dim=-1
    )
    torch.testing.assert_close(two[0], expected[0])
    torch.testing.assert_close(two.norm(dim=-1), torch.ones(3))
    # through a SmoothedEncoder wrapper as well
    torch.testing.assert_close(class_embeddings(SmoothedEncoder(enc, 0.25), names), one)
    with pytest.raises(InputError, match="text encoder"):
        class_embeddings(SmoothedEncoder(lambda x: x.mean(dim=(2, 3)), 0.25), names)
    with pytest.raises(InputError, match="'\\{\\}'"):
        class_embeddings(enc, names, templates=("no slot",))


def test_zero_shot_predict(enc):
    images = torch.stack([_coloured(2), _coloured(0), _coloured(1)])
    emb = class_embeddings(enc, ["red", "green", "blue"])
    assert zero_shot_predict(enc, images, emb).tolist() == [2, 0, 1]
    assert zero_shot_predict(SmoothedEncoder(enc, 0.25), images, emb).tolist() == [2, 0, 1]
    with pytest.raises(InputError, match="dimension"):
        zero_shot_predict(enc, images, torch.eye(4))


# ---- certified zero-shot --------------------------------------------------------------


def _boundary_distance(x: torch.Tensor, a: int, b: int) -> float:
    """Exact l2 distance from ``x`` to the set where channel means ``a`` and ``b`` are equal.

    The smoothed classifier of ChannelMeans with identity class embeddings is symmetric
    under swapping two channels, so its decision boundary between a and b is this
    hyperplane: no certified radius can exceed this distance.
    """
    hw = x.shape[1] * x.shape[2]
    margin = float(x[a].mean() - x[b].mean())
    return margin / math.sqrt(2.0 / hw)


def test_zero_shot_certify_synthetic(enc):
    images = torch.stack([_coloured(0), _coloured(1), _coloured(2, high=0.6, low=0.4)])
    labels = [0, {1, 2}, 0]  # the third is labelled wrong on purpose
    emb = torch.eye(3)
    sm = SmoothedEncoder(enc, sigma=0.25)
    records = zero_shot_certify(
        sm, images, labels, emb, radii=[0, 0.5], n0=32, n=400, alpha=0.001,
        names=["r", "g", "b"],
    )  # fmt: skip
    assert [r.clean_prediction for r in records] == [0, 1, 2]
    assert [r.prediction for r in records] == [0, 1, 2]
    assert [r.correct() for r in records] == [True, True, False]
    assert records[1].label == frozenset({1, 2}) and records[0].name == "r"
    assert clean_accuracy(records) == pytest.approx(2 / 3)
    for rec, x in zip(records, images):
        a = rec.prediction
        limit = min(_boundary_distance(x, a, b) for b in range(3) if b != a)
        for method in ("margin", "fcsb", "cohen"):
            r = rec.radius(method)
            assert math.isnan(r) or r <= limit + 1e-9, (method, r, limit)
    # clear images certify a real radius; for the pairwise margin it is capped by the
    # Lipschitz bound sigma * Phi^-1((1 + <w, f>) / 2) = 0.25 * Phi^-1(0.808) ~ 0.22
    assert records[0].margin_radius > 0.1 and records[1].margin_radius > 0.1
    assert records[0].cohen_radius > 0.1
    radii = [0.0, 0.25, 0.5, 1.0, 100.0]
    acc = certified_accuracy(records, radii)
    assert acc[0] == pytest.approx(2 / 3) and acc[-1] == 0.0
    assert np.all(np.diff(acc) <= 0)
    # the records agree with the certificates they came from
    for rec in records:
        for r in radii:
            for m in ("margin", "fcsb", "cohen"):
                expected = any(rec.certificate.certified(r, m, label=c) for c in rec.label)
                assert rec.certified(r, m) == expected
    # a JSON round trip keeps the scores
    dicts = [r.to_dict() for r in records]
    assert dicts[0]["margin_correct"] is True and "certificate" in dicts[0]
    for m in ("margin", "fcsb", "cohen"):
        np.testing.assert_array_equal(
            certified_accuracy(dicts, radii, m), certified_accuracy(records, radii, m)
        )


def test_zero_shot_certify_does_not_depend_on_batching(enc):
    images = torch.stack([_coloured(0), _coloured(1, high=0.55, low=0.45), _coloured(2)])
    sm = SmoothedEncoder(enc, sigma=0.5)
    kwargs = {"n0": 16, "n": 64, "alpha": 0.01, "seed": 3}
    whole = zero_shot_certify(sm, images, [0, 1, 2], torch.eye(3), **kwargs)
    split = zero_shot_certify(sm, images, [0, 1, 2], torch.eye(3), batch_size=1, **kwargs)
    assert [r.to_dict() for r in whole] == [r.to_dict() for r in split]
    other = zero_shot_certify(sm, images, [0, 1, 2], torch.eye(3), **{**kwargs, "seed": 4})
    assert [r.margin_radius for r in other] != [r.margin_radius for r in whole]


def test_certified_accuracy_counts_by_hand():
    def rec(label, pred, radius):
        return ZeroShotRecord(0, None, frozenset(label), pred, pred, pred, pred,
                              radius, radius, radius)  # fmt: skip

    records = [
        rec({1}, 1, 0.5),  # correct, certified to 0.5
        rec({1}, 2, 2.0),  # wrong
        rec({3}, ABSTAIN, float("nan")),  # abstains
        rec({4}, 4, 1.0),  # correct, certified to 1.0
        rec(set(), 0, 9.0),  # unlabelled: ignored
    ]
    np.testing.assert_allclose(
        certified_accuracy(records, [0, 0.5, 0.75, 1.0]), [0.5, 0.25, 0.25, 0]
    )
    with pytest.raises(InputError):
        certified_accuracy(records, [-1.0])
    with pytest.raises(InputError):
        certified_accuracy(records, [0.1], method="vote")
    with pytest.raises(InputError, match="labelled"):
        certified_accuracy(records[-1:], [0.1])


def test_zero_shot_certify_input_errors(enc):
    sm = SmoothedEncoder(enc, sigma=0.25)
    images = torch.stack([_coloured(0)])
    with pytest.raises(InputError, match="labels"):
        zero_shot_certify(sm, images, [0, 1], torch.eye(3))
    with pytest.raises(InputError, match="SmoothedEncoder"):
        zero_shot_certify(enc, images, [0], torch.eye(3))


# ---- retrieval ------------------------------------------------------------------------


def test_recall_at_k_known_answer():
    images = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    texts = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # image 0: its best text
            [0.0, 0.2, 1.0],  # image 0 (but looks like image 2)
            [0.2, 0.0, 1.0],  # image 1 (looks like image 2: a miss)
            [0.0, 0.1, 1.0],  # image 2
        ]
    )
    owner = [0, 0, 1, 2]
    out = recall_at_k(images, texts, owner, ks=(1, 2, 3))
    # cosines (image i, text j) are the i-th coordinates of the unit texts:
    #   image 0: [.994, 0, .196, 0]; image 1: [.110, .196, 0, .0995]; image 2: [0, .981, .981, .995]
    sim = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    assert sim[1].argsort(descending=True).tolist() == [1, 0, 3, 2]
    # image -> text: images 0 and 2 rank a caption first; image 1's only caption is 4th of 4
    assert out["i2t_r@1"] == pytest.approx(2 / 3)
    assert out["i2t_r@3"] == pytest.approx(2 / 3)
    assert out["i2t_mean_rank"] == pytest.approx((1 + 4 + 1) / 3)
    # text -> image: texts 0 and 3 find their image first; texts 1 and 2 find it third
    assert out["t2i_r@1"] == pytest.approx(2 / 4)
    assert out["t2i_r@2"] == pytest.approx(2 / 4)
    assert out["t2i_r@3"] == pytest.approx(1.0)
    assert out["t2i_mean_rank"] == pytest.approx((1 + 3 + 3 + 1) / 4)


def _naive_recall(img, txt, owner, k):
    sim = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    i2t = [bool(set(sim[i].topk(k).indices.tolist()) & {j for j, o in enumerate(owner) if o == i})
           for i in range(img.shape[0])]  # fmt: skip
    t2i = [owner[j] in sim[:, j].topk(k).indices.tolist() for j in range(txt.shape[0])]
    return float(np.mean(i2t)), float(np.mean(t2i))


def test_recall_matches_a_naive_sort():
    g = torch.Generator().manual_seed(1)
    img = torch.randn(12, 6, generator=g)
    owner = [i for i in range(12) for _ in range(1 + i % 3)]
    txt = img[owner] + 0.9 * torch.randn(len(owner), 6, generator=g)  # noisy captions
    out = recall_at_k(img, txt, owner, ks=(1, 3, 5))
    for k in (1, 3, 5):
        i2t, t2i = _naive_recall(img, txt, owner, k)
        assert out[f"i2t_r@{k}"] == pytest.approx(i2t)
        assert out[f"t2i_r@{k}"] == pytest.approx(t2i)


def test_recall_ties_count_against_the_answer():
    img = torch.ones(4, 3)
    txt = torch.ones(4, 3)
    out = recall_at_k(img, txt, [0, 1, 2, 3], ks=(1, 3, 4))
    assert out["i2t_r@1"] == 0.0 and out["t2i_r@3"] == 0.0
    assert out["i2t_r@4"] == 1.0 and out["t2i_r@4"] == 1.0


def test_recall_input_errors():
    with pytest.raises(InputError, match="at least one text"):
        recall_at_k(torch.eye(3), torch.eye(3)[:2], [0, 1])
    with pytest.raises(InputError, match="dim"):
        recall_at_k(torch.eye(3), torch.ones(3, 2), [0, 1, 2])


def test_retrieval_scores_clean_and_smoothed(enc):
    images = torch.stack([_coloured(0), _coloured(1), _coloured(2)])
    captions = [["a red square", "something red"], "a green square", ["blue"]]
    texts, owner = flatten_captions(captions)
    assert len(texts) == 4 and owner.tolist() == [0, 0, 1, 2]
    clean = retrieval_scores(enc, images, captions)
    assert clean["i2t_r@1"] == 1.0 and clean["t2i_r@1"] == 1.0
    sm = SmoothedEncoder(enc, sigma=0.25)
    smooth = retrieval_scores(sm, images, captions, smoothed=True, n=16)
    assert smooth["i2t_r@1"] == 1.0 and smooth["t2i_r@1"] == 1.0
    with pytest.raises(InputError, match="SmoothedEncoder"):
        retrieval_scores(enc, images, captions, smoothed=True)
    with pytest.raises(InputError, match="caption lists"):
        retrieval_scores(enc, images, captions[:2])
