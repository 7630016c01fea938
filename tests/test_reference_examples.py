"""fastbp against the five reference notebooks: hand-written NumPy backpropagation.

Every expected number below is copied literally from the output a notebook
prints (notebooks 000..004), and is compared to the
precision it was printed at: a number printed with d decimals must agree with
fastbp to within half a unit in its last place (``assert_printed``).

Each printed number was checked independently before becoming a fixture: by
re-running the notebook and by central finite differences of the loss the
notebook differentiates.  All agree except one, which is asserted at its correct
value, with a comment giving what the notebook printed and why it differs:

* 001 prints the gradient for w1 (input to hidden) as [0.036545, -0.036545];
  the notebook's chain rule leaves out the output sigmoid's derivative.

How each notebook maps to fastbp:

* 000: MLP([2, 2, 1], "sigmoid", "bce"), one sample.  The notebook stores W2
  as (out, hidden) and applies h @ W2.T, so fastbp gets W2.T and its dW2 / new
  W2 are transposed back before comparing.
* 001: MLP([1, 2, 1], "sigmoid", "half_mse", bias=False), one sample.
* 002: MLP([2, 2, 1], ["relu", "sigmoid"], "bce", reduction="sum"), batch of 2.
  The notebook sums the gradients over the batch but prints the mean loss, so
  the printed loss is history[e] / 2.  The notebook puts 1e-8 inside the logs;
  on its trajectory that moves the loss by less than 2e-8, far below the 4
  printed decimals (the nearest printed value is 1e-5 from a rounding boundary).
* 003: MLP([1, 1, 1], "sigmoid", "mse"), scalars.
* 004: MLP([2, 2, 1], "sigmoid", "half_mse", bias=False).  Its biases are zero
  and never updated.  Its gradients are those of 1/2 (y - y_hat)^2, but it
  prints mean((y - y_hat)^2) as the loss, which is 2 * net.loss(X, Y).

Numbers a notebook prints that fastbp does not expose (the hidden layer's
output, pre-activations, dLoss/dZ) are computed from fastbp's public API; how is
said where each one is checked.
"""

import numpy as np

import fastbp


def assert_printed(actual, printed, decimals):
    """Assert that `actual` matches a value printed with `decimals` decimals."""
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        np.asarray(printed, dtype=np.float64),
        rtol=0,
        atol=0.5 * 10.0**-decimals,
    )


def hidden_output(activation, W1, b1, X):
    """Output of the first layer, from a one-layer fastbp network with the same W1, b1."""
    layer = fastbp.MLP(list(W1.shape), activation, "mse", bias=b1 is not None)
    layer.set_params([W1], None if b1 is None else [b1])
    return layer.forward(X)


# ---------------------------------------------------------------------------
# 000_d005f12d8c04667a.txt: 2-2-1, sigmoid / sigmoid, biases, BCE, one sample,
# one SGD step with lr 0.1.  Printed with NumPy's default 8 decimals (trailing
# zeros dropped: -0.0176291 is -0.01762910).
# ---------------------------------------------------------------------------

X_000 = np.array([[0.5, 0.1]])  # 000: x = [0.5, 0.1]
Y_000 = np.array([[1.0]])  # 000: y_true = 1
W1_000 = np.array([[0.1, 0.2], [0.3, 0.4]])  # 000: W1, (in, hidden)
B1_000 = np.array([0.1, 0.2])  # 000: b1
W2_000 = np.array([[0.5, 0.6]])  # 000: W2, stored (out, hidden)
B2_000 = np.array([0.3])  # 000: b2


def net_000():
    net = fastbp.MLP([2, 2, 1], "sigmoid", "bce")
    net.set_params([W1_000, W2_000.T], [B1_000, B2_000])
    return net


def test_000_forward():
    net = net_000()
    # 000: "Forward Pass Results: [0.71564357]"
    assert_printed(net.forward(X_000), [[0.71564357]], 8)
    # 000: "Hidden Output: [0.54487889 0.58419052]" (one-layer fastbp net)
    assert_printed(hidden_output("sigmoid", W1_000, B1_000, X_000), [[0.54487889, 0.58419052]], 8)


def test_000_gradients():
    net = net_000()
    _, dWs, dbs = net.gradients(X_000, Y_000)
    # 000: "dL_dW1:"
    assert_printed(dWs[0], [[-0.0176291, -0.02072207], [-0.00352582, -0.00414441]], 8)
    # 000: "dL_db1: [-0.03525819 -0.04144415]"
    assert_printed(dbs[0], [-0.03525819, -0.04144415], 8)
    # 000: "dL_dW2: [[-0.15493982 -0.16611833]]" (notebook layout (out, hidden))
    assert_printed(dWs[1].T, [[-0.15493982, -0.16611833]], 8)
    # 000: "dL_db2: [-0.28435643]"
    assert_printed(dbs[1], [-0.28435643], 8)
    # gradients() leaves the parameters alone
    np.testing.assert_array_equal(net.weights[0], W1_000)
    np.testing.assert_array_equal(net.weights[1], W2_000.T)


