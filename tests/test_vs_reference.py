"""The compiled engine against ``fastbp.reference``, the plain NumPy implementation.

Both are built with the same arguments and seed, so they start from the same weights and
draw the same shuffles; after many epochs of mini-batch training (last batch partial,
shuffled, with l2 and sample weights) they must still agree to rounding: 1e-10 relative
in float64, and to float32 precision in float32.
"""

import numpy as np
import pytest

import fastbp
import fastbp.reference
from fastbp._engine import config as _config

ARCHITECTURES = {
    "tanh-softmax-cce": ([4, 8, 3], ["tanh", "softmax"], "cce", True, "mean"),
    "relu-leaky-sigmoid-bce-sum": (
        [5, 7, 6, 2],
        ["relu", "leaky_relu", "sigmoid"],
        "bce",
        True,
        "sum",
    ),
    "sigmoid-identity-mse-nobias": ([3, 6, 1], ["sigmoid", "identity"], "mse", False, "mean"),
    "deep-half_mse": (
        [6, 5, 4, 3, 2],
        ["tanh", "relu", "sigmoid", "identity"],
        "half_mse",
        True,
        "mean",
    ),
    # Layers of one unit take their weight gradient as a row, d^T A, the first one from
    # X as stored or as gathered.
    "one-unit-layers": ([5, 1, 4, 1], ["tanh", "relu", "sigmoid"], "bce", True, "mean"),
    "tanh-sigmoid-exp-poisson": ([4, 6, 5, 2], ["tanh", "sigmoid", "exp"], "poisson", True, "mean"),
    # Two units wide at most: plain SGD trains it in ``tiny_run``.
    "tiny-exp-poisson-sum": ([2, 2, 1], ["sigmoid", "exp"], "poisson", True, "sum"),
}
TRAINED = list(ARCHITECTURES)
# Wide enough that matrix products sweep several panels and leave odd tails; evaluated,
# not trained (training it costs seconds per case).
ARCHITECTURES["wide-leaky-tanh"] = ([300, 201, 7], ["leaky_relu", "tanh"], "mse", True, "mean")
LEARNING_RATES = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adam": 0.01}
N_SAMPLES = 50
BATCH_SIZE = 16  # three full batches and a partial one of 2 samples


def _tolerance(dtype):
    """Relative tolerance of a comparison, as a fraction of the largest magnitude."""
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-4


def _pair(name, dtype, seed=7):
    sizes, activations, loss, bias, reduction = ARCHITECTURES[name]
    kwargs = dict(bias=bias, reduction=reduction, dtype=dtype, seed=seed)
    return (
        fastbp.MLP(sizes, activations, loss, **kwargs),
        fastbp.reference.MLP(sizes, activations, loss, **kwargs),
    )


def _data(rng, name, n=N_SAMPLES):
    sizes, _, loss, _, _ = ARCHITECTURES[name]
    X = rng.normal(size=(n, sizes[0]))
    if loss == "cce":
        Y = rng.integers(0, sizes[-1], n)
    elif loss == "bce":
        Y = rng.uniform(0, 1, (n, sizes[-1]))
    elif loss == "poisson":
        Y = rng.poisson(1.5, (n, sizes[-1])).astype(float)
    else:
        Y = rng.normal(size=(n, sizes[-1]))
    return X, Y, rng.uniform(0.2, 2.0, n)


def _flat(net):
    return np.concatenate([p.ravel() for p in net.weights + (net.biases or [])])


def _assert_close(actual, expected, dtype, what):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(
        actual, expected, rtol=0, atol=_tolerance(dtype) * scale, err_msg=what
    )


def _assert_same_network(fast, slow, dtype):
    for a, b in zip(fast.weights, slow.weights, strict=True):
        assert a.dtype == b.dtype == dtype
    assert (fast.biases is None) == (slow.biases is None)
    _assert_close(_flat(fast), _flat(slow), dtype, "parameters")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("optimizer", list(LEARNING_RATES))
