"""Bad input is refused with a ValueError or TypeError that names the argument, before
anything changes: parameters, optimizer state and shuffle stream stay as they were.
Training that diverges stops with FloatingPointError and the last finite epoch's state.
"""

import re

import numpy as np
import pytest

import fastbp
from fastbp import reference

N = 10


@pytest.fixture
def data(rng):
    X = rng.normal(size=(N, 3))
    Y = rng.uniform(0, 1, (N, 2))
    return X, Y


_BCE_ARGS = ([3, 5, 2], ["relu", "sigmoid"], "bce")


def _bce_net():
    return fastbp.MLP(*_BCE_ARGS, seed=0)


@pytest.fixture
def trained(data):
    """A network with non-trivial optimizer state (Adam moments, step count, shuffle)."""
    net = _bce_net()
    net.fit(*data, epochs=2, lr=0.01, batch_size=4, shuffle=True, optimizer="adam")
    return net


def _state(net):
    """Everything a rejected call must leave alone, as bytes (NaN compares equal)."""
    return (
        net._params.tobytes(),
        net._state.m.tobytes(),
        net._state.v.tobytes(),
        net._state.step.tobytes(),
        net._optimizer,
        net._shuffle_state.tobytes(),
        [w.tobytes() for w in net.weights],
        [b.tobytes() for b in net.biases or []],
    )


def _names(argument):
    """A regex matching ``argument`` as a word of the message."""
    return rf"(?<![\w.]){re.escape(argument)}(?![\w])"


def _assert_refused(net, error, argument, call):
    before = _state(net)
    with pytest.raises(error, match=_names(argument)):
        call()
    assert _state(net) == before, "a refused call changed the network"


X_OK = np.zeros((N, 3))
Y_OK = np.full((N, 2), 0.5)

