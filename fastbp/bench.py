"""``python -m fastbp.bench``: time every row of the benchmark grid (``fastbp._grid``) with
fastbp, with its plain-NumPy twin ``fastbp.reference``, with the fastest plain-NumPy loop
``fastbp.fast_numpy`` and, when it can be imported, with PyTorch on the CPU, and report
speedups, the fraction of the machine's peak reached, and each row's target.

Every framework trains the same network from the same initial weights with plain SGD on
the same mini-batches in row order. Each time is the median of ``--repeats`` fits after
warm-up fits; fits shorter than a second are repeated until about ``MIN_TIMED_S`` of
them are timed (not under ``--quick``), so that the medians of sub-millisecond rows rest
on hundreds of fits. The libraries take turns: each one's fits are spread over
``ROUNDS`` rounds, so that the machine speeding up or slowing down during a row moves
all of them alike. A NumPy run expected to take longer than about 15 s is timed on a
leading slice of the rows and scaled linearly to the full row count; it is marked
"(scaled)". PyTorch runs with as many threads as numba, NumPy with BLAS's default. The
speedups over ``fastbp.reference`` are what the rows' "x NumPy" targets mean; a row where
fastbp is slower than ``fastbp.fast_numpy`` is flagged "SLOWER" (no row should be). The
peak is the rate of ``np.dot`` of two 2048 x 2048 matrices of the row's dtype, measured in
the same run; a training run counts ``rows * epochs * (4 * sum(fan_in * fan_out) + 2 *
sum(fan_in * fan_out over layers after the first))`` floating-point operations (forward
and weight gradient in every layer, input delta in all but the first).
"""

import argparse
import os
import platform
import re
import shlex
import sys
import time

import numba
import numpy as np

from . import MLP, reference
from ._grid import GRID, get_row, make_data
from .fast_numpy import fit_numpy

#: A NumPy run expected to take longer than this is timed on a slice and scaled.
REFERENCE_BUDGET_S = 15.0
#: Rows of the slice that estimates how long a NumPy run takes.
PROBE_ROWS = 2048
#: Pause before each library's timings, so that the thread pools of the one before
#: (OpenBLAS's, PyTorch's OpenMP threads) stop spinning on the two cores first.
IDLE_S = 0.5
#: Rows and epochs of every grid row under ``--quick``.
QUICK_ROWS = 300
QUICK_EPOCHS = 1
#: Short fits are repeated until about this many seconds of them are timed.
MIN_TIMED_S = 1.0
#: The most timed fits of one median.
MAX_REPEATS = 500
#: Rounds over which the libraries take turns at their timed fits.
ROUNDS = 3


def _repeats(seconds, repeats, min_seconds):
    """Timed fits for a median: ``repeats``, or more when one fit (``seconds``, the
    warm-up's time) is short, up to about ``min_seconds`` of fits in all."""
    return max(repeats, min(MAX_REPEATS, int(min_seconds / max(seconds, 1e-9))))


def _warmed_timer(fit, repeats, min_seconds):
    """``(fit, count, 1.0)``, with ``count`` set from the second fit's time: the first
    also loads or compiles code, and a count set from it left short fits (the notebook
    row's 0.3 ms) timed only ``repeats`` times, each cold after the pause between turns."""
    first = fit()
    return fit, _repeats(min(first, fit()), repeats, min_seconds), 1.0


def _fit_seconds(cls, row, X, Y, dtype):
    """Seconds of one fit of a fresh ``cls`` network (construction not timed)."""
    net = cls(list(row.sizes), list(row.activations), row.loss, seed=0, dtype=dtype)
    start = time.perf_counter()
    net.fit(X, Y, epochs=row.epochs, lr=row.lr, batch_size=row.batch_size)
    return time.perf_counter() - start


def fastbp_timer(row, X, Y, dtype, repeats, min_seconds=MIN_TIMED_S):
    """``(fit, count, scale)``: a timed fastbp fit, how many to time (``_repeats``) and
    the factor from a fit's seconds to the row's; the warm-up fits (the first also loads
    or compiles the kernels) happen here."""

    def fit():
        return _fit_seconds(MLP, row, X, Y, dtype)

    return _warmed_timer(fit, repeats, min_seconds)


