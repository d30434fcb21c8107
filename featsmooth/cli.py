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

import inspect
import os
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

try:
    import click
    import typer
    from rich.markup import escape
    from rich.table import Table

    from featsmooth import config as C
    from featsmooth import settings as S
    from featsmooth.cli_output import (
        _num,
        _on_attack_record,
        _on_config,
        _on_cost,
        _on_record,
        _on_start,
        _on_tuning,
        _starting,
        err,
        evaluation_table,
        out,
        print_config,
        print_run,
    )
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
# Options generated from the settings declarations (featsmooth.settings, featsmooth.config)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="YAML or TOML settings file; flags given here win over it."),
]


def _cli_type(hint: Any) -> type:
    """The command-line type of a settings field: lists stay text (``"0.1,0.25"``, converted
    by :mod:`featsmooth.config`), ``X | None`` becomes ``X``."""
    if typing.get_origin(hint) is list:
        return str
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def setting_help(spec: S.Setting, name: str, kind: type) -> str:
    """The help of a declared setting: its text, its fixed choices and ``[default: X]``
    with X rendered from the declared default (:meth:`featsmooth.settings.Setting.render`)."""
    text = spec.help
    if isinstance(spec.check, S.OneOf) and not callable(spec.check.choices):
        text += f" Choices: {' | '.join(spec.check.choices)}."
    shown = spec.render(name, kind)
    return text if shown is None else f"{text} [default: {shown}]"


def setting_option(spec: S.Setting, name: str, kind: type) -> Any:
    """``Annotated[kind | None, typer.Option(...)]`` for a declared setting (``None``: not
    given, so the config file or the declared default applies)."""
    option = typer.Option(
        spec.flags(name, kind), help=setting_help(spec, name, kind), show_default=False
    )
    return Annotated[kind | None, option]


def settings_command(
    cls: type, *examples: str, name: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the command of the settings dataclass ``cls``, with an option for
    each declared setting (in field order) and ``--config``; ``examples`` (command lines
    without the leading ``featsmooth``) make the epilog.

    The setting ``model``, where declared, is the required first argument. ``fn``'s own
    parameters (besides ``config`` and ``given``) follow, as it declares them. ``fn`` is
    called with ``config`` (the ``--config`` path or ``None``) and ``given``: the settings
    given on the command line, by field name, the arguments included (options not given
    are left out).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(cls)
        declared = S.declared(cls)
        arguments = ("model",) if "model" in declared else ()
        own_hints = typing.get_type_hints(fn, include_extras=True)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=own_hints[p.name])
            for p in inspect.signature(fn).parameters.values()
            if p.name not in ("config", "given")
        ]
        keyword = inspect.Parameter.KEYWORD_ONLY
        params = [
            inspect.Parameter(
                arg, keyword, annotation=Annotated[str, typer.Argument(help=declared[arg].help)]
            )
            for arg in arguments
        ]
        params += own
        taken = {p.name for p in params}
        options = [
            inspect.Parameter(
                field, keyword, default=None, annotation=setting_option(spec, field, kind)
            )
            for field, spec in declared.items()
            if spec.cli and field not in taken
            for kind in [_cli_type(hints[field])]
        ]
        config = inspect.Parameter("config", keyword, default=None, annotation=ConfigOpt)
        params += [*options, config]
        names = [*arguments, *(p.name for p in options)]

        def command(**values: Any) -> Any:
            given = {k: v for k in names if (v := values.pop(k)) is not None}
            return fn(**values, given=given)

        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        epilog = "\n\n".join(f"Example: featsmooth {line}" for line in examples)
        app.command(name, epilog=epilog)(command)
        return fn

    return decorate


# --------------------------------------------------------------------------------------
# Commands


#: what certify and demo report while they run
RUN_CALLBACKS = {
    "on_record": _on_record, "on_start": _on_start, "on_config": _on_config,
    "on_tuning": _on_tuning, "on_cost": _on_cost,
}  # fmt: skip


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


def _preset_text(name: str) -> str:
    """``n0=8, n=32, ...``: what the preset ``name`` of :data:`featsmooth.config.PRESETS` sets."""
    return ", ".join(f"{S.dashed(k)}={v}" for k, v in C.PRESETS[name].items())


_DEMO = C.DemoConfig()


@settings_command(
    C.DemoConfig,
    f"demo          (9 photos, n0 {_DEMO.n0} + n {_DEMO.n} noise draws each)",
    "demo --fast   (2 photos, few samples: a smoke test)",
)
def demo(
    fast: Annotated[
        bool,
        typer.Option(
            "--fast",
            help=f"2 photos and the preset demo-fast ({_preset_text('demo-fast')}): loose "
            "bounds, a smoke test. Flags given win over it.",
        ),
    ] = False,
    *,
    config: Path | None,
    given: dict[str, Any],
) -> None:
    """Certify the shipped photos with the offline zero-shot default model.

    Prints, per photo, the robustness score S, its certified lower bound S_low, the FCSB at
    r = 0.1, 0.25, 0.5, the radius keeping the cosine >= 0.5, the clean-vs-smoothed cosine
    and the certified smoothed prediction (three certificates). Resumable (runs/demo).
    """
    from featsmooth import api

    if fast:
        out.print("fast preset: 2 photos and few samples, a smoke test: the bounds are loose")
    result = api.demo(fast=fast, config_file=config, **RUN_CALLBACKS, **given)
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