def test_000_one_sgd_step():
    net = net_000()
    hist = net.fit(X_000, Y_000, epochs=1, lr=0.1)
    assert len(hist) == 1
    # 000: "New W1:"
    assert_printed(net.weights[0], [[0.10176291, 0.20207221], [0.30035258, 0.40041444]], 8)
    # 000: "New b1: [0.10352582 0.20414441]"
    assert_printed(net.biases[0], [0.10352582, 0.20414441], 8)
    # 000: "New W2: [[0.51549398 0.61661183]]" (notebook layout (out, hidden))
    assert_printed(net.weights[1].T, [[0.51549398, 0.61661183]], 8)
    # 000: "New b2: [0.32843564]"
    assert_printed(net.biases[1], [0.32843564], 8)
    # set_params copied: training did not touch the fixture arrays
    np.testing.assert_array_equal(W1_000, [[0.1, 0.2], [0.3, 0.4]])
    np.testing.assert_array_equal(W2_000, [[0.5, 0.6]])


# ---------------------------------------------------------------------------
# 001_59cd9330f48271ff.txt: 1-2-1, sigmoid / sigmoid, no biases,
# 1/2 (y_hat - y)^2, one sample.  The loss is printed with repr (full float64
# precision), the gradients with NumPy's default 8 decimals.
# ---------------------------------------------------------------------------

X_001 = np.array([[1.0]])  # 001: x
Y_001 = np.array([[0.0]])  # 001: y_true
W1_001 = np.array([[0.5, -0.5]])  # 001: w1, (1, 2)
W2_001 = np.array([[0.3], [-0.3]])  # 001: w2, (2, 1)


def test_001_loss_and_gradients():
    net = fastbp.MLP([1, 2, 1], "sigmoid", "half_mse", bias=False)
    net.set_params([W1_001, W2_001])
    loss, dWs, dbs = net.gradients(X_001, Y_001)
    assert dbs is None

    # 001: "Loss: 0.13434887664395717".  Printed to all 17 digits; a different
    # but equally correct order of float64 operations may change the last bit
    # or two (the exact value is 0.134348876643957130...), hence rtol 2e-15.
    np.testing.assert_allclose(loss, 0.13434887664395717, rtol=2e-15, atol=0)
    np.testing.assert_allclose(net.loss(X_001, Y_001), 0.13434887664395717, rtol=2e-15, atol=0)

    # 001: "Gradient for w2 (hidden to output): [0.08055583 0.04885958]"
    assert_printed(dWs[1].ravel(), [0.08055583, 0.04885958], 8)

    # 001 prints "Gradient for w1 (input to hidden): [ 0.036545 -0.036545]"
    # (0.03654500 at 8 decimals).  That is wrong: the notebook computes
    # x.T @ ((dL_dy @ w2.T) * sigmoid'(z1)) and leaves out dy_dz2 =
    # sigmoid'(z2) = 0.24966... , so its value is 4.0054 times too large.
    # Finite differences of 1/2 (y_hat - y)^2 (and a 40-digit mpmath
    # evaluation) give +-0.0091239308033, which fastbp must return.
    assert_printed(dWs[0].ravel(), [0.00912393, -0.00912393], 8)


# ---------------------------------------------------------------------------
# 002_3c1171ed82ff8dd7.txt: 2-2-1, ReLU / sigmoid, biases, BCE, batch of 2,
# 1000 epochs of full-batch gradient descent with lr 0.1; gradients summed over
# the batch, mean loss printed every 100 epochs to 4 decimals.
# ---------------------------------------------------------------------------

X_002 = np.array([[0.5, 0.1], [0.9, 0.8]])  # 002: X
Y_002 = np.array([[1.0], [0.0]])  # 002: Y
# 002: W1 = np.random.randn(2, 2) and then W2 = np.random.randn(2, 1) after
# np.random.seed(42); the values those calls return, written out in full.
W1_002 = np.array(
    [
        [0.4967141530112327, -0.13826430117118466],
        [0.6476885381006925, 1.5230298564080254],
    ]
)
W2_002 = np.array([[-0.23415337472333597], [-0.23413695694918055]])
B1_002 = np.zeros(2)  # 002: b1 = np.zeros((1, 2))
B2_002 = np.zeros(1)  # 002: b2 = np.zeros((1, 1))

