"""The ``featsmooth`` command line (typer + rich): a thin shell over :mod:`featsmooth.api`.

Every subcommand parses its flags, calls the matching function of :mod:`featsmooth.api`
and prints the result. User mistakes (:class:`~featsmooth.errors.FeatsmoothError`, a
missing file, a malformed config file) print one red line ``error: ...`` with a hint and
exit with the error's code (2 bad input, 3 unusable features, 4 model unavailable, 5 run
records); tracebacks are kept for real bugs, or shown for everything with ``--debug``.
``evaluate`` exits with 6 when an attacked input beats its certificate (a bug; the inputs
are saved under ``RUN/violations``). Sanity-check warnings print in yellow. Ctrl-C exits with 130 and leaves the records
written so far intact (rerun the same command to resume).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

try:
    import click
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from featsmooth import config as C
    from featsmooth.errors import FeatsmoothError
except KeyboardInterrupt:  # Ctrl-C while the command starts: one line, no traceback
    sys.stderr.write("interrupted while starting; nothing was written\n")
    raise SystemExit(130) from None

EXIT_INTERRUPTED = 130
EXIT_VIOLATION = 6


def _click_exception_classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(ClickException, Exit, Abort) classes of click and of the click copy that newer typer
    versions vendor (``typer._click``), so both raise paths are caught."""
    modules: list[Any] = [click.exceptions]
    try:
        import typer._click.exceptions as vendored

        modules.append(vendored)
    except ImportError:  # typer releases that use click itself
        pass
    errors = tuple({m.ClickException for m in modules if hasattr(m, "ClickException")})
    exits = tuple({click.exceptions.Exit, typer.Exit})
    aborts = tuple({click.exceptions.Abort, typer.Abort, KeyboardInterrupt})
    return errors, exits, aborts


_CLICK_ERRORS, _CLICK_EXITS, _ABORTS = _click_exception_classes()

_state: dict[str, Any] = {"debug": False, "command": None}
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

app = typer.Typer(
    name="featsmooth",
    help=(
        "Feature-space Smoothing: certified l2 robustness of image encoders.\n\n"
        "Start with: featsmooth demo"
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# --------------------------------------------------------------------------------------
# Shared options

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="YAML or TOML settings file; flags given here win over it."),
]
SigmaOpt = Annotated[float | None, typer.Option(help="Noise level in pixel units of [0,1] images.")]
N0Opt = Annotated[int | None, typer.Option("--n0", help="Samples that choose the direction v.")]
AlphaOpt = Annotated[float | None, typer.Option(help="Failure probability of each certificate.")]
MethodOpt = Annotated[
    str | None,
    typer.Option(help="Confidence bound: betting | bernstein | hoeffding."),
]
RadiiOpt = Annotated[
    str | None,
    typer.Option(help="l2 radii (pixel units) to certify, comma-separated."),
]
BatchOpt = Annotated[int | None, typer.Option(help="Noisy images per forward pass.")]
SeedOpt = Annotated[int | None, typer.Option(help="Run seed (each image gets its own stream).")]
DeviceOpt = Annotated[
    str | None, typer.Option(help="torch device: cpu, cuda, cuda:1, mps. [default: the model's]")
]
DtypeOpt = Annotated[
    str | None, typer.Option(help="Model input dtype: float32 | bfloat16 | float16.")
]
SizeOpt = Annotated[
    int | None,
    typer.Option(help="Side of the square images (centre crop + resize). [default: the model's]"),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option(
        help="Zero-shot class names: comma-separated or a text file, one per line. "
        "[default: ImageNet-1k for text-image models]"
    ),
]
ProgressOpt = Annotated[
    bool | None, typer.Option("--progress/--no-progress", help="Show progress bars.")
]
TuneOpt = Annotated[
    bool | None,
    typer.Option(
        "--tune/--no-tune",
        help="Measure the fastest batch size and dtype for this encoder and device (a short "
        "warm-up, cached; bfloat16 only where its features agree with float32 ones) and use "
        "them instead of --batch-size/--dtype.",
    ),
]


def _on_tuning(tuning: Any) -> None:
    out.print(f"[bold]tuned:[/bold] {escape(tuning.describe())}")


RunDirOpt = Annotated[
    str | None, typer.Option("--run-dir", help="Run folder for the records (resumed if it exists).")
]


def _given(**kwargs: Any) -> dict[str, Any]:
    """Flags the user gave (typer passes ``None`` for the others)."""
    return {k: v for k, v in kwargs.items() if v is not None}


# --------------------------------------------------------------------------------------
# Printing helpers


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    v = float(value)
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "∞"
    return f"{v:.{digits}f}"


def _radius(value: Any) -> str:
    return (
        "abstain"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (_num(value))
    )


def print_config(cfg: Any, title: str = "settings") -> None:
    """Print the effective settings on one (wrapped) line; unset (null) ones are left out.

    The full YAML is saved beside the run as ``config.yaml`` (``--config`` accepts it)."""
    items = [f"{k.replace('_', '-')}={v}" for k, v in C.to_dict(cfg).items() if v is not None]
    out.print(f"[bold]{title}:[/bold] [dim]{escape(', '.join(items))}[/dim]", soft_wrap=True)


def _starting(what: str, doing: str, done_as: str) -> Callable[[int, int], None]:
    """The ``on_start(done, todo)`` callback that announces a run: ``doing`` ``todo``
    ``what``, or how many are already ``done_as`` when resuming."""

    def on_start(done: int, todo: int) -> None:
        if done:
            out.print(f"resuming: {done} {what} already {done_as} in this run folder, {todo} to go")
        else:
            out.print(f"{doing} {todo} {what}")

    return on_start


