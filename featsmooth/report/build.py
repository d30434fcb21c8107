"""``report()``: load run folders once, then let every requested format write its files."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from featsmooth.report import data, figures, registry

Table = tuple[list[str], list[dict[str, Any]]]


@dataclass
class ReportContext:
    """What the format writers share: the runs, the tables and figures (computed once,
    on first use) and the files written so far (pages link to them)."""

    runs: list[data.RunData]
    formats: tuple[str, ...]
    title: str = "featsmooth report"
    written: dict[str, list[Path]] = field(default_factory=dict)
    _png: dict[str, bytes] = field(default_factory=dict)

    @cached_property
    def summary(self) -> Table:
        """Every summary column (:func:`featsmooth.report.data.summary_table`)."""
        return data.summary_table(self.runs)

    @cached_property
    def narrow(self) -> list[str]:
        """The headline columns of the summary."""
        return data.narrow_columns(self.summary[0])

    @cached_property
    def headline(self) -> list[dict[str, Any]]:
        """The summary rows with certificates (runs or settings with attack records only
        are in the attack tables)."""
        numbers = [c for c in self.narrow if c not in data.WHO_COLUMNS]
        return [row for row in self.summary[1] if any(row.get(c) is not None for c in numbers)]

    @cached_property
    def certificate_columns(self) -> list[str]:
        """The summary's certificate columns (no accuracy)."""
        return [c for c in self.summary[0] if not c.startswith("acc_") and c not in ("clean_acc",)]

    @cached_property
    def accuracy(self) -> tuple[list[str], list[str]]:
        """Accuracy columns (past the first all-zero radius left out) and their notes."""
        columns, rows = self.summary
        if not any(c.startswith("acc_") or c == "clean_acc" for c in columns):
            return [], []
        return data.accuracy_columns(columns, rows)

    @cached_property
    def attacks(self) -> Table:
        """:func:`featsmooth.report.data.attack_table`."""
        return data.attack_table(self.runs)

    @cached_property
    def images(self) -> Table:
        """:func:`featsmooth.report.data.image_table`."""
        return data.image_table(self.runs)

    @cached_property
    def figures(self) -> list[figures.FigureItem]:
        """Every figure or figure state (:func:`featsmooth.report.figures.make_figures`)."""
        return figures.make_figures(self.runs)

    def png(self, item: figures.FigureItem) -> bytes:
        """The PNG of a figure (rendered once)."""
        if item.name not in self._png:
            self._png[item.name] = figures.png_bytes(item.figure)
        return self._png[item.name]

    def files(self, *formats: str) -> list[Path]:
        """Files written so far by the given formats (all when none given)."""
        names = formats or tuple(self.written)
        return [p for f in names for p in self.written.get(f, [])]


def report(
    run_dirs: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    formats: Iterable[str] | str | None = None,
    *,
    labels: Sequence[str] | None = None,
    title: str = "featsmooth report",
) -> dict[str, list[Path]]:
    """Write summary tables, figures and pages for one or more run folders.

    Args:
        run_dirs: run folder(s) written by :class:`featsmooth.records.RunWriter`.
        out_dir: output folder (created).
        formats: names of :func:`featsmooth.report.registry.formats` (``"md,csv"`` or a
            list; ``None``: the defaults; ``"all"``: every format).
        labels: legend/table names of the runs (default: settings ``label`` or folder name).
        title: heading of the Markdown and HTML pages.

    Returns:
        ``{format: [written files]}`` in the order given. Figures without data (e.g. no
        attack records) or with nothing to show (no image certified) write no file; the
        pages state why.

    Raises:
        InputError: unknown format or no run folder; RecordError: unreadable run folder.
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    chosen = registry.parse_formats(formats)
    runs = data.load_runs(run_dirs, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = ReportContext(runs=runs, formats=chosen, title=title)
    known = registry.formats()
    for name in sorted(chosen, key=list(known).index):
        ctx.written[name] = list(known[name].write(ctx, out))
    return {name: ctx.written[name] for name in chosen}