# (id, keyword arguments of fit that replace the good ones, error, argument named)
BAD_FIT = [
    ("X-columns", dict(X=np.zeros((N, 4))), ValueError, "X"),
    ("X-1d", dict(X=np.zeros(N)), ValueError, "X"),
    ("X-3d", dict(X=np.zeros((N, 3, 1))), ValueError, "X"),
    ("X-empty", dict(X=np.zeros((0, 3)), Y=np.zeros((0, 2))), ValueError, "X"),
    ("X-nan", dict(X=np.where(np.eye(N, 3) > 0, np.nan, 0.0)), ValueError, "X"),
    ("X-inf", dict(X=np.where(np.eye(N, 3) > 0, -np.inf, 0.0)), ValueError, "X"),
    ("X-strings", dict(X=np.full((N, 3), "1.0")), TypeError, "X"),
    ("X-object", dict(X=np.full((N, 3), None, dtype=object)), TypeError, "X"),
    ("X-complex", dict(X=np.zeros((N, 3), complex)), TypeError, "X"),
    ("X-none", dict(X=None), TypeError, "X"),
    ("X-ragged", dict(X=[[0.0, 1.0, 2.0]] * (N - 1) + [[0.0]]), ValueError, "X"),
    ("Y-rows", dict(Y=np.zeros((N + 1, 2))), ValueError, "Y"),
    ("Y-columns", dict(Y=np.zeros((N, 3))), ValueError, "Y"),
    ("Y-1d", dict(Y=np.zeros(N)), ValueError, "Y"),
    ("Y-3d", dict(Y=np.zeros((N, 2, 1))), ValueError, "Y"),
    ("Y-nan", dict(Y=np.where(np.eye(N, 2) > 0, np.nan, 0.5)), ValueError, "Y"),
    ("Y-inf", dict(Y=np.where(np.eye(N, 2) > 0, np.inf, 0.5)), ValueError, "Y"),
    ("Y-strings", dict(Y=np.full((N, 2), "a")), TypeError, "Y"),
    ("Y-complex", dict(Y=np.zeros((N, 2), complex)), TypeError, "Y"),
    ("Y-ragged", dict(Y=[[0.5, 0.5]] * (N - 1) + [[0.5]]), ValueError, "Y"),
    ("Y-empty", dict(Y=np.zeros((0, 2))), ValueError, "Y"),
    ("Y-bce-above-1", dict(Y=np.full((N, 2), 1.5)), ValueError, "Y"),
    ("Y-bce-below-0", dict(Y=np.where(np.eye(N, 2) > 0, -0.1, 0.5)), ValueError, "Y"),
    ("epochs-zero", dict(epochs=0), ValueError, "epochs"),
    ("epochs-negative", dict(epochs=-3), ValueError, "epochs"),
    ("epochs-float", dict(epochs=2.0), TypeError, "epochs"),
    ("epochs-numpy-float", dict(epochs=np.float64(2)), TypeError, "epochs"),
    ("epochs-bool", dict(epochs=True), TypeError, "epochs"),
    ("epochs-string", dict(epochs="2"), TypeError, "epochs"),
    ("epochs-none", dict(epochs=None), TypeError, "epochs"),
    ("batch_size-zero", dict(batch_size=0), ValueError, "batch_size"),
    ("batch_size-negative", dict(batch_size=-4), ValueError, "batch_size"),
    ("batch_size-float", dict(batch_size=2.0), TypeError, "batch_size"),
    ("batch_size-bool", dict(batch_size=True), TypeError, "batch_size"),
    ("lr-zero", dict(lr=0.0), ValueError, "lr"),
    ("lr-negative", dict(lr=-0.1), ValueError, "lr"),
    ("lr-nan", dict(lr=float("nan")), ValueError, "lr"),
    ("lr-inf", dict(lr=np.inf), ValueError, "lr"),
    ("lr-float32-nan", dict(lr=np.float32("nan")), ValueError, "lr"),
    ("lr-string", dict(lr="0.1"), TypeError, "lr"),
    ("lr-bool", dict(lr=True), TypeError, "lr"),
    ("lr-none", dict(lr=None), TypeError, "lr"),
    ("l2-negative", dict(l2=-1e-3), ValueError, "l2"),
    ("l2-nan", dict(l2=float("nan")), ValueError, "l2"),
    ("momentum-one", dict(optimizer="momentum", momentum=1.0), ValueError, "momentum"),
    ("momentum-negative", dict(optimizer="momentum", momentum=-0.5), ValueError, "momentum"),
    ("beta1-one", dict(beta1=1.0), ValueError, "beta1"),
    ("beta2-above-one", dict(beta2=1.5), ValueError, "beta2"),
    ("epsilon-zero", dict(epsilon=0.0), ValueError, "epsilon"),
    ("optimizer-unknown", dict(optimizer="rmsprop"), ValueError, "optimizer"),
    ("optimizer-case", dict(optimizer="Adam"), ValueError, "optimizer"),
    ("optimizer-none", dict(optimizer=None), ValueError, "optimizer"),
    ("sample_weight-length", dict(sample_weight=np.ones(N - 1)), ValueError, "sample_weight"),
    ("sample_weight-empty", dict(sample_weight=[]), ValueError, "sample_weight"),
    ("sample_weight-2d", dict(sample_weight=np.ones((N, 1))), ValueError, "sample_weight"),
    (
        "sample_weight-negative",
        dict(sample_weight=np.r_[-1.0, np.ones(N - 1)]),
        ValueError,
        "sample_weight",
    ),
    ("sample_weight-zero-sum", dict(sample_weight=np.zeros(N)), ValueError, "sample_weight"),
    (
        "sample_weight-nan",
        dict(sample_weight=np.r_[np.nan, np.ones(N - 1)]),
        ValueError,
        "sample_weight",
    ),
    ("sample_weight-strings", dict(sample_weight=["1"] * N), TypeError, "sample_weight"),
    ("order-duplicate", dict(order=np.r_[0, np.arange(N - 1)]), ValueError, "order"),
    ("order-length", dict(order=np.arange(N - 1)), ValueError, "order"),
    ("order-out-of-range", dict(order=np.arange(1, N + 1)), ValueError, "order"),
    ("order-floats", dict(order=np.arange(N, dtype=float)), ValueError, "order"),
    ("order-2d", dict(order=np.arange(N).reshape(2, -1)), ValueError, "order"),
    ("order-with-shuffle", dict(order=np.arange(N), shuffle=True), ValueError, "order"),
    ("order-per-epoch-count", dict(order=np.tile(np.arange(N), (2, 1))), ValueError, "order"),
    (
        "order-per-epoch-row",
        dict(epochs=2, order=np.stack([np.arange(N), np.r_[0, np.arange(N - 1)]])),
        ValueError,
        "order",
    ),
]


