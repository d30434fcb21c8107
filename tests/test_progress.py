"""The one progress bar: counts, shrinks and closes; disabled it does nothing."""

from __future__ import annotations

import pytest

from featsmooth.progress import Bar, rate_text


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


def test_detail_bar_shares_the_parent_display_and_goes_when_done():
    """One live display per run: an image's samples show as a line under the run's bar
    (two rich displays at once would raise), removed when the image is done."""
    with Bar(True, 3, "images", unit="images") as run:
        for _ in range(3):
            with Bar(run, 100, "certify", unit="samples") as detail:
                assert detail._progress is run._progress
                detail.advance(60, info="half")
                assert [t.description for t in run._progress.tasks] == ["images", "certify"]
                assert run._progress.tasks[1].completed == 60
            assert [t.description for t in run._progress.tasks] == ["images"]
            run.advance(1)
        assert run._progress.tasks[0].completed == 3
    quiet = Bar(False, 3, "images")
    assert Bar(quiet, 100, "certify")._progress is None  # a hidden run hides its details


def test_slow_rates_read_as_seconds_per_unit():
    assert rate_text(1234.4, "samples") == "1,234 samples/s"
    assert rate_text(0.25, "images") == "4.0 s/image"
    assert rate_text(None, "images") == rate_text(5.0, "") == ""


@pytest.mark.filterwarnings("ignore:.*samples-too-few")
def test_certify_run_shows_one_bar_with_per_image_detail(tmp_path, monkeypatch, make_pngs):
    """The whole certify path with progress on: one overall bar, the per-image sample bar
    nested in it, and a cost line measured before the work starts."""
    from featsmooth import api

    make_pngs(tmp_path / "imgs", 3, 0)
    costs = []
    result = api.certify(
        "synthetic-trig", images=str(tmp_path / "imgs"), size=32, n0=16, n=64,
        run_dir=str(tmp_path / "run"), progress=True, on_cost=costs.append,
    )  # fmt: skip
    assert result.new == 3
    (cost,) = costs
    assert cost.images == 3 and cost.passes_per_image == 16 + 64 + 1
    assert cost.seconds_per_pass > 0 and "3 image(s) x 81 forward passes" in cost.describe()
    again = api.certify(
        "synthetic-trig", images=str(tmp_path / "imgs"), size=32, n0=16, n=64,
        run_dir=str(tmp_path / "run"), progress=True, on_cost=costs.append,
    )  # fmt: skip
    assert again.skipped == 3 and len(costs) == 1  # nothing left: nothing measured
