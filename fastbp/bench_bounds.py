"""``python -m fastbp.bench_bounds``: what bounds the middle rows of the grid.

For each row whose target is a share of the peak, in both dtypes, it times side by side:
the row's fastbp fit (per batch); the products alone of one planned chunk (forward,
weight gradient, and input delta for every layer but the first) through BLAS on one
thread, which is the best arrangement available, as a batch of them runs on the machine's
cores (chunk groups in parallel); and the rest of each batch, the difference: the
elementwise work, the loss, the update and the handover between threads.
The peak is ``np.dot`` of 2048 x 2048 matrices on all cores, measured in the same run.
"""

import argparse
import time

import numba
import numpy as np

from . import MLP
from ._engine.cpu import blas_threads
from ._engine.cpu.backend import time_layer
from ._engine.cpu.blas import blas_backward, blas_forward, blas_weight_gradient
from ._engine.cpu.plan import work_plan
from ._engine.layout import build_layout
from ._grid import GRID, make_data
from .bench import cpu_model, peak_flops

#: Seconds of products, and of fits, timed per row and dtype.
SECONDS = 0.3


@numba.njit(cache=True)
def _products(A, params, grad, w_offs, a_offs, sizes, chunk, repeats):
    """The products of one training chunk of ``chunk`` rows, ``repeats`` times."""
    n_layers = sizes.shape[0] - 1
    delta_off = a_offs[n_layers + 1]
    for _ in range(repeats):
        for l in range(n_layers):
            fan_in, fan_out = sizes[l], sizes[l + 1]
            blas_forward(A, a_offs[l], params, w_offs[l], A, a_offs[l + 1], chunk, fan_in, fan_out)
        for l in range(n_layers - 1, -1, -1):
            fan_in, fan_out = sizes[l], sizes[l + 1]
            blas_weight_gradient(
                A, a_offs[l], A, a_offs[l + 1], grad, w_offs[l], chunk, fan_in, fan_out, False
            )
            if l > 0:
                blas_backward(
                    A, a_offs[l + 1], params, w_offs[l], delta_off, chunk, fan_in, fan_out
                )


def products_seconds(sizes, chunk, dtype):
    """Seconds of one chunk's products through BLAS on one thread (best of five)."""
    sizes = np.array(sizes, np.int64)
    entries = sizes[:-1] * sizes[1:]
    w_offs = np.concatenate(([0], np.cumsum(entries)[:-1])).astype(np.int64)
    a_offs = np.concatenate(([0], np.cumsum(chunk * sizes))).astype(np.int64)
    rng = np.random.default_rng(0)
    A = (0.1 * rng.standard_normal(a_offs[-1] + chunk * sizes.max())).astype(dtype)
    params = (0.1 * rng.standard_normal(entries.sum())).astype(dtype)
    grad = np.zeros_like(params)
    flops = chunk * (4 * entries.sum() + 2 * entries[1:].sum())
    repeats = max(1, int(SECONDS / 5 / (flops / 3e10)))
    with blas_threads.one_blas_thread():
        _products(A, params, grad, w_offs, a_offs, sizes, chunk, 1)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            _products(A, params, grad, w_offs, a_offs, sizes, chunk, repeats)
            best = min(best, (time.perf_counter() - start) / repeats)
    return best


def fit_seconds(row, dtype, n_rows):
    """Seconds of one epoch of ``row`` on ``n_rows`` rows (best of five, after a warm-up)."""
    X, Y = make_data(row, dtype, n_rows)
    net = MLP(list(row.sizes), list(row.activations), row.loss, seed=0, dtype=dtype)
    net.fit(
        X[: 4 * row.batch_size],
        Y[: 4 * row.batch_size],
        epochs=1,
        lr=row.lr,
        batch_size=row.batch_size,
    )
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        net.fit(X, Y, epochs=1, lr=row.lr, batch_size=row.batch_size)
        best = min(best, time.perf_counter() - start)
    return best


def measure(row, dtype, peak, threads):
    """One table line: fastbp's and the products' rates per batch, as shares of ``peak``."""
    dtype = np.dtype(dtype)
    layout, _ = build_layout(row.sizes, row.activations, True)
    plan = work_plan(layout, dtype, row.batch_size, time_layer)
    n_chunks = -(-row.batch_size // plan.chunk)
    batch_flops = row.batch_size * row.flops_per_sample
    n_rows = max(4, int(SECONDS * peak * 0.3 / batch_flops)) * row.batch_size
    fit = fit_seconds(row, dtype, n_rows) / (n_rows // row.batch_size)
    chunk = products_seconds(row.sizes, plan.chunk, dtype)
    products = chunk * -(-n_chunks // threads)  # the chunks of a batch, spread over cores
    return {
        "row": row.name,
        "dtype": dtype.name,
        "chunk": f"{n_chunks} x {plan.chunk}",
        "blas": "".join("B" if b else "o" for b in plan.blas),
        "fastbp_us": fit * 1e6,
        "fastbp_peak": batch_flops / fit / peak,
        "products_us": products * 1e6,
        "products_peak": batch_flops / products / peak,
        "rest_us": (fit - products) * 1e6,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastbp.bench_bounds", description=__doc__)
    parser.add_argument("--rows", help="comma-separated grid rows (default: the middle rows)")
    args = parser.parse_args(argv)
    rows = [row for row in GRID if "% peak" in row.target]
    if args.rows:
        rows = [row for row in GRID if row.name in args.rows.split(",")]
    threads = numba.get_num_threads()
    print(f"CPU: {cpu_model()}, {threads} threads; command: python -m fastbp.bench_bounds")
    print()
    print(
        "| row | dtype | chunks | layers (B: BLAS) | fastbp per batch | share of peak | "
        "products alone | share of peak | rest per batch |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype in (np.float32, np.float64):
        peak = peak_flops(dtype)
        for row in rows:
            r = measure(row, dtype, peak, threads)
            print(
                f"| {r['row']} | {r['dtype']} | {r['chunk']} | {r['blas']} | "
                f"{r['fastbp_us']:.0f} us | {r['fastbp_peak']:.0%} | {r['products_us']:.0f} us | "
                f"{r['products_peak']:.0%} | {r['rest_us']:.0f} us |",
                flush=True,
            )
        print(f"| peak {np.dtype(dtype).name} | | | | | {peak / 1e9:.1f} GFLOP/s | | | |")


if __name__ == "__main__":
    main()
