"""Bitwise reproducibility: the same seed gives the same bits, whatever the thread count.

Thread counts are fixed when numba is imported, so each one runs in a fresh Python
process. Those processes set ``FASTBP_PARALLEL_MIN_MACS=1`` and ``FASTBP_CHUNK_ROWS=8`` so
that every batch of 200 rows is split into 25 chunks, in 25 chunk groups (or 3, with
``FASTBP_MAX_GROUPS=3``) spread over the threads, and
``FASTBP_PARALLEL_UPDATE_MIN_PARAMS=1`` so that the update is spread over threads too.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbp
from fastbp._engine import config as _config
from fastbp._engine.cpu import backend as _cpu_kernels
from fastbp._engine.cpu.plan import work_plan

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json
import numpy as np
import numba
import fastbp
from fastbp._engine import config as _config
from fastbp._engine.cpu import backend as _cpu_kernels
from fastbp._engine.cpu.plan import work_plan

def digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()

result = {"threads": numba.get_num_threads(), "chunk_rows": _config.CHUNK_ROWS}
rng = np.random.default_rng(2024)
X = rng.normal(size=(450, 12))
labels = rng.integers(0, 4, 450)
for dtype in ("float64", "float32"):
    net = fastbp.MLP([12, 32, 16, 4], ["tanh", "relu", "softmax"], "cce", seed=123,
                     dtype=dtype)
    history = net.fit(X, labels, epochs=4, lr=0.01, batch_size=200, shuffle=True,
                      optimizer="adam", l2=1e-3)
    loss, dWs, dbs = net.gradients(X, labels)
    # The engine's rule for spreading a batch of 200 rows over threads.
    groups = min(-(-200 // _config.CHUNK_ROWS), work_plan(net._layout, net.dtype, 200).max_groups)
    result["groups"] = groups
    # (every call here, the gradient and the forward pass of 450 rows included, has work
    # enough in all for threads: CALL_PARALLEL_MIN_MACS)
    result["threaded"] = (groups > 1 and 200 * 3 * net.n_params >= _config.PARALLEL_MIN_MACS
                          and 450 * 3 * net.n_params >= _cpu_kernels.CALL_PARALLEL_MIN_MACS)
    result[dtype] = {
        "params": digest(net.weights + net.biases),
        "history": digest([history]),
        "forward": digest([net.forward(X)]),
        "gradients": digest(dWs + dbs),
        "loss": loss.hex(),
    }
print(json.dumps(result))
"""


def _run_child(threads, parallel_min_macs, max_groups, cache_dir=None):
    env = dict(os.environ)
    env.update(
        NUMBA_NUM_THREADS=str(threads),
        FASTBP_CHUNK_ROWS="8",
        FASTBP_PARALLEL_MIN_MACS=str(parallel_min_macs),
        # The update goes parallel with the groups, or stays serial with them.
        FASTBP_PARALLEL_UPDATE_MIN_PARAMS=str(parallel_min_macs),
        FASTBP_MAX_GROUPS=str(max_groups),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "max_groups,groups",
    [(32, 25), (3, 3)],
    ids=["25-groups-of-1-chunk", "3-groups-of-8-or-9-chunks"],
)
def test_same_bits_with_one_and_two_threads(max_groups, groups):
    one = _run_child(threads=1, parallel_min_macs=1, max_groups=max_groups)
    two = _run_child(threads=2, parallel_min_macs=1, max_groups=max_groups)
    assert one["threads"] == 1 and two["threads"] == 2
    for dtype in ("float64", "float32"):
        assert one[dtype] == two[dtype], dtype
    # Both took the multi-threaded path, with every 200-row batch in 25 chunks.
    assert one["chunk_rows"] == two["chunk_rows"] == 8
    assert one["groups"] == two["groups"] == groups
    assert one["threaded"] and two["threaded"]

    # The single-threaded path (batches below the parallel threshold) gives the same bits.
    if max_groups == 32:
        serial = _run_child(threads=2, parallel_min_macs=2**62, max_groups=max_groups)
        assert not serial["threaded"]
        for dtype in ("float64", "float32"):
            assert serial[dtype] == two[dtype], dtype


