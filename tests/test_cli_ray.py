"""``featsmooth certify --ray``: same records as the single-process command, resumable,
rendered by ``featsmooth report``; clear errors for zero-shot and a missing Ray."""

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


def test_ray_refuses_zero_shot(pngs, capsys):
    code, _, err = run_cli(
        capsys, "certify", "synthetic-trig", "--images", "imgs", "--ray", "--task", "zero-shot"
    )
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "--task features only" in lines[0]


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
