"""Caption and VQA metrics in numpy, with no pycocoevalcap / Java dependency.

CIDEr-D (Vedantam, Zitnick, Parikh, "CIDEr: Consensus-based Image Description Evaluation",
CVPR 2015; the "D" variant of the coco-caption code, ``pyciderevalcap/ciderD``), computed
exactly as that code does on already tokenised text:

* n-grams of order 1-4 of each caption, counted (term frequency);
* document frequency ``df(g)`` = number of *images* whose reference set contains ``g``;
  weight of a count ``tf * (log(N) - log(max(1, df(g))))`` with ``N`` the number of images
  in the corpus (so a corpus of one image scores 0, as in the reference code);
* per order ``n``: ``sum_g min(v_hyp(g), v_ref(g)) * v_ref(g) / (|v_hyp| |v_ref|)`` (the
  clipping of CIDEr-D), times the Gaussian length penalty ``exp(-(l_hyp - l_ref)^2 /
  (2 * 6^2))`` where a caption's "length" is its number of *bigrams* (the reference code
  counts ``n == 1`` with 0-based n);
* averaged over the 4 orders, averaged over the references, times 10.

Verification: ``tests/test_captioning.py`` checks hand-computed cases (a caption identical
to its only reference in a two-image corpus with disjoint vocabularies scores 10 when it
has at least four words and 7.5 with three; a repeated word is clipped to
``10 / (8 sqrt 2)``; n-grams shared by every image carry zero weight; the length penalty).

Tokenisation. coco-caption runs the Stanford PTB tokenizer (Java) first; :func:`tokenize`
is a close pure-Python stand-in: lowercase, drop the punctuation that PTB tokenisation
separates and coco-caption then removes, split on whitespace. Scores on raw text can
differ slightly from the official ones where PTB splits differently (e.g. ``"don't"``).

VQA accuracy (Antol et al., ICCV 2015; the official ``vqaEval.py``): an answer scores
``min(#humans who gave it / 3, 1)``, averaged over the 10 leave-one-out subsets of the 10
human answers; answers are normalised (lowercase, punctuation, number words to digits,
articles removed, common contractions restored). Unlike ``vqaEval.py``, which assumes the
ground-truth answers were normalised when the dataset was built, the same normalisation is
applied to the human answers here.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from featsmooth.errors import InputError

CIDER_N = 4
CIDER_SIGMA = 6.0

_PUNCT_TOKENS = re.compile(r"[^\w\s']|_")


def tokenize(text: str) -> list[str]:
    """Lowercase, strip punctuation (keeping apostrophes inside words), split on spaces."""
    if not isinstance(text, str):
        raise InputError(f"a caption must be a string, got {type(text).__name__}")
    text = _PUNCT_TOKENS.sub(" ", text.lower())
    return [t.strip("'") for t in text.split() if t.strip("'")]


def _ngrams(tokens: Sequence[str], n: int = CIDER_N) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i : i + k])] += 1
    return counts


def _vector(
    counts: Counter, df: dict[tuple[str, ...], float], log_n: float, n: int
) -> tuple[list[dict[tuple[str, ...], float]], np.ndarray, int]:
    vec: list[dict[tuple[str, ...], float]] = [defaultdict(float) for _ in range(n)]
    norm = np.zeros(n)
    length = 0
    for gram, tf in counts.items():
        order = len(gram) - 1
        weight = float(tf) * (log_n - math.log(max(1.0, df.get(gram, 0.0))))
        vec[order][gram] = weight
        norm[order] += weight**2
        if order == 1:  # as in the reference code: the number of bigrams
            length += tf
    return vec, np.sqrt(norm), length


def _similarity(
    hyp: tuple[list[dict], np.ndarray, int],
    ref: tuple[list[dict], np.ndarray, int],
    n: int,
    sigma: float,
) -> np.ndarray:
    vec_h, norm_h, len_h = hyp
    vec_r, norm_r, len_r = ref
    delta = float(len_h - len_r)
    val = np.zeros(n)
    for k in range(n):
        for gram, weight in vec_h[k].items():
            ref_weight = vec_r[k].get(gram, 0.0)
            val[k] += min(weight, ref_weight) * ref_weight
        if norm_h[k] != 0 and norm_r[k] != 0:
            val[k] /= norm_h[k] * norm_r[k]
        val[k] *= math.exp(-(delta**2) / (2 * sigma**2))
    return val


def cider_d(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    n: int = CIDER_N,
    sigma: float = CIDER_SIGMA,
    pretokenized: bool = False,
) -> tuple[float, np.ndarray]:
    """CIDEr-D of one candidate caption per image against that image's references.

    Args:
        candidates: one caption per image.
        references: per image a non-empty list of reference captions.
        n: maximal n-gram order (4).
        sigma: standard deviation of the length penalty (6).
        pretokenized: captions are already space-separated tokens (skip :func:`tokenize`).

    Returns:
        ``(corpus score, per-image scores (N,))``; the corpus score is the mean. The
        document frequencies come from this corpus's references, so a score depends on
        the whole set of images scored together (as in coco-caption).
    """
    if len(candidates) != len(references) or not candidates:
        raise InputError(
            f"need one candidate per image and at least one image, got {len(candidates)} "
            f"candidates for {len(references)} reference sets"
        )
    tok = (lambda s: s.split()) if pretokenized else tokenize
    refs = []
    for i, r in enumerate(references):
        r = [r] if isinstance(r, str) else list(r)
        if not r:
            raise InputError(f"image {i} has no reference caption")
        refs.append([_ngrams(tok(c), n) for c in r])
    hyps = [_ngrams(tok(c), n) for c in candidates]
    df: dict[tuple[str, ...], float] = defaultdict(float)
    for ref_set in refs:
        for gram in set(g for counts in ref_set for g in counts):
            df[gram] += 1.0
    log_n = math.log(float(len(refs)))
    scores = np.zeros(len(hyps))
    for i, (hyp, ref_set) in enumerate(zip(hyps, refs)):
        vh = _vector(hyp, df, log_n, n)
        total = np.zeros(n)
        for ref in ref_set:
            total += _similarity(vh, _vector(ref, df, log_n, n), n, sigma)
        scores[i] = float(np.mean(total)) / len(ref_set) * 10.0
    return float(scores.mean()), scores


# --------------------------------------------------------------------------------------
# VQA accuracy

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "im": "i'm",
    "ive": "i've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "let's": "let's",
    "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "shant": "shan't",
    "shed": "she'd", "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "somebodys": "somebody's", "someones": "someone's", "somethings": "something's",
    "thats": "that's", "thered": "there'd", "theres": "there's", "theyd": "they'd",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't",
    "wed": "we'd", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
          "@", "`", ",", "?", "!"]  # fmt: skip
_PERIOD_STRIP = re.compile(r"(?<!\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_answer(answer: str) -> str:
    """The official VQA answer normalisation (``vqaEval.py``: punctuation, then number
    words, articles and contractions), on one answer string."""
    if not isinstance(answer, str):
        raise InputError(f"an answer must be a string, got {type(answer).__name__}")
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = []
    for word in out.lower().split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(answer: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy of one answer: mean over leave-one-out subsets of the human answers
    of ``min(#matches in the subset / 3, 1)`` (10 answers: the 10-choose-9 subsets)."""
    humans = [normalize_answer(a) for a in human_answers]
    if len(humans) < 2:
        raise InputError("VQA accuracy needs at least two human answers (usually ten)")
    ans = normalize_answer(answer)
    accs = []
    for i in range(len(humans)):
        matches = sum(1 for j, h in enumerate(humans) if j != i and h == ans)
        accs.append(min(1.0, matches / 3.0))
    return float(np.mean(accs))


def vqa_score(
    answers: Sequence[str], human_answers: Sequence[Sequence[str]]
) -> tuple[float, np.ndarray]:
    """Mean VQA accuracy over questions and the per-question accuracies ``(Q,)``."""
    if len(answers) != len(human_answers) or not answers:
        raise InputError(f"got {len(answers)} answers for {len(human_answers)} questions")
    accs = np.array([vqa_accuracy(a, h) for a, h in zip(answers, human_answers)])
    return float(accs.mean()), accs
