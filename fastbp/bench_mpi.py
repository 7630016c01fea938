"""``python -m fastbp.bench_mpi``: training over MPI against one process, and a model of
scaling.

Side by side, alternating (best of ``--repeats``): one process with two numba threads,
and ``mpiexec -n 2`` with one numba thread each (``fit(..., comm=MPI.COMM_WORLD)``), on
grid rows. Also, in the same MPI run, an ``allgather`` of one step's exchanged bytes
(the time communication adds to a step on this machine) and, from these figures, the
model of scaling in ``docs/scaling.md``: up to how many processes a row keeps 80% of
ideal speed on a 10 Gbit/s and a 100 Gbit/s network.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from . import MLP
from ._engine.cpu.plan import work_plan
from ._engine.layout import build_layout
from ._grid import get_row, make_data
from .bench import cpu_model

#: The networks of the model: (bandwidth in bit/s, latency of one message in s).
NETWORKS = {"10 Gbit/s": (10e9, 10e-6), "100 Gbit/s": (100e9, 2e-6)}
#: The efficiency the model asks of each process count.
EFFICIENCY = 0.8


def groups_and_bytes(row, dtype):
    """Chunk groups of a batch and the bytes of one group's gradient."""
    layout, n_params = build_layout(list(row.sizes), list(row.activations), True)
    batch = row.n_rows if row.batch_size is None else row.batch_size
    plan = work_plan(layout, np.dtype(dtype), batch, None)
    groups = min(-(-batch // plan.chunk), plan.max_groups)
    return groups, n_params * np.dtype(dtype).itemsize


def _worker(names, dtype, n_rows, use_mpi):
    """Time one epoch block of each row in this process (with MPI when ``use_mpi``)."""
    comm = None
    if use_mpi:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    results = {}
    for name in names:
        row = get_row(name).scaled(n_rows=n_rows)
        X, Y = make_data(row, dtype)
        net = MLP(list(row.sizes), list(row.activations), row.loss, dtype=dtype, seed=0)
        settings = dict(lr=row.lr, batch_size=row.batch_size)
        net.fit(X[:2000], Y[:2000], epochs=1, comm=comm, **settings)  # compiled
        if comm is not None:
            comm.Barrier()
        start = time.perf_counter()
        net.fit(X, Y, epochs=row.epochs, comm=comm, **settings)
        seconds = time.perf_counter() - start
        batch = X.shape[0] if row.batch_size is None else row.batch_size
        steps = row.epochs * -(-X.shape[0] // batch)
        entry = {"seconds": seconds, "steps": steps, "params": net.n_params}
        if comm is not None:
            entry["seconds"] = comm.allreduce(seconds, op=MPI.MAX)
            entry["exchange_s"] = _exchange_seconds(row, dtype, comm.Get_size())
        results[name] = entry
    if comm is None or comm.Get_rank() == 0:
        print(json.dumps(results), flush=True)


def _exchange_seconds(row, dtype, size):
    """Seconds of one step's ``allgather`` of gradients between ``size`` processes."""
    import numba
    import numba_mpi

    groups, group_bytes = groups_and_bytes(row, dtype)
    share = -(-groups // size)

    @numba.njit
    def gather(send, received, count, times):
        for _ in range(times):
            numba_mpi.allgather(send, received, count)

    send = np.zeros(share * group_bytes, np.uint8)
    received = np.zeros(size * share * group_bytes, np.uint8)
    gather(send, received, send.shape[0], 3)
    times = 200
    start = time.perf_counter()
    gather(send, received, send.shape[0], times)
    return (time.perf_counter() - start) / times


def _run(command, env):
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def model(row, dtype, step_seconds_one, network):
    """Largest process count at ``EFFICIENCY`` of ideal on ``network``: each process
    computes ``ceil(G / p)`` of a step's ``G`` chunk groups, then an allgather ring
    moves ``(p - 1) / p`` of all groups' gradients to each process. More than ``G``
    processes would only wait."""
    bandwidth, latency = NETWORKS[network]
    groups, group_bytes = groups_and_bytes(row, dtype)
    best = 1
    for p in range(2, groups + 1):
        share = -(-groups // p)
        compute = step_seconds_one * share / groups
        exchange = (p - 1) * latency + (p - 1) * share * group_bytes * 8 / bandwidth
        if (step_seconds_one / p) / (compute + exchange) >= EFFICIENCY:
            best = p
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="big-batch,mnist-like,narrow")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--n-rows", type=int, default=None, help="rows of data (default: grid)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=("one", "mpi"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = args.rows.split(",")
    if args.worker:
        return _worker(names, np.dtype(args.dtype), args.n_rows, args.worker == "mpi")
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which(
        "mpiexec"
    )
    if mpiexec is None:
        raise SystemExit('no mpiexec: pip install "fastbp[mpi]"')
    worker = [sys.executable, "-m", "fastbp.bench_mpi", "--rows", args.rows, "--dtype", args.dtype]
    if args.n_rows:
        worker += ["--n-rows", str(args.n_rows)]
    one = dict(os.environ, NUMBA_NUM_THREADS="2")
    two = dict(os.environ, NUMBA_NUM_THREADS="1")
    best = {"one": {}, "mpi": {}}
    for _ in range(args.repeats):
        for side, command, env in (
            ("one", worker + ["--worker", "one"], one),
            ("mpi", [mpiexec, "-n", "2", *worker, "--worker", "mpi"], two),
        ):
            for name, entry in _run(command, env).items():
                kept = best[side].get(name)
                if kept is None or entry["seconds"] < kept["seconds"]:
                    best[side][name] = entry
    print(f"fastbp.bench_mpi on {cpu_model()}, {os.cpu_count()} cores, {args.dtype}")
    print(
        f"{'row':<11} {'1 proc x 2 thr':>14} {'2 procs x 1':>12} {'of 1 proc':>9} "
        f"{'steps':>6} {'groups':>6} {'KB/step':>8} {'comm/step':>10} {'step':>9} "
        + " ".join(f"{'p@80% ' + n:>16}" for n in NETWORKS)
    )
    for name in names:
        row = get_row(name).scaled(n_rows=args.n_rows)
        one_entry, mpi_entry = best["one"][name], best["mpi"][name]
        steps = mpi_entry["steps"]
        groups, group_bytes = groups_and_bytes(row, args.dtype)
        step_two = mpi_entry["seconds"] / steps
        # One process's compute of a step on one core: two processes each did half.
        step_one = 2 * max(step_two - mpi_entry["exchange_s"], 1e-12)
        kb = groups * group_bytes / 1024
        reach = [model(row, args.dtype, step_one, network) for network in NETWORKS]
        print(
            f"{name:<11} {one_entry['seconds']:>13.3f}s {mpi_entry['seconds']:>11.3f}s "
            f"{one_entry['seconds'] / mpi_entry['seconds']:>9.0%} {steps:>6} {groups:>6} "
            f"{kb:>8.0f} {mpi_entry['exchange_s'] * 1e6:>8.1f}us {step_two * 1e6:>7.0f}us "
            + " ".join(f"{str(r) + (' (all groups)' if r >= groups else ''):>16}" for r in reach)
        )
    print(
        "of 1 proc: the one-process time over the two-process time (target >= 85%). "
        "KB/step: all chunk groups' gradients, which every process gathers. comm/step: "
        "one allgather of them between the two local processes. p@80%: the most processes "
        f"that keep {EFFICIENCY:.0%} of ideal speed in the model (docs/scaling.md); no "
        "more than the chunk groups of a batch can share it."
    )


if __name__ == "__main__":
    main()
