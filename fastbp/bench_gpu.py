"""``python -m fastbp.bench_gpu``: fastbp on the GPU against its CPU engine and PyTorch.

Every row of the table trains one network on generated data with plain SGD and reports
the median wall time of a whole training run (data copied to the device included) for
fastbp ``device="cuda"``, for fastbp's CPU engine and for the same network, batches and
dtype in PyTorch on CUDA, with the ratios. A CPU run that would take longer than
``--cpu-limit`` seconds is timed on a slice of the data and scaled up (marked ``~``).
PyTorch is optional: without it (or without CUDA in it) its column says ``n/a``.

Each measurement is guarded: an error is printed in its cell and the table goes on.
"""

import argparse
import os
import sys
import time
import traceback
from dataclasses import replace

import numpy as np

from . import MLP
from ._grid import GRID, Row, make_data

#: The CPU grid (``fastbp._grid``) and a large-batch row for the GPU.
ROWS = [
    *GRID,
    Row(
        "large-batch",
        (784, 1024, 1024, 10),
        ("relu", "relu", "softmax"),
        "cce",
        1_000_000,
        4096,
        1,
        ">= 20x the 2-core CPU engine (on an H100)",
    ),
]


def quick(row):
    """A tiny version of ``row``: a smoke test of every code path, not a measurement."""
    return replace(
        row,
        sizes=tuple(min(s, 24) for s in row.sizes),
        n_rows=min(row.n_rows, 64),
        batch_size=None if row.batch_size is None else min(row.batch_size, 16),
        epochs=min(row.epochs, 2),
    )


def describe(row):
    sizes = "-".join(map(str, row.sizes))
    batch = "full" if row.batch_size is None else row.batch_size
    return f"{row.name} {sizes}, {row.n_rows:,} rows, batch {batch}, {row.epochs} ep"