@pytest.mark.parametrize(
    "bad,error,argument", [c[1:] for c in BAD_FIT], ids=[c[0] for c in BAD_FIT]
)
def test_fit_refuses_bad_arguments(trained, bad, error, argument):
    kwargs = dict(X=X_OK, Y=Y_OK, epochs=1, lr=0.1, batch_size=3, optimizer="adam")
    kwargs.update(bad)
    X, Y = kwargs.pop("X"), kwargs.pop("Y")
    _assert_refused(trained, error, argument, lambda: trained.fit(X, Y, **kwargs))


def test_refused_calls_leave_training_where_it_was(data):
    """Public view of the same promise: after many refused calls, training continues
    exactly as on a twin network that never saw them (Adam moments, step count and
    shuffle stream included)."""
    net, twin = _bce_net(), _bce_net()
    kwargs = dict(lr=0.01, batch_size=4, shuffle=True, optimizer="adam")
    for n in (net, twin):
        n.fit(*data, epochs=2, **kwargs)
    for _, bad, error, _ in BAD_FIT:
        call = dict(X=X_OK, Y=Y_OK, epochs=1, lr=0.1, optimizer="sgd")  # sgd would reset Adam
        call.update(bad)
        with pytest.raises(error):
            net.fit(call.pop("X"), call.pop("Y"), **call)
    with pytest.raises(ValueError):
        net.set_params([np.zeros((3, 5)), np.full((5, 2), np.nan)])
    np.testing.assert_array_equal(
        net.fit(*data, epochs=3, **kwargs), twin.fit(*data, epochs=3, **kwargs)
    )
    for a, b in zip(net.weights + net.biases, twin.weights + twin.biases, strict=True):
        np.testing.assert_array_equal(a, b)


BAD_EVALUATION = [
    ("X-columns", dict(X=np.zeros((N, 2))), ValueError, "X"),
    ("X-1d", dict(X=np.zeros(3)), ValueError, "X"),
    ("X-3d", dict(X=np.zeros((1, N, 3))), ValueError, "X"),
    ("X-empty", dict(X=np.zeros((0, 3))), ValueError, "X"),
    ("X-nan", dict(X=np.full((N, 3), np.nan)), ValueError, "X"),
    ("X-strings", dict(X=[["a", "b", "c"]]), TypeError, "X"),
    ("X-complex", dict(X=np.ones((N, 3)) * 1j), TypeError, "X"),
]
BAD_TARGETS = [
    ("Y-shape", dict(Y=np.zeros((N, 1))), ValueError, "Y"),
    ("Y-nan", dict(Y=np.full((N, 2), np.nan)), ValueError, "Y"),
    ("Y-bce-range", dict(Y=np.full((N, 2), 2.0)), ValueError, "Y"),
    ("Y-object", dict(Y=np.full((N, 2), None, dtype=object)), TypeError, "Y"),
    ("l2-negative", dict(l2=-1.0), ValueError, "l2"),
    ("l2-inf", dict(l2=np.inf), ValueError, "l2"),
    ("l2-string", dict(l2="0"), TypeError, "l2"),
    ("sample_weight-length", dict(sample_weight=np.ones(N + 1)), ValueError, "sample_weight"),
    ("sample_weight-negative", dict(sample_weight=-np.ones(N)), ValueError, "sample_weight"),
]


@pytest.mark.parametrize(
    "bad,error,argument", [c[1:] for c in BAD_EVALUATION], ids=[c[0] for c in BAD_EVALUATION]
)
@pytest.mark.parametrize("method", ["forward", "predict", "loss", "gradients"])
def test_evaluation_refuses_bad_data(trained, method, bad, error, argument):
    X = bad["X"]
    call = getattr(trained, method)
    if method in ("loss", "gradients"):
        _assert_refused(trained, error, argument, lambda: call(X, Y_OK[: len(X)]))
    else:
        _assert_refused(trained, error, argument, lambda: call(X))


@pytest.mark.parametrize(
    "bad,error,argument", [c[1:] for c in BAD_TARGETS], ids=[c[0] for c in BAD_TARGETS]
)
@pytest.mark.parametrize("method", ["loss", "gradients"])
def test_loss_and_gradients_refuse_bad_targets(trained, method, bad, error, argument):
    kwargs = dict(bad)
    Y = kwargs.pop("Y", Y_OK)
    call = getattr(trained, method)
    _assert_refused(trained, error, argument, lambda: call(X_OK, Y, **kwargs))


