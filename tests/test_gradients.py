"""``MLP.gradients`` against central finite differences of ``MLP.loss``, and loss values
against formulas written out independently.

Every output activation is paired with every loss it accepts (``poisson`` takes ``exp``
only), with and without biases, for both reductions; each pairing is checked on networks
of 1 to 4 weight layers whose hidden layers, between them, use every hidden activation.
Data is drawn so that finite differences are meaningful: ReLU-like pre-activations stay
away from the kink, and probability losses on outputs that are not sigmoid or softmax see
outputs well inside (0, 1), where the engine's clipping to [eps, 1 - eps] is inactive.
"""

import numpy as np
import pytest

import fastbp

# Every activation meets every loss here, bce on unbounded outputs included.
pytestmark = pytest.mark.filterwarnings("ignore:loss='bce' needs outputs:UserWarning")

OUTPUTS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax", "exp")
LOSSES = ("mse", "half_mse", "bce", "cce", "poisson")
HIDDEN = ("identity", "sigmoid", "tanh", "relu", "leaky_relu")
KINKED = ("relu", "leaky_relu")
REDUCTIONS = ("mean", "sum")

N_SAMPLES = 5
WIDTHS = (3, 4, 5, 4)  # input width, then hidden widths
N_OUT = 3
STEP = 1e-6
RTOL = 1e-6
KINK_MARGIN = 1e-3


def _activate(name, z):
    """Activations written out plainly (independent of both fastbp engines)."""
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.where(z > 0, z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, 0.01 * z)
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if name == "exp":
        return np.exp(z)
    return z


def _pre_activations(weights, biases, activations, X):
    """Pre-activations of every layer, by a plain NumPy forward pass."""
    zs = []
    a = X
    for i, (W, name) in enumerate(zip(weights, activations, strict=True)):
        z = a @ W + (0.0 if biases is None else biases[i])
        zs.append(z)
        a = _activate(name, z)
    return zs


def _needs_probabilities(output, loss):
    """Whether the loss reads the outputs as probabilities that the engine would clip."""
    return loss in ("bce", "cce") and output not in ("sigmoid", "softmax")