def median_time(run, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def fastbp_run(row, X, Y, dtype, device):
    """One whole training run of a fresh network; returns its loss history."""
    net = MLP(list(row.sizes), list(row.activations), row.loss, seed=0, dtype=dtype, device=device)
    return net.fit(X, Y, epochs=row.epochs, lr=row.lr, batch_size=row.batch_size)


def time_fastbp(row, X, Y, dtype, device, repeats):
    warm = min(row.n_rows, 64)
    fastbp_run(row, X[:warm], Y[:warm], dtype, device)  # compiles (or loads) the kernels
    return median_time(lambda: fastbp_run(row, X, Y, dtype, device), repeats), ""


def time_cpu(row, X, Y, dtype, repeats, limit):
    """CPU engine time, measured in full or, past ``limit`` seconds, scaled from a slice."""
    # Up to 4,096 rows: enough for the batches of every grid row, so the warm-up compiles
    # whatever the timed runs use (the parallel region compiles on first use).
    fastbp_run(row, X[:4096], Y[:4096], dtype, "cpu")
    probe = min(row.n_rows, max(64, row.n_rows // 200))
    start = time.perf_counter()
    fastbp_run(row, X[:probe], Y[:probe], dtype, "cpu")
    estimate = (time.perf_counter() - start) * row.n_rows / probe
    if estimate * repeats <= limit:
        return median_time(lambda: fastbp_run(row, X, Y, dtype, "cpu"), repeats), ""
    # Scale a run on a slice: time grows with samples x epochs at a fixed batch size (a
    # full batch stays a full batch of the slice: the same work per sample).
    part = max(probe, int(row.n_rows * min(1.0, limit / max(estimate, 1e-9) / 4)))
    sliced = replace(row, n_rows=part)
    elapsed = median_time(lambda: fastbp_run(sliced, X[:part], Y[:part], dtype, "cpu"), 1)
    return elapsed * row.n_rows / part, "~"


def torch_model(row, dtype, torch):
    layers = []
    for i, name in enumerate(row.activations):
        layers.append(torch.nn.Linear(row.sizes[i], row.sizes[i + 1]))
        if i < len(row.activations) - 1:
            layers.append(
                {
                    "relu": torch.nn.ReLU(),
                    "tanh": torch.nn.Tanh(),
                    "sigmoid": torch.nn.Sigmoid(),
                    "leaky_relu": torch.nn.LeakyReLU(),
                    "identity": torch.nn.Identity(),
                }[name]
            )
    return torch.nn.Sequential(*layers).to(device="cuda", dtype=dtype)


def time_torch(row, X, Y, dtype, repeats):
    """The same training in PyTorch on CUDA: same layers, batches and dtype, plain SGD; the
    loss takes logits (softmax and sigmoid folded in, as fastbp's exact logit forms)."""
    try:
        import torch
    except ImportError:
        return None, "n/a (no torch)"
    if not torch.cuda.is_available():
        return None, "n/a (no CUDA)"
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    batch = row.batch_size or row.n_rows

    def run():
        model = torch_model(row, tdtype, torch)
        optimizer = torch.optim.SGD(model.parameters(), lr=row.lr)
        if row.loss == "cce":
            loss_fn = torch.nn.CrossEntropyLoss()
        else:
            loss_fn = torch.nn.BCEWithLogitsLoss()
        features = torch.from_numpy(X).to("cuda")
        targets = torch.from_numpy(Y).to("cuda")
        for _ in range(row.epochs):
            for start in range(0, row.n_rows, batch):
                optimizer.zero_grad(set_to_none=True)
                output = model(features[start : start + batch])
                loss_fn(output, targets[start : start + batch]).backward()
                optimizer.step()
        torch.cuda.synchronize()

    run()
    return median_time(run, repeats), ""


def gpu_name():
    try:
        from numba import cuda

        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            return "numba CUDA simulator"
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception as error:  # the table is still worth printing
        return f"unknown ({error})"


def fmt_time(seconds, mark=""):
    if seconds is None:
        return "n/a"
    if seconds < 1:
        return f"{mark}{seconds * 1e3:.1f} ms"
    return f"{mark}{seconds:.2f} s"


def fmt_ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator <= 0:
        return "n/a"
    ratio = numerator / denominator
    return f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2g}x"


def guarded(errors, label, measure):
    """``measure()`` as ``(seconds, note)``, or ``(None, "error")`` with the error kept."""
    try:
        return measure()
    except Exception as error:
        errors.append(f"{label}: {type(error).__name__}: {error}\n{traceback.format_exc()}")
        return None, "error"


def measure_row(row, dtype, args, repeats, errors):
    """One line of the table: the three times and their ratios."""
    X, Y = make_data(row, dtype)
    label = f"{row.name} {np.dtype(dtype).name}"
    gpu, _ = guarded(
        errors, label + " fastbp cuda", lambda: time_fastbp(row, X, Y, dtype, "cuda", repeats)
    )
    if args.no_cpu:
        cpu, cpu_note = None, "skipped"
    else:
        cpu, cpu_note = guarded(
            errors, label + " cpu", lambda: time_cpu(row, X, Y, dtype, repeats, args.cpu_limit)
        )
    if args.no_torch:
        torch_t, torch_note = None, "skipped"
    else:
        torch_t, torch_note = guarded(
            errors, label + " torch", lambda: time_torch(row, X, Y, dtype, repeats)
        )
    cpu_cell = fmt_time(cpu, cpu_note) if cpu is not None else cpu_note or "n/a"
    torch_cell = fmt_time(torch_t) if torch_t is not None else torch_note or "n/a"
    return (
        f"  {describe(row):58s} {fmt_time(gpu):>12s} {cpu_cell:>12s} {torch_cell:>13s} "
        f"{fmt_ratio(cpu, gpu):>9s} {fmt_ratio(torch_t, gpu):>10s}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastbp.bench_gpu", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--rows",
        default="",
        help="comma-separated names (or parts of names) of the rows to run; "
        "default all: " + ", ".join(r.name for r in ROWS),
    )
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per median")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and one repeat: a smoke test of every path"
    )
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=2,
        help="threads of the CPU engine (default 2, the reference machine)",
    )
    parser.add_argument(
        "--cpu-limit",
        type=float,
        default=60.0,
        help="seconds past which a CPU run is scaled from a slice",
    )
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU engine")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    args = parser.parse_args(argv)

    wanted = [w.strip().lower() for w in args.rows.split(",") if w.strip()]
    rows = [r for r in ROWS if not wanted or any(w in r.name.lower() for w in wanted)]
    if not rows:
        parser.error(f"--rows {args.rows!r} matches none of: " + ", ".join(r.name for r in ROWS))
    if args.quick:
        rows = [quick(r) for r in rows]
    repeats = 1 if args.quick else max(1, args.repeats)
    dtypes = {"float32": [np.float32], "float64": [np.float64], "both": [np.float32, np.float64]}[
        args.dtype
    ]

    import numba

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        sys.setswitchinterval(1e-5)  # the simulator's threads wait on the GIL otherwise
    threads = min(args.cpu_threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    print(
        f"GPU: {gpu_name()}; CPU engine: {threads} threads; median of {repeats} run(s)"
        f"{'; --quick sizes (not a measurement)' if args.quick else ''}",
        flush=True,
    )

    errors = []
    for dtype in dtypes:
        dname = np.dtype(dtype).name
        print(f"\n{dname}")
        header = (
            f"  {'row':58s} {'fastbp cuda':>12s} {'CPU engine':>12s} "
            f"{'PyTorch cuda':>13s} {'CPU/cuda':>9s} {'torch/cuda':>10s}"
        )
        print(header)
        print("  " + "-" * (len(header) - 2), flush=True)
        for row in rows:
            print(measure_row(row, dtype, args, repeats, errors), flush=True)
    print(
        "\n  CPU/cuda and torch/cuda: how many times faster fastbp on the GPU is. A time "
        "marked ~ is\n  the CPU engine on a slice of the rows, scaled to all of them. "
        "PyTorch: plain SGD,\n  torch.nn.Linear layers, loss on logits, data copied to the "
        "GPU inside the timed run."
    )
    if errors:
        print(f"\n{len(errors)} measurement(s) failed:")
        for error in errors:
            print(error)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
