"""One progress bar for every long loop (certification samples, dataset images, plug-in
training steps): rich's bar with count, rate, elapsed and remaining time, or nothing at
all when disabled, so callers never test whether a bar exists."""

from __future__ import annotations

from typing import Any


class Bar:
    """A progress bar over ``total`` units; a no-op when ``enabled`` is false.

    Args:
        enabled: show it (the caller's ``progress=`` setting); or a parent :class:`Bar`:
            then this bar is a line of detail under the parent's (e.g. one image's samples
            under the run's images), shown while the parent is, removed when it closes.
        total: units of work (samples, images, steps).
        description: the bar's label.
        unit: shown in the rate column (``"samples"`` -> ``"1,234 samples/s"``).
        completed: units already done (a resumed run).
        transient: erase the bar when it closes.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        enabled: bool | Bar,
        total: int,
        description: str,
        *,
        unit: str = "",
        completed: int = 0,
        transient: bool = False,
    ) -> None:
        self.unit = unit
        self._progress: Any = None
        self._own = not isinstance(enabled, Bar)
        if isinstance(enabled, Bar):
            if enabled._progress is not None and total > 0:
                self._progress = enabled._progress
                self._task = self._progress.add_task(
                    description, total=total, completed=completed, rate="", info=""
                )
            return
        if not enabled or total <= 0:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=transient,
        )
        self._task = self._progress.add_task(
            description, total=total, completed=completed, rate="", info=""
        )
        self._progress.start()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, k: int = 1, info: str | None = None) -> None:
        """``k`` more units done; ``info`` replaces the trailing text."""
        if self._progress is None:
            return
        self._progress.advance(self._task, k)
        self._refresh(info)

    def update(self, completed: int, info: str | None = None) -> None:
        """Set the units done so far."""
        if self._progress is None:
            return
        self._progress.update(self._task, completed=completed)
        self._refresh(info)

    def shrink(self, k: int) -> None:
        """``k`` units turned out unnecessary (e.g. samples saved by early stopping)."""
        if self._progress is None:
            return
        task = self._current()
        self._progress.update(self._task, total=max(task.completed, (task.total or 0) - k))

    def close(self) -> None:
        if self._progress is not None:
            if self._own:
                self._progress.stop()
            else:
                self._progress.remove_task(self._task)
            self._progress = None

    def _current(self) -> Any:
        return next(t for t in self._progress.tasks if t.id == self._task)

    def _refresh(self, info: str | None) -> None:
        fields: dict[str, str] = {}
        rate = rate_text(self._current().speed, self.unit)
        if rate:
            fields["rate"] = rate
        if info is not None:
            fields["info"] = info
        if fields:
            self._progress.update(self._task, **fields)


def rate_text(speed: float | None, unit: str) -> str:
    """``"1,234 samples/s"``, or for slow work ``"4.0 s/image"`` (``""``: nothing to say)."""
    if not speed or not unit:
        return ""
    if speed >= 1:
        return f"{speed:,.0f} {unit}/s"
    return f"{1 / speed:,.1f} s/{unit.removesuffix('s')}"