# 002: "Epoch 0 - Loss: 0.6107" ... "Epoch 900 - Loss: 0.0077"
PRINTED_LOSS_002 = [
    0.6107,  # epoch 0
    0.1022,  # epoch 100
    0.0440,  # epoch 200
    0.0272,  # epoch 300
    0.0193,  # epoch 400
    0.0149,  # epoch 500
    0.0121,  # epoch 600
    0.0102,  # epoch 700
    0.0088,  # epoch 800
    0.0077,  # epoch 900
]


def test_002_initial_weights_are_those_of_seed_42():
    rng = np.random.RandomState(42)  # the stream np.random.seed(42) sets up
    np.testing.assert_array_equal(rng.randn(2, 2), W1_002)
    np.testing.assert_array_equal(rng.randn(2, 1), W2_002)


def test_002_loss_curve():
    net = fastbp.MLP([2, 2, 1], ["relu", "sigmoid"], "bce", reduction="sum")
    net.set_params([W1_002, W2_002], [B1_002, B2_002])
    hist = net.fit(X_002, Y_002, epochs=1000, lr=0.1)
    assert hist.shape == (1000,)
    # reduction="sum": hist[e] is the summed loss of the 2 samples, computed
    # before epoch e's update; the notebook prints the mean.
    assert_printed(hist[0:1000:100] / 2, PRINTED_LOSS_002, 4)


# ---------------------------------------------------------------------------
# 003_27ec3d07db5b8a1b.txt: 1-1-1 scalars, sigmoid / sigmoid, biases,
# (y - y_hat)^2, one sample, one update with lr 0.1; printed to 3 decimals.
# ---------------------------------------------------------------------------

X_003 = np.array([[2.0]])  # 003: x = 2.0
Y_003 = np.array([[1.0]])  # 003: y_true = 1.0
W1_003 = np.array([[0.5]])  # 003: w1
B1_003 = np.array([0.1])  # 003: b1
W2_003 = np.array([[0.3]])  # 003: w2
B2_003 = np.array([0.2])  # 003: b2


def net_003():
    net = fastbp.MLP([1, 1, 1], "sigmoid", "mse")
    net.set_params([W1_003, W2_003], [B1_003, B2_003])
    return net


def test_003_forward():
    net = net_003()
    # Pre-activations are not exposed: z1 and z2 are computed with NumPy from
    # the parameters fastbp holds; a1 comes from a one-layer fastbp net.
    z1 = X_003 @ net.weights[0] + net.biases[0]
    a1 = hidden_output("sigmoid", net.weights[0], net.biases[0], X_003)
    z2 = a1 @ net.weights[1] + net.biases[1]
    # 003: "z1 = 1.100, a1 = 0.750"
    assert_printed(z1, [[1.100]], 3)
    assert_printed(a1, [[0.750]], 3)
    # 003: "z2 = 0.425, y_pred = 0.605"
    assert_printed(z2, [[0.425]], 3)
    assert_printed(net.forward(X_003), [[0.605]], 3)
    # 003: "Loss = 0.156"
    assert_printed(net.loss(X_003, Y_003), 0.156, 3)


def test_003_gradients():
    net = net_003()
    loss, dWs, dbs = net.gradients(X_003, Y_003)
    assert_printed(loss, 0.156, 3)  # 003: "Loss = 0.156"
    assert_printed(dWs[1], [[-0.142]], 3)  # 003: "dLoss/dw2 = -0.142"
    assert_printed(dbs[1], [-0.189], 3)  # 003: "dLoss/db2 = -0.189"
    assert_printed(dWs[0], [[-0.021]], 3)  # 003: "dLoss/dw1 = -0.021"
    assert_printed(dbs[0], [-0.011], 3)  # 003: "dLoss/db1 = -0.011"


def test_003_one_update():
    net = net_003()
    # 003: "w1: 0.500 -> ...", "b1: 0.100 -> ...", "w2: 0.300 -> ...", "b2: 0.200 -> ..."
    assert_printed(net.weights[0], [[0.500]], 3)
    assert_printed(net.biases[0], [0.100], 3)
    assert_printed(net.weights[1], [[0.300]], 3)
    assert_printed(net.biases[1], [0.200], 3)
    net.fit(X_003, Y_003, epochs=1, lr=0.1)
    assert_printed(net.weights[0], [[0.502]], 3)  # 003: "w1: 0.500 -> 0.502"
    assert_printed(net.biases[0], [0.101], 3)  # 003: "b1: 0.100 -> 0.101"
    assert_printed(net.weights[1], [[0.314]], 3)  # 003: "w2: 0.300 -> 0.314"
    assert_printed(net.biases[1], [0.219], 3)  # 003: "b2: 0.200 -> 0.219"


# ---------------------------------------------------------------------------
# 004_c991344b48a469c7.txt: 2-2-1, sigmoid / sigmoid, zero biases never
# updated, one sample; gradients of 1/2 (y - y_hat)^2 but mean((y - y_hat)^2)
# printed as the loss; one update with lr 0.1; everything printed with
# .round(4).
# ---------------------------------------------------------------------------

