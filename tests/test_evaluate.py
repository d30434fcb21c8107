"""Evaluation harness and consistency check, on encoders whose behaviour is known exactly.

The one-frequency TrigEncoder (featsmooth.encoders.synthetic) has f_hat(x) = S f(x), so for
the certificate direction v ~ f_hat(x)/S the attacked quantity <v, f_hat(x + delta)> equals
S cos(a . delta) exactly; its minimum over ||delta|| <= r is S cos(|a| r), reached by
delta = r a/|a| (the strongest possible attack). The check must stay silent there, and
must fire on a certificate whose S_low was inflated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from featsmooth import SmoothedEncoder, bounds
from featsmooth.attacks import (
    ATTACKS,
    PGD,
    EoTObjective,
    FeatureCosine,
    attack_names,
    get_attack,
    register,
)
from featsmooth.consistency import ConsistencyWarning, check_consistency, count_violations
from featsmooth.encoders.synthetic import make_trig_encoder
from featsmooth.errors import InputError, RecordError
from featsmooth.evaluate import (
    AttackSpec,
    classes_named,
    evaluate,
    evaluate_paper_protocol,
    paper_protocol,
    parse_attack,
)
from featsmooth.schema import undocumented_fields

SIGMA = 0.25


def _images(b: int = 3, seed: int = 0) -> torch.Tensor:
    # centred in [0.3, 0.7], so worst-case perturbations of norm <= 0.5 stay inside [0, 1]
    return 0.3 + 0.4 * torch.rand((b, 3, 8, 8), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trig_setup():
    enc = make_trig_encoder(0.9, SIGMA)
    sm = SmoothedEncoder(enc, SIGMA)
    x = _images()
    certs = sm.certify(x, n0=64, n=2000, alpha=0.001, seed=1)
    return enc, sm, x, certs


def _worst_direction(enc) -> torch.Tensor:
    a = enc.frequencies[0].float()
    return a / a.norm()


# ------------------------------------------------------------------ consistency


def test_consistency_silent_on_worst_case_attack(trig_setup):
    enc, sm, x, certs = trig_setup
    for r in (0.05, 0.15, 0.25):  # S_low ~ 0.89 certifies up to r ~ 0.4
        adv = x + r * _worst_direction(enc)
        results = check_consistency(sm, x, adv, certs, n=500, alpha=0.001, seed=7)
        assert count_violations(results)["violations"] == 0
        for i, (res, cert) in enumerate(zip(results, certs)):
            assert res.radius == pytest.approx(r, rel=1e-5)
            # the certified bound is B(S_low, r), lower than the exact worst case
            exact = enc.true_score(SIGMA) * enc.worst_case_cosine(r)
            assert res.certified_bound == pytest.approx(
                float(bounds.fcsb(cert.score_lower, r, SIGMA))
            )
            assert 0 < res.certified_bound <= exact
            # the Monte-Carlo estimate agrees with the closed form <v, f_hat(x + delta)>
            # (two independent ways); the upper confidence bound covers the exact value
            v = torch.as_tensor(cert.direction)
            truth = float(enc.smoothed(adv[i : i + 1], SIGMA)[0] @ v)
            assert res.estimate == pytest.approx(truth, abs=0.07)
            assert res.upper >= truth
            assert res.upper >= res.estimate


def test_consistency_silent_under_eot_pgd(trig_setup):
    enc, sm, x, certs = trig_setup
    attack = PGD(
        lambda z: sm.noisy_features(z, 16), EoTObjective(FeatureCosine()), "l2", 0.25, steps=20
    )
    adv = attack(x).adv_images
    results = check_consistency(sm, x, adv, certs, n=500, seed=3)
    assert count_violations(results) == {"total": 3, "checked": 3, "violations": 0}
    # the attack was strong: close to the exact worst case cos(|a| r)
    worst = enc.true_score(SIGMA) * enc.worst_case_cosine(0.25)
    assert np.mean([r.estimate for r in results]) < worst + 0.1


def test_consistency_fires_on_inflated_certificate(trig_setup, tmp_path, caplog):
    enc, sm, x, certs = trig_setup
    broken = [dataclasses.replace(c, score_lower=0.999) for c in certs]
    adv = x + 0.25 * _worst_direction(enc)
    with caplog.at_level(logging.ERROR, logger="featsmooth"):
        with pytest.warns(ConsistencyWarning, match="BUG: certificate violated"):
            results = check_consistency(
                sm, x, adv, broken, n=500, run_dir=tmp_path, keys=["a", "b", "c"]
            )
    assert all(r.violation for r in results)
    assert sum("BUG: certificate violated" in m for m in caplog.messages) == 3
    saved = load_file(results[0].saved)
    assert torch.equal(saved["image"], x[0]) and torch.equal(saved["adv_image"], adv[0].float())
    assert saved["direction"].shape == (2,)
    assert (tmp_path / "violations" / "a.safetensors").exists()


def test_consistency_clean_reference_fires_alone(trig_setup):
    enc, sm, x, certs = trig_setup
    broken = [dataclasses.replace(c, clean_score_lower=0.999) for c in certs]
    adv = x + 0.25 * _worst_direction(enc)
    with pytest.warns(ConsistencyWarning):
        results = check_consistency(sm, x, adv, broken, n=500)
    assert all(r.violation for r in results)
    assert all(r.upper >= r.certified_bound for r in results)  # smoothed reference is fine


def test_consistency_no_certificate_nothing_to_test(trig_setup):
    enc, sm, x, certs = trig_setup
    far = x + 3.0 * _worst_direction(enc)  # B < 0 at r = 3: no certificate
    results = check_consistency(sm, x, far, certs, n=64)
    assert count_violations(results) == {"total": 3, "checked": 0, "violations": 0}
    assert all(math.isnan(r.certified_bound) for r in results)


def test_consistency_rejects_bad_input(trig_setup):
    _, sm, x, certs = trig_setup
    with pytest.raises(InputError):
        check_consistency(sm, x, x[:2], certs)
    with pytest.raises(InputError):
        check_consistency(sm, x, x, certs[:2])


# ------------------------------------------------------------------ attack specs


def test_parse_attack_and_ids():
    spec = parse_attack("mf-ii:linf:16/255:steps=300:step_size=1/255:target=2+3")
    assert spec.eps == pytest.approx(16 / 255) and spec.steps == 300 and spec.target == (2, 3)
    assert spec.attack_id == "mf-ii-linf-16/255-s300-t2+3"
    assert parse_attack({"name": "pgd", "norm": "L2", "eps": 0.5}).norm == "l2"
    with pytest.raises(InputError):
        parse_attack("nope:l2:0.5")
    with pytest.raises(InputError):
        parse_attack("pgd:l2:0.5:foo=1")
    from featsmooth.data import imagenet_classes

    sharks = classes_named(imagenet_classes(), "shark")
    assert sharks == (2, 3, 4)
    assert [s.name for s in paper_protocol(sharks)] == ["mf-ii", "m-attack", "foa"]
    named = parse_attack("foa:linf:16/255:target=shark+2+goldfish", imagenet_classes())
    assert named.target == (2, 3, 4, 1)
    with pytest.raises(InputError, match="no class names"):
        parse_attack("foa:linf:16/255:target=shark")
    with pytest.raises(InputError, match="no class name contains"):
        parse_attack("foa:linf:16/255:target=unicorn", imagenet_classes())


# ------------------------------------------------------------------ evaluate end to end


class TinyNet(torch.nn.Module):
    """A random conv net with a text side: 4 classes in a 16-d feature space."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.Tanh(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(32, 16),
        )
        self.name = "tiny"

    def forward(self, x):
        return self.body(x)


