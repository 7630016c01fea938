"""``python -m fastbp.bench_data``: training from ``.npy`` files memory-mapped in place.

For each row and dtype, side by side in one run (best of ``--repeats``, the two sides
alternating): one epoch from the data in memory; one from the same data written to a
``.npy`` file and opened with ``np.load(path, mmap_mode="r")``, the file in the page cache;
and, after the file is evicted from the page cache (``posix_fadvise``), one epoch in row
order read from the disk, against the disk's sequential read rate measured on the same
file just before. Also the growth of the process's anonymous memory (``RssAnon``) over
the file runs: the data stays in the page cache, never in the process's own memory.
"""

import argparse
import os
import tempfile
import time

import numpy as np

from . import MLP
from ._grid import get_row, make_data
from .bench import cpu_model

#: Bytes read at a time when timing the disk.
_BLOCK = 1 << 24


def anonymous_mb():
    """The process's anonymous resident memory (Linux ``RssAnon``) in MB, or NaN."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def evict(path):
    """Drop ``path``'s pages from the page cache, so the next read comes from the disk."""
    with open(path, "rb+") as file:
        os.fsync(file.fileno())  # written pages must be clean before they can be dropped
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def disk_read_rate(path):
    """Bytes a second of one sequential read of ``path`` from the disk (evicted first)."""
    evict(path)
    buffer = bytearray(_BLOCK)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as file:
        while file.readinto(buffer):
            pass
    seconds = time.perf_counter() - start
    evict(path)
    return os.path.getsize(path) / seconds


def _epoch(net, X, Y, row, shuffle=False):
    start = time.perf_counter()
    net.fit(X, Y, epochs=1, lr=row.lr, batch_size=row.batch_size, shuffle=shuffle)
    return time.perf_counter() - start


def measure(row_name, dtype, repeats, folder, n_rows=None):
    """The figures of one row and dtype (a dict)."""
    row = get_row(row_name)
    X, Y = make_data(row, dtype, n_rows)
    paths = [os.path.join(folder, f"{row.name}-{np.dtype(dtype).name}-{c}.npy") for c in "XY"]
    np.save(paths[0], X)
    np.save(paths[1], Y)
    X_file, Y_file = (np.load(p, mmap_mode="r") for p in paths)
    net = MLP(list(row.sizes), list(row.activations), row.loss, dtype=dtype, seed=0)
    _epoch(net, X[:1000], Y[:1000], row)  # compiled before timing
    _epoch(net, X_file[:1000], Y_file[:1000], row)
    memory, mapped = [], []
    anonymous = anonymous_mb()
    for _ in range(repeats):
        memory.append(_epoch(net, X, Y, row))
        mapped.append(_epoch(net, X_file, Y_file, row))
    growth = anonymous_mb() - anonymous
    rate = disk_read_rate(paths[0])
    evict(paths[1])
    cold = _epoch(net, X_file, Y_file, row)  # row order: sequential reads
    del X_file, Y_file
    for path in paths:
        os.remove(path)
    return {
        "row": row.name,
        "dtype": np.dtype(dtype).name,
        "rows": X.shape[0],
        "MB": X.nbytes / 1e6,
        "memory_s": min(memory),
        "mapped_s": min(mapped),
        "cold_s": cold,
        "disk_MBps": rate / 1e6,
        "anon_growth_MB": growth,
    }


