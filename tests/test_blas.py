"""The BLAS path for wide layers: the same numbers as the register-blocked loops and as
``fastbp.reference``, true gradients, the same bits whatever the thread count, and the
caller's BLAS thread setting left as it was.

Layers of at least ``fastbp._engine.config.BLAS_MIN_ENTRIES`` weights multiply through BLAS. A
network reads that threshold when it is created, so these tests lower it to put small,
fast networks on the BLAS path, wholly or for their widest layer only.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl
from test_gradients import _check_network
from test_vs_reference import (
    ARCHITECTURES,
    TRAINED,
    _assert_close,
    _data,
    _flat,
    _pair,
    _tolerance,
)

import fastbp
from fastbp._engine import config as _config
from fastbp._engine.cpu import backend as cpu_backend
from fastbp._engine.cpu.plan import work_plan

ROOT = Path(__file__).resolve().parents[1]


def _widest(sizes):
    return max(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def _uses_blas(net):
    """Whether the CPU backend multiplies some layer of ``net`` through BLAS."""
    return work_plan(net._layout, net.dtype, 1).uses_blas


@pytest.fixture(params=["all", "widest"])
def blas_layers(request, monkeypatch):
    """Put every layer, or the widest one alone, on the BLAS path; yields a function of
    the layer sizes that sets the threshold for them."""

    def threshold(sizes):
        value = 1 if request.param == "all" else _widest(sizes)
        monkeypatch.setattr(_config, "BLAS_MIN_ENTRIES", value)
        return value

    return threshold


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name", TRAINED)
def test_blas_training_matches_reference(rng, blas_layers, name, optimizer, dtype):
    blas_layers(ARCHITECTURES[name][0])
    fast, slow = _pair(name, dtype)
    assert _uses_blas(fast)
    X, Y, sample_weight = _data(rng, name, n=150)
    kwargs = dict(
        lr=0.01,
        batch_size=40,
        shuffle=True,
        optimizer=optimizer,
        l2=1e-3,
        sample_weight=sample_weight,
    )
    np.testing.assert_allclose(
        fast.fit(X, Y, epochs=15, **kwargs),
        slow.fit(X, Y, epochs=15, **kwargs),
        rtol=_tolerance(dtype),
    )
    _assert_close(_flat(fast), _flat(slow), dtype, "parameters")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_blas_forward_and_gradients_match_the_loops(rng, blas_layers, monkeypatch, name, dtype):
    """600 rows through both paths of the same weights: on the BLAS path, 10 chunks of 64
    in 2 groups, so that weight gradients accumulate across a group's chunks."""
    net, _ = _pair(name, dtype, seed=3)
    X, Y, sample_weight = _data(rng, name, n=600)
    settings = [{}, {"sample_weight": sample_weight, "l2": 0.01}]
    assert not _uses_blas(net)
    loops = [net.forward(X)] + [net.gradients(X, Y, **kwargs) for kwargs in settings]
    blas_layers(ARCHITECTURES[name][0])
    monkeypatch.setattr(_config, "BLAS_CHUNK_ROWS", 64)
    monkeypatch.setattr(_config, "MAX_GROUPS", 2)
    assert _uses_blas(net)
    _assert_close(net.forward(X), loops[0], dtype, "forward")
    for kwargs, (r_value, r_dWs, r_dbs) in zip(settings, loops[1:], strict=True):
        value, dWs, dbs = net.gradients(X, Y, **kwargs)
        _assert_close(value, r_value, dtype, "loss")
        for a, b in zip(dWs + (dbs or []), r_dWs + (r_dbs or []), strict=True):
            _assert_close(a, b, dtype, f"gradients {kwargs}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_blas_reads_consecutive_rows_in_place_with_the_bits_of_gathered_ones(
    rng, blas_layers, dtype
):
    """A BLAS first layer multiplies chunks of consecutive rows straight from X, and
    gathers shuffled ones: the two give the same bits (only the last batch shuffled, so
    one fit takes both paths)."""
    name = "relu-leaky-sigmoid-bce-sum"
    blas_layers(ARCHITECTURES[name][0])
    X, Y, sample_weight = _data(rng, name, n=150)
    order = np.concatenate([np.arange(120), 120 + rng.permutation(30)])
    a, _ = _pair(name, dtype)
    b, _ = _pair(name, dtype)
    assert _uses_blas(a)
    kwargs = dict(epochs=3, lr=0.01, batch_size=40, optimizer="adam")
    h_a = a.fit(X, Y, order=order, sample_weight=sample_weight, **kwargs)
    h_b = b.fit(X[order], Y[order], sample_weight=sample_weight[order], **kwargs)
    np.testing.assert_array_equal(h_a, h_b)
    np.testing.assert_array_equal(_flat(a), _flat(b))


