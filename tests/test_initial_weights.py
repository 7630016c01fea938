"""The compiled draw of the initial parameters (``fastbp._engine.pcg64``) gives the bits of
the NumPy one (``fastbp._init.initial_weights`` on ``np.random.default_rng(seed)``, which
``fastbp.reference`` keeps), and the shuffle seed drawn after them."""

import numpy as np
import pytest

import fastbp
from fastbp._engine import finite, pcg64
from fastbp._init import initial_weights, limits

ARCHITECTURES = [
    ([1, 1], ["relu"]),
    ([2, 2, 1], ["tanh", "sigmoid"]),
    ([3, 3, 3], ["leaky_relu", "identity"]),  # odd weight counts: 9 and 9
    ([3, 5, 7, 1], ["relu", "tanh", "identity"]),
    ([64, 100, 10], ["relu", "softmax"]),
    ([7, 1, 2], ["sigmoid", "leaky_relu"]),
]
SEEDS = [*range(60), 2**32, 2**63 - 1, 2**64 + 5, 2**127 + 3, 12345678901234567890123]


def _numpy_draw(sizes, activations, seed, dtype):
    """The weights and shuffle seed as NumPy's Generator draws them."""
    rng = np.random.default_rng(seed)
    weights = [w.astype(dtype) for w in initial_weights(sizes, activations, rng)]
    return weights, int(rng.integers(0, 2**63))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sizes, activations", ARCHITECTURES)
def test_compiled_draw_equals_numpy_bitwise(sizes, activations, bias, dtype):
    loss = "cce" if activations[-1] == "softmax" else "mse"
    for seed in SEEDS:
        net = fastbp.MLP(sizes, activations, loss, bias=bias, dtype=dtype, seed=seed)
        weights, shuffle_seed = _numpy_draw(sizes, activations, seed, dtype)
        for got, expected in zip(net.weights, weights, strict=True):
            assert got.dtype == expected.dtype
            assert got.tobytes() == expected.tobytes(), (seed, sizes, dtype)
        if bias:
            assert all((b == 0).all() for b in net.biases)
        assert int(net._shuffle_state[0]) == shuffle_seed


def test_numpy_integer_seeds_equal_python_ones():
    for seed in (np.int64(7), np.uint64(2**63 + 1)):
        a = fastbp.MLP([4, 3, 2], "tanh", "mse", seed=seed)
        b = fastbp.MLP([4, 3, 2], "tanh", "mse", seed=int(seed))
        assert all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))


def test_any_stream_draws_as_numpy_does():
    """Fresh entropy (``seed=None``) is a stream like any other: the same state in
    NumPy's Generator draws the same bits."""
    sizes, activations = [5, 9, 3], ["relu", "sigmoid"]
    for _ in range(20):
        stream = pcg64.stream(None)
        generator = np.random.PCG64()
        state = generator.state
        state["state"]["state"] = int(stream[0]) << 64 | int(stream[1])
        state["state"]["inc"] = int(stream[2]) << 64 | int(stream[3])
        generator.state = state
        rng = np.random.Generator(generator)
        net = fastbp.MLP(sizes, activations, "mse", seed=0)
        params = np.full(net.n_params, np.nan)
        bounds = np.array(limits(sizes, activations))
        shuffle_seed = pcg64.draw_parameters(params, net._layout, bounds, stream)
        expected = np.concatenate([w.ravel() for w in initial_weights(sizes, activations, rng)])
        got = np.concatenate([params[w : w + i * o] for i, o, w, _, _ in net._layout.tolist()])
        assert got.tobytes() == expected.tobytes()
        assert int(shuffle_seed) == int(rng.integers(0, 2**63))


def test_seed_none_draws_fresh_entropy_and_is_not_kept():
    kept = dict(pcg64._streams)
    a = fastbp.MLP([3, 4, 2], "tanh", "mse", seed=None)
    b = fastbp.MLP([3, 4, 2], "tanh", "mse", seed=None)
    assert not np.array_equal(a.weights[0], b.weights[0])
    assert a._shuffle_state[0] != b._shuffle_state[0]
    assert pcg64._streams == kept


def test_kept_streams_are_bounded_and_unchanged_by_draws():
    for seed in range(3 * pcg64.STREAMS_KEPT):
        fastbp.MLP([2, 3, 1], "tanh", "mse", seed=seed)
    assert len(pcg64._streams) <= pcg64.STREAMS_KEPT
    seed = 3 * pcg64.STREAMS_KEPT - 1
    state = np.random.PCG64(seed).state["state"]
    stream = pcg64.stream(seed)
    assert int(stream[0]) << 64 | int(stream[1]) == state["state"]
    assert int(stream[2]) << 64 | int(stream[3]) == state["inc"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_all_finite(dtype):
    values = np.linspace(-1, 1, 1001).astype(dtype)
    assert finite.all_finite(values)
    assert finite.all_finite(values[:0])
    assert finite.all_finite(np.full(7, np.finfo(dtype).max, dtype))  # no overflow
    for bad in (np.nan, np.inf, -np.inf):
        for where in (0, 500, 1000):
            spoiled = values.copy()
            spoiled[where] = bad
            assert not finite.all_finite(spoiled)
