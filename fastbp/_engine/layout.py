"""The flat parameter layout shared by every backend.

All weights and biases of a network live in one 1-D array: for each layer, W_l as a
row-major (fan_in, fan_out) block, then b_l when the network has biases. One table row
per layer says where. Keeping parameters flat lets one compiled kernel serve any depth.
"""

import numpy as np

from . import codes as K

ACTIVATION_CODES = {
    "identity": K.IDENTITY,
    "sigmoid": K.SIGMOID,
    "tanh": K.TANH,
    "relu": K.RELU,
    "leaky_relu": K.LEAKY_RELU,
    "softmax": K.SOFTMAX,
    "exp": K.EXP,
}
OPTIMIZER_CODES = {"sgd": K.SGD, "momentum": K.MOMENTUM, "nesterov": K.NESTEROV, "adam": K.ADAM}


def loss_code(loss, n_out):
    """Kernel code and per-sample scale of a loss name: element losses are averaged over
    the outputs (``half_mse`` halves that), categorical cross-entropy and the half Poisson
    deviance are summed."""
    if loss == "mse":
        return K.SQUARED, 1.0 / n_out
    if loss == "half_mse":
        return K.SQUARED, 0.5 / n_out
    if loss == "bce":
        return K.BINARY_CROSS_ENTROPY, 1.0 / n_out
    if loss == "poisson":
        return K.POISSON, 1.0
    return K.CATEGORICAL_CROSS_ENTROPY, 1.0


def build_layout(sizes, activations, bias):
    """Layout table ``(n_layers, 5)`` and the total number of parameters."""
    rows = []
    offset = 0
    for i, name in enumerate(activations):
        fan_in, fan_out = sizes[i], sizes[i + 1]
        w_off = offset
        offset += fan_in * fan_out
        b_off = -1
        if bias:
            b_off = offset
            offset += fan_out
        rows.append((fan_in, fan_out, w_off, b_off, ACTIVATION_CODES[name]))
    return np.array(rows, dtype=np.int64), offset


# The table's rows as Python ints: slicing with NumPy integers, row by row, took twice as
# long, and every ``weights``, ``biases`` and ``set_params`` call builds its views anew.


def weight_views(params, layout):
    """Views of W_l, shaped (fan_in, fan_out), into the flat ``params``."""
    return [params[w : w + i * o].reshape(i, o) for i, o, w, _, _ in layout.tolist()]


def bias_views(params, layout):
    """Views of b_l into the flat ``params``, or None for a network without biases."""
    if layout[0, K.L_BIAS] < 0:
        return None
    return [params[b : b + o] for _, o, _, b, _ in layout.tolist()]


def join(weights, biases):
    """The flat parameters of ``weights`` and ``biases`` (None for a network without
    biases), arrays of one dtype, in the layout's order: one copy."""
    if biases is None:
        return np.concatenate([w.ravel() for w in weights])
    pieces = []
    for w, b in zip(weights, biases, strict=True):
        pieces += (w.ravel(), b)
    return np.concatenate(pieces)
