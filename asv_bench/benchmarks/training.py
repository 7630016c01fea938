"""Training, inference and start-up benchmarks of fastbp over the grid of ``fastbp._grid``.

Every grid row runs in float32 and float64 on 1 and 2 numba threads. ``setup`` builds the
data and the networks and fits once, so numba compiles (or loads its cache) before any
timed body runs. The expensive rows are cut to their first ``ASV_ROWS[name]`` rows so one
timed fit stays under about 2 s on a small machine; ``python -m fastbp.bench`` times the
full grid. ``peakmem_fit`` reports the whole process's peak resident memory, including
the interpreter, numba and the data built in ``setup``.
"""

import time

import numba
import numpy as np

from fastbp import MLP, reference
from fastbp._grid import GRID, get_row, make_data
from fastbp.fast_numpy import fit_numpy

#: Rows kept by the asv suite for the grid rows too large to time within about 2 s.
ASV_ROWS = {"mnist-like": 16_384, "wide": 1_024, "big-batch": 125_000}

ROW_NAMES = [row.name for row in GRID]
DTYPES = ["float32", "float64"]
THREADS = [1, 2]


def asv_row(name):
    """The grid row ``name`` as the asv suite runs it (rows capped by ``ASV_ROWS``)."""
    row = get_row(name)
    return row.scaled(n_rows=min(row.n_rows, ASV_ROWS.get(name, row.n_rows)))


def use_threads(threads):
    """Run numba on ``threads`` threads; NotImplementedError (asv: skip) if it has fewer."""
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise NotImplementedError(
            f"{threads} threads requested, numba has {numba.config.NUMBA_NUM_THREADS}"
        )
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


class TrainingBenchmark:
    """Plain-SGD training of one grid row, as ``python -m fastbp.bench`` runs it."""

    params = (ROW_NAMES, DTYPES, THREADS)
    param_names = ["row", "dtype", "threads"]
    number = 1
    repeat = (3, 10, 10.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 300.0

    def setup(self, name, dtype, threads):
        use_threads(threads)
        self.row = row = asv_row(name)
        self.X, self.Y = make_data(row, dtype)
        self.net = self._net(MLP, dtype)
        self._fit(self.net)  # compiles or loads the kernels of this dtype
        # Forward and gradient passes over all the rows may spread over threads where the
        # fit's batches did not: the engine compiles its parallel region on first use.
        self.net.forward(self.X)
        self.net.gradients(self.X, self.Y)

    def teardown(self, name, dtype, threads):
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    def _net(self, cls, dtype):
        row = self.row
        return cls(list(row.sizes), list(row.activations), row.loss, seed=0, dtype=dtype)

    def _fit(self, net):
        row = self.row
        return net.fit(self.X, self.Y, epochs=row.epochs, lr=row.lr, batch_size=row.batch_size)

    def time_fit(self, name, dtype, threads):
        self._fit(self.net)

    def time_forward(self, name, dtype, threads):
        self.net.forward(self.X)

    def time_gradients(self, name, dtype, threads):
        self.net.gradients(self.X, self.Y)

    def peakmem_fit(self, name, dtype, threads):
        self._fit(self.net)

    def _seconds(self, fit):
        start = time.perf_counter()
        fit()
        return time.perf_counter() - start

    def _fit_seconds(self, cls, dtype):
        net = self._net(cls, dtype)
        return self._seconds(lambda: self._fit(net))

    def track_ratio_to_numpy(self, name, dtype, threads):
        """fastbp fit time / fastbp.reference fit time, both measured here (lower is
        better; 0.01 is 100x faster than NumPy)."""
        fast = np.median([self._fit_seconds(MLP, dtype) for _ in range(3)])
        slow = np.median([self._fit_seconds(reference.MLP, dtype) for _ in range(2)])
        return float(fast / slow)

    track_ratio_to_numpy.unit = "ratio"
    track_ratio_to_numpy.timeout = 600.0

    def track_ratio_to_fast_numpy(self, name, dtype, threads):
        """fastbp fit time / fastbp.fast_numpy fit time (the fastest plain-NumPy loop, BLAS
        on its default threads), both measured here: above 1, fastbp is the slower."""
        row = self.row
        weights, biases = self._net(reference.MLP, dtype).get_params()

        def fit_loop():
            fit_numpy(
                self.X,
                self.Y,
                weights,
                biases,
                row.activations,
                row.loss,
                epochs=row.epochs,
                lr=row.lr,
                batch_size=row.batch_size,
            )

        fast = np.median([self._fit_seconds(MLP, dtype) for _ in range(3)])
        loop = np.median([self._seconds(fit_loop) for _ in range(3)])
        return float(fast / loop)

    track_ratio_to_fast_numpy.unit = "ratio"
    track_ratio_to_fast_numpy.timeout = 600.0


_START_FIT = """
import numpy as np
from fastbp import MLP
X = np.random.default_rng(0).standard_normal((64, 8))
MLP([8, 16, 4], ["tanh", "softmax"], "cce", seed=0).fit(X, np.arange(64) % 4, epochs=1, lr=0.1)
"""


def timeraw_cold_start():
    """Fresh interpreter, empty numba cache: import fastbp and fit a small float64 network
    (the kernels compile)."""
    setup = """
import atexit, os, shutil, tempfile
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastbp-asv-")
atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], True)
"""
    return _START_FIT, setup


timeraw_cold_start.number = 1
timeraw_cold_start.repeat = 1
timeraw_cold_start.rounds = 1
timeraw_cold_start.timeout = 600.0


def timeraw_warm_start():
    """Fresh interpreter, filled numba cache: import fastbp and fit a small float64 network
    (the kernels load from the cache)."""
    return _START_FIT


def _fill_cache():
    exec(_START_FIT, {})


timeraw_warm_start.setup = _fill_cache
timeraw_warm_start.number = 1
timeraw_warm_start.repeat = (3, 10, 20.0)
timeraw_warm_start.rounds = 1
timeraw_warm_start.timeout = 300.0
