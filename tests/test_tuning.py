"""Measured defaults: the choice is one of the candidates, cached per encoder and shape, and
bfloat16 is offered only where its features agree with float32 ones. No assertion depends
on which candidate is faster (timings are not tested)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from featsmooth.errors import InputError
from featsmooth.tuning import bf16_agreement, tune


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 16)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Fragile(Linear):
    """Features of sin(1000 x): bfloat16 rounding of the input (2^-8) scrambles them."""

    def forward(self, x):
        return torch.sin(1000 * x.float().flatten(1))[:, :16]


def _images(b: int = 4) -> torch.Tensor:
    return torch.rand((b, 3, 8, 8), generator=torch.Generator().manual_seed(0))


def test_tune_picks_a_candidate_and_caches_it(tmp_path):
    torch.manual_seed(0)
    enc, cache = Linear(), tmp_path / "tuning.json"
    first = tune(enc, _images(), 0.25, batch_sizes=(2, 4), cache=cache, seconds=0.01)
    assert not first.cached and first.bf16_cosine > 0.99
    assert set(first.measured) == {"float32/2", "float32/4", "bfloat16/2", "bfloat16/4"}
    assert f"{first.dtype}/{first.batch_size}" in first.measured
    assert first.images_per_second == max(first.measured.values())
    assert enc.fc.weight.dtype == torch.float32  # the caller's encoder is left as it was
    again = tune(enc, _images(), 0.25, batch_sizes=(2, 4), cache=cache, seconds=0.01)
    assert again.cached and (again.batch_size, again.dtype) == (first.batch_size, first.dtype)
    assert "cached" in again.describe() and f"batch {again.batch_size}" in again.describe()
    # another image shape or other weights are measured anew
    other = tune(enc, torch.rand(2, 3, 4, 16), 0.25, batch_sizes=(2,), dtypes=("float32",),
                 cache=cache, seconds=0.01)  # fmt: skip
    assert not other.cached and len(json.loads(cache.read_text())) == 2
    assert not tune(Linear(), _images(), 0.25, batch_sizes=(2,), cache=cache, seconds=0.01).cached


def test_bfloat16_is_offered_only_where_features_agree(tmp_path):
    enc = Fragile()
    assert bf16_agreement(enc, _images()) < 0.9
    t = tune(enc, _images(), 0.25, batch_sizes=(2,), cache=False, seconds=0.01)
    assert t.dtype == "float32" and t.bf16_cosine < 0.999
    assert set(t.measured) == {"float32/2"}
    with pytest.raises(InputError, match="disagrees in bfloat16"):
        tune(enc, _images(), 0.25, batch_sizes=(2,), dtypes=("bfloat16",), cache=False)
    assert not (tmp_path / "tuning.json").exists()


@pytest.mark.parametrize(
    "kwargs",
    [{"dtypes": ("float16",)}, {"dtypes": ()}, {"batch_sizes": (0,)}, {"batch_sizes": (2.5,)}],
)
def test_bad_settings_are_clear_errors(kwargs):
    with pytest.raises(InputError):
        tune(Linear(), _images(), 0.25, cache=False, seconds=0.01, **kwargs)
    with pytest.raises(InputError, match="images"):
        tune(Linear(), torch.rand(3, 8, 8), 0.25, cache=False)


def test_unreadable_cache_is_measured_again(tmp_path):
    cache = tmp_path / "tuning.json"
    cache.write_text("not json")
    t = tune(Linear(), _images(), 0.25, batch_sizes=(2,), dtypes=("float32",), cache=cache,
             seconds=0.01)  # fmt: skip
    assert not t.cached and t.key in json.loads(cache.read_text())