@pytest.mark.slow
def test_same_bits_from_a_fresh_compile_and_from_the_cache(tmp_path):
    """numba optimizes freshly compiled code and code it loads from its cache apart, so
    any arithmetic left to the optimizer's choice (reassociation, fused multiply-adds)
    can round differently in the two: Adam's step once did, in a few entries."""
    fresh = _run_child(threads=2, parallel_min_macs=1, max_groups=32, cache_dir=tmp_path)
    cached = _run_child(threads=2, parallel_min_macs=1, max_groups=32, cache_dir=tmp_path)
    for dtype in ("float64", "float32"):
        assert fresh[dtype] == cached[dtype], dtype


# ---------------------------------------------------------------- in one process


def _flat(net):
    return np.concatenate([p.ravel() for p in net.weights + (net.biases or [])])


def _bits(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _problem(rng, n=230):
    X = rng.normal(size=(n, 6))
    Y = rng.uniform(0, 1, (n, 3))
    return X, Y, rng.uniform(0.5, 2.0, n)


def _net(dtype=np.float64, seed=42):
    return fastbp.MLP(
        [6, 24, 12, 3], ["leaky_relu", "tanh", "sigmoid"], "bce", dtype=dtype, seed=seed
    )


FIT = dict(lr=0.02, batch_size=50, shuffle=True, l2=1e-3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_same_seed_same_network_and_training(rng, dtype):
    X, Y, sample_weight = _problem(rng)
    a, b = _net(dtype), _net(dtype)
    assert _bits(_flat(a)) == _bits(_flat(b))
    assert _bits(_flat(a)) != _bits(_flat(_net(dtype, seed=43)))
    h_a = a.fit(X, Y, epochs=6, optimizer="adam", sample_weight=sample_weight, **FIT)
    h_b = b.fit(X, Y, epochs=6, optimizer="adam", sample_weight=sample_weight, **FIT)
    assert _bits(h_a) == _bits(h_b)
    assert _bits(_flat(a)) == _bits(_flat(b))
    # Repeating forward, loss and gradient evaluations repeats their bits.
    assert _bits(a.forward(X)) == _bits(a.forward(X)) == _bits(b.forward(X))
    assert a.loss(X, Y) == a.loss(X, Y) == b.loss(X, Y)
    ga, gb = a.gradients(X, Y)[1], b.gradients(X, Y)[1]
    assert all(_bits(x) == _bits(y) for x, y in zip(ga, gb, strict=True))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_two_fits_equal_one_longer_fit(rng, optimizer, dtype):
    X, Y, sample_weight = _problem(rng)
    split, whole = _net(dtype), _net(dtype)
    kwargs = dict(optimizer=optimizer, sample_weight=sample_weight, **FIT)
    first = split.fit(X, Y, epochs=5, **kwargs)
    second = split.fit(X, Y, epochs=5, **kwargs)
    history = whole.fit(X, Y, epochs=10, **kwargs)
    assert _bits(np.concatenate([first, second])) == _bits(history)
    assert _bits(_flat(split)) == _bits(_flat(whole))


def test_repeated_training_from_the_same_start_repeats_the_bits(rng):
    X, Y, _ = _problem(rng)
    net = _net()
    weights, biases = net.get_params()
    runs = []
    for _ in range(3):
        net.set_params(weights, biases)  # also resets the optimizer
        history = net.fit(X, Y, epochs=3, lr=0.05, batch_size=64, optimizer="nesterov")
        runs.append((_bits(history), _bits(_flat(net))))
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize(
    "sizes, dtype, batch, chunk",
    [
        ((16, 16, 1), np.float32, 1_000_000, 256),  # long chunks: CHUNK_ROWS
        ((16, 16, 1), np.float64, 1_000_000, 256),
        ((32, 64, 64, 1), np.float32, 256, 128),  # two chunks per batch
        ((32, 64, 64, 1), np.float64, 1000, 125),  # the work buffer's limit (141 rows)
        ((20, 50, 50, 2), np.float64, 512, 128),  # an even count: 4, not 3 of 171
        ((32, 64, 64, 1), np.float64, 200, 100),
        ((32, 64, 64, 1), np.float32, 128, 64),
        ((32, 64, 64, 1), np.float64, 100, 50),  # equal chunks
        ((200, 200, 200, 1), np.float64, 1000, 63),  # never below FEWEST_CHUNK_ROWS
        ((2, 2, 1), np.float64, 2, 2),
    ],
)
def test_chunks_depend_on_network_dtype_and_batch(sizes, dtype, batch, chunk):
    """The chunk size fixes the summation order, so only these choose it."""
    net = fastbp.MLP(list(sizes), ["relu"] * (len(sizes) - 2) + ["sigmoid"], "bce", dtype=dtype)
    plan = work_plan(net._layout, net.dtype, batch)
    rows, work_size = plan.chunk, plan.work_size
    assert rows == chunk
    if rows > _config.FEWEST_CHUNK_ROWS:
        assert work_size * np.dtype(dtype).itemsize <= _config.WORK_BUFFER_BYTES


def test_chunk_rows_setting_caps_chunks(monkeypatch):
    monkeypatch.setattr(_config, "CHUNK_ROWS", 8)
    net = fastbp.MLP([16, 16, 1], ["tanh", "sigmoid"], "bce")
    assert work_plan(net._layout, net.dtype, 1000).chunk == 8


@pytest.mark.parametrize("batch_size", [8, 50, None], ids=["by-sample", "chunks", "full"])
@pytest.mark.parametrize("blas", [False, True], ids=["loops", "blas"])
def test_runs_never_read_what_an_earlier_run_left_in_the_work_buffers(
    rng, monkeypatch, batch_size, blas
):
    """The engine keeps its work and gradient buffers from run to run, unzeroed: filled
    with NaN in between, training, forward passes and gradients give the same bits."""
    if blas:
        monkeypatch.setattr(_config, "BLAS_MIN_ENTRIES", 1)
    X, Y, sample_weight = _problem(rng)

    def results():
        net = _net()
        history = net.fit(
            X,
            Y,
            epochs=3,
            lr=0.02,
            batch_size=batch_size,
            shuffle=True,
            optimizer="adam",
            sample_weight=sample_weight,
            l2=1e-3,
        )
        _, dWs, dbs = net.gradients(X, Y, sample_weight=sample_weight)
        return [_bits(a) for a in [history, _flat(net), net.forward(X), *dWs, *dbs]]

    clean = results()
    assert _cpu_kernels._scratch_buffers.kept
    for work, grads in _cpu_kernels._scratch_buffers.kept.values():
        work.fill(np.nan)
        grads.fill(np.nan)
    assert results() == clean


def test_calls_of_little_work_in_all_stay_on_one_thread(rng, monkeypatch):
    """A call spreads batches over threads only when its whole work reaches
    CALL_PARALLEL_MIN_MACS: a gradient, a forward pass or a one-epoch fit of 112 rows
    through 803 parameters stays on one thread, twenty epochs of it may not."""
    thresholds = []
    decide = _cpu_kernels._may_run_in_parallel

    def spy(*args):
        thresholds.append(args[-1])
        return decide(*args)

    monkeypatch.setattr(_cpu_kernels, "_may_run_in_parallel", spy)
    net = fastbp.MLP([4, 100, 3], ["relu", "softmax"], "cce", seed=0)
    X, labels = rng.normal(size=(112, 4)), rng.integers(0, 3, 112)
    net.gradients(X, labels)
    net.forward(X)
    net.fit(X, labels, epochs=1, lr=0.1, optimizer="adam")
    net.fit(X, labels, epochs=20, lr=0.1, optimizer="adam")
    many = _cpu_kernels.CALL_PARALLEL_MIN_MACS
    assert thresholds == [many, many, many, _config.PARALLEL_MIN_MACS]
    assert many > _config.PARALLEL_MIN_MACS


@pytest.mark.slow
@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_openmp_threads_wait_passively_unless_the_user_says(given):
    code = (
        "import os, numpy as np, fastbp\n"
        "net = fastbp.MLP([4, 8, 1], 'tanh', 'mse', seed=0)\n"
        "net.fit(np.ones((64, 4)), np.ones((64, 1)), epochs=1, lr=0.1)\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if given:
        env["OMP_WAIT_POLICY"] = given
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == (given or "PASSIVE")
