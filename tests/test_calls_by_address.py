"""``group_pass`` is called through an address (see ``fastbp._cpu_kernels``): the address
given for other argument types raises before any code runs, and leaves the network as it
was; read-only and writable data find code of their own types."""

import numpy as np
import pytest

from fastbp import MLP
from fastbp import _cpu_kernels as K


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