@pytest.mark.parametrize("output,loss", [("softmax", "cce"), ("sigmoid", "bce"), ("tanh", "mse")])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_blas_gradients_match_finite_differences(rng, blas_layers, output, loss, bias):
    sizes, activations = (3, 4, 5, 3), ("tanh", "sigmoid", output)
    blas_layers(sizes)
    _check_network(rng, sizes, activations, loss, bias, "mean", l2=0.01)


def test_fit_leaves_the_blas_thread_setting_alone(rng, monkeypatch):
    monkeypatch.setattr(_config, "BLAS_MIN_ENTRIES", 1)
    net = fastbp.MLP([4, 6, 2], ["relu", "identity"], "mse", seed=0)
    before = [
        (lib["filepath"], lib["num_threads"])
        for lib in threadpoolctl.threadpool_info()
        if lib["user_api"] == "blas"
    ]
    net.fit(rng.normal(size=(50, 4)), rng.normal(size=(50, 2)), epochs=2, lr=0.1)
    after = [
        (lib["filepath"], lib["num_threads"])
        for lib in threadpoolctl.threadpool_info()
        if lib["user_api"] == "blas"
    ]
    assert after == before


def test_blas_runs_on_one_thread_while_the_kernels_run(rng, monkeypatch):
    """Every BLAS library is at one thread inside each run of a network with BLAS
    layers (the libraries are looked up once, then reused)."""
    monkeypatch.setattr(_config, "BLAS_MIN_ENTRIES", 1)
    net = fastbp.MLP([4, 6, 2], ["relu", "identity"], "mse", seed=0)
    seen = []
    run = cpu_backend._run_planned

    def spy(*args):
        seen.append(
            {
                lib["filepath"]: lib["num_threads"]
                for lib in threadpoolctl.threadpool_info()
                if lib["user_api"] == "blas"
            }
        )
        return run(*args)

    monkeypatch.setattr(cpu_backend, "_run_planned", spy)
    X, Y = rng.normal(size=(50, 4)), rng.normal(size=(50, 2))
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        for _ in range(2):
            net.fit(X, Y, epochs=1, lr=0.1)
        net.forward(X)
    assert len(seen) == 3
    assert all(threads and set(threads.values()) == {1} for threads in seen)


CHILD = r"""
import hashlib, json
import numpy as np
import numba
import fastbp
from fastbp._engine.cpu.plan import work_plan

rng = np.random.default_rng(7)
X = rng.normal(size=(700, 96))
labels = rng.integers(0, 10, 700)
result = {"threads": numba.get_num_threads()}
for dtype in ("float64", "float32"):
    net = fastbp.MLP([96, 160, 130, 10], ["relu", "tanh", "softmax"], "cce", seed=5,
                     dtype=dtype)
    assert work_plan(net._layout, net.dtype, 300).uses_blas
    history = net.fit(X, labels, epochs=3, lr=0.01, batch_size=300, shuffle=True,
                      optimizer="adam")
    digest = hashlib.sha256(net._params.tobytes() + history.tobytes()
                            + net.forward(X).tobytes()).hexdigest()
    result[dtype] = digest
print(json.dumps(result))
"""


@pytest.mark.slow
def test_blas_path_gives_the_same_bits_with_one_and_two_threads():
    runs = []
    for threads in ("1", "2"):
        env = dict(
            os.environ,
            NUMBA_NUM_THREADS=threads,
            OPENBLAS_NUM_THREADS=threads,
            FASTBP_BLAS_MIN_ENTRIES="10000",
            PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        done = subprocess.run(
            [sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert [run["threads"] for run in runs] == [1, 2]
    assert runs[0]["float64"] == runs[1]["float64"]
    assert runs[0]["float32"] == runs[1]["float32"]
