"""One noise-seed function (featsmooth.seeds): the same image with the same run seed gets the
same noise in every path (certify, certify --ray, certify_dataset, evaluate); a killed
``evaluate`` resumes to the records of an uninterrupted run; full-width seeds; keys that
are file names in any encoding."""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from featsmooth import cli
from featsmooth.errors import InputError
from featsmooth.records import load_samples, read_records
from featsmooth.seeds import PURPOSES, SCHEME, generator, key_bytes, noise_seed

FAST = ["--n0", "16", "--n", "200", "--no-progress"]
#: certificate fields that are functions of the image's noise draws (and of n0, n, alpha);
#: ``score_estimate`` too, up to the order in which a call packing several images sums the
#: features (last-bit rounding), so it is compared to 1e-12
DRAWN = ("seed", "score_lower", "clean_score_estimate", "clean_score_lower")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _deterministic(records: list[dict]) -> dict:
    """Records by key (tuples for list keys), without the wall-clock field."""

    def key(r: dict):
        return tuple(r["key"]) if isinstance(r["key"], list) else r["key"]

    return {key(r): {k: v for k, v in r.items() if k != "seconds"} for r in records}


# ------------------------------------------------------------------ the function


def test_noise_seed_is_a_pure_full_width_function():
    a = noise_seed(7, "img0.png", "certify")
    assert (
        a == noise_seed(7, "img0.png", "certify") == noise_seed(np.int64(7), "img0.png", "certify")
    )
    assert 0 <= a < 2**63
    # pinned: a change of derivation must change SCHEME (recorded in run settings) as well
    assert noise_seed(0, "img0.png", "certify") == 204329766804655727
    assert SCHEME.startswith("noise_seed v1")
    # no truncation of the run seed: s and s + 2**32 (and s + 2**64) are different runs
    for s in (0, 1, 12345, 2**31 - 1):
        assert noise_seed(s, "x", "certify") != noise_seed(s + 2**32, "x", "certify")
        assert noise_seed(s, "x", "certify") != noise_seed(s + 2**64, "x", "certify")
    assert noise_seed(-1, "x", "certify") != noise_seed(2**64 - 1, "x", "certify")
    # purposes and keys separate streams
    seeds = {noise_seed(0, "x", p) for p in PURPOSES}
    assert len(seeds) == len(PURPOSES)
    assert noise_seed(0, ("a/b", "c"), "judge") != noise_seed(0, ("a", "b/c"), "judge")
    assert noise_seed(0, ("ab",), "judge") == noise_seed(0, "ab", "judge")
    assert noise_seed(0, 3, "check") == noise_seed(0, "3", "check")  # keys compare as text
    gen = generator(5, "k", "attack")
    assert gen.initial_seed() == noise_seed(5, "k", "attack")


def test_keys_are_bytes_safe():
    raw = b"caf\xe9.png"  # Latin-1 bytes: not valid UTF-8
    name = os.fsdecode(raw) if sys.platform != "win32" else raw.decode("utf-8", "surrogateescape")
    assert key_bytes(name) == key_bytes(raw)
    assert noise_seed(1, name, "certify") == noise_seed(1, raw, "certify")
    assert noise_seed(1, Path("dir") / "é.png", "certify") == noise_seed(
        1, "dir/é.png".encode(), "certify"
    )
    assert noise_seed(1, "\ud800", "certify") >= 0  # any str has a key


@pytest.mark.parametrize(
    "args",
    [(1.5, "k", "certify"), (True, "k", "certify"), (1, "k", "Certify"), (1, "k", ""),
     (1, 2.5, "certify"), (1, (), "certify"), (1, None, "certify")],
)  # fmt: skip
def test_bad_arguments_are_input_errors(args):
    with pytest.raises(InputError):
        noise_seed(*args)


def test_seeds_2_32_apart_certify_differently(tmp_path, capsys, monkeypatch, make_pngs):
    make_pngs(tmp_path / "imgs", 1, seed=2)
    monkeypatch.chdir(tmp_path)
    out = {}
    for seed in (5, 5 + 2**32):
        args = ["certify", "synthetic-trig", "--images", "imgs", *FAST, "--seed", str(seed)]
        code, _, err = run_cli(capsys, *args, "--run-dir", f"runs/{seed}")
        assert code == 0, err
        (out[seed],) = read_records(tmp_path / f"runs/{seed}")
    a, b = out[5], out[5 + 2**32]
    assert a["seed"] == noise_seed(5, "img0.png", "certify") != b["seed"]
    assert a["score_estimate"] != b["score_estimate"]


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs bytes file names")
def test_non_utf8_file_name_certifies_and_resumes(tmp_path, capsys, monkeypatch, make_pngs):
    make_pngs(tmp_path / "imgs", 2, seed=3)
    raw = b"caf\xe9.png"
    os.rename(tmp_path / "imgs" / "img1.png", os.path.join(os.fsencode(tmp_path / "imgs"), raw))
    monkeypatch.chdir(tmp_path)
    args = ["certify", "synthetic-trig", "--images", "imgs", *FAST, "--keep-samples"]
    code, _, err = run_cli(capsys, *args, "--run-dir", "runs/a")
    assert code == 0, err
    records = {r["key"]: r for r in read_records(tmp_path / "runs/a")}
    name = os.fsdecode(raw)
    assert set(records) == {"img0.png", name}
    assert records[name]["seed"] == noise_seed(0, raw, "certify")
    assert records[name]["score_lower"] is not None
    assert load_samples(tmp_path / "runs/a", name).shape == (200,)
    code, _out, err = run_cli(capsys, *args, "--run-dir", "runs/a")  # resumes: nothing to do
    assert code == 0, err
    assert len(read_records(tmp_path / "runs/a")) == 2