@pytest.mark.parametrize("name", TRAINED)
def test_training_matches_reference(rng, name, optimizer, dtype):
    fast, slow = _pair(name, dtype)
    np.testing.assert_array_equal(_flat(fast), _flat(slow))  # same seed, same start
    start = _flat(fast).copy()
    X, Y, sample_weight = _data(rng, name)
    lr = LEARNING_RATES[optimizer] * (0.1 if ARCHITECTURES[name][4] == "sum" else 1.0)
    kwargs = dict(
        lr=lr,
        batch_size=BATCH_SIZE,
        shuffle=True,
        optimizer=optimizer,
        l2=1e-3,
        sample_weight=sample_weight,
    )
    h_fast = fast.fit(X, Y, epochs=20, **kwargs)
    h_slow = slow.fit(X, Y, epochs=20, **kwargs)
    assert h_fast.shape == (20,) and np.isfinite(h_fast).all()
    np.testing.assert_allclose(h_fast, h_slow, rtol=_tolerance(dtype))
    _assert_same_network(fast, slow, dtype)
    assert np.abs(_flat(fast) - start).max() > 0.05, "training barely moved the parameters"

    # A second fit continues the shuffle stream and the optimizer state on both sides.
    h_fast = fast.fit(X, Y, epochs=5, **kwargs)
    h_slow = slow.fit(X, Y, epochs=5, **kwargs)
    np.testing.assert_allclose(h_fast, h_slow, rtol=_tolerance(dtype))
    _assert_same_network(fast, slow, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", TRAINED)
def test_unshuffled_full_batch_and_optimizer_switch_match_reference(rng, name, dtype):
    fast, slow = _pair(name, dtype, seed=11)
    X, Y, _ = _data(rng, name, n=37)
    for optimizer, batch_size in [
        ("momentum", None),
        ("adam", 10),
        ("sgd", 37),
        ("adam", 100),
        ("nesterov", 9),
    ]:
        kwargs = dict(epochs=6, lr=0.01, batch_size=batch_size, optimizer=optimizer)
        np.testing.assert_allclose(
            fast.fit(X, Y, **kwargs), slow.fit(X, Y, **kwargs), rtol=_tolerance(dtype)
        )
        _assert_same_network(fast, slow, dtype)


@pytest.fixture(params=["default-chunks", "chunks-of-4-in-2-groups"])
def chunking(request, monkeypatch):
    """The engine's default chunks, or chunks of 4 rows in 2 groups: every product then
    runs over short contractions and adds each chunk to its group's earlier ones."""
    if request.param != "default-chunks":
        monkeypatch.setattr(_config, "CHUNK_ROWS", 4)
        monkeypatch.setattr(_config, "MAX_GROUPS", 2)
    return request.param


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "name,n",
    # 300 rows are 5 chunks of the compiled engine; 2500 are 40 chunks in 32 groups.
    [(name, 300) for name in ARCHITECTURES] + [(name, 2500) for name in TRAINED],
)
def test_forward_loss_gradients_match_reference(rng, chunking, name, n, dtype):
    fast, slow = _pair(name, dtype, seed=3)
    # Move away from the initial weights (zero biases) first, identically on both sides.
    weights = [w + rng.normal(scale=0.3, size=w.shape) for w in fast.weights]
    biases = None if fast.biases is None else [rng.normal(size=b.shape) for b in fast.biases]
    fast.set_params(weights, biases)
    slow.set_params(weights, biases)
    X, Y, sample_weight = _data(rng, name, n=n)

    out = fast.forward(X)
    assert out.dtype == dtype and out.shape == (len(X), ARCHITECTURES[name][0][-1])
    _assert_close(out, slow.forward(X), dtype, "forward")
    np.testing.assert_array_equal(fast.predict(X), out)

    for kwargs in [{}, {"sample_weight": sample_weight, "l2": 0.01}]:
        loss = fast.loss(X, Y, **kwargs)
        assert isinstance(loss, float)
        _assert_close(loss, slow.loss(X, Y, **kwargs), dtype, f"loss {kwargs}")
        value, dWs, dbs = fast.gradients(X, Y, **kwargs)
        r_value, r_dWs, r_dbs = slow.gradients(X, Y, **kwargs)
        assert value == loss
        for a, b in zip(dWs + (dbs or []), r_dWs + (r_dbs or []), strict=True):
            assert a.dtype == dtype
            _assert_close(a, b, dtype, f"gradients {kwargs}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_integer_labels_equal_one_hot(rng, dtype):
    n, sizes = 45, [4, 6, 3]
    X = rng.normal(size=(n, sizes[0]))
    labels = rng.integers(0, 3, n)
    one_hot = np.eye(3)[labels]
    sample_weight = rng.uniform(0.5, 1.5, n)
    given = [labels, labels.astype(np.int32), labels.astype(np.uint8), labels.astype(float)]
    results = []
    for Y in [one_hot, *given]:
        net = fastbp.MLP(sizes, ["relu", "softmax"], "cce", dtype=dtype, seed=5)
        value, dWs, dbs = net.gradients(X, Y, sample_weight=sample_weight)
        history = net.fit(
            X,
            Y,
            epochs=4,
            lr=0.1,
            batch_size=8,
            shuffle=True,
            optimizer="adam",
            sample_weight=sample_weight,
        )
        results.append((value, dWs + dbs, history, _flat(net), net.loss(X, Y)))
    expected = results[0]
    for got in results[1:]:
        assert got[0] == expected[0]
        for a, b in zip(got[1], expected[1], strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(got[2], expected[2])
        np.testing.assert_array_equal(got[3], expected[3])
        assert got[4] == expected[4]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_integer_and_boolean_data_are_converted_to_the_network_dtype(rng, dtype):
    net = fastbp.MLP([3, 4, 2], ["tanh", "identity"], "mse", dtype=dtype, seed=1)
    X_int = rng.integers(-3, 4, (20, 3))
    X_bool = rng.integers(0, 2, (20, 3)).astype(bool)
    Y_int = rng.integers(-2, 3, (20, 2))
    for X in (X_int, X_bool, X_int.astype(np.int8), np.abs(X_int).astype(np.uint16)):
        as_float = X.astype(dtype)
        out = net.forward(X)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, net.forward(as_float))
        assert net.loss(X, Y_int) == net.loss(as_float, Y_int.astype(dtype))
        for a, b in zip(
            net.gradients(X, Y_int)[1],
            net.gradients(as_float, Y_int.astype(dtype))[1],
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)

    # Training on integer data equals training on the same numbers as floats.
    a = fastbp.MLP([3, 4, 2], ["tanh", "identity"], "mse", dtype=dtype, seed=1)
    b = fastbp.MLP([3, 4, 2], ["tanh", "identity"], "mse", dtype=dtype, seed=1)
    kwargs = dict(epochs=3, lr=0.05, batch_size=7, shuffle=True)
    np.testing.assert_array_equal(
        a.fit(X_int, Y_int, **kwargs), b.fit(X_int.astype(dtype), Y_int.astype(dtype), **kwargs)
    )
    np.testing.assert_array_equal(_flat(a), _flat(b))


def test_float32_network_stays_float32(rng):
    net = fastbp.MLP([3, 5, 2], ["relu", "sigmoid"], "bce", dtype=np.float32, seed=2)
    assert net.dtype == np.float32

    def assert_float32():
        assert all(w.dtype == np.float32 for w in net.weights)
        assert all(b.dtype == np.float32 for b in net.biases)
        assert all(p.dtype == np.float32 for group in net.get_params() for p in group)

    assert_float32()
    net.set_params(
        [rng.normal(size=(3, 5)), rng.normal(size=(5, 2))],
        [np.zeros(5, np.float64), np.zeros(2, np.float64)],
    )
    assert_float32()
    X = rng.normal(size=(30, 3))  # float64 data
    Y = rng.uniform(0, 1, (30, 2))
    for optimizer in ("sgd", "momentum", "nesterov", "adam"):
        net.fit(X, Y, epochs=2, lr=0.1, batch_size=8, optimizer=optimizer, l2=0.01)
        assert_float32()
    assert net.forward(X).dtype == np.float32
    assert net.predict(X.astype(np.float32)).dtype == np.float32
    _, dWs, dbs = net.gradients(X, Y)
    assert all(g.dtype == np.float32 for g in dWs + dbs)
    # The same weights in a float64 network give the same outputs to float32 precision.
    wide = fastbp.MLP([3, 5, 2], ["relu", "sigmoid"], "bce").set_params(*net.get_params())
    out64 = wide.forward(X.astype(np.float32))
    np.testing.assert_allclose(net.forward(X), out64, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("l2", [0.0, 0.03], ids=["plain", "l2"])
def test_an_sgd_step_is_computed_in_the_network_dtype(rng, dtype, l2):
    """One full-batch SGD step is ``p - lr * g`` in the network's own dtype, as NumPy
    computes it for a Python float ``lr`` (``g``, the batch's mean gradient with its L2
    term, from ``gradients``); so is a momentum step."""
    X, Y = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    net = fastbp.MLP([3, 7, 2], ["tanh", "identity"], "mse", dtype=dtype, seed=5)
    _, dWs, dbs = net.gradients(X, Y, l2=l2)
    before = net.get_params()
    net.fit(X, Y, epochs=1, lr=0.3, l2=l2)
    for p0, g, p1 in zip(before[0] + before[1], dWs + dbs, net.weights + net.biases, strict=True):
        assert p1.dtype == dtype
        np.testing.assert_array_equal(p1, p0 - 0.3 * g)
    moving = fastbp.MLP([3, 7, 2], ["tanh", "identity"], "mse", dtype=dtype, seed=5)
    moving.fit(X, Y, epochs=1, lr=0.3, l2=l2, optimizer="momentum", momentum=0.7)
    for p0, g, p1 in zip(
        before[0] + before[1], dWs + dbs, moving.weights + moving.biases, strict=True
    ):
        np.testing.assert_array_equal(p1, p0 + (0.7 * np.zeros_like(g) - 0.3 * g))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shuffled", ["all-rows", "last-batch"])
@pytest.mark.parametrize("name", ["relu-leaky-sigmoid-bce-sum", "one-unit-layers"])
def test_order_equals_training_on_permuted_rows(rng, name, shuffled, dtype):
    """Chunks of consecutive rows are read from X in place, others gathered: the two
    give the same bits. With only the last batch shuffled, a fit takes both paths."""
    X, Y, sample_weight = _data(rng, name, n=150)
    order = rng.permutation(150)
    if shuffled == "last-batch":
        order = np.concatenate([np.arange(120), 120 + rng.permutation(30)])
    given = [array.copy() for array in (X, Y, sample_weight, order)]
    a, _ = _pair(name, dtype)
    b, _ = _pair(name, dtype)
    kwargs = dict(epochs=3, lr=0.01, batch_size=40, optimizer="adam")
    h_a = a.fit(X, Y, order=order, sample_weight=sample_weight, **kwargs)
    for before, after in zip(given, (X, Y, sample_weight, order), strict=True):
        np.testing.assert_array_equal(before, after)  # the caller's arrays are left alone
    h_b = b.fit(X[order], Y[order], sample_weight=sample_weight[order], **kwargs)
    np.testing.assert_array_equal(h_a, h_b)
    np.testing.assert_array_equal(_flat(a), _flat(b))


@pytest.mark.parametrize("batch_size", [8, 40], ids=["by-sample", "chunks"])
def test_an_order_per_epoch_equals_one_fit_per_order(rng, batch_size):
    """``order`` of shape (epochs, n): each epoch visits its own row, with the bits of
    one fit per epoch in that order."""
    X, Y, sample_weight = _data(rng, "relu-leaky-sigmoid-bce-sum", n=150)
    orders = np.stack([rng.permutation(150) for _ in range(3)])
    a, _ = _pair("relu-leaky-sigmoid-bce-sum", np.float64)
    b, _ = _pair("relu-leaky-sigmoid-bce-sum", np.float64)
    kwargs = dict(lr=0.01, batch_size=batch_size, optimizer="adam", sample_weight=sample_weight)
    history = a.fit(X, Y, epochs=3, order=orders, **kwargs)
    one_by_one = [b.fit(X, Y, epochs=1, order=order, **kwargs)[0] for order in orders]
    np.testing.assert_array_equal(history, one_by_one)
    np.testing.assert_array_equal(_flat(a), _flat(b))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_strided_and_fortran_data_equal_contiguous_data(rng, dtype):
    wide = rng.normal(size=(60, 8))
    X = wide[:, ::2]  # strided view, 4 columns
    Y = np.asfortranarray(rng.normal(size=(60, 2)))
    contiguous = np.ascontiguousarray(X), np.ascontiguousarray(Y)
    results = []
    for data in ((X, Y), contiguous, (np.asfortranarray(X), Y)):
        net = fastbp.MLP([4, 5, 2], ["sigmoid", "identity"], "half_mse", dtype=dtype, seed=4)
        history = net.fit(*data, epochs=3, lr=0.1, batch_size=16, shuffle=True)
        results.append((history.tobytes(), _flat(net).tobytes(), net.forward(data[0]).tobytes()))
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_small_shuffled_batches_of_large_data_match_reference(rng, dtype):
    """Over 1 MiB of X, batches of a few rows prefetch the next batch's samples (rows of
    X and Y, weights): a hint that must leave every result as it is."""
    kwargs = dict(bias=True, dtype=dtype, seed=5)
    fast = fastbp.MLP([70, 6, 2], ["tanh", "sigmoid"], "bce", **kwargs)
    slow = fastbp.reference.MLP([70, 6, 2], ["tanh", "sigmoid"], "bce", **kwargs)
    X = rng.normal(size=(4000, 70)).astype(dtype)
    assert X.nbytes >= 1 << 20
    Y = rng.uniform(0, 1, (4000, 2))
    weights = rng.uniform(0.2, 2, 4000)
    fit = dict(epochs=1, lr=0.01, batch_size=5, shuffle=True, sample_weight=weights)
    np.testing.assert_allclose(fast.fit(X, Y, **fit), slow.fit(X, Y, **fit), rtol=_tolerance(dtype))
    _assert_same_network(fast, slow, dtype)