def larger_than_memory(gigabytes, folder, features=256, hidden=16):
    """One epoch in row order from a float32 ``.npy`` file of ``gigabytes`` GB (written
    here, block by block), a ``features``-``hidden``-1 network, batches of 256: against
    the disk's sequential read rate of the same file and the in-memory compute rate of
    its first GB, with the peak growth of anonymous memory during the epoch."""
    import threading

    rows = int(gigabytes * 1e9) // (4 * (features + 1))
    paths = [os.path.join(folder, f"big-{c}.npy") for c in "XY"]
    X = np.lib.format.open_memmap(paths[0], "w+", np.float32, (rows, features))
    Y = np.lib.format.open_memmap(paths[1], "w+", np.float32, (rows, 1))
    rng = np.random.default_rng(0)
    part = rng.standard_normal((1 << 16, features)).astype(np.float32)
    for lo in range(0, rows, part.shape[0]):  # one random block repeated: fast to write
        hi = min(rows, lo + part.shape[0])
        X[lo:hi] = part[: hi - lo]
        Y[lo:hi, 0] = part[: hi - lo, 0] * part[: hi - lo, 1]
    X.flush(), Y.flush()
    del X, Y
    X, Y = (np.load(p, mmap_mode="r") for p in paths)
    size = X.nbytes + Y.nbytes
    net = MLP([features, hidden, 1], ["tanh", "identity"], "mse", dtype=np.float32, seed=0)
    settings = dict(epochs=1, lr=1e-3, batch_size=256)
    in_memory = int(1e9) // (4 * (features + 1))
    X_mem, Y_mem = np.array(X[:in_memory]), np.array(Y[:in_memory])
    net.fit(X_mem[:4096], Y_mem[:4096], **settings)  # compiled before timing
    start = time.perf_counter()
    net.fit(X_mem, Y_mem, **settings)
    compute_rate = (X_mem.nbytes + Y_mem.nbytes) / (time.perf_counter() - start)
    del X_mem, Y_mem
    rate = disk_read_rate(paths[0])
    evict(paths[1])
    before, peak, done = anonymous_mb(), [0.0], threading.Event()

    def sample():  # the engine releases the GIL: this thread sees the peak
        while not done.is_set():
            peak[0] = max(peak[0], anonymous_mb())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    net.fit(X, Y, **settings)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    del X, Y
    for path in paths:
        os.remove(path)
    return {
        "GB": size / 1e9,
        "epoch_s": seconds,
        "file_MBps": size / seconds / 1e6,
        "disk_MBps": rate / 1e6,
        "compute_MBps": compute_rate / 1e6,
        "anon_peak_growth_MB": peak[0] - before,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="narrow,mnist-like", help="grid rows, comma separated")
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-rows", type=int, default=None, help="rows of data (default: grid)")
    parser.add_argument("--folder", default=None, help="where the files go (default: temp)")
    parser.add_argument(
        "--larger-than-memory",
        type=float,
        default=None,
        metavar="GB",
        help="instead: one epoch from a float32 file of this many GB (write it first)",
    )
    args = parser.parse_args(argv)
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    print(f"fastbp.bench_data on {cpu_model()}, {os.cpu_count()} cores")
    if args.larger_than_memory:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        with tempfile.TemporaryDirectory(dir=args.folder) as folder:
            r = larger_than_memory(args.larger_than_memory, folder)
        bound = min(r["disk_MBps"], r["compute_MBps"])
        print(
            f"file {r['GB']:.1f} GB (memory {total:.1f} GB): epoch {r['epoch_s']:.1f} s, "
            f"{r['file_MBps']:.0f} MB/s; disk {r['disk_MBps']:.0f} MB/s, in-memory compute "
            f"{r['compute_MBps']:.0f} MB/s: {r['file_MBps'] / bound:.0%} of the slower; "
            f"anonymous memory peak growth {r['anon_peak_growth_MB']:.1f} MB"
        )
        return
    print(
        f"{'row':<11} {'dtype':<8} {'MB':>7} {'memory':>9} {'mapped':>9} {'ratio':>6} "
        f"{'cold':>8} {'disk MB/s':>10} {'file MB/s':>10} {'of disk':>8} {'RssAnon+':>9}"
    )
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        for name in args.rows.split(","):
            for dtype in dtypes:
                r = measure(name, dtype, args.repeats, folder, args.n_rows)
                cold_rate = r["MB"] / r["cold_s"]
                # An epoch cannot beat the slower of reading the file and computing.
                bound = min(r["disk_MBps"], r["MB"] / r["memory_s"])
                print(
                    f"{r['row']:<11} {r['dtype']:<8} {r['MB']:>7.0f} "
                    f"{r['memory_s'] * 1e3:>7.1f}ms {r['mapped_s'] * 1e3:>7.1f}ms "
                    f"{r['memory_s'] / r['mapped_s']:>6.2f} {r['cold_s'] * 1e3:>6.0f}ms "
                    f"{r['disk_MBps']:>10.0f} {cold_rate:>10.0f} {cold_rate / bound:>7.0%} "
                    f"{r['anon_growth_MB']:>7.1f}MB"
                )
    print(
        "memory, mapped: best epoch of the data in memory and of the .npy file memory-mapped "
        "in the page cache; ratio = memory / mapped (1.00: as fast). cold: one epoch in row "
        "order with the file evicted from the page cache; of disk: its rate against the "
        "slower of the disk's sequential read rate and the in-memory compute rate. "
        "RssAnon+: growth of the process's anonymous memory over the runs from the file."
    )


if __name__ == "__main__":
    main()