# ------------------------------------------------------------------ one image, four paths


def test_same_image_same_noise_in_certify_ray_dataset_and_evaluate(
    tmp_path, capsys, monkeypatch, make_pngs
):
    """``featsmooth certify``, ``certify --ray`` (2 local workers), ``certify_dataset`` and
    ``featsmooth evaluate`` draw the same noise for the same image and seed: the recorded
    samples are bit-identical, and so is everything computed from them."""
    ray = pytest.importorskip("ray")
    from featsmooth import api
    from featsmooth.distributed import certify_dataset

    make_pngs(tmp_path / "imgs", 3, seed=4)
    monkeypatch.chdir(tmp_path)
    common = ["synthetic-trig", "--images", "imgs", *FAST, "--seed", "11"]
    code, _, err = run_cli(capsys, "certify", *common, "--keep-samples", "--run-dir", "runs/local")
    assert code == 0, err
    assert not ray.is_initialized()
    code, _, err = run_cli(
        capsys, "certify", *common, "--keep-samples", "--run-dir", "runs/ray", "--ray",
        "--workers", "2",
    )  # fmt: skip
    assert code == 0, err
    source = api.folder_images("imgs", 32)
    certify_dataset(
        "synthetic-trig", source.all_images(), 0.25, n0=16, n=200, seed=11,
        run_dir=tmp_path / "runs/dataset", keys=source.keys, save_samples=True,
    )  # fmt: skip
    code, _, err = run_cli(
        capsys, "evaluate", *common, "--eps", "0.1", "--steps", "1", "--eot", "1",
        "--judge-draws", "4", "--check-draws", "8", "--run-dir", "runs/evaluate",
    )  # fmt: skip
    assert code == 0, err

    local = {r["key"]: r for r in read_records(tmp_path / "runs/local")}
    ray_run = {r["key"]: r for r in read_records(tmp_path / "runs/ray")}
    dataset = {r["key"]: r for r in read_records(tmp_path / "runs/dataset")}
    evaluated = {
        r["image"]: r
        for r in read_records(tmp_path / "runs/evaluate")
        if r.get("kind") == "certificate"
    }
    assert set(local) == set(ray_run) == set(dataset) == set(evaluated) == set(source.keys)
    for key in source.keys:
        expected = {f: local[key][f] for f in DRAWN}
        assert expected["seed"] == noise_seed(11, key, "certify")
        for other in (ray_run, dataset, evaluated):
            assert {f: other[key][f] for f in DRAWN} == expected
            estimate = other[key]["score_estimate"]
            assert estimate == pytest.approx(local[key]["score_estimate"], rel=1e-12, abs=0)
        for name in ("projections", "clean"):
            ref = load_samples(tmp_path / "runs/local", key, name)
            for run in ("runs/ray", "runs/dataset"):
                assert np.array_equal(load_samples(tmp_path / run, key, name), ref)


# ------------------------------------------------------------------ killed evaluate resumes

EVAL_SCRIPT = textwrap.dedent(
    """
    import sys

    import torch

    from featsmooth.encoders.synthetic import make_trig_encoder
    from featsmooth.evaluate import AttackSpec, evaluate
    from featsmooth.plugin import load_plugin


    def run(run_dir, plugin_dir):
        encoder = make_trig_encoder(0.9, 0.25, shape=(3, 8, 8))
        gen = torch.Generator().manual_seed(3)
        images = 0.3 + 0.4 * torch.rand((4, 3, 8, 8), generator=gen)
        return evaluate(
            encoder, images, settings=("vanilla", "fs", "fs+plugin"),
            plugin=load_plugin(plugin_dir), sigma=0.25,
            attacks=[AttackSpec("pgd", "l2", 0.25, 2), AttackSpec("apgd", "linf", "2/255", 2)],
            eot_draws=2, judge_draws=4, n0=8, n=64, consistency_draws=16, batch_size=2,
            names=[f"im{i}" for i in range(4)], run_dir=run_dir, seed=2**40 + 3,
        )


    if __name__ == "__main__":
        run(sys.argv[1], sys.argv[2])
    """
)


