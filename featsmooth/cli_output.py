"""What the ``featsmooth`` command line prints: the consoles, the callbacks that report a
run's progress, and the tables of certificates, predictions and evaluations."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from featsmooth import config as C

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _on_tuning(tuning: Any) -> None:
    out.print(f"[bold]tuned:[/bold] {escape(tuning.describe())}")


def _on_cost(cost: Any) -> None:
    out.print(f"[bold]cost:[/bold] {escape(cost.describe())}", soft_wrap=True)


def _on_config(cfg: Any) -> None:
    """Show the effective settings, then that the model is loading (it can take a while)."""
    print_config(cfg)
    model = getattr(cfg, "model", None)
    if model is not None:
        out.print(f"loading model {escape(str(model))} ...")


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


def _on_attack_record(record: dict[str, Any], new: bool) -> None:
    if new:
        mark = "[red]broken[/red]" if record["success"] else "[green]held[/green]"
        out.print(
            f"{escape(str(record['image']))} {record['setting']} eps={record['eps']:.4g}: "
            f"cosine {record['adv_cosine']:.3f} {mark}  ({record['seconds']:.1f} s)",
            soft_wrap=True,
        )


def evaluation_table(summary: list[dict[str, Any]], title: str | None = None) -> Table:
    """The summary of :func:`featsmooth.evaluate.evaluate`: one row per (setting, attack)."""
    from rich import box

    table = Table(
        title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
        collapse_padding=True,
    )  # fmt: skip
    table.add_column("setting", no_wrap=True)
    table.add_column("attack", no_wrap=True)
    for col in ("imgs", "unattacked\nacc.", "robust\nacc.", "ASR", "adv\ncos", "cert.\ncos"):
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
            _num(row.get("unattacked_score")),
            _num(row.get("robust_score")),
            _num(row.get("asr")),
            _num(row.get("adv_cosine")),
            _num(row.get("certified_cosine")),
            (f"[red]{check}[/red]" if bad else f"[green]{check}[/green]") if smoothed else "—",
        )
    return table