def _slice_rows(row, n):
    """At most ``n`` leading rows, whole mini-batches where the row has a batch size."""
    n = min(row.n_rows, n)
    if row.batch_size is not None and n < row.n_rows:
        n = max(row.batch_size, n // row.batch_size * row.batch_size)
    return min(row.n_rows, n)


def sliced_timer(seconds, row, X, Y, repeats, budget, min_seconds):
    """``(fit, count, scale)`` of a NumPy fit, ``seconds(X, Y)`` timing one on the rows
    given: of the whole row when it fits in ``budget`` (as many fits as fit in ``budget``,
    at most ``_repeats``), otherwise one fit of a leading slice of the rows, ``scale``
    taking its time to the whole row's."""
    n = row.n_rows
    probe = _slice_rows(row, PROBE_ROWS)
    t_probe = seconds(X[:probe], Y[:probe])
    estimate = t_probe * n / probe
    part, count = n, 1
    if estimate <= budget or probe == n:
        count = max(
            1, min(_repeats(estimate, repeats, min_seconds), int(budget / max(estimate, 1e-9)))
        )
    else:
        part = max(probe, _slice_rows(row, int(n * budget / estimate)))

    def fit():
        return seconds(X[:part], Y[:part])

    return fit, count, n / part


def reference_timer(row, X, Y, dtype, repeats, budget=REFERENCE_BUDGET_S, min_seconds=MIN_TIMED_S):
    """``sliced_timer`` of ``fastbp.reference``."""

    def seconds(X, Y):
        return _fit_seconds(reference.MLP, row, X, Y, dtype)

    return sliced_timer(seconds, row, X, Y, repeats, budget, min_seconds)


def fast_numpy_timer(row, X, Y, dtype, repeats, budget=REFERENCE_BUDGET_S, min_seconds=MIN_TIMED_S):
    """``sliced_timer`` of ``fastbp.fast_numpy.fit_numpy``, from the initial weights of the
    other frameworks' networks (its buffers are allocated inside the timed fit)."""
    weights, biases = reference.MLP(
        list(row.sizes), list(row.activations), row.loss, seed=0, dtype=dtype
    ).get_params()

    def seconds(X, Y):
        start = time.perf_counter()
        fit_numpy(
            X,
            Y,
            weights,
            biases,
            row.activations,
            row.loss,
            epochs=row.epochs,
            lr=row.lr,
            batch_size=row.batch_size,
        )
        return time.perf_counter() - start

    return sliced_timer(seconds, row, X, Y, repeats, budget, min_seconds)


def interleaved(timers, rounds=ROUNDS):
    """Median seconds of each ``(fit, count, scale)`` timer's fits, times its scale. The
    timers take turns, each running its share of ``count`` fits in every round."""
    times = [[] for _ in timers]
    for r in range(rounds):
        for (fit, count, _), out in zip(timers, times, strict=True):
            share = count * (r + 1) // rounds - count * r // rounds
            if share:
                time.sleep(IDLE_S)
                out += [fit() for _ in range(share)]
    return [float(np.median(t)) * scale for t, (_, _, scale) in zip(times, timers, strict=True)]


def _torch():
    try:
        import torch
    except Exception:  # any failure to import means: no PyTorch column
        return None
    return torch


def torch_timer(torch, row, X, Y, dtype, repeats, min_seconds=MIN_TIMED_S):
    """``(fit, count, scale)`` of PyTorch CPU, after its warm-up fits: explicit weight
    tensors with the initial weights of the fastbp network, autograd,
    ``torch.optim.SGD`` on the same mini-batches, the same losses (means over the
    batch)."""
    import torch.nn.functional as F

    torch.set_num_threads(numba.get_num_threads())
    start_net = MLP(list(row.sizes), list(row.activations), row.loss, seed=0, dtype=dtype)
    weights, biases = start_net.get_params()
    Xt = torch.from_numpy(np.ascontiguousarray(X))
    Yt = torch.from_numpy(np.ascontiguousarray(Y))
    hidden = {
        "relu": torch.relu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "identity": lambda z: z,
    }
    acts = [hidden[name] for name in row.activations[:-1]]
    if row.loss == "cce":
        loss_fn = F.cross_entropy
    else:
        loss_fn = F.binary_cross_entropy_with_logits
    n = X.shape[0]
    batch = n if row.batch_size is None else row.batch_size

    def fit():
        params = []
        for w, b in zip(weights, biases, strict=True):
            params += [torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)]
        opt = torch.optim.SGD(params, lr=row.lr)
        pairs = list(zip(params[0::2], params[1::2], strict=True))
        start = time.perf_counter()
        for _ in range(row.epochs):
            for lo in range(0, n, batch):
                a = Xt[lo : lo + batch]
                for (w, b), act in zip(pairs[:-1], acts, strict=True):
                    a = act(torch.addmm(b, a, w))
                z = torch.addmm(pairs[-1][1], a, pairs[-1][0])
                loss = loss_fn(z, Yt[lo : lo + batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return time.perf_counter() - start

    return _warmed_timer(fit, repeats, min_seconds)


def peak_flops(dtype, repeats=3):
    """FLOP/s of ``np.dot`` of two 2048 x 2048 matrices of ``dtype`` (best of repeats)."""
    n = 2048
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    np.dot(a, b)
    best = min(_timed_dot(a, b) for _ in range(repeats))
    return 2.0 * n**3 / best


def _timed_dot(a, b):
    start = time.perf_counter()
    np.dot(a, b)
    return time.perf_counter() - start


#: The target clauses this runner judges: a speedup over ``fastbp.reference`` and a share of
#: the ``np.dot`` peak. Others (peak memory: the asv suite's ``peakmem_fit``) are not.
SPEEDUP_TARGET = re.compile(r">=\s*([0-9.]+)x NumPy")
PEAK_TARGET = re.compile(r">=\s*([0-9.]+)% peak")


def meets_target(target, speedup, peak_fraction):
    """Whether ``speedup`` and ``peak_fraction`` (None: not measured) meet every clause of
    ``target`` ("; "-joined) that this runner judges; None when it judges none."""
    met = []
    for clause in (c.strip() for c in target.split(";")):
        if match := SPEEDUP_TARGET.fullmatch(clause):
            met.append(speedup >= float(match.group(1)))
        elif (match := PEAK_TARGET.fullmatch(clause)) and peak_fraction is not None:
            met.append(peak_fraction >= float(match.group(1)) / 100)
    return all(met) if met else None


def measure(row, dtype, repeats, torch=None, peak=None, judge=True, min_seconds=MIN_TIMED_S):
    """One result dict of ``row`` in ``dtype``; ``judge`` compares the results with the
    row's target and with the fast NumPy loop; fits shorter than ``min_seconds`` are
    repeated (``_repeats``)."""
    X, Y = make_data(row, dtype)
    timers = [
        fastbp_timer(row, X, Y, dtype, repeats, min_seconds),
        reference_timer(row, X, Y, dtype, repeats, min_seconds=min_seconds),
        fast_numpy_timer(row, X, Y, dtype, repeats, min_seconds=min_seconds),
    ]
    if torch is not None:
        timers.append(torch_timer(torch, row, X, Y, dtype, repeats, min_seconds))
    t_fast, t_ref, t_np, *t_torch = interleaved(timers)
    t_torch = t_torch[0] if t_torch else None
    speedup = t_ref / t_fast
    peak_fraction = None if peak is None else row.train_flops() / t_fast / peak
    return {
        "row": row,
        "dtype": np.dtype(dtype).name,
        "fastbp": t_fast,
        "numpy": t_ref,
        "scaled": timers[1][2] != 1.0,
        "speedup": speedup,
        "fast_numpy": t_np,
        "fast_scaled": timers[2][2] != 1.0,
        "vs_fast_numpy": t_np / t_fast,
        "slower": judge and t_fast > t_np,
        "torch": t_torch,
        "vs_torch": None if t_torch is None else t_fast / t_torch,
        "peak_fraction": peak_fraction,
        "meets": meets_target(row.target, speedup, peak_fraction) if judge else None,
    }


def format_seconds(t):
    """A duration ``t`` in seconds as table text ("840 us", "12.5 ms", "1.25 s"); "-" for None."""
    if t is None:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.0f} us"
    if t < 1:
        return f"{t * 1e3:.1f} ms"
    return f"{t:.2f} s"


COLUMNS = (
    "row",
    "dtype",
    "fastbp",
    "NumPy",
    "speedup",
    "fast NumPy",
    "vs fast NumPy",
    "target",
    "target met",
    "torch",
    "fastbp/torch",
    "% peak",
)


def _cells(r):
    return (
        r["row"].name,
        r["dtype"],
        format_seconds(r["fastbp"]),
        format_seconds(r["numpy"]) + (" (scaled)" if r["scaled"] else ""),
        f"{r['speedup']:.1f}x",
        format_seconds(r["fast_numpy"]) + (" (scaled)" if r["fast_scaled"] else ""),
        f"{r['vs_fast_numpy']:.2f}x" + (" SLOWER" if r["slower"] else ""),
        r["row"].target,
        "-" if r["meets"] is None else ("yes" if r["meets"] else "NO"),
        format_seconds(r["torch"]),
        "-" if r["vs_torch"] is None else f"{r['vs_torch']:.2f}",
        "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.1f}%",
    )


def format_text(results):
    rows = [COLUMNS] + [_cells(r) for r in results]
    widths = [max(len(line[i]) for line in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in rows
    )


def format_markdown(results):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in results]
    return "\n".join(lines)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_header(torch, argv, peaks):
    command = "python -m fastbp.bench" + "".join(" " + shlex.quote(a) for a in argv)
    torch_version = "not installed" if torch is None else torch.__version__
    return "\n".join(
        [
            f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores",
            f"- threads: numba {numba.get_num_threads()}"
            + ("" if torch is None else f", torch {numba.get_num_threads()}"),
            f"- numpy {np.__version__}, numba {numba.__version__}, torch {torch_version}, "
            f"Python {platform.python_version()}",
            "- np.dot 2048 x 2048 peak: "
            + ", ".join(f"{d} {p / 1e9:.1f} GFLOP/s" for d, p in peaks.items()),
            f"- command: `{command}`",
        ]
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m fastbp.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--rows",
        default=",".join(r.name for r in GRID),
        help="comma-separated grid rows (default: all)",
    )
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="float64")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per median")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"every row cut to {QUICK_ROWS} rows and {QUICK_EPOCHS} epoch "
        "(a smoke test, not a measurement)",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="a markdown table under a header describing the machine",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if present")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        args.rows = [get_row(name.strip()) for name in args.rows.split(",") if name.strip()]
    except KeyError as e:
        parser.error(e.args[0])
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    torch = None if args.no_torch else _torch()
    rows = args.rows
    if args.quick:
        rows = [r.scaled(n_rows=min(r.n_rows, QUICK_ROWS), epochs=QUICK_EPOCHS) for r in rows]
    results, peaks = [], {}
    for dtype in dtypes:
        peak = peaks[dtype] = peak_flops(dtype)
        print(f"{dtype}: np.dot peak {peak / 1e9:.1f} GFLOP/s", file=sys.stderr, flush=True)
        for row in rows:
            results.append(
                measure(
                    row,
                    dtype,
                    args.repeats,
                    torch,
                    peak,
                    judge=not args.quick,
                    min_seconds=0.0 if args.quick else MIN_TIMED_S,
                )
            )
            print(f"  {row.name} done", file=sys.stderr, flush=True)
    if args.markdown:
        print(machine_header(torch, argv, peaks) + "\n")
        print(format_markdown(results))
    else:
        print(format_text(results))
    if args.quick:
        print("(--quick: rows cut down for a smoke test; the times are not measurements)")
    return results


if __name__ == "__main__":
    main()
