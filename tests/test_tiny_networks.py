"""Tiny networks (one hidden layer, layers at most two wide, batches under 16 samples,
plain SGD) train in ``tiny_run``, with their parameters in registers: the same bits as
the general path (``sample_pass`` inside ``compiled_run``) in every setting it covers."""

import numpy as np
import pytest

import fastbp
from fastbp._engine.cpu import backend as _cpu_kernels

# (sizes, activations, loss, bias, reduction): every hidden activation, every output and
# loss pairing, widths 1 and 2 on each layer, with and without biases.
NETWORKS = {
    "notebook": ([2, 2, 1], ["relu", "sigmoid"], "bce", True, "mean"),
    "sigmoid-sigmoid-mse-nobias": ([1, 2, 1], ["sigmoid", "sigmoid"], "half_mse", False, "mean"),
    "scalar": ([1, 1, 1], ["sigmoid", "sigmoid"], "mse", True, "mean"),
    "tanh-softmax-cce": ([2, 2, 2], ["tanh", "softmax"], "cce", True, "mean"),
    "leaky-identity-mse-sum": ([2, 1, 2], ["leaky_relu", "identity"], "mse", True, "sum"),
    "identity-sigmoid-bce-two": ([1, 2, 2], ["identity", "sigmoid"], "bce", True, "sum"),
    "relu-tanh-mse": ([2, 2, 1], ["relu", "tanh"], "mse", False, "mean"),
}


def _data(rng, name, n):
    sizes, _, loss, _, _ = NETWORKS[name]
    X = rng.normal(size=(n, sizes[0]))
    if loss == "cce":
        return X, rng.integers(0, sizes[-1], n)
    if loss == "bce":
        return X, rng.uniform(0, 1, (n, sizes[-1]))
    return X, rng.normal(size=(n, sizes[-1]))


def _fit(name, dtype, tiny, monkeypatch, X, Y, **kwargs):
    """``(history, parameter bytes, step, error)`` of a fit on the tiny path or the general
    one (a fit that diverges gives its error message and finite history)."""
    sizes, activations, loss, bias, reduction = NETWORKS[name]
    monkeypatch.setattr(_cpu_kernels, "TINY_RUNS", tiny)
    net = fastbp.MLP(sizes, activations, loss, bias=bias, reduction=reduction, dtype=dtype, seed=3)
    try:
        history, error = net.fit(X, Y, **kwargs), None
    except FloatingPointError as diverged:
        history, error = diverged.history, str(diverged)
    return history, net._params.tobytes(), int(net._state.step[0]), error


SETTINGS = {
    "full-batch": dict(epochs=30, lr=0.5),
    "batches-of-3": dict(epochs=4, lr=0.2, batch_size=3),
    "online-shuffled": dict(epochs=3, lr=0.1, batch_size=1, shuffle=True),
    "weights-l2": dict(epochs=6, lr=0.3, batch_size=4, l2=0.05, weighted=True),
    "zero-weight-batch": dict(epochs=3, lr=0.3, batch_size=2, weighted="zeros"),
    "orders": dict(epochs=3, lr=0.2, batch_size=5, orders=True),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", list(NETWORKS))
def test_tiny_networks_train_to_the_bits_of_the_general_path(
    rng, monkeypatch, name, setting, dtype
):
    kwargs = dict(SETTINGS[setting])
    n = 11
    X, Y = _data(rng, name, n)
    weighted = kwargs.pop("weighted", None)
    if weighted:
        kwargs["sample_weight"] = rng.uniform(0.2, 2.0, n)
        if weighted == "zeros":
            kwargs["sample_weight"][2:4] = 0.0  # the second batch weighs nothing
    if kwargs.pop("orders", False):
        kwargs["order"] = np.stack([rng.permutation(n) for _ in range(kwargs["epochs"])])
    calls = []
    tiny_run = _cpu_kernels.tiny_run
    monkeypatch.setattr(_cpu_kernels, "tiny_run", lambda *args: calls.append(1) or tiny_run(*args))
    tiny = _fit(name, dtype, True, monkeypatch, X, Y, **kwargs)
    assert calls, "the tiny path was not taken"
    general = _fit(name, dtype, False, monkeypatch, X, Y, **kwargs)
    assert len(calls) == 1
    np.testing.assert_array_equal(tiny[0], general[0])
    assert tiny[1:] == general[1:]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_tiny_networks_stop_at_the_epoch_that_diverges_as_the_general_path_does(
    rng, monkeypatch, dtype
):
    """A learning rate far too large: both paths raise for the same epoch and keep the
    same last finite parameters."""
    X, Y = _data(rng, "leaky-identity-mse-sum", 8)
    Y = Y * 1e3
    results = []
    for tiny in (True, False):
        sizes, activations, loss, bias, reduction = NETWORKS["leaky-identity-mse-sum"]
        monkeypatch.setattr(_cpu_kernels, "TINY_RUNS", tiny)
        net = fastbp.MLP(
            sizes, activations, loss, bias=bias, reduction=reduction, dtype=dtype, seed=3
        )
        with pytest.raises(FloatingPointError) as info:
            net.fit(X, Y, epochs=200, lr=5.0)
        results.append(
            (
                str(info.value),
                info.value.history.tobytes(),
                net._params.tobytes(),
                int(net._state.step[0]),
            )
        )
    assert results[0] == results[1]


@pytest.mark.parametrize(
    "sizes,optimizer,batch_size",
    [
        ([3, 2, 1], "sgd", None),
        ([2, 3, 1], "sgd", None),
        ([2, 2, 2, 1], "sgd", None),
        ([2, 2, 1], "adam", None),
        ([2, 2, 1], "sgd", 16),
    ],
)
def test_other_networks_take_the_general_path(rng, monkeypatch, sizes, optimizer, batch_size):
    """Wider layers, more layers, other optimizers and batches of 16 or more."""
    calls = []
    monkeypatch.setattr(_cpu_kernels, "tiny_run", lambda *args: calls.append(1))
    net = fastbp.MLP(sizes, "tanh", "mse", seed=0)
    X, Y = rng.normal(size=(20, sizes[0])), rng.normal(size=(20, sizes[-1]))
    net.fit(X, Y, epochs=2, lr=0.1, optimizer=optimizer, batch_size=batch_size)
    assert not calls
