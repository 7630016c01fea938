"""Training from several Python threads: the compiled calls release the GIL (so a reader
thread can fetch data meanwhile), and runs that overlap keep their own buffers and BLAS
limit, so each gives the bits it gives alone."""

import threading

import numpy as np
import pytest

import fastbp
from fastbp._engine.cpu import blas_threads, entry


def _run(sizes, activations, loss, dtype, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(900, sizes[0])).astype(dtype)
    Y = rng.integers(0, sizes[-1], 900) if loss == "cce" else rng.normal(size=(900, sizes[-1]))
    net = fastbp.MLP(sizes, activations, loss, dtype=dtype, seed=seed)
    history = net.fit(X, Y, epochs=3, lr=0.01, batch_size=64, shuffle=True, optimizer="adam")
    return [history, *net.weights, *net.biases]


CASES = [
    ([300, 256, 10], ["relu", "softmax"], "cce", np.float32, 0),  # a layer through BLAS
    ([64, 100, 10], ["relu", "softmax"], "cce", np.float64, 1),
    ([20, 64, 64, 1], ["tanh", "tanh", "identity"], "mse", np.float32, 2),
    ([8, 16, 4], ["tanh", "softmax"], "cce", np.float64, 3),
]


def test_runs_in_threads_at_once_give_the_bits_they_give_alone():
    alone = [_run(*case) for case in CASES]
    results = [None] * (2 * len(CASES))
    start = threading.Barrier(len(results))

    def work(i):
        start.wait()
        results[i] = _run(*CASES[i % len(CASES)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, result in enumerate(results):
        for got, expected in zip(result, alone[i % len(CASES)], strict=True):
            np.testing.assert_array_equal(got, expected)


def test_the_compiled_entry_point_releases_the_gil():
    assert entry.compiled_run.targetoptions.get("nogil") is True


def test_the_blas_limit_holds_until_the_last_overlapping_run_ends():
    controller = pytest.importorskip("threadpoolctl").ThreadpoolController()
    before = [lib["num_threads"] for lib in controller.select(user_api="blas").info()]
    first, second = blas_threads.one_blas_thread(), blas_threads.one_blas_thread()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first run ends while the second still runs
    during = [lib["num_threads"] for lib in controller.select(user_api="blas").info()]
    second.__exit__(None, None, None)
    after = [lib["num_threads"] for lib in controller.select(user_api="blas").info()]
    assert set(during) == {1}
    assert after == before
