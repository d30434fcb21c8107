"""The one progress bar: counts, shrinks and closes; disabled it does nothing."""

from __future__ import annotations

from featsmooth.progress import Bar


def test_enabled_bar_counts_shrinks_and_closes():
    with Bar(True, 100, "certify", unit="samples", completed=10) as bar:
        task = bar._progress.tasks[0]
        bar.advance(30, info="half")
        assert task.completed == 40 and task.fields["info"] == "half"
        bar.shrink(50)  # early stopping saved 50 samples
        assert task.total == 50
        bar.shrink(1000)
        assert task.total == task.completed == 40  # never below what is done
        bar.update(45)
        assert task.completed == 45
    assert bar._progress is None
    bar.close()  # closing twice is harmless


def test_disabled_or_empty_bar_is_a_no_op():
    for bar in (Bar(False, 10, "x"), Bar(True, 0, "x")):
        bar.advance(3, info="ignored")
        bar.update(5)
        bar.shrink(2)
        bar.close()
        assert bar._progress is None


def test_long_loops_run_with_their_bars(trig90, images):
    from featsmooth import SmoothedEncoder

    smoothed = SmoothedEncoder(trig90, 0.25)
    plain = smoothed.certify(images, n0=16, n=500, tolerance=0.2, seed=1)
    shown = smoothed.certify(images, n0=16, n=500, tolerance=0.2, seed=1, progress=True)
    assert [c.score_lower for c in shown] == [c.score_lower for c in plain]
    assert any(c.n_used < 500 for c in shown)  # stopped early: the bar's total shrank