BAD_LABELS = [
    ("label-too-large", np.r_[np.zeros(N - 1, int), 3], ValueError),
    ("label-negative", np.r_[np.zeros(N - 1, int), -1], ValueError),
    ("label-not-integer", np.r_[np.zeros(N - 1), 1.5], ValueError),
    ("label-nan", np.r_[np.zeros(N - 1), np.nan], ValueError),
    ("labels-length", np.zeros(N - 1, int), ValueError),
    ("labels-strings", np.array(["0"] * N), TypeError),
    (
        "probabilities-negative",
        np.c_[np.full(N, -0.5), np.full(N, 1.0), np.full(N, 0.5)],
        ValueError,
    ),
    ("one-hot-columns", np.eye(N, 2), ValueError),
]


@pytest.mark.parametrize("Y,error", [c[1:] for c in BAD_LABELS], ids=[c[0] for c in BAD_LABELS])
def test_cce_refuses_bad_labels(Y, error):
    net = fastbp.MLP([3, 4, 3], ["tanh", "softmax"], "cce", seed=0)
    net.fit(X_OK, np.arange(N) % 3, epochs=1, lr=0.1, optimizer="momentum")
    for call in (
        lambda: net.fit(X_OK, Y, epochs=1, lr=0.1, optimizer="momentum"),
        lambda: net.loss(X_OK, Y),
        lambda: net.gradients(X_OK, Y),
    ):
        _assert_refused(net, error, "Y", call)


def test_mini_batch_of_zero_total_weight(data):
    """Weights (1, 1, 0, 0, 1, ...) in batches of 2: the second batch carries no weight.
    fit skips it, and trains exactly like the reference, which skips it too."""
    X, Y = data
    net = _bce_net()
    before = _state(net)
    sample_weight = np.ones(N)
    sample_weight[2:4] = 0.0
    history = net.fit(
        X, Y, epochs=2, lr=0.1, batch_size=2, sample_weight=sample_weight, optimizer="adam"
    )
    assert _state(net) != before and np.isfinite(history).all()
    twin = reference.MLP(*_BCE_ARGS, seed=0)
    expected = twin.fit(
        X, Y, epochs=2, lr=0.1, batch_size=2, sample_weight=sample_weight, optimizer="adam"
    )
    np.testing.assert_allclose(history, expected, rtol=1e-10)
    for got, want in zip(net.weights, twin.weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10)


# ---------------------------------------------------------------- parameters


def _good_params():
    return [np.ones((3, 5)), np.ones((5, 2))], [np.ones(5), np.ones(2)]


def _with(items, i, value):
    items = list(items)
    items[i] = value
    return items


W, B = _good_params()
BAD_PARAMS = [
    ("weights-array", (np.ones((3, 5)), None), TypeError, "weights"),
    ("weights-none", (None, None), TypeError, "weights"),
    ("weights-count", (W[:1], None), ValueError, "weights"),
    ("weights-extra", (W + [np.ones((2, 2))], None), ValueError, "weights"),
    ("weights-shape", (_with(W, 1, np.ones((2, 5))), None), ValueError, "weights[1]"),
    ("weights-transposed", (_with(W, 0, np.ones((5, 3))), None), ValueError, "weights[0]"),
    ("weights-1d", (_with(W, 0, np.ones(15)), None), ValueError, "weights[0]"),
    ("weights-nan", (_with(W, 1, np.full((5, 2), np.nan)), None), ValueError, "weights[1]"),
    ("weights-inf", (_with(W, 0, np.full((3, 5), np.inf)), None), ValueError, "weights[0]"),
    ("weights-complex", (_with(W, 0, np.ones((3, 5), complex)), None), TypeError, "weights[0]"),
    ("weights-strings", (_with(W, 0, np.full((3, 5), "x")), None), TypeError, "weights[0]"),
    ("weights-empty", (_with(W, 0, np.ones((0, 5))), None), ValueError, "weights[0]"),
    ("biases-array", (W, np.ones(5)), TypeError, "biases"),
    ("biases-count", (W, B[:1]), ValueError, "biases"),
    ("biases-shape", (W, _with(B, 0, np.ones(4))), ValueError, "biases[0]"),
    ("biases-2d", (W, _with(B, 1, np.ones((2, 2)))), ValueError, "biases[1]"),
    ("biases-nan", (W, _with(B, 1, np.array([0.0, np.nan]))), ValueError, "biases[1]"),
    ("biases-inf", (W, _with(B, 0, np.full(5, -np.inf))), ValueError, "biases[0]"),
    ("biases-object", (W, _with(B, 0, np.full(5, None, dtype=object))), TypeError, "biases[0]"),
]


