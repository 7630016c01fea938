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


def test_flops_count_forward_weight_gradient_and_input_deltas_after_the_first_layer():
    from fastbp._grid import get_row

    mnist = get_row("mnist-like")  # 784-128-10
    assert mnist.flops_per_sample == 4 * (784 * 128 + 128 * 10) + 2 * 128 * 10
    narrow = get_row("narrow")  # 32-64-64-1
    assert narrow.flops_per_sample == 4 * (32 * 64 + 64 * 64 + 64) + 2 * (64 * 64 + 64)
    assert narrow.train_flops(n_rows=10, epochs=3) == 30 * narrow.flops_per_sample


@pytest.mark.parametrize("name", ["digits-like", "sklearn-binary", "tabular", "hidden-256x2"])
def test_middle_rows_do_a_few_gflop_in_one_epoch(name):
    from fastbp._grid import get_row

    row = get_row(name)
    assert row.epochs == 1 and 3e9 <= row.train_flops() <= 8e9


def test_targets_judge_speedup_and_peak_clauses_and_leave_others():
    from fastbp.bench import meets_target

    both = ">= 3x NumPy; >= 50% peak"
    assert meets_target(both, 3.5, 0.6) is True
    assert meets_target(both, 3.5, 0.4) is False
    assert meets_target(both, 2.0, 0.6) is False
    assert meets_target(both, 3.5, None) is True  # no peak measured: speedup alone
    assert meets_target(">= 50% peak", 0.1, None) is None
    assert meets_target(">= 5x NumPy; peak memory <= data + 64 MB", 6.0, 0.01) is True
    for row in GRID:  # every row has a target this runner judges
        assert meets_target(row.target, 1e9, 1.0) is True


def test_rows_slower_than_the_fast_numpy_loop_are_flagged(monkeypatch):
    from fastbp import bench
    from fastbp._grid import get_row

    monkeypatch.setattr(bench, "IDLE_S", 0.0)

    def timer(seconds):
        return lambda *args, **kwargs: (lambda: seconds, 1, 1.0)

    row = get_row("digits-like").scaled(n_rows=50)
    monkeypatch.setattr(bench, "fastbp_timer", timer(2.0))
    monkeypatch.setattr(bench, "reference_timer", timer(8.0))
    monkeypatch.setattr(bench, "fast_numpy_timer", timer(1.0))
    slow = bench.measure(row, "float64", 1, peak=row.train_flops())  # 0.5 of peak at 2 s
    monkeypatch.setattr(bench, "fast_numpy_timer", timer(3.0))
    fast = bench.measure(row, "float64", 1, peak=row.train_flops() / 0.4)
    assert (slow["slower"], slow["meets"], fast["slower"], fast["meets"]) == (
        True,
        True,
        False,
        False,
    )
    table = bench.format_markdown([slow, fast]).splitlines()
    assert "fast NumPy" in table[0] and "target met" in table[0]
    assert "| 0.50x SLOWER |" in table[2] and "| 50.0% |" in table[2]
    assert "| 1.50x |" in table[3] and "| NO |" in table[3]
    assert bench.format_text([slow, fast]).count("SLOWER") == 1


def test_bounds_report_a_middle_row(monkeypatch, capsys):
    from fastbp import bench_bounds

    monkeypatch.setattr(bench_bounds, "SECONDS", 0.002)
    bench_bounds.main(["--rows", "digits-like"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "digits-like" in line]
    assert len(lines) == 2  # float32 and float64
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[2] == "2 x 100" and cells[4].endswith("us") and cells[5].endswith("%")


def test_bound_products_are_timed_in_both_dtypes():
    from fastbp.bench_bounds import products_seconds

    for dtype in (np.float32, np.float64):
        seconds = products_seconds((64, 100, 10), 100, dtype)
        assert np.isfinite(seconds) and seconds > 0


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


def test_text_like_data_is_seeded_sparse_and_learnable():
    from fastbp.bench_sklearn import text_like

    X, y = text_like(2000, 5000, 0.004)
    again, y_again = text_like(2000, 5000, 0.004)
    assert X.format == "csr" and X.shape == (2000, 5000)
    assert (X != again).nnz == 0 and (y == y_again).all()
    assert 0.9 * 0.004 < X.nnz / (2000 * 5000) <= 0.004 * 1.1
    np.testing.assert_allclose(np.sqrt(X.multiply(X).sum(axis=1)).A1, 1.0)
    assert set(np.unique(y)) == set(range(20))


@pytest.mark.slow
def test_sparse_comparison_reports_both_libraries():
    from fastbp.bench_sklearn import sparse_compare

    lines = []
    row = sparse_compare(600, 3000, 0.01, repeats=1, max_iter=2, stream=lines.append)
    for library in ("fastbp", "sklearn"):
        assert row[library + "_epochs"] == 2
        assert any(line.lstrip().startswith(library) for line in lines)
    # The same trajectory: the same test accuracy.
    assert row["fastbp_score"] == row["sklearn_score"]


@pytest.mark.slow
def test_float32_and_poisson_comparisons_report_both_libraries():
    from fastbp.bench_sklearn import dense_compares

    lines = []
    rows = dense_compares(2000, repeats=1, max_iter=3, stream=lines.append)
    assert [row["problem"].split(":")[0] for row in rows] == ["float32", "Poisson"]
    assert sum("float32" in line for line in lines if line.lstrip().startswith("fastbp")) == 1
    for row in rows:
        for library in ("fastbp", "sklearn"):
            assert row[library + "_epochs"] == 3
        # The same trajectories: scores agree to rounding.
        assert abs(row["fastbp_score"] - row["sklearn_score"]) < 1e-3