@pytest.fixture(scope="module")
def eval_script(tmp_path_factory) -> tuple[Path, Path]:
    """The evaluation script and a tiny plug-in (purifier and mapper, 4 training steps)."""
    import torch

    from featsmooth.encoders.synthetic import make_trig_encoder
    from featsmooth.plugin import save_plugin, train_plugin

    folder = tmp_path_factory.mktemp("eval")
    encoder = make_trig_encoder(0.9, 0.25, shape=(3, 8, 8))
    images = torch.rand((8, 3, 8, 8), generator=torch.Generator().manual_seed(9))
    kwargs = dict(
        sigmas=(0.25,), steps=4, batch_size=4, seed=2**33 + 1, progress=False,
        purifier_config={"base_channels": 4, "channel_mults": (1,), "emb_dim": 8},
        mapper_config={"hidden": 16, "emb_dim": 8},
    )  # fmt: skip
    plugin = train_plugin(encoder, images, **kwargs)
    again = train_plugin(encoder, images, **kwargs)  # plug-in training is seeded too
    for name, module in plugin.modules().items():
        other = again.modules()[name].state_dict()
        assert all(torch.equal(v, other[k]) for k, v in module.state_dict().items())
    save_plugin(plugin, folder / "plugin")
    script = folder / "run_eval.py"
    script.write_text(EVAL_SCRIPT)
    return script, folder / "plugin"


@pytest.fixture(scope="module")
def whole_run(eval_script, tmp_path_factory) -> tuple[Path, list[dict]]:
    """An uninterrupted run of the script: its folder and its returned records."""
    script, plugin_dir = eval_script
    folder = tmp_path_factory.mktemp("whole") / "run"
    result = runpy.run_path(str(script))["run"](folder, plugin_dir)
    return folder, result.records


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def test_killed_evaluate_resumes_to_the_uninterrupted_records(eval_script, whole_run, tmp_path):
    """Vanilla, fs and fs+plugin with the consistency check: kill -9 once a record is on
    disk (wherever that lands: mid-block, mid-line, or after the end), resume, compare."""
    script, plugin_dir = eval_script
    run = runpy.run_path(str(script))["run"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(killed), str(plugin_dir)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    records_file = killed / "records.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if records_file.exists() and b"\n" in records_file.read_bytes():
            break
        time.sleep(0.02)
    assert records_file.exists() and b"\n" in records_file.read_bytes(), (
        f"no record was written (exit code {proc.poll()})"
    )
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a kill mid-line leaves a line that is cut off
        resumed = run(killed, plugin_dir)
    whole_dir, whole = whole_run
    assert len(whole) == 4 * (3 * 2 + 2)  # per image: 3 settings x 2 attacks + 2 certs
    checked = [r for r in whole if r.get("consistency_checked")]
    assert len(checked) == 4 * 2 * 2 and not any(r["consistency_violation"] for r in checked)
    assert _deterministic(read_records(killed)) == _deterministic(read_records(whole_dir))
    assert _deterministic(resumed.records) == _deterministic(whole)


def test_evaluate_resumed_from_any_cut_matches(eval_script, whole_run, tmp_path):
    """The same without timing: runs cut inside an attack block of the vanilla setting,
    inside the fs certificates, and in fs+plugin once its first block of images is done
    (the resumed run then draws for the second block alone)."""
    script, plugin_dir = eval_script
    run = runpy.run_path(str(script))["run"]
    whole_dir = whole_run[0]
    whole = _deterministic(read_records(whole_dir))
    lines = (whole_dir / "records.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 32  # vanilla 8, fs 4 + 8, fs+plugin 4 + 8
    for cut in (1, 10, 30):
        part = tmp_path / f"cut{cut}"
        part.mkdir()
        (part / "settings.json").write_bytes((whole_dir / "settings.json").read_bytes())
        (part / "records.jsonl").write_bytes(b"".join(lines[:cut]))
        run(part, plugin_dir)
        assert _deterministic(read_records(part)) == whole, f"cut after {cut} records"


def test_run_settings_name_the_seed_scheme(tmp_path, capsys, monkeypatch, make_pngs):
    make_pngs(tmp_path / "imgs", 1, seed=5)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "certify", "synthetic-trig", "--images", "imgs", *FAST,
                           "--run-dir", "runs/a")  # fmt: skip
    assert code == 0, err
    settings = json.loads((tmp_path / "runs/a/settings.json").read_text())
    assert settings["seeds"] == SCHEME
