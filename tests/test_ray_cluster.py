"""``featsmooth certify --ray`` on a real Ray cluster on this machine (a head and two worker
nodes started with ``ray start``, as on a real cluster), surviving a lost worker node and
a killed driver: every image recorded exactly once, records identical to a single-process
run with the same seed.

Slow (a cluster start is tens of seconds on a loaded 2-core machine): marked ``slow``.
The cluster's processes are found by its private temporary folder and stopped at the end,
so Ray runs of other programs on the machine are left alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
#: one authentication mode for head, workers and driver (Ray 2.5x may default to tokens)
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
ARGS = ["certify", "synthetic-trig", "--images", "imgs", "--size", "32", "--n0", "16",
        "--n", "3000", "--seed", "3", "--no-progress"]  # fmt: skip
IMAGES = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            out[int(d.name)] = (ppid, cmd)
    return out


def _tree(roots: list[int]) -> set[int]:
    procs, found, todo = _pids(), set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(p for p, (ppid, _) in procs.items() if ppid == pid)
    return found


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Cluster:
    """A head (no CPUs: the driver's node) and worker nodes of one CPU each."""

    def __init__(self, workers: int) -> None:
        self.tmp = tempfile.mkdtemp(prefix="fsray", dir="/tmp")  # short: Ray's socket paths
        self.address = f"127.0.0.1:{_free_port()}"
        self._start("--head", f"--port={self.address.split(':')[1]}", "--num-cpus=0",
                    "--include-dashboard=false", f"--temp-dir={self.tmp}")  # fmt: skip
        for _ in range(workers):
            self._start(f"--address={self.address}", "--num-cpus=1")

    def _start(self, *args: str) -> None:
        cmd = [RAY, "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args]
        subprocess.run(cmd, env=ENV, check=True, capture_output=True, timeout=300)

    def raylets(self) -> list[int]:
        """The raylet of each node, head first."""
        return sorted(
            pid for pid, (_, cmd) in _pids().items() if "/raylet/raylet " in cmd and self.tmp in cmd
        )

    def stop(self) -> None:
        roots = [p for p, (_, cmd) in _pids().items() if self.tmp in cmd and p != os.getpid()]
        _kill(_tree(roots))


@pytest.fixture
def cluster():
    c = Cluster(workers=2)
    try:
        yield c
    finally:
        c.stop()


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]


def _deterministic(records: list[dict]) -> dict:
    return {r["key"]: {k: v for k, v in r.items() if k != "seconds"} for r in records}


def _start_driver(tmp_path: Path, cluster: Cluster, run: str, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "featsmooth.cli", *ARGS, "--ray", "--ray-address",
           cluster.address, "--workers", str(workers), "--run-dir", run]  # fmt: skip
    return subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _wait_for_records(run: Path, count: int, proc: subprocess.Popen, timeout: float = 600):
    """Until ``run`` holds ``count`` records (or the driver ended); no fixed sleep."""
    deadline = time.monotonic() + timeout
    path = run / "records.jsonl"
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        if proc.poll() is not None:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {count} records in {run} after {timeout} s")


def test_certify_survives_a_lost_worker_and_a_killed_driver(cluster, tmp_path, make_pngs):
    make_pngs(tmp_path / "imgs", IMAGES, seed=4)
    single = subprocess.run(
        [sys.executable, "-m", "featsmooth.cli", *ARGS, "--run-dir", "one"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert single.returncode == 0, single.stdout + single.stderr
    expected = _deterministic(_records(tmp_path / "one"))
    assert len(expected) == IMAGES

    # a worker node is lost (its raylet and everything under it killed) once work is flowing
    driver = _start_driver(tmp_path, cluster, "lost-worker", workers=2)
    _wait_for_records(tmp_path / "lost-worker", 1, driver)
    worker_node = cluster.raylets()[-1]
    _kill(_tree([worker_node]))
    # the loss happened mid-run, with work left (else this test would prove nothing)
    assert driver.poll() is None and len(_records(tmp_path / "lost-worker")) < IMAGES
    out, _ = driver.communicate(timeout=900)
    assert driver.returncode == 0, out
    records = _records(tmp_path / "lost-worker")
    assert sorted(r["key"] for r in records) == sorted(expected)  # each image exactly once
    assert _deterministic(records) == expected

    # the driver dies mid-run; rerunning it resumes (on the one node left)
    driver = _start_driver(tmp_path, cluster, "lost-driver", workers=1)
    _wait_for_records(tmp_path / "lost-driver", 1, driver)
    assert driver.poll() is None
    driver.kill()
    driver.wait(timeout=60)
    done_before = len(_records(tmp_path / "lost-driver"))
    assert done_before < IMAGES
    resumed = subprocess.run(
        [sys.executable, "-m", "featsmooth.cli", *ARGS, "--ray", "--ray-address",
         cluster.address, "--workers", "1", "--run-dir", "lost-driver"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    records = _records(tmp_path / "lost-driver")
    assert sorted(r["key"] for r in records) == sorted(expected)
    assert _deterministic(records) == expected
    assert f"{done_before} image(s) already certified" in resumed.stdout
