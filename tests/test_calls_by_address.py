"""``group_pass`` and ``parallel_groups`` are called through addresses (see
``fastbp._engine.cpu``): the address given for other argument types raises before any
code runs, and leaves the network as it was; read-only and writable data find code of
their own types. And every kernel compiles once per dtype, and ``parallel_groups`` and
``parallel_update`` only for runs that may use them, which the cold start depends on."""

import numpy as np
import pytest

from fastbp import MLP
from fastbp._engine.cpu import backend as K


@pytest.mark.parametrize("rows", [64, 4096], ids=["serial", "parallel"])
def test_an_address_for_other_types_raises_and_trains_nothing(rng, rows, monkeypatch):
    X = rng.standard_normal((rows, 8))
    y = np.arange(rows) % 4
    net = MLP([8, 16, 4], ["tanh", "softmax"], "cce", seed=0)
    net.fit(X, y, epochs=1, lr=0.1)
    params = net._params.copy()
    wrong = {key: (address, code + 1) for key, (address, code) in K._group_pass_at.items()}
    monkeypatch.setattr(K, "_group_pass_at", wrong)
    with pytest.raises(RuntimeError, match="group_pass was given the address of code"):
        net.fit(X, y, epochs=1, lr=0.1)
    np.testing.assert_array_equal(net._params, params)


def test_read_only_data_trains_as_writable_data(rng):
    X = rng.standard_normal((64, 8))
    y = np.arange(64) % 4
    frozen = X.copy()
    frozen.flags.writeable = False
    nets = [MLP([8, 16, 4], ["tanh", "softmax"], "cce", seed=0) for _ in range(2)]
    for net, data in zip(nets, (X, frozen), strict=True):
        net.fit(data, y, epochs=2, lr=0.1, batch_size=32)
    np.testing.assert_array_equal(nets[0]._params, nets[1]._params)


COMPILE_COUNT_CHILD = """
import importlib
import json
import pkgutil
import numpy as np
from fastbp import MLP
from fastbp._engine import config as _config
from fastbp._engine import cpu
from fastbp._engine.cpu import backend as K

rng = np.random.default_rng(0)
X = rng.standard_normal((300, 8))
net = MLP([8, 16, 4], ["tanh", "softmax"], "cce", seed=0)
net.fit(X, np.arange(300) % 4, epochs=1, lr=0.1, batch_size=4, shuffle=True)
net.fit(X, np.arange(300) % 4, epochs=1, lr=0.1, batch_size=100, optimizer="adam")
# No batch so far was large enough for threads, no network for a parallel update.
serial_only = len(K.parallel_groups.overloads) + len(K.parallel_update.overloads)
net.forward(np.tile(X, (10, 1)))  # work enough, in all, for threads
_config.PARALLEL_UPDATE_MIN_PARAMS = 1  # from here on every update is parallel
net = MLP([8, 5, 1], ["relu", "sigmoid"], "bce", seed=0)
net.fit(X, rng.uniform(0, 1, (300, 1)), epochs=1, lr=0.1, batch_size=128, shuffle=True, l2=0.1)
net.gradients(X, rng.uniform(0, 1, (300, 1)))
counts = {}
for info in pkgutil.iter_modules(cpu.__path__):
    try:
        module = importlib.import_module(f"fastbp._engine.cpu.{info.name}")
    except ImportError:  # the MPI exchange without numba-mpi
        continue
    counts.update((name, len(value.overloads)) for name, value in vars(module).items()
                  if hasattr(value, "overloads"))
print(json.dumps(dict(counts, serial_only=serial_only)))
"""


@pytest.mark.slow
def test_every_kernel_compiles_once_per_dtype(tmp_path):
    """Each compiled signature costs seconds of the cold start on two cores: a call with
    a literal argument where others pass a variable compiles a function twice. From an
    empty cache, a float64 run through every path compiles each kernel at most once."""
    import json
    import os
    import subprocess
    import sys

    # One process compiles everything (no second process compiling group_pass).
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FASTBP_COMPILE_PROCESSES="1")
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_COUNT_CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["group_pass"] == counts["dot_nn"] == counts["sample_pass"] == 1
    assert counts.pop("serial_only") == 0
    assert counts["parallel_groups"] == counts["parallel_update"] == 1
    assert {name: n for name, n in counts.items() if n > 1} == {}


def test_runs_either_side_of_the_parallel_threshold_find_the_code_they_need(rng, monkeypatch):
    """``run`` compiles ``parallel_groups`` only for runs that may use it, by the same
    test as ``compiled_run`` applies to each batch: at the threshold the batch runs in
    parallel, one multiply-add below it serially, and both train to the same bits
    instead of calling code never compiled."""
    from fastbp._engine import config as _config

    X = rng.standard_normal((256, 8))
    y = np.arange(256) % 4
    nets = [MLP([8, 16, 4], ["tanh", "softmax"], "cce", seed=0) for _ in range(2)]
    macs = 256 * 3 * nets[0].n_params  # one 256-row batch of two 128-row chunks
    epochs = -(-K.CALL_PARALLEL_MIN_MACS // macs)  # a call of work enough for threads
    for net, threshold in zip(nets, (macs, macs + 1), strict=True):
        monkeypatch.setattr(_config, "PARALLEL_MIN_MACS", threshold)
        net.fit(X, y, epochs=epochs, lr=0.1)
    np.testing.assert_array_equal(nets[0]._params, nets[1]._params)