@pytest.mark.parametrize(
    "params,error,argument", [c[1:] for c in BAD_PARAMS], ids=[c[0] for c in BAD_PARAMS]
)
def test_set_params_refuses_bad_parameters(trained, params, error, argument):
    _assert_refused(trained, error, argument, lambda: trained.set_params(*params))


def test_set_params_refuses_biases_without_bias():
    net = fastbp.MLP([3, 5, 2], ["relu", "sigmoid"], "bce", bias=False, seed=0)
    _assert_refused(net, ValueError, "biases", lambda: net.set_params(W, B))


def test_set_params_accepts_good_parameters_after_refusals(trained):
    """The refusals above are not a network that refuses everything."""
    trained.set_params(*_good_params())
    np.testing.assert_array_equal(trained.weights[1], np.ones((5, 2)))
    np.testing.assert_array_equal(trained.biases[0], np.ones(5))
    assert trained._optimizer is None  # set_params resets the optimizer


@pytest.mark.parametrize("where", ["weights", "biases"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_parameters_written_in_place_are_refused(trained, data, where, value):
    getattr(trained, where)[-1][0, ...] = value
    X, Y = data
    for call in (
        lambda: trained.fit(X, Y, epochs=1, lr=0.1, batch_size=3, optimizer="adam"),
        lambda: trained.forward(X),
        lambda: trained.predict(X),
        lambda: trained.loss(X, Y),
        lambda: trained.gradients(X, Y),
    ):
        _assert_refused(trained, ValueError, where, call)


# ---------------------------------------------------------------- construction


BAD_CONSTRUCTION = [
    ("layer_sizes-one", ([3], "tanh", "mse"), {}, ValueError, "layer_sizes"),
    ("layer_sizes-int", (3, "tanh", "mse"), {}, TypeError, "layer_sizes"),
    ("layer_sizes-string", ("32", "tanh", "mse"), {}, TypeError, "layer_sizes"),
    ("layer_sizes-zero", ([3, 0, 2], "tanh", "mse"), {}, ValueError, "layer_sizes[1]"),
    ("layer_sizes-float", ([3, 2.0], "tanh", "mse"), {}, TypeError, "layer_sizes[1]"),
    ("layer_sizes-bool", ([True, 2], "tanh", "mse"), {}, TypeError, "layer_sizes[0]"),
    ("activations-count", ([3, 4, 2], ["tanh"] * 3, "mse"), {}, ValueError, "activations"),
    ("activations-too-few", ([3, 4, 2], ["tanh"], "mse"), {}, ValueError, "activations"),
    ("activations-unknown", ([3, 4, 2], ["gelu", "tanh"], "mse"), {}, ValueError, "activations[0]"),
    ("activations-unknown-single", ([3, 2], "swish", "mse"), {}, ValueError, "activations[0]"),
    ("activations-none", ([3, 2], None, "mse"), {}, TypeError, "activations"),
    ("activations-int", ([3, 2], 5, "mse"), {}, TypeError, "activations"),
    (
        "softmax-hidden",
        ([3, 4, 2], ["softmax", "identity"], "mse"),
        {},
        ValueError,
        "activations[0]",
    ),
    ("softmax-everywhere", ([3, 4, 4, 2], "softmax", "cce"), {}, ValueError, "activations[0]"),
    ("loss-unknown", ([3, 2], "tanh", "hinge"), {}, ValueError, "loss"),
    ("loss-none", ([3, 2], "tanh", None), {}, ValueError, "loss"),
    ("reduction-unknown", ([3, 2], "tanh", "mse"), {"reduction": "avg"}, ValueError, "reduction"),
    ("dtype-float16", ([3, 2], "tanh", "mse"), {"dtype": np.float16}, ValueError, "dtype"),
    ("dtype-int", ([3, 2], "tanh", "mse"), {"dtype": np.int32}, ValueError, "dtype"),
    ("dtype-complex", ([3, 2], "tanh", "mse"), {"dtype": "complex128"}, ValueError, "dtype"),
    ("dtype-nonsense", ([3, 2], "tanh", "mse"), {"dtype": "nonsense"}, TypeError, "dtype"),
    ("device-unknown", ([3, 2], "tanh", "mse"), {"device": "gpu"}, ValueError, "device"),
]


@pytest.mark.parametrize(
    "args,kwargs,error,argument",
    [c[1:] for c in BAD_CONSTRUCTION],
    ids=[c[0] for c in BAD_CONSTRUCTION],
)
def test_constructor_refuses_bad_arguments(args, kwargs, error, argument):
    with pytest.raises(error, match=_names(argument)):
        fastbp.MLP(*args, **kwargs)


# ---------------------------------------------------------------- divergence


def _linear_problem(rng):
    X = rng.normal(size=(20, 3))
    return X, rng.normal(size=(20, 1))


def _linear_net(dtype):
    return fastbp.MLP([3, 8, 1], "identity", "mse", dtype=dtype, seed=0)


DIVERGING = [
    ("sgd-full-batch", np.float64, dict(lr=2.0)),
    (
        "momentum-shuffled",
        np.float64,
        dict(lr=1.5, batch_size=7, shuffle=True, optimizer="momentum"),
    ),
    (
        "nesterov-l2-weighted",
        np.float64,
        dict(
            lr=1.5,
            batch_size=6,
            optimizer="nesterov",
            l2=0.01,
            sample_weight=np.linspace(0.5, 2, 20),
        ),
    ),
    ("sgd-float32", np.float32, dict(lr=2.0)),
    ("first-epoch", np.float64, dict(lr=1e6, batch_size=5)),
]


@pytest.mark.parametrize("dtype,kwargs", [c[1:] for c in DIVERGING], ids=[c[0] for c in DIVERGING])
def test_divergence_restores_the_last_finite_epoch(rng, dtype, kwargs):
    X, Y = _linear_problem(rng)
    net = _linear_net(dtype)
    epochs = 100
    with pytest.raises(FloatingPointError) as info:
        net.fit(X, Y, epochs=epochs, **kwargs)
    finite = info.value.history
    k = len(finite)
    assert re.search(rf"\bepoch {k + 1} of {epochs}\b", str(info.value)), str(info.value)
    assert k < epochs and np.isfinite(finite).all()
    if kwargs["lr"] < 1e3:
        assert k >= 1, "the example should diverge after some finite epochs"

    # A twin trained for exactly the finite epochs ends with the same bits.
    twin = _linear_net(dtype)
    if k:
        np.testing.assert_array_equal(twin.fit(X, Y, epochs=k, **kwargs), finite)
    for a, b in zip(net.weights + net.biases, twin.weights + twin.biases, strict=True):
        assert a.tobytes() == b.tobytes()
    if k:
        assert net._state.step.tobytes() == twin._state.step.tobytes()
        assert net._state.m.tobytes() == twin._state.m.tobytes()

        # Diverging in the last epoch of a fit restores the epoch before it just the same.
        last = _linear_net(dtype)
        with pytest.raises(FloatingPointError, match=rf"\bepoch {k + 1} of {k + 1}\b"):
            last.fit(X, Y, epochs=k + 1, **kwargs)
        assert _state(last)[0] == _state(twin)[0]
    assert all(np.isfinite(p).all() for p in net.weights + net.biases)


def test_divergence_without_restoring_keeps_no_copy_and_says_so(rng):
    """``restore_finite=False`` stops at the same epoch with the same finite losses but
    leaves the parameters as the failing epoch made them (no copy kept to restore)."""
    X, Y = _linear_problem(rng)
    # Five batches an epoch: the failing epoch has changed the parameters by then.
    kwargs = dict(epochs=100, lr=0.01, batch_size=4, optimizer="momentum")
    nets = [fastbp.MLP([3, 40, 40, 1], "identity", "mse", seed=0) for _ in range(2)]
    errors = []
    for net, restore in zip(nets, [True, False], strict=True):
        with pytest.raises(FloatingPointError) as info:
            net.fit(X * 1e3, Y, restore_finite=restore, **kwargs)
        errors.append(info.value)
    np.testing.assert_array_equal(errors[0].history, errors[1].history)
    assert "left as they became" in str(errors[1])
    assert all(np.isfinite(p).all() for p in nets[0].weights)
    assert nets[0]._params.tobytes() != nets[1]._params.tobytes()  # not restored
    with pytest.raises(TypeError, match="restore_finite"):
        nets[0].fit(X, Y, epochs=1, lr=0.1, restore_finite="no")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"bias": "no"}, "bias"),
        ({"seed": "abc"}, "seed"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"dtype": None}, "dtype"),
    ],
)
@pytest.mark.parametrize("cls", [fastbp.MLP, reference.MLP])
def test_constructor_refuses_loose_values(cls, kwargs, name):
    """Truthy strings are not flags, and seeds are integers: refused by name."""
    with pytest.raises((TypeError, ValueError), match=name):
        cls(*_BCE_ARGS, **kwargs)


