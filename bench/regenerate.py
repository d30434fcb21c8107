"""Regenerate the files of ``bench/results`` from :mod:`manifest`, one subprocess each.

    python bench/regenerate.py --list          # the plan: file, command, needs, duration
    python bench/regenerate.py --skip-long     # everything but the hours-long entries
    python bench/regenerate.py --only attacks bounds

Entries run in manifest order with this interpreter from the repository root; an entry
whose needs are not met here (``needs CUDA``, a plug-in folder an earlier entry makes) is
skipped with the reason. Paths an entry would resume from are moved aside first and put
back if it fails. A failed entry is reported and the others still run; the exit status is
1 when any failed.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from manifest import MANIFEST, Entry, by_name

ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script; parsing it runs nothing."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="print the plan and run nothing")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="these entries only")
    p.add_argument("--skip-long", action="store_true", help="skip the hours-long entries")
    p.add_argument("--resume", action="store_true", help="let resumable entries resume")
    return p


def cuda_available() -> bool:
    """True when torch is importable here and sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def skip_reason(entry: Entry, skip_long: bool, cuda: bool) -> str | None:
    """Why ``entry`` cannot or should not run here, or None when it runs."""
    if entry.cuda and not cuda:
        return "needs CUDA"
    if skip_long and entry.long:
        return "long (--skip-long)"
    missing = [n for n in entry.needs if n != "cuda" and not (ROOT / n).exists()]
    if missing:
        return "needs " + ", ".join(missing)
    return None


def describe(entry: Entry) -> str:
    """One plan line: outputs, command, needs and duration class."""
    needs = ", ".join("CUDA" if n == "cuda" else n for n in entry.needs) or "-"
    command = shlex.join(["python", *entry.command()])
    line = f"{' + '.join(entry.outputs)}\t{command}\tneeds: {needs}\t{entry.duration}"
    return line + ("\tlong" if entry.long else "")


def run_entry(entry: Entry, resume: bool) -> bool:
    """Run one entry in its own subprocess; True when it exited 0. Unless ``resume``, the
    paths it resumes from are moved aside and restored when it fails."""
    aside = Path(tempfile.mkdtemp(prefix="bench-aside-"))
    moved: list[tuple[Path, Path]] = []
    if not resume:
        for i, rel in enumerate(entry.resumes_from):
            src = ROOT / rel
            if src.exists():
                dst = aside / str(i)
                shutil.move(str(src), str(dst))
                moved.append((src, dst))
    code = subprocess.call([sys.executable, *entry.command()], cwd=ROOT)
    for src, dst in moved:
        if code == 0:
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        else:
            if src.is_dir():
                shutil.rmtree(src)
            elif src.exists():
                src.unlink()
            shutil.move(str(dst), str(src))
    shutil.rmtree(aside, ignore_errors=True)
    return code == 0


def main(argv: list[str] | None = None) -> int:
    """Print the plan (``--list``) or run it; returns 1 when an entry failed, else 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    entries: list[Entry] = list(MANIFEST)
    if args.only:
        names = by_name()
        unknown = [n for n in args.only if n.removesuffix(".json") not in names]
        if unknown:
            parser.error(f"unknown entries {unknown}; see --list")
        wanted = {n.removesuffix(".json") for n in args.only}
        entries = [e for e in entries if e.name in wanted]
    if args.list:
        for entry in entries:
            print(describe(entry))
            if entry.note:
                print(f"\tnote: {entry.note}")
        return 0
    cuda = cuda_available()
    failed = []
    for entry in entries:
        label = " + ".join(entry.outputs)
        reason = skip_reason(entry, args.skip_long, cuda)
        if reason:
            print(f"skip {label}: {reason}", flush=True)
            continue
        print(f"run  {label}: {shlex.join(['python', *entry.command()])}", flush=True)
        start = time.perf_counter()
        ok = run_entry(entry, args.resume)
        status = "ok  " if ok else "FAIL"
        print(f"{status} {label} ({time.perf_counter() - start:.0f} s)", flush=True)
        if not ok:
            failed.append(label)
    if failed:
        print("failed: " + ", ".join(failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