X_004 = np.array([[0.0, 1.0]])  # 004: X = np.array([[0, 1]])
Y_004 = np.array([[1.0]])  # 004: y_true = np.array([[1]])
# 004: W1 = np.random.uniform(-0.5, 0.5, (2, 2)) and then
# W2 = np.random.uniform(-0.5, 0.5, (2, 1)) after np.random.seed(1); the values
# those calls return, written out in full (the notebook prints them rounded).
W1_004 = np.array(
    [
        [-0.082977995297426, 0.2203244934421581],
        [-0.4998856251826551, -0.19766742736816023],
    ]
)
W2_004 = np.array([[-0.35324410918288696], [-0.4076614052312022]])


def net_004():
    net = fastbp.MLP([2, 2, 1], "sigmoid", "half_mse", bias=False)
    net.set_params([W1_004, W2_004])
    return net


def test_004_initial_weights():
    rng = np.random.RandomState(1)  # the stream np.random.seed(1) sets up
    np.testing.assert_array_equal(rng.uniform(-0.5, 0.5, (2, 2)), W1_004)
    np.testing.assert_array_equal(rng.uniform(-0.5, 0.5, (2, 1)), W2_004)
    net = net_004()
    # 004: "Initial W1: [[-0.083 0.2203] [-0.4999 -0.1977]]"
    assert_printed(net.weights[0], [[-0.083, 0.2203], [-0.4999, -0.1977]], 4)
    # 004: "Initial W2: [[-0.3532] [-0.4077]]"
    assert_printed(net.weights[1], [[-0.3532], [-0.4077]], 4)


def test_004_forward_and_loss():
    net = net_004()
    # 004: "Hidden Layer Output (A1): [[0.3776 0.4507]]" (one-layer fastbp net)
    assert_printed(hidden_output("sigmoid", W1_004, None, X_004), [[0.3776, 0.4507]], 4)
    # 004: "Final Prediction (y_pred): [[0.4214]]"
    assert_printed(net.forward(X_004), [[0.4214]], 4)
    # 004: "Initial MSE Loss: 0.3348", which is mean((y - y_hat)^2) =
    # 2 * half_mse.
    assert_printed(2 * net.loss(X_004, Y_004), 0.3348, 4)


def test_004_gradients():
    net = net_004()
    loss, dWs, dbs = net.gradients(X_004, Y_004)
    assert dbs is None
    assert_printed(2 * loss, 0.3348, 4)  # 004: "Initial MSE Loss: 0.3348"
    # 004: "dLoss/dW2: [[-0.0533] [-0.0636]]"
    assert_printed(dWs[1], [[-0.0533], [-0.0636]], 4)
    # 004: "dLoss/dW1: [[0. 0.] [0.0117 0.0142]]"
    assert_printed(dWs[0], [[0.0, 0.0], [0.0117, 0.0142]], 4)
    # 004: "Change in W1 (dLoss/dW1 * LR): [[0. 0.] [0.0012 0.0014]]"
    assert_printed(0.1 * dWs[0], [[0.0, 0.0], [0.0012, 0.0014]], 4)
    # 004: "Change in W2 (dLoss/dW2 * LR): [[-0.0053] [-0.0064]]"
    assert_printed(0.1 * dWs[1], [[-0.0053], [-0.0064]], 4)


def test_004_errors_at_preactivations():
    # dLoss/dZ is not exposed.  The same network with biases, all zero, has
    # the same forward pass, and its bias gradients are exactly dLoss/dZ1 and
    # dLoss/dZ2 (one sample).
    net = fastbp.MLP([2, 2, 1], "sigmoid", "half_mse", bias=True)
    net.set_params([W1_004, W2_004], [np.zeros(2), np.zeros(1)])
    _, _, dbs = net.gradients(X_004, Y_004)
    assert_printed(dbs[1], [-0.1411], 4)  # 004: "dLoss/dZ2: [[-0.1411]]"
    assert_printed(dbs[0], [0.0117, 0.0142], 4)  # 004: "dLoss/dZ1: [[0.0117 0.0142]]"


def test_004_one_update():
    net = net_004()
    hist = net.fit(X_004, Y_004, epochs=1, lr=0.1)
    # history[0] is the loss before the update; 004: "Initial MSE Loss: 0.3348"
    assert_printed(2 * hist[0], 0.3348, 4)
    # 004: "New W1: [[-0.083 0.2203] [-0.5011 -0.1991]]"
    assert_printed(net.weights[0], [[-0.083, 0.2203], [-0.5011, -0.1991]], 4)
    # 004: "New W2: [[-0.3479] [-0.4013]]"
    assert_printed(net.weights[1], [[-0.3479], [-0.4013]], 4)
    assert net.biases is None