_on_start = _starting("image(s)", "certifying", "certified")


def _on_record(record: dict[str, Any], new: bool) -> None:
    if not new:
        return
    pred = record.get("smoothed_prediction_name")
    extra = f"  prediction {escape(str(pred))}" if pred is not None else ""
    out.print(
        f"[green]✓[/green] {escape(str(record['key']))}: S_low {_num(record.get('score_lower'))}"
        f"{extra}  ({record.get('seconds', 0):.1f} s)",
        soft_wrap=True,
    )


def certificate_table(records: list[dict[str, Any]], title: str | None = None) -> Table:
    """Feature certificates, one row per image: S, S_low, FCSB per radius, radius for 0.5."""
    radii = next((r.get("radii") for r in records if r.get("radii")), []) or []
    table = Table(title=title, header_style="bold")
    table.add_column("image", no_wrap=True)
    table.add_column("S est", justify="right")
    table.add_column("S_low", justify="right")
    for r in radii:
        table.add_column(f"FCSB\nr={r:g}", justify="right")
    table.add_column("radius\ncos≥0.5", justify="right")
    table.add_column("cos\n(f, f̂)", justify="right")
    for rec in records:
        row = [escape(str(rec.get("key")))]
        row += [_num(rec.get("score_estimate")), _num(rec.get("score_lower"))]
        fcsb = rec.get("fcsb") or []
        row += [_num(fcsb[i] if i < len(fcsb) else None) for i in range(len(radii))]
        row += [_num(rec.get("certified_radius_cos50")), _num(rec.get("clean_smoothed_cosine"))]
        table.add_row(*row)
    return table


def prediction_table(records: list[dict[str, Any]], title: str | None = None) -> Table | None:
    """Certified zero-shot predictions (None when the records have none)."""
    if not any("margin_radius" in r for r in records):
        return None
    table = Table(title=title, header_style="bold")
    table.add_column("image", no_wrap=True)
    table.add_column("label")
    table.add_column("smoothed\nprediction")
    table.add_column("clean\nprediction")
    for method in ("margin", "fcsb", "cohen"):
        table.add_column(f"radius\n{method}", justify="right")
    for rec in records:
        name = rec.get("smoothed_prediction_name") or "—"
        mark = ""
        if rec.get("acceptable"):
            ok = rec.get("smoothed_prediction") in rec["acceptable"]
            mark = " [green]✓[/green]" if ok else " [red]✗[/red]"
        table.add_row(
            escape(str(rec.get("key"))),
            escape(str(rec.get("label_name") or "—")),
            escape(str(name)) + mark,
            escape(str(rec.get("clean_prediction_name") or "—")),
            *[_radius(rec.get(f"{m}_radius")) for m in ("margin", "fcsb", "cohen")],
        )
    return table


def print_run(result: Any, *, max_rows: int = 40) -> None:
    """The certificate table of a run (or a summary for many images) and what it means."""
    records = result.records
    cfg = result.config
    if not records:
        out.print("no records")
        return
    head = f"{result.model}, sigma = {cfg.sigma:g}, n = {cfg.n}, alpha = {cfg.alpha:g}"
    if len(records) <= max_rows:
        out.print(certificate_table(records, title=f"feature certificates ({head})"))
        out.print(
            f"S_low, FCSB and radius cos≥0.5 are certified, each with probability ≥ "
            f"{1 - cfg.alpha:g} ({cfg.method} bound): FCSB r lower-bounds cos(f̂(x), f̂(x+δ)) "
            "for every ‖δ‖₂ ≤ r (pixel units; — = no certificate); radius cos≥0.5 keeps it "
            "≥ 0.5. S est and cos(f, f̂) (clean vs smoothed feature) are estimates.",
            soft_wrap=True,
        )
        preds = prediction_table(records, title="certified zero-shot predictions")
        if preds is not None:
            out.print(preds)
            out.print(
                "radius margin / fcsb / cohen: certified l2 radius of the smoothed prediction by the "
                "pairwise-margin, FCSB-cone and Cohen hard-vote certificates (same probability); "
                "abstain = not certified. ✓/✗: smoothed prediction acceptable for the label.",
                soft_wrap=True,
            )
    else:
        _print_summary(records)
    out.print(
        f"records: {result.run_dir / 'records.jsonl'}  ({result.new} new, "
        f"{result.skipped} resumed)  {result.seconds:.1f} s",
        soft_wrap=True,
    )


def _print_summary(records: list[dict[str, Any]]) -> None:
    from statistics import fmean

    def mean(key: str) -> str:
        vals = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        return _num(fmean(vals)) if vals else "—"

    out.print(
        f"{len(records)} images: mean S est {mean('score_estimate')}, mean S_low "
        f"{mean('score_lower')}, mean cos(f,f̂) {mean('clean_smoothed_cosine')}"
    )
    radii = next((r.get("radii") for r in records if r.get("radii")), []) or []
    for i, radius in enumerate(radii):
        vals = [(r.get("fcsb") or [None] * len(radii))[i] for r in records]
        have = [v for v in vals if v is not None]
        out.print(
            f"  r = {radius:g}: certified for {len(have)}/{len(vals)} images, mean FCSB "
            f"(0 where none) {sum(have) / len(vals):.3f}"
        )