def test_fit_refuses_non_boolean_shuffle(data):
    X, Y = data
    net = _bce_net()
    before = _state(net)
    with pytest.raises(TypeError, match="shuffle"):
        net.fit(X, Y, epochs=1, lr=0.1, shuffle="yes")
    assert _state(net) == before


@pytest.mark.parametrize("cls", [fastbp.MLP, reference.MLP], ids=["fastbp", "reference"])
@pytest.mark.parametrize("output", ["identity", "tanh", "relu", "leaky_relu"])
def test_bce_on_outputs_that_can_leave_the_unit_interval_warns(cls, output):
    """Such outputs are clipped before the loss, and a tanh output on 0/1 targets trains
    to a constant loss: the user hears of it where the network is made."""
    with pytest.warns(UserWarning, match=f"loss='bce' needs outputs in \\[0, 1\\].*'{output}'"):
        cls([3, 4, 1], ["relu", output], "bce")


@pytest.mark.parametrize(
    "output, loss",
    [("sigmoid", "bce"), ("softmax", "bce"), ("tanh", "mse"), ("identity", "half_mse")],
)
def test_outputs_that_suit_the_loss_make_no_warning(output, loss):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastbp.MLP([3, 4, 2], ["relu", output], loss)
        reference.MLP([3, 4, 2], ["relu", output], loss)


