"""Tables, figures and pages from run records: ``featsmooth report``.

:func:`report` reads one or more run folders (see :mod:`featsmooth.records` for the folder
layout and the record schema) and lets each requested format write into ``out_dir``. The
formats are a registry (:mod:`featsmooth.report.registry`), one module each under
:mod:`featsmooth.report.formats`:

========  =================================================================================
``md``    ``summary.md``: narrow summary, attack tables per definition of success, figures,
          every other column folded in ``<details>``
``csv``   ``summary.csv`` (every summary column), ``attacks.csv``, ``images.csv`` (one row
          per image: locuslab/smoothing columns ``idx label predict radius correct time``,
          then featsmooth's fields)
``tsv``   ``images.tsv``: the per-image table tab-separated, as locuslab/smoothing writes it
``tex``   ``summary.tex`` / ``attacks.tex``: LaTeX booktabs tables
``png``   figures at 150 dpi
``svg``   figures with editable ``<text>``
``pdf``   figures as vector PDF with embedded TrueType text
``html``  ``report.html``: the Markdown summary as one self-contained page
========  =================================================================================

Figures: ``certified_cosine`` (mean FCSB vs radius), ``certified_accuracy`` (vs radius, per
certificate method), ``score_hist`` and one ``asr_<definition>`` chart per definition of
attack success (feature cosine below a threshold, zero-shot misclassification, ...), never
mixing definitions. Where a figure would be empty (no image certified) the pages state so
and no file is written. Numbers and conventions: :mod:`featsmooth.report.data`.

Importing this package is cheap; the submodules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "report": "build",
    "ReportContext": "build",
    "RunData": "data",
    "CERTIFICATE_METHODS": "data",
    "attack_table": "data",
    "asr_definition": "data",
    "certified_accuracy": "data",
    "image_table": "data",
    "load_runs": "data",
    "per_radius": "data",
    "run_settings": "data",
    "summarize": "data",
    "summary_table": "data",
    "FigureItem": "figures",
    "make_figures": "figures",
    "plot_asr": "figures",
    "plot_certified_accuracy": "figures",
    "plot_certified_cosine": "figures",
    "plot_score_hist": "figures",
    "write_csv": "text",
    "ReportFormat": "registry",
    "default_formats": "registry",
    "format_help": "registry",
    "format_names": "registry",
    "parse_formats": "registry",
    "register": "registry",
}


def __getattr__(name: str) -> Any:
    if name == "FORMATS":
        return importlib.import_module(f"{__name__}.registry").format_names()
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted([*_EXPORTS, "FORMATS"])