@settings_command(
    C.CertifyConfig,
    "certify default --photos --sigma 0.25 --n 2000",
    "certify synthetic-trig --images my_pngs/ --size 32 --keep-samples --run-dir runs/trig",
    "certify synthetic-trig --images my_pngs/ --ray --workers 4",
)
def certify(*, config: Path | None, given: dict[str, Any]) -> None:
    """Certify feature cosines (FCSB) and, for text-image models, zero-shot predictions.

    Writes one JSON record per image to RUN_DIR/records.jsonl as soon as it is done; the
    same command resumes an interrupted run (settings must match). Default run folder:
    runs/MODEL-sigmaSIGMA.
    """
    from featsmooth import api

    result = api.certify(config_file=config, **RUN_CALLBACKS, **given)
    print_run(result)


@settings_command(
    C.PredictConfig,
    "predict default cat.jpg dog.png --sigma 0.25 --n 256",
)
def predict(
    images: Annotated[
        list[str] | None, typer.Argument(help="Image files or folders.", show_default=False)
    ] = None,
    save: Annotated[
        Path | None, typer.Option(help="Save the smoothed features (N, k) to this .npy file.")
    ] = None,
    *,
    config: Path | None,
    given: dict[str, Any],
) -> None:
    """Smoothed feature (Monte-Carlo mean of noisy features) and zero-shot prediction.

    Nothing here is certified: use `featsmooth certify` for guarantees.
    """
    from featsmooth import api

    rows = api.predict(images=images or None, config_file=config, **given)
    model = given["model"]
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


RecomputeRadiiOpt = setting_option(C.RADII.but(None, default_text="the run's"), "radii", str)


@app.command(
    epilog="Example: featsmooth recompute runs/trig --alpha 0.01 --method bernstein "
    "--out runs/trig-a01"
)
def recompute(
    run: Annotated[str, typer.Argument(help="Run folder certified with --keep-samples.")],
    alpha: Annotated[float, typer.Option(help="New failure probability.")],
    method: Annotated[str, typer.Option(help=C.METHOD.help)] = C.METHOD.default,
    radii: RecomputeRadiiOpt = None,
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


@settings_command(
    C.AttackConfig,
    "attack default --photos --norm l2 --eps 0.25,0.5 --steps 20 --settings vanilla,fs --eot 8",
    "attack default --photos --norm linf --eps 16/255 --attack apgd",
)
def attack(*, config: Path | None, given: dict[str, Any]) -> None:
    """White-box attacks (PGD/APGD, EoT on smoothed encoders) that push features away.

    One record per image, setting and eps (resumable); ASR and cosines go into
    `featsmooth report`. Smoothed results are judged on fresh noise draws.
    """
    from featsmooth import api

    result = api.attack(
        config_file=config,
        on_record=_on_attack_record,
        on_start=_starting("attack job(s) (image x budget x setting)", "running", "done"),
        on_config=_on_config,
        **given,
    )
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


@settings_command(
    C.EvaluateConfig,
    "evaluate default --photos --eps 0.25,0.5 --n 500 --steps 20 --run-dir runs/eval",
    "evaluate synthetic-trig --images pngs/ --attacks 'pgd:l2:0.5:steps=20;apgd:linf:4/255' "
    "--plugin plugins/trig",
)
def evaluate(*, config: Path | None, given: dict[str, Any]) -> None:
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
        config_file=config,
        on_config=on_config,
        on_progress=lambda line: out.print(escape(line), soft_wrap=True),
        **given,
    )
    cfg = seen["cfg"]
    title = f"evaluation of {cfg.model} (sigma = {cfg.sigma:g})"
    out.print(evaluation_table(result.summary, title=title))
    out.print(
        "unattacked / robust acc.: the setting's zero-shot accuracy before / after the attack "
        "(feature-only "
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


@settings_command(
    C.TrainPluginConfig,
    "train-plugin default --photos --sigmas 0.25 --steps 200 --out plugins/default-s025",
    name="train-plugin",
)
def train_plugin(*, config: Path | None, given: dict[str, Any]) -> None:
    """Train the plug-in (purifier + smoothness mapper) that raises the robustness score S.

    The encoder stays frozen. With --pretrain-steps the purifier first learns plain
    denoising (cheap: the encoder is not run), then both parts train through the encoder.
    Saves safetensors weights and a JSON card; resumes from the checkpoints in OUT. Use it
    with `featsmooth certify MODEL --plugin OUT`.
    """
    from featsmooth import api

    result = api.train_plugin(config_file=config, on_config=_on_config, **given)
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


def run(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["command"] = next((a for a in args if not a.startswith("-")), None)
    _escape_unprintable()
    command = typer.main.get_command(app)
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
    from featsmooth.allocator import tune_at_startup

    tune_at_startup()  # CPU inference 2-3x faster (featsmooth/allocator.py); never raises
    try:
        code = run(argv)
    except KeyboardInterrupt:  # a Ctrl-C after the command's own handling
        sys.stderr.write("interrupted\n")
        code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":
    main()