def _targets(rng, loss, n, n_out):
    if loss == "bce":
        Y = rng.uniform(0, 1, (n, n_out))
        Y[0, 0], Y[-1, -1] = 0.0, 1.0
        return Y
    if loss == "cce":
        Y = rng.dirichlet(np.ones(n_out), n)
        Y[: n // 2] = np.eye(n_out)[rng.integers(0, n_out, n // 2)]  # some one-hot rows
        Y[-1] *= 1.7  # a row that does not sum to 1
        return Y
    if loss == "poisson":
        Y = rng.poisson(1.5, (n, n_out)).astype(float)
        Y[0, 0], Y[-1, -1] = 0.0, 4.0  # a zero count, whose y log y term is 0
        return Y
    return rng.normal(size=(n, n_out))


def _draw(rng, sizes, activations, loss, bias):
    """Weights, biases, X and Y on which finite differences are trustworthy."""
    output = activations[-1]
    probabilities = _needs_probabilities(output, loss)
    for _ in range(200):
        weights, biases = [], [] if bias else None
        positive = probabilities and not bias
        if positive:
            # Without biases, positive inputs through positive weights keep the outputs
            # positive whatever the hidden activations; they are scaled into (0, 1) below.
            X = rng.uniform(0.2, 1.0, (N_SAMPLES, sizes[0]))
        else:
            X = rng.normal(size=(N_SAMPLES, sizes[0]))
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            if positive:
                weights.append(rng.uniform(0.2, 1.0, (fan_in, fan_out)) / fan_in)
            else:
                weights.append(rng.uniform(-1, 1, (fan_in, fan_out)) * np.sqrt(3.0 / fan_in))
            if bias:
                biases.append(rng.normal(scale=0.5, size=fan_out))
        if probabilities:
            if bias:
                weights[-1] *= 0.05
                biases[-1] = rng.uniform(0.4, 0.6, sizes[-1])
                if output == "exp":
                    biases[-1] = np.log(biases[-1])
            else:
                # Pre-activations in (0, 0.8], or in [-0.8, 0) for exp's outputs below 1.
                top = _pre_activations(weights, biases, activations, X)[-1].max()
                weights[-1] *= (-0.8 if output == "exp" else 0.8) / top
        zs = _pre_activations(weights, biases, activations, X)
        ok = all(
            np.abs(z).min() > KINK_MARGIN and (z > 0).any()
            for z, name in zip(zs, activations, strict=True)
            if name in KINKED
        )
        if probabilities:
            out = _activate(output, zs[-1])
            ok = ok and out.min() > 0.02 and out.max() < 0.98
        if ok:
            return weights, biases, X, _targets(rng, loss, N_SAMPLES, sizes[-1])
    raise AssertionError("no suitable random network drawn in 200 tries")


def _networks(activation_rotation, output):
    """(layer sizes, activations) of depths 1 to 4; the six hidden layers of depths 2, 3
    and 4 together use every hidden activation, in a rotation that varies by case."""
    r = activation_rotation % len(HIDDEN)
    hidden = HIDDEN[r:] + HIDDEN[:r]
    per_depth = [(), (hidden[0],), (hidden[1], hidden[2]), (hidden[3], hidden[4], hidden[0])]
    return [(WIDTHS[: len(h) + 1] + (N_OUT,), h + (output,)) for h in per_depth]


def _finite_differences(net, X, Y, **kwargs):
    """Central differences of ``net.loss`` for every weight and bias, in place."""
    gradient = []
    for view in net.weights + (net.biases or []):
        g = np.empty_like(view)
        for index in np.ndindex(view.shape):
            saved = view[index]
            view[index] = saved + STEP
            up = net.loss(X, Y, **kwargs)
            view[index] = saved - STEP
            down = net.loss(X, Y, **kwargs)
            view[index] = saved
            g[index] = (up - down) / (2 * STEP)
        gradient.append(g)
    return gradient


def _check_network(rng, sizes, activations, loss, bias, reduction, **kwargs):
    weights, biases, X, Y = _draw(rng, sizes, activations, loss, bias)
    net = fastbp.MLP(sizes, activations, loss, bias=bias, reduction=reduction)
    net.set_params(weights, biases)
    if "sample_weight" in kwargs:
        kwargs["sample_weight"] = kwargs["sample_weight"][: X.shape[0]]
    value, dWs, dbs = net.gradients(X, Y, **kwargs)
    assert value == net.loss(X, Y, **kwargs)
    assert (dbs is None) == (not bias)
    analytic = dWs + (dbs or [])
    before = [p.copy() for p in net.weights + (net.biases or [])]
    numeric = _finite_differences(net, X, Y, **kwargs)
    for p, q in zip(before, net.weights + (net.biases or []), strict=True):
        np.testing.assert_array_equal(p, q)  # gradients() and the probing left them alone
    # Rounding in the loss limits central differences to about eps * |loss| / STEP.
    atol = 1e-8 * max(1.0, abs(value))
    for i, (a, n) in enumerate(zip(analytic, numeric, strict=True)):
        assert a.dtype == np.float64 and a.shape == n.shape
        np.testing.assert_allclose(
            a,
            n,
            rtol=RTOL,
            atol=atol,
            err_msg=f"{'dW' if i < len(dWs) else 'db'}[{i % len(dWs)}] of {sizes} "
            f"{activations} {loss} bias={bias} {reduction} {kwargs}",
        )
    assert max(np.abs(a).max() for a in analytic) > 1e-3, "vacuous check: zero gradient"


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("output", OUTPUTS)
def test_gradient_every_pairing(rng, output, loss, bias, reduction):
    if loss == "poisson" and output != "exp":
        with pytest.raises(ValueError, match="poisson.*'exp'"):
            fastbp.MLP((3, N_OUT), output, loss)
        return
    rotation = OUTPUTS.index(output) + LOSSES.index(loss) + 2 * bias + REDUCTIONS.index(reduction)
    for sizes, activations in _networks(rotation, output):
        _check_network(rng, sizes, activations, loss, bias, reduction)


PAIRINGS = [
    ("sigmoid", "bce"),
    ("softmax", "cce"),
    ("identity", "mse"),
    ("tanh", "half_mse"),
    ("relu", "bce"),
    ("leaky_relu", "cce"),
    ("softmax", "mse"),
    ("exp", "poisson"),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("extra", ["l2", "sample_weight", "both"])
@pytest.mark.parametrize("output,loss", PAIRINGS)
def test_gradient_l2_and_sample_weight(rng, output, loss, extra, reduction):
    kwargs = {}
    if extra in ("l2", "both"):
        kwargs["l2"] = 0.3
    if extra in ("sample_weight", "both"):
        sample_weight = rng.uniform(0.1, 3.0, N_SAMPLES)
        sample_weight[1] = 0.0  # a sample that must not count at all
        kwargs["sample_weight"] = sample_weight
    for k, (sizes, activations) in enumerate(_networks(len(kwargs), output)):
        _check_network(rng, sizes, activations, loss, k % 2 == 0, reduction, **kwargs)


@pytest.mark.parametrize(
    "output,loss",
    [
        ("sigmoid", "bce"),
        ("identity", "mse"),
        ("tanh", "half_mse"),
        ("relu", "bce"),
        ("sigmoid", "cce"),
        ("exp", "poisson"),
    ],
)
def test_gradient_single_output(rng, output, loss):
    for hidden in HIDDEN:
        _check_network(rng, (3, 4, 1), (hidden, output), loss, True, "mean")
    _check_network(rng, (3, 1), (output,), loss, False, "sum")


def test_gradient_zero_sample_weight_is_dropping_the_sample(rng):
    sizes, activations = (3, 4, 3), ("tanh", "softmax")
    weights, biases, X, Y = _draw(rng, sizes, activations, "cce", True)
    net = fastbp.MLP(sizes, activations, "cce").set_params(weights, biases)
    sample_weight = np.ones(N_SAMPLES)
    sample_weight[2] = 0.0
    keep = np.arange(N_SAMPLES) != 2
    weighted = net.gradients(X, Y, sample_weight=sample_weight)
    dropped = net.gradients(X[keep], Y[keep])
    np.testing.assert_allclose(weighted[0], dropped[0], rtol=1e-14)
    for a, b in zip(weighted[1] + weighted[2], dropped[1] + dropped[2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-16)


# ---------------------------------------------------------------- loss values


def _expected_loss(output, loss, Z, Y, sample_weight, reduction, l2_term):
    """The documented per-sample losses, from the output pre-activations ``Z``."""
    A = _activate(output, Z)
    n_out = Z.shape[1]
    if loss == "mse":
        per_sample = ((Y - A) ** 2).mean(axis=1)
    elif loss == "half_mse":
        per_sample = 0.5 * ((Y - A) ** 2).mean(axis=1)
    elif loss == "bce":
        per_sample = -(Y * np.log(A) + (1 - Y) * np.log(1 - A)).sum(axis=1) / n_out
    elif loss == "poisson":
        y_log = np.where(Y > 0, Y * np.log(np.where(Y > 0, Y, 1.0) / A), 0.0)
        per_sample = (y_log - Y + A).sum(axis=1)
    else:
        per_sample = -(Y * np.log(A)).sum(axis=1)
    w = np.ones(len(Z)) if sample_weight is None else sample_weight
    total = (w * per_sample).sum() + l2_term
    return total if reduction == "sum" else total / w.sum()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize(
    "output,loss",
    [
        ("identity", "mse"),
        ("tanh", "half_mse"),
        ("sigmoid", "bce"),
        ("softmax", "cce"),
        ("relu", "bce"),
        ("sigmoid", "cce"),
        ("softmax", "mse"),
        ("exp", "poisson"),
        ("exp", "half_mse"),
    ],
)
def test_loss_matches_formula(rng, output, loss, weighted, reduction):
    sizes, activations = (3, 4, 5, N_OUT), ("tanh", "leaky_relu", output)
    weights, biases, X, Y = _draw(rng, sizes, activations, loss, True)
    net = fastbp.MLP(sizes, activations, loss, reduction=reduction).set_params(weights, biases)
    sample_weight = rng.uniform(0.5, 2.0, N_SAMPLES) if weighted else None
    l2 = 0.25
    Z = _pre_activations(weights, biases, activations, X)[-1]
    l2_term = 0.5 * l2 * sum((W**2).sum() for W in weights)
    expected = _expected_loss(output, loss, Z, Y, sample_weight, reduction, 0.0)
    np.testing.assert_allclose(net.loss(X, Y, sample_weight=sample_weight), expected, rtol=1e-13)
    expected = _expected_loss(output, loss, Z, Y, sample_weight, reduction, l2_term)
    np.testing.assert_allclose(
        net.loss(X, Y, sample_weight=sample_weight, l2=l2), expected, rtol=1e-13
    )
    np.testing.assert_allclose(net.forward(X), _activate(output, Z), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bce_sigmoid_large_logits_are_exact(dtype):
    # Logits z = +-800: exp(800) overflows, so only the logit form of the loss is finite.
    net = fastbp.MLP([1, 6], "sigmoid", "bce", dtype=dtype)
    net.set_params([[[800.0, -800.0, 800.0, -800.0, 800.0, -800.0]]], [np.zeros(6)])
    X = np.ones((1, 1))
    Y = np.array([[0.0, 1.0, 1.0, 0.0, 0.5, 0.5]])
    with np.errstate(all="raise"):
        value, dWs, dbs = net.gradients(X, Y)
    # Per output: max(z, 0) - z y + log1p(exp(-|z|)), with exp(-800) == 0 exactly.
    assert value == (800 + 800 + 0 + 0 + 400 + 400) / 6
    # dL/dz = (sigmoid(z) - y) / n_out, and sigmoid(+-800) is exactly 1 or 0.
    expected = np.array([1.0, -1.0, 0.0, 0.0, 0.5, -0.5]) / 6
    np.testing.assert_array_equal(dWs[0], expected.reshape(1, 6).astype(dtype))
    np.testing.assert_array_equal(dbs[0], expected.astype(dtype))
    np.testing.assert_array_equal(net.forward(X), [[1, 0, 1, 0, 1, 0]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cce_softmax_large_logits_are_exact(dtype):
    net = fastbp.MLP([1, 3], "softmax", "cce", dtype=dtype)
    net.set_params([[[1000.0, 0.0, -1000.0]]], [np.zeros(3)])
    X = np.ones((3, 1))
    labels = np.array([0, 1, 2])
    with np.errstate(all="raise"):
        value, dWs, dbs = net.gradients(X, labels)
    # -log softmax(z)_k = max(z) + log(sum(exp(z - max(z)))) - z_k = 1000 - z_k.
    assert value == (0.0 + 1000.0 + 2000.0) / 3
    # dL/dz = softmax(z) - onehot(k), with softmax(z) exactly (1, 0, 0).
    expected = np.array([2.0, -1.0, -1.0]) / 3
    np.testing.assert_array_equal(dWs[0], expected.reshape(1, 3).astype(dtype))
    np.testing.assert_array_equal(dbs[0], expected.astype(dtype))
    np.testing.assert_array_equal(net.forward(X), np.tile([1.0, 0.0, 0.0], (3, 1)))

    # All logits near 1000: only the shift by the largest logit keeps exp finite. The
    # loss 1000 + log(sum) - z_k cancels about three digits against 1000.
    net.set_params([[[1000.0, 999.0, 998.0]]], [np.zeros(3)])
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    log_total = np.log1p(np.exp(-1.0) + np.exp(-2.0))
    np.testing.assert_allclose(net.loss(X, labels), log_total + 1.0, rtol=rtol)
    p = np.exp(-np.arange(3.0) - log_total)
    np.testing.assert_allclose(net.forward(X), np.tile(p, (3, 1)), rtol=rtol)
