"""The fast NumPy loop trains what ``fastbp.reference`` trains, to rounding."""

import numpy as np
import pytest

from fastbp import fast_numpy, reference
from fastbp._grid import GRID, make_data
from fastbp.fast_numpy import fit_numpy

NETWORKS = [
    ([5, 7, 3], ["relu", "softmax"], "cce"),
    ([5, 7, 6, 2], ["tanh", "sigmoid", "sigmoid"], "bce"),
    ([5, 7, 6, 4], ["identity", "relu", "softmax"], "cce"),
    ([6, 9, 1], ["sigmoid", "sigmoid"], "bce"),
]


def data(rng, sizes, loss, n):
    X = rng.standard_normal((n, sizes[0]))
    if loss == "cce":
        return X, rng.integers(0, sizes[-1], n)
    return X, (rng.random((n, sizes[-1])) > 0.5).astype(float)


def assert_close(actual, expected, rtol):
    """Agreement relative to the largest magnitude of ``expected``."""
    assert np.abs(actual - expected).max() <= rtol * np.abs(expected).max()


def train_both(sizes, activations, loss, X, Y, batch_size, epochs=3, lr=0.2, dtype=np.float64):
    """``(fit_numpy's, reference's)`` weights, biases and history from the same start."""
    net = reference.MLP(sizes, activations, loss, seed=1, dtype=dtype)
    weights, biases = net.get_params()
    fast = fit_numpy(
        X, Y, weights, biases, activations, loss, epochs=epochs, lr=lr, batch_size=batch_size
    )
    history = net.fit(X, Y, epochs=epochs, lr=lr, batch_size=batch_size)
    return fast, (*net.get_params(), history)


def assert_same_training(fast, ref, rtol):
    for got, want in zip(fast[0] + fast[1], ref[0] + ref[1], strict=True):
        assert got.dtype == want.dtype
        assert_close(got, want, rtol)
    assert_close(fast[2], ref[2], rtol)


@pytest.mark.parametrize("sizes, activations, loss", NETWORKS)
@pytest.mark.parametrize("batch_size", [1, 8, 50, None])  # 50 rows in 8: a short last batch
def test_matches_the_reference_in_float64(rng, sizes, activations, loss, batch_size):
    X, Y = data(rng, sizes, loss, 50)
    fast, ref = train_both(sizes, activations, loss, X, Y, batch_size)
    assert_same_training(fast, ref, 1e-10)
    assert (
        np.abs(ref[0][0] - reference.MLP(sizes, activations, loss, seed=1).weights[0]).max() > 1e-3
    )


@pytest.mark.parametrize("sizes, activations, loss", NETWORKS)
def test_batches_longer_than_a_chunk_sum_their_chunks(rng, monkeypatch, sizes, activations, loss):
    monkeypatch.setattr(fast_numpy, "CHUNK_ROWS", 7)
    X, Y = data(rng, sizes, loss, 50)
    for batch_size in (16, None):  # chunks of 7, 7, 2; and 7 x 7 and 1 in the full batch
        assert_same_training(*train_both(sizes, activations, loss, X, Y, batch_size), 1e-10)


@pytest.mark.parametrize("sizes, activations, loss", NETWORKS)
def test_matches_the_reference_in_float32(rng, sizes, activations, loss):
    X, Y = data(rng, sizes, loss, 50)
    fast, ref = train_both(sizes, activations, loss, X, Y, 8, dtype=np.float32)
    assert_same_training(fast, ref, 1e-4)


@pytest.mark.parametrize("row", GRID, ids=lambda r: r.name)
def test_every_grid_row_matches_the_reference(row):
    n = 40 if row.sizes[1] > 512 else 300
    X, Y = make_data(row, np.float64, n_rows=n)
    batch = None if row.batch_size is None else min(row.batch_size, 64)
    fast, ref = train_both(
        list(row.sizes), list(row.activations), row.loss, X, Y, batch, min(row.epochs, 3), row.lr
    )
    assert_same_training(fast, ref, 1e-10)


def test_leaves_its_arguments_and_takes_one_hot_targets(rng):
    sizes, activations, loss = NETWORKS[0]
    X, labels = data(rng, sizes, loss, 30)
    weights, biases = reference.MLP(sizes, activations, loss, seed=1).get_params()
    before = [a.copy() for a in weights + biases]
    from_labels = fit_numpy(X, labels, weights, biases, activations, loss, epochs=2, lr=0.1)
    for a, b in zip(weights + biases, before, strict=True):
        np.testing.assert_array_equal(a, b)
    one_hot = np.eye(sizes[-1])[labels]
    from_one_hot = fit_numpy(X, one_hot, weights, biases, activations, loss, epochs=2, lr=0.1)
    for a, b in zip(sum(from_labels[:2], []), sum(from_one_hot[:2], []), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "activations, loss",
    [(["relu", "softmax"], "bce"), (["relu", "identity"], "cce"), (["softmax", "softmax"], "cce")],
)
def test_refuses_what_it_does_not_train(activations, loss):
    weights, biases = [np.zeros((2, 3)), np.zeros((3, 3))], [np.zeros(3), np.zeros(3)]
    with pytest.raises(ValueError, match="fit_numpy"):
        fit_numpy(
            np.zeros((4, 2)), np.zeros(4, int), weights, biases, activations, loss, epochs=1, lr=0.1
        )
