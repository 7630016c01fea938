"""A second process compiles ``group_pass`` into numba's cache while the first compiles
``compiled_run`` (``fastbp._engine.cpu.compile_ahead``): the first then loads it from the
cache and trains to the same bits; a helper that fails or hangs only costs the time, and
nothing is started where the code is cached already or the cache is not shared."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import types

from fastbp import MLP
from fastbp._engine import config
from fastbp._engine.cpu import compile_ahead

KERNEL = """
import numba

@numba.njit(cache=True)
def triple(x):
    return 3 * x
"""


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A small cached kernel in a module that a new process imports, and a fresh cache."""
    (tmp_path / "ahead_kernel.py").write_text(KERNEL)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    monkeypatch.syspath_prepend(str(tmp_path))
    import numba

    monkeypatch.setattr(numba.config, "CACHE_DIR", str(cache))
    sys.modules.pop("ahead_kernel", None)
    import ahead_kernel

    yield ahead_kernel.triple
    sys.modules.pop("ahead_kernel", None)


@pytest.fixture
def two_processes(monkeypatch):
    monkeypatch.setattr(config, "COMPILE_PROCESSES", 2)
    monkeypatch.setattr(compile_ahead, "_cores", lambda: 2)


def test_the_helper_compiles_into_the_cache_and_this_process_loads_it(kernel, two_processes):
    helper = compile_ahead.start(kernel, (types.int64,))
    assert helper is not None
    helper.wait()
    assert helper.process.returncode == 0
    # Cached, not yet loaded: nothing more to start.
    assert compile_ahead.start(kernel, (types.int64,)) is None
    assert kernel(7) == 21
    assert sum(kernel.stats.cache_hits.values()) == 1
    assert sum(kernel.stats.cache_misses.values()) == 0
    assert compile_ahead.start(kernel, (types.int64,)) is None  # loaded now


def test_a_failing_helper_leaves_the_compiling_here(kernel, two_processes, monkeypatch):
    monkeypatch.setattr(compile_ahead, "COMMAND", (sys.executable, "-c", "raise SystemExit(3)"))
    helper = compile_ahead.start(kernel, (types.int64,))
    helper.wait()
    assert helper.process.returncode == 3
    assert kernel(7) == 21
    assert sum(kernel.stats.cache_misses.values()) == 1


def test_a_hanging_helper_is_stopped(kernel, two_processes, monkeypatch):
    monkeypatch.setattr(
        compile_ahead, "COMMAND", (sys.executable, "-c", "import time; time.sleep(60)")
    )
    monkeypatch.setattr(compile_ahead, "WAIT_SECONDS", 0.5)
    helper = compile_ahead.start(kernel, (types.int64,))
    helper.wait()
    assert helper.process.returncode is not None  # killed, not left running
    assert kernel(7) == 21


@pytest.mark.parametrize("reason", ["one process", "one core", "compiled here"])
def test_nothing_is_started_where_it_cannot_help(kernel, two_processes, monkeypatch, reason):
    if reason == "one process":
        monkeypatch.setattr(config, "COMPILE_PROCESSES", 1)
    elif reason == "one core":
        monkeypatch.setattr(compile_ahead, "_cores", lambda: 1)
    else:
        kernel(7)
    assert compile_ahead.start(kernel, (types.int64,)) is None


FIRST_FIT = """
import json
import numpy as np
from fastbp import MLP
from fastbp._engine.cpu import passes

X = np.random.default_rng(0).standard_normal((64, 8))
net = MLP([8, 16, 4], ["tanh", "softmax"], "cce", seed=0)
net.fit(X, np.arange(64) % 4, epochs=2, lr=0.1, batch_size=32)
stats = passes.group_pass.stats
print(json.dumps({
    "hits": sum(stats.cache_hits.values()),
    "misses": sum(stats.cache_misses.values()),
    "params": net._params.tolist(),
}))
"""


@pytest.mark.slow
def test_a_first_fit_from_an_empty_cache_loads_group_pass_and_trains_the_same_bits(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FASTBP_COMPILE_PROCESSES="2")
    done = subprocess.run(
        [sys.executable, "-c", FIRST_FIT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if (os.cpu_count() or 1) > 1:
        assert (result["hits"], result["misses"]) == (1, 0)
    X = np.random.default_rng(0).standard_normal((64, 8))
    net = MLP([8, 16, 4], ["tanh", "softmax"], "cce", seed=0)
    net.fit(X, np.arange(64) % 4, epochs=2, lr=0.1, batch_size=32)
    np.testing.assert_array_equal(np.array(result["params"]), net._params)
