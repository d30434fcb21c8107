"""The registry of confidence-bound methods: a new bound is one registration away from
every place that validates, documents or uses a method name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from featsmooth import bounds, checks
from featsmooth import config as C
from featsmooth.encoders.synthetic import make_trig_encoder
from featsmooth.errors import InputError
from featsmooth.smoothing import SmoothedEncoder

SIGMA = 0.25


def _half_alpha_hoeffding(values, alpha, horizon):
    """A valid (looser) fixed-n bound: Hoeffding at alpha / 2."""
    return bounds.hoeffding_lower_bound(values, alpha / 2)


@pytest.fixture
def extra_method(monkeypatch):
    method = bounds.BoundMethod("hoeffding-half", _half_alpha_hoeffding, anytime_valid=False)
    monkeypatch.setitem(bounds._REGISTRY, method.name, method)
    return method


@pytest.mark.parametrize("name", list(bounds.METHODS))
def test_every_method_is_sound_on_a_fixed_sample(name):
    method = bounds.get_method(name)
    rng = np.random.default_rng(0)
    values = np.cos(rng.normal(0, 0.5, (200, max(400, method.min_samples))))
    true_mean = math.exp(-0.125)
    alpha = 0.1
    lows = [bounds.mean_lower_bound(v, alpha, name, horizon=v.size) for v in values]
    failures = sum(low > true_mean for low in lows)
    assert failures <= alpha * 200 + 3 * math.sqrt(alpha * (1 - alpha) * 200)
    assert method.summary


def test_registering_a_name_twice_is_refused_and_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="already registered"):
        bounds.register(bounds.BoundMethod("betting", bounds.betting_lower_bound, True))
    with pytest.raises(InputError, match="betting, bernstein, hoeffding"):
        bounds.get_method("magic")
    with pytest.raises(InputError, match="unknown bound method"):
        bounds.get_method(None)


def test_a_registered_method_is_used_everywhere(extra_method):
    name = extra_method.name
    assert name in bounds.METHODS
    values = np.full(100, 0.5)
    assert bounds.mean_lower_bound(values, 0.1, name) == pytest.approx(
        0.5 - 2 * math.sqrt(math.log(20) / 200)
    )
    # validation of run settings and sanity checks accept it ...
    C.validate(C.CertifyConfig(model="synthetic-trig", method=name))
    assert checks.best_case_slack(0.01, 100, name) > checks.best_case_slack(0.01, 100, "hoeffding")
    # ... certification uses it, and refuses it where only an anytime-valid bound is sound
    encoder = make_trig_encoder(0.9, SIGMA)
    images = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    smoothed = SmoothedEncoder(encoder, SIGMA)
    cert = smoothed.certify(images, n0=16, n=200, method=name, seed=0)[0]
    assert cert.method == name and cert.score_lower < encoder.true_score(SIGMA)
    with pytest.raises(InputError, match="anytime-valid bound: use method='betting'"):
        smoothed.certify(images, n0=16, n=200, method=name, tolerance=0.05, seed=0)
    # and an unknown name's error lists the new method
    with pytest.raises(InputError, match="hoeffding-half"):
        bounds.get_method("nope")
