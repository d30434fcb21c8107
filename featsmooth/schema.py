"""The record schema: what each field of a run's records means, which format version this
featsmooth writes, and the reader that brings older records up to date.

Record schema. One JSON object per line; every field except ``key`` may be missing, and
readers such as :mod:`featsmooth.report` must cope with that. Each field name has one
meaning in every kind of record. Words used throughout: *clean* means without noise,
through the base (unsmoothed) encoder ``f``; *smoothed* means the smoothed encoder
``f_hat``; *unattacked* / *adv* mean before / after the attack. Kinds: certificate records
(``featsmooth certify``/``demo``, ``certify_dataset``, and ``evaluate``'s with ``kind:
"certificate"``), evaluate's attack records (``kind: "attack"``) and ``featsmooth attack``'s
records (no ``kind``). The table below is checked against the records the commands write
(tests/test_records.py)::

    # every record
    key                      str|int|list  unique id in this run (the resume unit)
    kind                     str      evaluate only: "certificate" | "attack"
    index                    int      position of the image in the run's inputs
    image                    str      image name or path as given by the user
    sha256                   str      SHA-256 of the image file's bytes: a resumed run
                                      refuses an image replaced under the same name
    model                    str      encoder name (``+plugin`` when a plug-in is used)
    setting                  str      evaluate/attack: "vanilla" | "fs" | "fs+plugin" | ...
    sigma                    float    noise level, pixel units of [0, 1] images
    seconds                  float    wall-clock time spent on this record
    # certificate records
    n0                       int      samples used to choose the direction v
    n_used                   int      certification samples actually drawn (<= n)
    alpha                    float    failure probability of each certified statement
    method                   str      confidence bound: "betting" | "bernstein" | "hoeffding"
    stop_reason              str      why sampling stopped (sequential certification)
    seed                     int      the seed of this image's noise stream
    score_estimate           float    Monte-Carlo estimate of S = ||f_hat(x)|| (not certified)
    score_lower              float    lower confidence bound S_low (level 1 - alpha)
    clean_score_estimate     float    mean of <f(x), f(x + eps_i)>, estimates S_c
    clean_score_lower        float    lower bound on S_c = <f(x), f_hat(x)> (level 1 - alpha)
    clean_smoothed_cosine    float    cos(f(x), f_hat(x)) estimate (not certified)
    radii                    [float]  l2 radii (pixel units) of the per-radius fields below
    fcsb                     [float|null]  certified cosine cos(f_hat(x), f_hat(x+delta))
                                      at each radius; null = no certificate
    fcsb_clean               [float|null]  certified cos(f(x), f_hat(x+delta)) per radius
    certified_radius_cos50   float|null    radius keeping the certified cosine >= 0.5
    label                    int|null true class (zero-shot classification)
    label_name               str      its class name
    acceptable               [int]    classes counted as correct (the label, or several
                                      where classes overlap)
    smoothed_prediction      int      class of the Monte-Carlo smoothed feature (uncertified)
    prediction               int      certified smoothed prediction (pairwise margin),
                                      -1 = abstain
    clean_prediction         int      prediction of the base encoder f on the clean image
    *_name                   str      class name beside each of the three fields above
    fcsb_prediction, cohen_prediction  int   certified predictions of the other two
                                      certificates, -1 = abstain
    margin_radius, fcsb_radius, cohen_radius  float|null  certified l2 radius of the
                                      prediction by the pairwise-margin, FCSB-cone and
                                      Cohen hard-vote certificates; null = abstain
    correct                  bool     the certified prediction is acceptable
    clean_correct            bool     the clean prediction is acceptable
    certified_margin, certified_fcsb, certified_cohen  [bool] | bool  evaluate: the
                                      certificate holds with an acceptable class at each
                                      radius of ``radii`` (certificate records) or at the
                                      attack's l2 distance (attack records)
    # attack records (evaluate and featsmooth attack)
    attack                   str      attack name ("pgd", "apgd", "mf-ii", ...)
    attack_id                str      evaluate: the attack's full specification
    objective                str|float  attack: the objective's name; evaluate: its value
                                      at the attacked image
    unattacked_objective     float    evaluate: the objective at the unattacked image
    norm                     str      "l2" | "linf"
    eps                      float    budget in pixel units of [0, 1] images
    steps                    int      attack iterations
    targeted, target         bool, [int]|null  evaluate: targeted attack and its classes
    eot, eot_draws           int      noise draws per attack step on smoothed settings
    judge_draws              int      fresh draws judging a smoothed output
    distance, l2_distance    float    l2 norm of the perturbation (attack, evaluate)
    linf_distance            float    evaluate: linf norm of the perturbation
    adv_cosine               float    cosine between the setting's features of the
                                      unattacked and the attacked image (smoothed settings:
                                      both smoothed, from fresh draws)
    adv_cosine_clean         float    evaluate, smoothed settings: cos(f(x), f_hat(x'))
    unattacked_prediction    int      evaluate, zero-shot: the setting's prediction on the
                                      unattacked image (smoothed for smoothed settings)
    adv_prediction           int      evaluate, zero-shot: its prediction on the attacked one
    changed                  bool     evaluate, zero-shot: the prediction changed
    target_cosine            float    evaluate, embedding-matching attacks: cosine of the
                                      attacked features with the target's
    unattacked_score         float    evaluate: the setting's score on the unattacked image
                                      (1 if correct; feature tasks: 1)
    robust_score             float    evaluate: its score on the attacked image (1 if
                                      correct; feature tasks: adv_cosine)
    success                  bool     the attack succeeded (its definition: the report's
                                      ASR note)
    success_rate             float    evaluate: fraction of fresh draws the attack fools
    certified_cosine, certified_cosine_clean  float|null  evaluate: FCSB of each reference
                                      at the attack's l2 distance
    consistency_*            -        evaluate: the sound consistency check
                                      (:class:`featsmooth.consistency.ConsistencyResult`)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["RECORD_FORMAT", "documented_fields", "undocumented_fields", "upgrade_record"]

#: Version of the record schema this featsmooth writes (saved as ``record_format`` in
#: ``settings.json``; a folder without one is format 1). Format 2: the attack records of
#: ``evaluate`` call the attacked setting's output on the *unattacked* image
#: ``unattacked_prediction`` / ``unattacked_score`` / ``unattacked_objective``; format 1
#: called them ``clean_*``, a prefix that everywhere else means the noise-free base encoder;
#: and its certificate records call the smoothed prediction ``smoothed_prediction``, as
#: ``certify``'s do (format 1: ``estimate``).
#: Format-1 records are upgraded when read (:func:`upgrade_record`); a folder of a newer
#: format is refused with a message naming it.
RECORD_FORMAT = 2
_RENAMED_IN_2 = {
    "clean_prediction": "unattacked_prediction",
    "clean_score": "unattacked_score",
    "clean_objective": "unattacked_objective",
}


def documented_fields() -> list[str]:
    """The field names of the record schema table in this module's docstring (``*`` as a
    wildcard, e.g. ``consistency_*``), in table order."""
    table = __doc__.split("(tests/test_records.py)::", 1)[1]
    names: list[str] = []
    for line in table.splitlines():
        if line.startswith("    ") and not line.startswith("     ") and "#" not in line[:6]:
            head = line.strip().split("  ")[0]
            names += [n.strip() for n in head.split(",") if n.strip()]
    return names


def undocumented_fields(record: Mapping[str, Any]) -> list[str]:
    """The fields of ``record`` that the schema table does not document."""
    import fnmatch

    known = documented_fields()
    return [k for k in record if not any(fnmatch.fnmatchcase(k, pattern) for pattern in known)]


def upgrade_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record of an older format (see :data:`RECORD_FORMAT`) with today's field names;
    records already current are returned as they are."""
    if record.get("kind") == "attack" and not any(n in record for n in _RENAMED_IN_2.values()):
        return {_RENAMED_IN_2.get(k, k): v for k, v in record.items()}
    if record.get("kind") == "certificate" and "estimate" in record:
        return {("smoothed_prediction" if k == "estimate" else k): v for k, v in record.items()}
    return record
