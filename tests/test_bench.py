"""The benchmark runner works end to end on a cut-down grid (no timing is checked)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastbp._grid import GRID, make_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_bench_reports_every_row():
    result = subprocess.run(
        [sys.executable, "-m", "fastbp.bench", "--quick", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    for row in GRID:
        assert row.name in result.stdout


@pytest.mark.parametrize("row", GRID, ids=lambda r: r.name)
def test_grid_data_is_seeded_and_shaped(row):
    X, Y = make_data(row, np.float32, n_rows=50)
    X2, Y2 = make_data(row, np.float32, n_rows=20)
    assert X.shape == (50, row.sizes[0]) and X.dtype == np.float32
    np.testing.assert_array_equal(X[:20], X2)
    np.testing.assert_array_equal(Y[:20], Y2)
    if row.loss == "cce":
        assert Y.shape == (50,) and Y.dtype.kind == "i" and Y.max() < row.sizes[-1]
    else:
        assert Y.shape == (50, 1) and set(np.unique(Y)) <= {0.0, 1.0}


def test_short_fits_get_more_repeats_up_to_a_cap():
    from fastbp.bench import MAX_REPEATS, _repeats

    assert _repeats(2.0, 3, 1.0) == 3  # long fits: just --repeats
    assert _repeats(0.01, 3, 1.0) == 100  # about a second of 10 ms fits
    assert _repeats(1e-7, 3, 1.0) == MAX_REPEATS
    assert _repeats(0.01, 3, 0.0) == 3  # --quick


def test_repeats_are_counted_from_a_fit_after_the_warm_up():
    """The first fit also loads or compiles the kernels: its time must not set the count."""
    from fastbp.bench import _warmed_timer

    times = iter([2.0, 0.01, 0.01])
    fit, count, scale = _warmed_timer(lambda: next(times), 3, 1.0)
    assert (count, scale) == (100, 1.0)
    assert fit() == 0.01


def test_libraries_take_turns_and_every_fit_counts(monkeypatch):
    from fastbp import bench

    monkeypatch.setattr(bench, "IDLE_S", 0.0)
    calls = []

    def timer(name, seconds, count, scale):
        def fit():
            calls.append(name)
            return seconds.pop(0)

        return fit, count, scale

    medians = bench.interleaved(
        [
            timer("a", [1.0, 2.0, 9.0, 3.0], 4, 1.0),
            timer("b", [5.0], 1, 10.0),
            timer("c", [1.0, 1.0, 1.0], 3, 1.0),
        ],
        rounds=3,
    )
    assert calls == ["a", "c", "a", "c", "a", "a", "b", "c"]
    assert medians == [2.5, 50.0, 1.0]


def test_small_calls_report_every_call(monkeypatch):
    from fastbp import bench_sklearn

    monkeypatch.setattr(bench_sklearn, "SMALL_RUN_S", 0.0)
    monkeypatch.setattr(bench_sklearn, "SMALL_IDLE_S", 0.0)
    lines = []
    rows = bench_sklearn.small_calls(stream=lines.append, repeats=1, max_iter=1)
    assert [row["call"] for row in rows] == [
        "MLP([2, 2, 1], ...)",
        "MLP([64, 128, 10], ...)",
        "set_params, 9,610 parameters",
        "classifier predict, 10 rows",
        "classifier predict_proba, 10 rows",
        "regressor predict, 10 rows",
    ]
    for row in rows:
        assert row["fastbp"] > 0 and row["sklearn"] > 0
        assert any(line.lstrip().startswith(row["call"]) for line in lines)
