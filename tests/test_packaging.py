"""A built wheel installs and runs the main job: package data (class names, py.typed, any
shipped weights) must be in it, not only in the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (path,) = out.glob("featsmooth-*.whl")
    return path


def test_wheel_holds_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "featsmooth/py.typed" in names
    assert "featsmooth/data/imagenet_classes.txt" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    source_data = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "featsmooth").rglob("*")
        if p.is_file() and p.suffix in {".txt", ".json", ".safetensors"}
    }
    assert source_data <= names, f"package data left out of the wheel: {source_data - names}"


def test_installed_wheel_runs_the_demo(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import featsmooth; print(featsmooth.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(site))  # the wheel's copy, not the checkout
    run = subprocess.run(
        [sys.executable, "-m", "featsmooth.cli", "demo", "--fast", "--no-progress",
         "--run-dir", str(tmp_path / "run")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (tmp_path / "run" / "records.jsonl").read_text().count("\n") >= 2