# ---------------------------------------------------------------- FASTBP_* settings


@pytest.fixture
def unread_chunk_rows(monkeypatch):
    """``config.CHUNK_ROWS`` as before its first read; restored afterwards."""
    from fastbp._engine import config

    monkeypatch.delattr(config, "CHUNK_ROWS")
    return config


@pytest.mark.parametrize(
    "value, words", [("abc", "must be an integer, got 'abc'"), ("0", "must be positive, got 0")]
)
def test_a_bad_setting_fails_the_first_fit_naming_the_variable(
    monkeypatch, unread_chunk_rows, data, value, words
):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", value)
    net = _bce_net()
    with pytest.raises(ValueError, match="FASTBP_CHUNK_ROWS " + re.escape(words)):
        net.fit(*data, epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="FASTBP_CHUNK_ROWS"):  # not cached: fails again
        _ = unread_chunk_rows.CHUNK_ROWS


def test_a_setting_is_read_on_first_use_then_kept(monkeypatch, unread_chunk_rows):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "8")
    assert unread_chunk_rows.CHUNK_ROWS == 8
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "16")
    assert unread_chunk_rows.CHUNK_ROWS == 8
    assert "CHUNK_ROWS" in dir(unread_chunk_rows)
    with pytest.raises(AttributeError, match="CHUNK_ROW"):
        _ = unread_chunk_rows.CHUNK_ROW


@pytest.mark.slow
def test_import_fastbp_and_its_engine_works_with_a_bad_setting():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        FASTBP_CHUNK_ROWS="abc",
        PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    )
    code = (
        "import numpy as np, fastbp, fastbp._engine.cpu.backend\n"
        "print('imported')\n"
        "net = fastbp.MLP([2, 1], 'identity', 'mse', seed=0)\n"
        "net.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=1, lr=0.1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.stdout == "imported\n", done.stderr
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "ValueError: environment variable FASTBP_CHUNK_ROWS must be an integer, got 'abc'"
    ), done.stderr
