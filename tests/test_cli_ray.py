"""``featsmooth certify --ray``: same records as the single-process command, resumable,
zero-shot prediction certificates included, rendered by ``featsmooth report``; a clear error
for a missing Ray."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from featsmooth import cli
from featsmooth.records import read_records

FAST = ["--n0", "16", "--n", "200", "--no-progress"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _deterministic(records: list[dict]) -> dict:
    """Records by key, without the wall-clock field (the only one allowed to differ)."""
    return {r["key"]: {k: v for k, v in r.items() if k != "seconds"} for r in records}


@pytest.fixture
def pngs(tmp_path: Path, monkeypatch, make_pngs) -> Path:
    """Five random 32x32 RGB PNGs in tmp_path/imgs; the working folder is tmp_path."""
    monkeypatch.chdir(tmp_path)
    return make_pngs(tmp_path / "imgs", 5, seed=1)


def test_ray_matches_single_process_resumes_and_reports(pngs, tmp_path, capsys):
    pytest.importorskip("ray")
    args = ["certify", "synthetic-trig", "--images", "imgs", *FAST, "--seed", "3"]
    code, _, err = run_cli(capsys, *args, "--run-dir", "runs/one")
    assert code == 0, err
    single = read_records("runs/one")

    # an interrupted Ray run: two images already done (written by the single-process path)
    ray_dir = tmp_path / "runs/ray"
    ray_dir.mkdir(parents=True)
    for name in ("settings.json", "records.jsonl"):
        (ray_dir / name).write_bytes((tmp_path / "runs/one" / name).read_bytes())
    lines = (ray_dir / "records.jsonl").read_text().splitlines()
    (ray_dir / "records.jsonl").write_text("\n".join(lines[:2]) + "\n")
    code, out, err = run_cli(capsys, *args, "--run-dir", "runs/ray", "--ray", "--workers", "2")
    assert code == 0, err
    assert "2 image(s) already certified" in out and "(3 new, 2 resumed)" in out
    distributed = read_records("runs/ray")
    assert len(distributed) == len(single) == 5
    assert _deterministic(distributed) == _deterministic(single)  # seeds, bounds, schema
    assert {tuple(sorted(r)) for r in distributed} == {tuple(sorted(r)) for r in single}
    assert all(r["n_used"] == 200 and r["score_lower"] is not None for r in distributed)

    code, _, err = run_cli(capsys, "report", "runs/ray", "--out", "rep", "--format", "md,csv")
    assert code == 0, err
    summary = (tmp_path / "rep/summary.md").read_text()
    assert "synthetic-trig" in summary


def _tiny_clip(folder: Path) -> Path:
    """A tiny random CLIP saved as a local model folder (a text-image model: zero-shot)."""
    import mllm_checks as mc
    import torch
    import transformers

    torch.manual_seed(0)
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2}  # fmt: skip
    config = transformers.CLIPConfig(
        text_config={**layers, "vocab_size": 40, "max_position_embeddings": 16,
                     "eos_token_id": mc.EOS, "bos_token_id": mc.BOS, "pad_token_id": mc.PAD},
        vision_config={**layers, "image_size": 32, "patch_size": 8},
        projection_dim=24,
    )  # fmt: skip
    model = transformers.CLIPModel(config).eval()
    return mc.save(model, folder, mc.tokenizer(append_eos=True), crop_size=[32, 32])


def test_ray_certifies_zero_shot_predictions_as_one_process_does(pngs, tmp_path, capsys):
    """Prediction certificates on Ray workers (each loads the model folder itself; the
    class embeddings are shipped once) equal the single-process ones, field by field."""
    pytest.importorskip("ray")
    clip = _tiny_clip(tmp_path / "clip")
    args = ["certify", str(clip), "--images", "imgs", "--classes", "cat,dog,car", *FAST]
    code, _, err = run_cli(capsys, *args, "--run-dir", "runs/one")
    assert code == 0, err
    code, _, err = run_cli(capsys, *args, "--run-dir", "runs/ray", "--ray", "--workers", "2")
    assert code == 0, err
    single, distributed = read_records("runs/one"), read_records("runs/ray")
    assert len(single) == 5 and all("margin_radius" in r for r in distributed)
    assert {r["prediction_name"] for r in single} <= {"cat", "dog", "car", None}
    assert _deterministic(distributed) == _deterministic(single)


def test_workers_without_ray_is_an_input_error(pngs, capsys):
    code, _, err = run_cli(
        capsys, "certify", "synthetic-trig", "--images", "imgs", "--workers", "2"
    )
    assert code == 2 and "need --ray" in err


def test_missing_ray_exit_4_with_pip_line(pngs, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, _, err = run_cli(capsys, "certify", "synthetic-trig", "--images", "imgs", "--ray")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 4 and len(lines) == 1 and "pip install 'ray>=2.9'" in lines[0]
