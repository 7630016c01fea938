"""Data on disk: ``.npy`` files opened with ``mmap_mode="r"`` are used in place, never
copied whole, and give the bits of the same data in memory."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastbp
from fastbp import _validation


@pytest.fixture
def on_disk(tmp_path):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(3000, 12)), rng.normal(size=(3000, 2))

    def saved(dtype):
        np.save(tmp_path / f"X{dtype.__name__}.npy", X.astype(dtype))
        np.save(tmp_path / f"Y{dtype.__name__}.npy", Y.astype(dtype))
        return tuple(
            np.load(tmp_path / f"{name}{dtype.__name__}.npy", mmap_mode="r") for name in "XY"
        )

    return saved


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shuffle", [False, True])
def test_memory_mapped_data_trains_to_the_bits_of_data_in_memory(on_disk, dtype, shuffle):
    X_file, Y_file = on_disk(dtype)
    assert isinstance(X_file, np.memmap) and not X_file.flags.writeable
    X, Y = np.array(X_file), np.array(Y_file)
    settings = dict(epochs=3, lr=0.01, batch_size=64, shuffle=shuffle, optimizer="adam")
    from_disk, in_memory = (
        fastbp.MLP([12, 32, 2], "tanh", "mse", dtype=dtype, seed=1) for _ in "ab"
    )
    np.testing.assert_array_equal(
        from_disk.fit(X_file, Y_file, **settings), in_memory.fit(X, Y, **settings)
    )
    for a, b in zip(from_disk.weights, in_memory.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(from_disk.forward(X_file), in_memory.forward(X))
    np.testing.assert_array_equal(
        from_disk.gradients(X_file, Y_file)[1][0], in_memory.gradients(X, Y)[1][0]
    )


def test_a_memory_map_that_would_be_copied_whole_is_refused_naming_it(on_disk):
    X_file, Y_file = on_disk(np.float64)
    net = fastbp.MLP([12, 32, 2], "tanh", "mse", dtype=np.float32, seed=1)
    before = [w.copy() for w in net.weights]
    with pytest.raises(ValueError, match="X is a memory-mapped float64 array.*float32"):
        net.fit(X_file, Y_file, epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="X is a memory-mapped float64 array"):
        net.forward(X_file)
    assert all(np.array_equal(a, b) for a, b in zip(net.weights, before, strict=True))
    X32, _ = on_disk(np.float32)
    net64 = fastbp.MLP([12, 32, 2], "tanh", "mse", seed=1)
    with pytest.raises(ValueError, match="Y is a memory-mapped float32"):
        net64.fit(np.array(X32, np.float64), on_disk(np.float32)[1], epochs=1, lr=0.1)


def test_the_finite_check_reads_pieces_and_still_finds_every_nan(tmp_path, monkeypatch):
    monkeypatch.setattr(_validation, "_FINITE_PIECE", 7)
    big = np.full((50, 3), 1e308)  # finite, but the sum overflows: the exact check runs
    assert _validation.all_finite(big)
    for position in (0, 6, 7, 149):
        bad = big.copy()
        bad.reshape(-1)[position] = np.nan
        assert not _validation.all_finite(bad)
    path = tmp_path / "X.npy"
    X = np.random.default_rng(0).normal(size=(100, 12))
    X[-1, -1] = np.inf
    np.save(path, X)
    net = fastbp.MLP([12, 4, 1], "tanh", "mse", seed=1)
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        net.forward(np.load(path, mmap_mode="r"))


MEMORY = textwrap.dedent(
    """
    import sys
    import tracemalloc

    import numpy as np
    import fastbp

    def anonymous_mb():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon"):
                    return int(line.split()[1]) / 1024

    X = np.load(sys.argv[1], mmap_mode="r")
    y = np.load(sys.argv[2], mmap_mode="r")
    net = fastbp.MLP([X.shape[1], 16, 1], "relu", "mse", dtype=np.float32, seed=0)
    est = fastbp.MLPRegressor(hidden_layer_sizes=(16,), max_iter=1, random_state=0)
    net.fit(X[:500], y[:500], epochs=1, lr=0.01, batch_size=100)  # compiled, warm
    net.forward(X[:500])
    est.fit(X[:500], y[:500])
    before = anonymous_mb()
    tracemalloc.start()  # NumPy reports its allocations: the peak, not only what stays
    net.fit(X, y, epochs=1, lr=0.01, batch_size=256, shuffle=True)
    fitted = anonymous_mb()
    net.forward(X)
    est.fit(X, y)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    print(fitted - before, anonymous_mb() - before, peak, est.coefs_[0].dtype)
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's RssAnon")
def test_a_memory_mapped_file_is_never_copied_into_anonymous_memory(tmp_path):
    rows, columns = 400_000, 100  # 160 MB of float32
    X = np.lib.format.open_memmap(tmp_path / "X.npy", "w+", np.float32, (rows, columns))
    y = np.lib.format.open_memmap(tmp_path / "y.npy", "w+", np.float32, (rows,))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 50_000):
        X[start : start + 50_000] = rng.normal(size=(50_000, columns))
        y[start : start + 50_000] = rng.normal(size=50_000)
    X.flush(), y.flush()
    del X, y
    script = tmp_path / "memory.py"
    script.write_text(MEMORY)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "X.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    fit_mb, all_mb, peak_mb, dtype = done.stdout.split()
    print(done.stdout)
    # The visiting order is 8 bytes a row (3 MB); the predictions 4 (1.6 MB); the data 400.
    assert float(fit_mb) < 16, done.stdout
    assert float(all_mb) < 32, done.stdout
    assert float(peak_mb) < 32, done.stdout
    assert dtype == "float32"