def _tiny_task():
    net = TinyNet().eval()
    x = torch.rand((4, 3, 12, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = F.normalize(net(x), dim=1)
    # class embeddings = the images' own features plus one distractor: clean accuracy 1
    classes = F.normalize(torch.cat([feats, torch.randn(1, 16)]), dim=1)
    return net, x, classes, [0, 1, 2, 3]


class CountingPlugin:
    """A plug-in whose wrapped encoder counts its forward passes (adaptive-attack check)."""

    def __init__(self) -> None:
        self.calls = 0

    def wrap(self, encoder, sigma):
        plugin = self

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = encoder
                self.name = "tiny+count"

            def forward(self, x):
                plugin.calls += 1
                return self.encoder(x.clamp(-1, 2))

        return Wrapped()


def test_evaluate_writes_records_and_resumes(tmp_path):
    net, x, classes, labels = _tiny_task()
    plugin = CountingPlugin()
    kwargs = dict(
        class_embeddings=classes,
        settings=("vanilla", "fs", "fs+plugin", "robust"),
        plugin=plugin,
        attacks=[AttackSpec("pgd", "l2", 2.0, 3)],
        eot_draws=2,
        judge_draws=8,
        n0=8,
        n=64,
        consistency_draws=16,
        run_dir=tmp_path / "run",
        names=["a", "b", "c", "d"],
    )
    with pytest.warns(UserWarning, match="'robust' not run"):
        res = evaluate(net, x, labels, **kwargs)
    assert res.skipped == {"robust": "no robust_encoder given"}
    assert plugin.calls > 0  # the fs+plugin attack and judging went through the plug-in
    lines = (tmp_path / "run" / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    attack_recs = [r for r in records if r["kind"] == "attack"]
    cert_recs = [r for r in records if r["kind"] == "certificate"]
    assert len(attack_recs) == 4 * 3 and len(cert_recs) == 4 * 2
    assert {r["setting"] for r in attack_recs} == {"vanilla", "fs", "fs+plugin"}
    for r in attack_recs:
        assert r["l2_distance"] <= 2.0 + 1e-5
        assert r["success"] == (r["adv_prediction"] not in r["acceptable"])
        assert -1.0 <= r["adv_cosine"] <= 1.0 + 1e-9
        if r["setting"] != "vanilla":
            assert r["consistency_violation"] is False
            assert 0.0 <= r["success_rate"] <= 1.0
    rows = {(r["setting"], r["attack_id"]): r for r in res.summary}
    vanilla = rows[("vanilla", "pgd-l2-2-s3")]
    assert vanilla["unattacked_score"] == 1.0  # the class embeddings are the clean features
    assert vanilla["asr"] == pytest.approx(1.0 - vanilla["robust_score"])
    assert res.violations == 0
    assert {row["setting"] for row in res.certified} == {"fs", "fs+plugin"}
    # one meaning per field: "clean" is the noise-free base encoder, in every record kind
    for r in cert_recs:
        assert r["clean_prediction"] == r["label"]  # the base encoder is right on all four
        assert "estimate" not in r and "smoothed_prediction" in r
    for r in attack_recs:
        assert "clean_prediction" not in r and "unattacked_prediction" in r
    assert all(undocumented_fields(r) == [] for r in records), "document every field"

    # resume: nothing is recomputed, nothing is appended
    calls = plugin.calls
    with pytest.warns(UserWarning):
        again = evaluate(net, x, labels, **kwargs)
    assert plugin.calls == calls
    assert (tmp_path / "run" / "records.jsonl").read_text().splitlines() == lines
    assert again.summary == res.summary

    # a result-defining change is refused
    with pytest.warns(UserWarning), pytest.raises(RecordError):
        evaluate(net, x, labels, **{**kwargs, "sigma": 0.5})


def test_evaluate_resumes_after_partial_run(tmp_path):
    net, x, classes, labels = _tiny_task()
    common = dict(
        class_embeddings=classes,
        settings=("vanilla",),
        eot_draws=1,
        judge_draws=4,
        run_dir=tmp_path / "run",
    )
    first = evaluate(net, x, labels, attacks=[AttackSpec("pgd", "linf", "8/255", 2)], **common)
    assert len(first.records) == 4
    # same settings except one more attack: different settings -> refused
    with pytest.raises(RecordError):
        evaluate(
            net,
            x,
            labels,
            attacks=[AttackSpec("pgd", "linf", "8/255", 2), AttackSpec("pgd", "l2", 0.5, 2)],
            **common,
        )
    # delete the last record (as if killed): resuming recomputes only that one
    path = tmp_path / "run" / "records.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    second = evaluate(net, x, labels, attacks=[AttackSpec("pgd", "linf", "8/255", 2)], **common)
    assert len(second.records) == 4
    assert path.read_text().splitlines()[:-1] == lines[:-1]


def test_evaluate_feature_task_on_trig_encoder():
    enc = make_trig_encoder(0.9, SIGMA)
    x = _images(2)
    res = evaluate(
        enc,
        x,
        settings=("vanilla", "fs"),
        attacks=["pgd:l2:0.25:steps=5"],
        eot_draws=4,
        judge_draws=64,
        n0=32,
        n=500,
        consistency_draws=200,
    )
    assert all(undocumented_fields(r) == [] for r in res.records)
    rows = {r["setting"]: r for r in res.summary}
    # vanilla: worst case cos(|a| r) for f; PGD gets near it
    assert rows["vanilla"]["adv_cosine"] < enc.worst_case_cosine(0.25) + 0.05
    # smoothed: a certified cosine exists at r = 0.25 and holds for the attacked inputs
    assert rows["fs"]["certified_cosine"] > 0
    assert rows["fs"]["consistency_checked"] == 2 and rows["fs"]["consistency_violations"] == 0
    for r in res.records:
        if r.get("kind") == "attack" and r["setting"] == "fs":
            assert r["certified_cosine"] <= enc.worst_case_cosine(r["l2_distance"]) + 1e-9


def test_evaluate_targeted_and_embedding_attacks():
    net, x, classes, labels = _tiny_task()
    target = x[3:4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate(
            net,
            x[:3],
            labels[:3],
            class_embeddings=classes,
            settings=("vanilla", "fs"),
            attacks=[
                AttackSpec("mf-ii", "linf", "16/255", 3, target=3, step_size="4/255"),
                AttackSpec("pgd", "l2", 3.0, 3, target=(3,)),
            ],
            target_images=target,
            eot_draws=2,
            judge_draws=8,
            n0=8,
            n=32,
            consistency_draws=16,
        )
    for r in res.records:
        assert undocumented_fields(r) == []
        if r.get("kind") == "attack":
            assert r["targeted"] and r["success"] == (r["adv_prediction"] == 3)
            if r["attack"] == "mf-ii":
                assert r["linf_distance"] <= 16 / 255 + 1e-6
    # the paper's protocol helper: embedding matching toward a target image, few steps here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paper = evaluate_paper_protocol(
            net, x[:2], target, classes, 3, attacks=("m-attack", "foa"), steps=2,
            settings=("vanilla",),
        )  # fmt: skip
    assert [r["attack"] for r in paper.summary] == ["foa", "m-attack"]
    assert all(r["targeted"] and r["images"] == 2 for r in paper.summary)
    with pytest.raises(InputError, match="target_images"):
        evaluate(net, x, labels, class_embeddings=classes, attacks=["mf-ii:linf:16/255"])


def test_evaluate_retrieval_with_captions():
    _, x, classes, _ = _tiny_task()

    class TextImage(TinyNet):
        captions = ("zero", "one", "two", "three")

        def encode_text(self, texts):
            return torch.stack([classes[self.captions.index(t)] for t in texts])

    enc = TextImage().eval()
    res = evaluate(
        enc,
        x,
        captions=list(TextImage.captions),
        settings=("vanilla",),
        attacks=["pgd:l2:2.0:steps=2"],
    )
    records = [r for r in res.records if r["kind"] == "attack"]
    assert [r["label"] for r in records] == [0, 1, 2, 3]  # image i owns caption i
    assert res.summary[0]["unattacked_score"] == 1.0  # recall@1 of the clean images
    with pytest.raises(InputError, match="not both"):
        evaluate(enc, x, captions=list(TextImage.captions), class_embeddings=classes)


# ------------------------------------------------------------------ attack registry


@pytest.mark.parametrize("name", attack_names())
def test_every_registered_attack_runs_in_the_harness(name):
    # a new attack file registered with @register is picked up here with no other edit
    net, x, classes, labels = _tiny_task()
    embedding = get_attack(name).matches_target_embeddings
    spec = AttackSpec(name, "linf", "8/255", 2, target=3 if embedding else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate(
            net, x[:2], labels[:2], class_embeddings=classes, settings=("vanilla", "fs"),
            attacks=[spec], target_images=x[3:4] if embedding else None, eot_draws=2,
            judge_draws=4, n0=8, n=16, consistency_draws=8,
        )  # fmt: skip
    rows = [r for r in res.records if r.get("kind") == "attack"]
    assert {(r["setting"], r["attack"]) for r in rows} == {("vanilla", name), ("fs", name)}
    assert all(r["linf_distance"] <= 8 / 255 + 1e-6 for r in rows)


def test_a_new_attack_needs_only_its_registration(monkeypatch):
    class HalfStepPGD(PGD):
        name = "pgd-half"

    monkeypatch.setitem(ATTACKS, HalfStepPGD.name, HalfStepPGD)
    spec = parse_attack("pgd-half:l2:0.5:steps=2")
    assert spec.name == "pgd-half" and not spec.targeted
    net, x, classes, labels = _tiny_task()
    res = evaluate(
        net, x[:1], labels[:1], class_embeddings=classes, settings=("vanilla",),
        attacks=[spec], n0=8, n=16,
    )  # fmt: skip
    assert [r["attack"] for r in res.records if r.get("kind") == "attack"] == ["pgd-half"]
    with pytest.raises(InputError, match="pgd-half"):
        parse_attack("nonexistent:l2:0.5")
    with pytest.raises(ValueError, match="already registered"):
        register(type("Other", (PGD,), {"name": "pgd"}))