# --------------------------------------------------------------------------------------
# Commands


def _print_version(value: bool) -> None:
    if value:
        from featsmooth.versions import featsmooth_version

        out.print(f"featsmooth {featsmooth_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks for errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Feature-space Smoothing: certified l2 robustness of image encoders."""
    _state["debug"] = debug or bool(os.environ.get("FEATSMOOTH_DEBUG"))


@app.command(
    epilog="Example: featsmooth demo          (9 photos, n0 16 + n 300 noise draws each)\n\n"
    "Example: featsmooth demo --fast   (2 photos, few samples: a smoke test)"
)
def demo(
    fast: Annotated[
        bool, typer.Option("--fast", help="2 photos and few samples (loose bounds; a smoke test).")
    ] = False,
    sigma: SigmaOpt = None,
    n0: Annotated[int | None, typer.Option("--n0", help="Direction samples.")] = None,
    n: Annotated[int | None, typer.Option("--n", help="Certification samples.")] = None,
    alpha: AlphaOpt = None,
    method: MethodOpt = None,
    batch_size: BatchOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    run_dir: Annotated[
        str | None, typer.Option("--run-dir", help="Run folder. [default: runs/demo]")
    ] = None,
    config: ConfigOpt = None,
    progress: ProgressOpt = None,
    tune: Annotated[
        bool | None,
        typer.Option(
            "--tune/--no-tune",
            help="Measure the fastest batch size and dtype first (a warm-up, cached).",
        ),
    ] = None,
) -> None:
    """Certify the shipped photos with the offline zero-shot default model.

    Prints, per photo, the robustness score S, its certified lower bound S_low, the FCSB at
    r = 0.1, 0.25, 0.5, the radius keeping the cosine >= 0.5, the clean-vs-smoothed cosine
    and the certified smoothed prediction (three certificates). Resumable (runs/demo).
    """
    from featsmooth import api

    if fast:
        out.print("fast preset: 2 photos and few samples, a smoke test: the bounds are loose")
    result = api.demo(
        fast=fast,
        config_file=config,
        on_record=_on_record,
        on_start=_on_start,
        on_config=lambda cfg: print_config(cfg),
        on_tuning=_on_tuning,
        **_given(
            sigma=sigma, n0=n0, n=n, alpha=alpha, method=method, batch_size=batch_size,
            seed=seed, device=device, run_dir=run_dir, progress=progress, tune=tune,
        ),
    )  # fmt: skip
    for note in result.notes:
        err.print(f"[bold red]!!! {escape(note)}[/bold red]", soft_wrap=True)
    print_run(result)
    if result.unrelated_cosine is not None:
        what = "photos" if result.model == "default" else "images"
        out.print(
            f"context: mean cosine between the clean features of different {what} = "
            f"{result.unrelated_cosine:.3f} (a certified cosine near this says little)",
            soft_wrap=True,
        )
    for note in result.notes:
        err.print(f"[bold red]!!! {escape(note)}[/bold red]", soft_wrap=True)


@app.command(
    epilog="Example: featsmooth certify default --photos --sigma 0.25 --n 2000\n\n"
    "Example: featsmooth certify synthetic-trig --images my_pngs/ --size 32 --keep-samples "
    "--run-dir runs/trig\n\n"
    "Example: featsmooth certify synthetic-trig --images my_pngs/ --ray --workers 4"
)
def certify(
    model: Annotated[str, typer.Argument(help="Registry name, local model folder or hub id.")],
    images: Annotated[
        str | None, typer.Option(help="Folder of images (searched recursively) or one image.")
    ] = None,
    photos: Annotated[
        bool | None, typer.Option("--photos", help="Use the photos shipped with the packages.")
    ] = None,
    sigma: SigmaOpt = None,
    n0: Annotated[int | None, typer.Option("--n0", help="Direction samples.")] = None,
    n: Annotated[int | None, typer.Option("--n", help="Certification samples (maximum).")] = None,
    alpha: AlphaOpt = None,
    method: MethodOpt = None,
    radii: RadiiOpt = None,
    tolerance: Annotated[
        float | None,
        typer.Option(help="Stop an image once estimate − S_low ≤ this (betting bound only)."),
    ] = None,
    target_cosine: Annotated[
        float | None,
        typer.Option(
            help="With --target-radius: stop once this cosine is certified (or cannot be)."
        ),
    ] = None,
    target_radius: Annotated[
        float | None, typer.Option(help="Radius of --target-cosine (pixel units).")
    ] = None,
    batch_size: BatchOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    size: SizeOpt = None,
    center: Annotated[
        bool | None,
        typer.Option(
            "--center/--no-center",
            help="Subtract the mean feature of uniform-noise images before normalising.",
        ),
    ] = None,
    keep_samples: Annotated[
        bool | None,
        typer.Option(
            "--keep-samples", help="Store per-sample projections (for `featsmooth recompute`)."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="auto | features | zero-shot (predictions need a text-image model)."),
    ] = None,
    classes: ClassesOpt = None,
    plugin: Annotated[
        str | None, typer.Option(help="Folder of a trained plug-in (purifier + mapper).")
    ] = None,
    run_dir: RunDirOpt = None,
    config: ConfigOpt = None,
    progress: ProgressOpt = None,
    ray: Annotated[
        bool | None,
        typer.Option(
            "--ray/--no-ray",
            help="Spread the images over Ray workers (one encoder each; --task features "
            "only). Same records as without it. Needs Ray: pip install 'ray>=2.9'",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address", help="Existing Ray cluster (auto, ray://host:10001). [default: local]"
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Ray workers. [default: one per GPU, else one per CPU]"),
    ] = None,
    tune: TuneOpt = None,
) -> None:
    """Certify feature cosines (FCSB) and, for text-image models, zero-shot predictions.

    Writes one JSON record per image to RUN_DIR/records.jsonl as soon as it is done; the
    same command resumes an interrupted run (settings must match). Default run folder:
    runs/MODEL-sigmaSIGMA.
    """
    from featsmooth import api

    result = api.certify(
        model,
        config_file=config,
        on_record=_on_record,
        on_start=_on_start,
        on_config=lambda cfg: print_config(cfg),
        on_tuning=_on_tuning,
        **_given(
            images=images, photos=photos, sigma=sigma, n0=n0, n=n, alpha=alpha, method=method,
            radii=radii, tolerance=tolerance, target_cosine=target_cosine,
            target_radius=target_radius, batch_size=batch_size, seed=seed, device=device,
            dtype=dtype, size=size, center=center, keep_samples=keep_samples, task=task,
            classes=classes, plugin=plugin, run_dir=run_dir, progress=progress, ray=ray,
            ray_address=ray_address, workers=workers, tune=tune,
        ),
    )  # fmt: skip
    print_run(result)


@app.command(epilog="Example: featsmooth predict default cat.jpg dog.png --sigma 0.25 --n 256")
def predict(
    model: Annotated[str, typer.Argument(help="Registry name, local model folder or hub id.")],
    images: Annotated[
        list[str] | None, typer.Argument(help="Image files or folders.", show_default=False)
    ] = None,
    photos: Annotated[
        bool | None, typer.Option("--photos", help="Use the shipped photos instead.")
    ] = None,
    sigma: SigmaOpt = None,
    n: Annotated[int | None, typer.Option("--n", help="Noise draws per image.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Classes to show.")] = None,
    classes: ClassesOpt = None,
    batch_size: BatchOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    size: SizeOpt = None,
    save: Annotated[
        Path | None, typer.Option(help="Save the smoothed features (N, k) to this .npy file.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Smoothed feature (Monte-Carlo mean of noisy features) and zero-shot prediction.

    Nothing here is certified: use `featsmooth certify` for guarantees.
    """
    from featsmooth import api

    rows = api.predict(
        model,
        images or None,
        config_file=config,
        **_given(
            photos=photos, sigma=sigma, n=n, top_k=top_k, classes=classes,
            batch_size=batch_size, seed=seed, device=device, dtype=dtype, size=size,
        ),
    )  # fmt: skip
    zero_shot = any("top" in r for r in rows)
    table = Table(header_style="bold", title=f"{model}: smoothed predictions (not certified)")
    table.add_column("image")
    table.add_column("‖f̂‖ (S est)", justify="right")
    table.add_column("cos(f,f̂)", justify="right")
    if zero_shot:
        table.add_column("clean prediction")
        table.add_column("smoothed top classes (cosine)")
    for r in rows:
        row = [escape(r["key"]), _num(r["score_estimate"]), _num(r["clean_smoothed_cosine"])]
        if zero_shot:
            row.append(escape(str(r.get("clean_prediction_name"))))
            row.append(escape(", ".join(f"{name} ({s:.3f})" for name, s in r["top"])))
        table.add_row(*row)
    out.print(table)
    if save is not None:
        import numpy as np

        save.parent.mkdir(parents=True, exist_ok=True)
        np.save(save, np.stack([r["feature"] for r in rows]))
        out.print(f"saved smoothed features to {save}")


@app.command(epilog="Example: featsmooth models")
def models() -> None:
    """List the registered encoders, whether each loads here offline, and what is missing."""
    from featsmooth import api

    table = Table(header_style="bold", title="registered encoders")
    table.add_column("name", no_wrap=True)
    table.add_column("available", justify="center")
    table.add_column("offline", justify="center")
    table.add_column("description")
    table.add_column("to install")
    for row in api.models():
        table.add_row(
            escape(row.name),
            "[green]yes[/green]" if row.available else "[red]no[/red]",
            "yes" if row.offline else "no (hub)",
            escape(row.description),
            escape("; ".join(row.install)) if row.install else "",
        )
    out.print(table)
    out.print(
        "Any Hugging Face id or local folder of a supported model type (CLIP, SigLIP, LLaVA, "
        "LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, ...) and any open_clip name "
        "(ARCH/TAG, hf-hub:org/repo; needs the open_clip extra) also works where its "
        "weights are available.",
        soft_wrap=True,
    )


def _report_formats() -> tuple[str, str]:
    """(default ``--format``, help text) of ``report``, from the registry of formats."""
    from featsmooth.report.registry import default_formats, format_help

    return ",".join(default_formats()), format_help()


@app.command(
    epilog="Example: featsmooth report runs/demo --out reports/demo --format md,tex,png,html"
)
def report(
    runs: Annotated[list[str], typer.Argument(help="Run folders to report on.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("report"),
    fmt: Annotated[
        str, typer.Option("--format", help=f"Comma-separated, or all. {_report_formats()[1]}.")
    ] = _report_formats()[0],
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Name of each run (repeat per run).")
    ] = None,
    title: Annotated[str, typer.Option(help="Heading of the report.")] = "featsmooth report",
) -> None:
    """Summary tables and figures (certified cosine / accuracy vs radius, ASR) of runs."""
    from featsmooth import api
    from featsmooth.report.registry import parse_formats

    formats = parse_formats(fmt)  # before any run folder is read
    written = api.report(runs, out_dir, formats, labels=label or None, title=title)
    count = 0
    for kind, paths in written.items():
        for p in paths:
            out.print(f"{kind:>4}  {p}", soft_wrap=True)
            count += 1
    out.print(f"wrote {count} file(s) to {out_dir}")


@app.command(
    epilog="Example: featsmooth recompute runs/trig --alpha 0.01 --method bernstein "
    "--out runs/trig-a01"
)
def recompute(
    run: Annotated[str, typer.Argument(help="Run folder certified with --keep-samples.")],
    alpha: Annotated[float, typer.Option(help="New failure probability.")],
    method: Annotated[str, typer.Option(help="betting | bernstein | hoeffding.")] = "betting",
    radii: RadiiOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write the recomputed records as a new run here.")
    ] = None,
) -> None:
    """Recompute certificates at another alpha or bound from the stored samples (no model).

    Choose alpha and method before looking at results: trying several and keeping the best
    is multiple testing.
    """
    from featsmooth import api
    from featsmooth.records import read_records

    new = api.recompute(run, alpha, method, radii=radii, out=out_dir)
    old = {r.get("key"): r for r in read_records(run)}
    table = Table(header_style="bold", title=f"{run}: alpha = {alpha:g}, {method}")
    table.add_column("image")
    table.add_column("S_low before", justify="right")
    table.add_column("S_low now", justify="right")
    radii_now = next((r.get("radii") for r in new if r.get("radii")), []) or []
    for r in radii_now:
        table.add_column(f"FCSB r={r:g}", justify="right")
    for rec in new:
        before = old.get(rec.get("key"), {})
        fcsb = rec.get("fcsb") or []
        table.add_row(
            escape(str(rec.get("key"))),
            _num(before.get("score_lower"), 4),
            _num(rec.get("score_lower"), 4),
            *[_num(fcsb[i] if i < len(fcsb) else None) for i in range(len(radii_now))],
        )
    out.print(table)
    if out_dir is not None:
        out.print(f"wrote {len(new)} record(s) to {out_dir}")


@app.command(
    epilog="Example: featsmooth attack default --photos --norm l2 --eps 0.25,0.5 --steps 20 "
    "--settings vanilla,fs --eot 8\n\n"
    "Example: featsmooth attack default --photos --norm linf --eps 16/255 --attack apgd"
)
def attack(
    model: Annotated[str, typer.Argument(help="Registry name, local model folder or hub id.")],
    images: Annotated[str | None, typer.Option(help="Folder of images or one image.")] = None,
    photos: Annotated[
        bool | None, typer.Option("--photos", help="Use the photos shipped with the packages.")
    ] = None,
    attack_name: Annotated[
        str | None, typer.Option("--attack", help="pgd | apgd. [default: pgd]")
    ] = None,
    norm: Annotated[str | None, typer.Option(help="l2 | linf.")] = None,
    eps: Annotated[
        str | None,
        typer.Option(help="Budgets in pixel units, comma-separated; linf also k/255."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Attack steps.")] = None,
    step_size: Annotated[float | None, typer.Option(help="Step size (pixel units).")] = None,
    restarts: Annotated[int | None, typer.Option(help="Random restarts.")] = None,
    settings: Annotated[
        str | None,
        typer.Option(help="vanilla, fs, fs+plugin (comma-separated)."),
    ] = None,
    sigma: SigmaOpt = None,
    eot: Annotated[int | None, typer.Option(help="Noise draws per attack step (EoT).")] = None,
    judge_draws: Annotated[
        int | None,
        typer.Option(help="Fresh noise draws judging each smoothed result."),
    ] = None,
    success_cosine: Annotated[
        float | None,
        typer.Option(help="An attack succeeds when the cosine drops below this."),
    ] = None,
    plugin: Annotated[str | None, typer.Option(help="Plug-in folder (for fs+plugin).")] = None,
    batch_size: BatchOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    size: SizeOpt = None,
    run_dir: RunDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """White-box attacks (PGD/APGD, EoT on smoothed encoders) that push features away.

    One record per image, setting and eps (resumable); ASR and cosines go into
    `featsmooth report`. Smoothed results are judged on fresh noise draws.
    """
    from featsmooth import api

    result = api.attack(
        model,
        config_file=config,
        on_record=_on_attack_record,
        on_start=_starting("attack job(s) (image x budget x setting)", "running", "done"),
        on_config=lambda cfg: print_config(cfg),
        **_given(
            images=images, photos=photos, attack=attack_name, norm=norm, eps=eps, steps=steps,
            step_size=step_size, restarts=restarts, settings=settings, sigma=sigma, eot=eot,
            judge_draws=judge_draws, success_cosine=success_cosine, plugin=plugin,
            batch_size=batch_size, seed=seed, device=device, dtype=dtype, size=size,
            run_dir=run_dir,
        ),
    )  # fmt: skip
    table = Table(header_style="bold", title=f"attacks on {result.model} ({result.config.norm})")
    for col in ("setting", "eps", "images", "ASR", "mean adv cosine"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for rec in result.records:
        groups.setdefault((rec["setting"], rec["eps"]), []).append(rec)
    for (setting, e), recs in groups.items():
        asr = sum(bool(r["success"]) for r in recs) / len(recs)
        cos = sum(r["adv_cosine"] for r in recs) / len(recs)
        table.add_row(setting, f"{e:.4g}", str(len(recs)), f"{asr:.2f}", f"{cos:.3f}")
    out.print(table)
    out.print(
        f"success: cosine below {result.config.success_cosine:g} (smoothed settings: "
        "cos(f̂(x'), f̂(x)) on fresh draws). Empirical, not certified.",
        soft_wrap=True,
    )
    out.print(f"records: {result.run_dir / 'records.jsonl'}", soft_wrap=True)


def _on_attack_record(record: dict[str, Any], new: bool) -> None:
    if new:
        mark = "[red]broken[/red]" if record["success"] else "[green]held[/green]"
        out.print(
            f"{escape(str(record['image']))} {record['setting']} eps={record['eps']:.4g}: "
            f"cosine {record['adv_cosine']:.3f} {mark}  ({record['seconds']:.1f} s)",
            soft_wrap=True,
        )


@app.command(
    epilog="Example: featsmooth evaluate default --photos --eps 0.25,0.5 --n 500 --steps 20 "
    "--run-dir runs/eval\n\n"
    "Example: featsmooth evaluate synthetic-trig --images pngs/ --attacks "
    "'pgd:l2:0.5:steps=20;apgd:linf:4/255' --plugin plugins/trig"
)
def evaluate(
    model: Annotated[str, typer.Argument(help="Registry name, local model folder or hub id.")],
    images: Annotated[str | None, typer.Option(help="Folder of images or one image.")] = None,
    photos: Annotated[
        bool | None, typer.Option("--photos", help="Use the photos shipped with the packages.")
    ] = None,
    attack_name: Annotated[
        str | None, typer.Option("--attack", help="pgd | apgd. [default: pgd]")
    ] = None,
    norm: Annotated[str | None, typer.Option(help="l2 | linf.")] = None,
    eps: Annotated[
        str | None,
        typer.Option(
            help="Budgets (pixel units), comma-separated; linf also k/255. One attack each."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Attack steps.")] = None,
    step_size: Annotated[float | None, typer.Option(help="Step size (pixel units).")] = None,
    restarts: Annotated[int | None, typer.Option(help="Random restarts.")] = None,
    attacks: Annotated[
        str | None,
        typer.Option(
            help="Full attack specs separated by ';' (e.g. pgd:l2:0.5:steps=20, or the "
            "paper's mf-ii:linf:16/255:steps=300:target=shark); they replace "
            "--attack/--norm/--eps/--steps."
        ),
    ] = None,
    target_image: Annotated[
        str | None,
        typer.Option(help="Target image of the embedding-matching attacks (mf-ii, m-attack, foa)."),
    ] = None,
    plugin: Annotated[
        str | None, typer.Option(help="Plug-in folder: adds the setting fs+plugin.")
    ] = None,
    sigma: SigmaOpt = None,
    eot: Annotated[int | None, typer.Option(help="Noise draws per attack step (EoT).")] = None,
    judge_draws: Annotated[
        int | None, typer.Option(help="Fresh draws judging each smoothed result.")
    ] = None,
    n0: N0Opt = None,
    n: Annotated[int | None, typer.Option("--n", help="Certification samples.")] = None,
    alpha: AlphaOpt = None,
    method: MethodOpt = None,
    radii: Annotated[
        str | None,
        typer.Option(help="Radii of the certified table, comma-separated."),
    ] = None,
    check_draws: Annotated[
        int | None, typer.Option(help="Fresh draws of the consistency check.")
    ] = None,
    classes: ClassesOpt = None,
    task: Annotated[str | None, typer.Option(help="auto | features | zero-shot.")] = None,
    batch_size: BatchOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    size: SizeOpt = None,
    run_dir: RunDirOpt = None,
    config: ConfigOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """Attack vanilla, smoothed (and plugged) encoders and check every certificate holds.

    Per setting and attack: clean and robust accuracy (feature-only models: 1 and the
    adversarial cosine), attack success rate, mean adversarial cosine, and for smoothed
    settings the certified cosine at the attack's l2 radius plus the sound consistency
    check (an upper confidence bound of the attacked feature below the certificate is a
    bug: exit code 6, inputs saved under RUN/violations). Resumable.
    """
    from featsmooth import api

    seen: dict[str, Any] = {}

    def on_config(cfg: Any) -> None:
        seen["cfg"] = cfg
        print_config(cfg)

    result = api.evaluate(
        model,
        config_file=config,
        on_config=on_config,
        on_progress=lambda line: out.print(escape(line), soft_wrap=True),
        **_given(
            images=images, photos=photos, attack=attack_name, norm=norm, eps=eps, steps=steps,
            step_size=step_size, restarts=restarts, attacks=attacks, plugin=plugin,
            target_image=target_image, sigma=sigma, eot=eot, judge_draws=judge_draws, n0=n0, n=n, alpha=alpha,
            method=method, radii=radii, check_draws=check_draws, classes=classes, task=task,
            batch_size=batch_size, seed=seed, device=device, size=size, run_dir=run_dir,
            progress=progress,
        ),
    )  # fmt: skip
    cfg = seen["cfg"]
    title = f"evaluation of {model} (sigma = {cfg.sigma:g})"
    out.print(evaluation_table(result.summary, title=title))
    out.print(
        "clean / robust acc.: zero-shot accuracy before / after the attack (feature-only "
        "models: 1 / adversarial cosine); smoothed settings are judged on fresh noise draws. "
        f"cert. cos: mean FCSB at the attack's l2 radius (probability ≥ {1 - cfg.alpha:g}; 0 "
        "where none). viol./checked: attacked inputs whose upper confidence bound fell "
        "below their certified bound / inputs tested.",
        soft_wrap=True,
    )
    for name, reason in result.skipped.items():
        out.print(f"setting {name} not run: {escape(reason)}")
    out.print(f"records: {Path(cfg.run_dir) / 'records.jsonl'}", soft_wrap=True)
    if result.violations:
        err.print(
            f"[bold red]BUG: certificate violated ({result.violations} attacked input(s) "
            "measured below their certified bound), inputs saved under "
            f"{escape(str(Path(cfg.run_dir) / 'violations'))}[/bold red]",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_VIOLATION)


def evaluation_table(summary: list[dict[str, Any]], title: str | None = None) -> Table:
    """The summary of :func:`featsmooth.evaluate.evaluate`: one row per (setting, attack)."""
    from rich import box

    table = Table(
        title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
        collapse_padding=True,
    )  # fmt: skip
    table.add_column("setting", no_wrap=True)
    table.add_column("attack", no_wrap=True)
    for col in ("imgs", "clean\nacc.", "robust\nacc.", "ASR", "adv\ncos", "cert.\ncos"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("viol./\nchecked", justify="right", no_wrap=True)
    for row in summary:
        smoothed = row.get("certified_cosine") is not None or row.get("consistency_checked")
        bad = row.get("consistency_violations") or 0
        check = f"{bad}/{row.get('consistency_checked') or 0}"
        table.add_row(
            escape(str(row["setting"])),
            escape(str(row["attack_id"])),
            str(row["images"]),
            _num(row.get("clean_score")),
            _num(row.get("robust_score")),
            _num(row.get("asr")),
            _num(row.get("adv_cosine")),
            _num(row.get("certified_cosine")),
            (f"[red]{check}[/red]" if bad else f"[green]{check}[/green]") if smoothed else "—",
        )
    return table


@app.command(
    "train-plugin",
    epilog="Example: featsmooth train-plugin default --photos --sigmas 0.25 --steps 200 "
    "--out plugins/default-s025",
)
def train_plugin(
    model: Annotated[str, typer.Argument(help="Registry name of the frozen encoder.")],
    images: Annotated[str | None, typer.Option(help="Folder of training images.")] = None,
    photos: Annotated[
        bool | None, typer.Option("--photos", help="Train on the shipped photos (a demo).")
    ] = None,
    sigmas: Annotated[
        str | None, typer.Option(help="Training noise levels, comma-separated.")
    ] = None,
    parts: Annotated[str | None, typer.Option(help="purifier, mapper or both.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate.")] = None,
    draws_per_image: Annotated[
        int | None, typer.Option(help="Noise draws per image and step.")
    ] = None,
    sigma_sampling: Annotated[
        str | None,
        typer.Option(help="'set': draw from SIGMAS; 'uniform': between their min and max."),
    ] = None,
    loss_weights: Annotated[
        str | None,
        typer.Option(
            help="Loss weights as name=value,... (clean_consistency, pairwise_consistency, "
            "utility, pixel_mse, stats, identity); unnamed ones keep their defaults."
        ),
    ] = None,
    crops: Annotated[
        int | None,
        typer.Option(help="Train on this many random crops/flips of the images (few images)."),
    ] = None,
    pretrain_steps: Annotated[
        int | None,
        typer.Option(help="Pixel-denoising steps for the purifier first (encoder not run)."),
    ] = None,
    val_images: Annotated[
        str | None, typer.Option(help="Held-out images: S and clean agreement while training.")
    ] = None,
    val_every: Annotated[int | None, typer.Option(help="Validate every this many steps.")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    size: SizeOpt = None,
    out_dir: Annotated[
        str | None, typer.Option("--out", help="Output folder. [default: plugins/plugin]")
    ] = None,
    config: ConfigOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """Train the plug-in (purifier + smoothness mapper) that raises the robustness score S.

    The encoder stays frozen. With --pretrain-steps the purifier first learns plain
    denoising (cheap: the encoder is not run), then both parts train through the encoder.
    Saves safetensors weights and a JSON card; resumes from the checkpoints in OUT. Use it
    with `featsmooth certify MODEL --plugin OUT`.
    """
    from featsmooth import api

    result = api.train_plugin(
        model,
        config_file=config,
        on_config=lambda cfg: print_config(cfg),
        **_given(
            images=images, photos=photos, sigmas=sigmas, parts=parts, steps=steps,
            batch_size=batch_size, lr=lr, draws_per_image=draws_per_image,
            sigma_sampling=sigma_sampling, loss_weights=loss_weights, crops=crops,
            pretrain_steps=pretrain_steps, val_images=val_images, val_every=val_every,
            seed=seed, device=device, dtype=dtype, size=size, out=out_dir, progress=progress,
        ),
    )  # fmt: skip
    scores = result["scores"] or {}
    before, after = scores.get("before") or {}, scores.get("after") or {}
    for sigma in sorted(set(before) | set(after)):
        b = (before.get(sigma) or {}).get("score")
        a = (after.get(sigma) or {}).get("score")
        out.print(f"sigma {sigma}: score S (estimate) before {_num(b)}, after {_num(a)}")
    out.print(f"saved the plug-in to {result['out']}", soft_wrap=True)


# --------------------------------------------------------------------------------------
# Entry point


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = " ".join(str(message).split())
    err.print(f"[yellow]warning: {escape(text)}[/yellow]", soft_wrap=True)


#: longest error line printed (a crafted input must not print megabytes)
MAX_MESSAGE = 400


def _hint(exc: BaseException) -> str:
    command = _state.get("command")
    code = getattr(exc, "exit_code", 2)
    hint = getattr(exc, "hint", None)
    if isinstance(hint, str) and hint:
        return hint
    if isinstance(exc, FileNotFoundError):
        return "check the path"
    if isinstance(exc, MemoryError):
        return "lower --batch-size, --size or --n"
    if isinstance(exc, OSError):
        return "check the path, its permissions and the free disk space"
    if code == 4:
        return "see `featsmooth models` for what is installed"
    if code == 5:
        return "use another --run-dir, or rerun with the settings saved in its settings.json"
    if code == 3:
        return "check the encoder's outputs (rerun with --debug for details)"
    return f"see `featsmooth {command} --help`" if command else "see `featsmooth --help`"


def _error(exc: BaseException, code: int) -> int:
    if _state.get("debug"):
        err.print_exception(show_locals=False)
    message = str(exc.args[0]) if isinstance(exc, OSError) and exc.args else str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        message = exc.strerror
    if (
        isinstance(exc, FileNotFoundError)
        and exc.filename
        and not str(exc.args[0]).endswith(str(exc.filename))
    ):
        message = f"file not found: {exc.filename}"
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
        message = f"{message}: {exc.filename}"
    if isinstance(exc, MemoryError):
        message = f"out of memory ({message or 'allocation failed'})"
    message = " ".join(message.split())
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    err.print(f"[red]error: {escape(message)}[/red] [dim]({escape(_hint(exc))})[/dim]",
              soft_wrap=True)  # fmt: skip
    return code


class _InterruptFlag:
    """Remember a Ctrl-C (SIGINT) while it is installed, then raise KeyboardInterrupt as usual.

    A KeyboardInterrupt raised inside a finaliser or a callback is printed and dropped by
    Python; the flag lets :func:`run` still report the interruption (exit code 130) instead
    of success. Installed only in the main thread and where SIGINT is not ignored.
    """

    def __init__(self) -> None:
        self.seen = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def __enter__(self) -> _InterruptFlag:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current is signal.default_int_handler:
                self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            import signal

            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _escape_unprintable() -> None:
    """Print what the terminal cannot encode (a file name that is not UTF-8 holds lone
    surrogates) as ``\\udce9``-style escapes instead of failing on it."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # pragma: no cover - a stream that cannot change
                pass


#: the settings dataclass of each command: the one place its defaults are declared
COMMAND_CONFIGS = {
    "demo": "DemoConfig",
    "certify": "CertifyConfig",
    "predict": "PredictConfig",
    "attack": "AttackConfig",
    "evaluate": "EvaluateConfig",
    "train-plugin": "TrainPluginConfig",
}


def _render_default(option: Any, value: Any) -> str:
    if isinstance(value, bool) and option.secondary_opts:  # --tune/--no-tune
        return (option.opts if value else option.secondary_opts)[0].lstrip("-")
    if isinstance(value, (list, tuple)):
        return ",".join(_render_default(option, v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def with_declared_defaults(command: Any) -> Any:
    """Write each option's ``[default: ...]`` from its command's settings dataclass, so help
    can never disagree with what runs. Options whose declared default is ``None`` keep the
    words of their help (e.g. "the model's")."""
    import dataclasses
    import re

    for name, config in COMMAND_CONFIGS.items():
        sub = command.commands.get(name)
        if sub is None:
            continue
        fields = {f.name: f for f in dataclasses.fields(getattr(C, config))}
        for option in sub.params:
            field = fields.get(option.name)
            if field is None or getattr(option, "param_type_name", "") != "option":
                continue
            default = (
                field.default_factory()  # type: ignore[misc]
                if field.default is dataclasses.MISSING
                else field.default
            )
            if default is None:
                continue
            text = re.sub(r"\s*\[default: [^\]]*\]", "", option.help or "")
            option.help = f"{text} [default: {_render_default(option, default)}]".strip()
    return command


def run(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["command"] = next((a for a in args if not a.startswith("-")), None)
    _escape_unprintable()
    command = with_declared_defaults(typer.main.get_command(app))
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    interrupted = _InterruptFlag()
    try:
        with interrupted:
            result = command.main(args=args, prog_name="featsmooth", standalone_mode=False)
        # typer turns a KeyboardInterrupt into exit code 130 without a word; a swallowed
        # one (a finaliser, a library callback) leaves only the flag
        if interrupted.seen or result == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        return result if isinstance(result, int) else 0
    except _CLICK_EXITS as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except _CLICK_ERRORS as exc:  # bad flags: click's own message and usage line
        exc.show(file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except _ABORTS:
        err.print(
            "[yellow]interrupted: the records written so far are kept; rerun the same command "
            "to resume[/yellow]",
            soft_wrap=True,
        )
        return EXIT_INTERRUPTED
    except FeatsmoothError as exc:
        return _error(exc, exc.exit_code)
    except (OSError, MemoryError) as exc:  # a missing file, a full or read-only disk, ...
        return _error(exc, 2)
    finally:
        warnings.showwarning = previous


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``featsmooth``."""
    try:
        code = run(argv)
    except KeyboardInterrupt:  # a Ctrl-C after the command's own handling
        sys.stderr.write("interrupted\n")
        code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":
    main()
