"""Hub behaviour: one probe, no retries, the exact download command; cached models offline.

The hub client is replaced by stand-ins that count their calls, so no test touches the
network and none measures time: a fast failure is shown by the call path (one probe, no
download attempt), not by a clock.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")

from featsmooth.encoders import hub  # noqa: E402
from featsmooth.encoders.registry import list_models, load_encoder  # noqa: E402
from featsmooth.errors import ModelUnavailableError  # noqa: E402

NAME = "openai/clip-vit-base-patch32"


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """An empty cache, HF_HUB_OFFLINE unset, and a hub that refuses every connection."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_probes", {})
    calls = {"probe": 0, "download": []}

    def refuse(url, timeout):
        calls["probe"] += 1
        raise ConnectionError("no route to host")

    def cached_file(name, filename, **kwargs):
        calls["download"].append(kwargs.get("local_files_only"))
        raise OSError(f"{name} is not cached")

    monkeypatch.setattr(hub, "_head", refuse)  # the hub client's one request
    monkeypatch.setattr(transformers.utils, "cached_file", cached_file)
    return calls


def test_no_hub_fails_at_once_with_the_download_command(no_hub):
    with pytest.raises(ModelUnavailableError) as err:
        load_encoder(NAME)
    message = str(err.value)
    assert "\n" not in message
    assert f"`hf download {NAME}`" in message and "local folder" in message
    assert no_hub["probe"] == 1  # one probe ...
    assert no_hub["download"] == []  # ... and no download attempt, hence no retries
    with pytest.raises(ModelUnavailableError):
        load_encoder("Qwen/Qwen2-VL-2B-Instruct")
    assert no_hub["probe"] == 1  # the answer is remembered


def test_hub_offline_never_probes(no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE") as err:
        load_encoder(NAME)
    assert f"hf download {NAME}" in str(err.value)
    assert no_hub["probe"] == 0 and no_hub["download"] == []


def test_reachable_hub_takes_the_download_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_probes", {})
    monkeypatch.setattr(hub, "_head", lambda url, timeout: None)  # any answer: reachable
    assert hub.local_files_only(NAME) is False
    assert hub.local_files_only(str(tmp_path)) is True  # a folder never needs the hub


def _cache_model(cache, repo_id, model):
    """Lay ``model`` out as the hub cache does: refs/main -> snapshots/<commit>/."""
    commit = "0" * 40
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    model.save_pretrained(root / "snapshots" / commit)


def test_cached_model_loads_with_no_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import otherwise
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_probes", {})
    probes = []

    def refuse(url, timeout):
        probes.append(url)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(hub, "_head", refuse)
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = transformers.CLIPVisionConfig(**vision, image_size=32, patch_size=8, projection_dim=8)
    model = transformers.CLIPVisionModelWithProjection(config)
    _cache_model(cache, "featsmooth-test/tiny-clip", model)
    enc = load_encoder("featsmooth-test/tiny-clip")  # unreachable hub, cached: local files
    assert enc(torch.rand(1, 3, 40, 40)).shape == (1, 8)
    assert len(probes) == 1  # one probe for the whole load (config, weights, preprocessing)


def test_models_lists_every_family_with_its_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from featsmooth import api

    rows = {r.name: r for r in api.models()}
    for name in [
        NAME,
        "llava-hf/llava-v1.6-mistral-7b-hf",
        "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        "Qwen/Qwen2-VL-2B-Instruct",
        "Qwen/Qwen2.5-VL-3B-Instruct",
    ]:
        assert not rows[name].available and f"hf download {name}" in rows[name].install
    open_clip = rows["ViT-B-32/laion2b_s34b_b79k"]
    assert "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in open_clip.install
    info = {m.name: m for m in list_models()}
    assert json.loads(json.dumps(info[NAME].to_dict()))["hub_id"] == NAME
