"""Output activations and losses: a row at a time, or a whole block for sigmoid with
binary cross-entropy."""

import numpy as np

from ..codes import (
    BINARY_CROSS_ENTROPY,
    CATEGORICAL_CROSS_ENTROPY,
    EXP,
    LEAKY_SLOPE,
    POISSON,
    SIGMOID,
    SOFTMAX,
    SQUARED,
)
from ..sources import njit
from .compile_options import NUMPY_ERRORS
from .scalar import (
    activation,
    derivative,
    exp,
    exp_poisson_delta,
    exp_poisson_loss,
    sigmoid_bce_delta,
    sigmoid_bce_loss,
    sigmoid_softplus,
)

#
# The output layer's row code computes the activations and derivatives with float64
# constants (``0.0 * z``, ``1.0 - a``), as it always has: float32 outputs round through
# float64 here, unlike the per-layer loops of ``elementwise.py``.


@njit(cache=True, _nrt=False)
def output_activation(code, work, o, n_out):
    """Apply the output activation in place to one row of pre-activations."""
    if code == SOFTMAX:
        top = work[o]
        for i in range(1, n_out):
            top = max(top, work[o + i])
        total = 0.0
        for i in range(n_out):
            e = exp(work[o + i] - top)
            work[o + i] = e
            total += e
        for i in range(n_out):
            work[o + i] = work[o + i] / total
    else:
        for i in range(n_out):
            work[o + i] = activation(code, work[o + i], 0.0, LEAKY_SLOPE)


@njit(cache=True, _nrt=False)
def output_loss(code, loss, loss_scale, clip, work, o, n_out, Y, labels, row, weight, d_off):
    """Turn one row of output pre-activations into activations (in place), return the
    sample's loss, and write dL/dz (times ``weight``) to ``work[d_off:d_off + n_out]``.

    Canonical pairs (sigmoid with BCE, softmax with CCE, exp with Poisson) use the exact
    logit forms (the first two never overflow); every other pairing chains dL/da through
    the activation's derivative."""
    sigmoid_bce_pair = code == SIGMOID and loss == BINARY_CROSS_ENTROPY
    exp_poisson_pair = code == EXP and loss == POISSON
    top = 0.0
    log_total = 0.0
    total = 1.0
    if code == SOFTMAX:
        # Each exp(z - top) waits in its delta slot until it is read back as a * total.
        top = work[o]
        for i in range(1, n_out):
            top = max(top, work[o + i])
        total = 0.0
        for i in range(n_out):
            e = exp(work[o + i] - top)
            work[d_off + i] = e
            total += e
        log_total = np.log(total)
    label = labels[row] if labels.shape[0] > 0 else -1
    target_sum = 0.0
    value = 0.0
    for i in range(n_out):
        z = work[o + i]
        y = (1.0 if i == label else 0.0) if label >= 0 else Y[row, i]
        target_sum += y
        if sigmoid_bce_pair:
            a, softplus = sigmoid_softplus(z)
            value += sigmoid_bce_loss(z, y, softplus)
            g = sigmoid_bce_delta(a, y)  # already dL/dz
        elif exp_poisson_pair:
            a = exp(z)
            value += exp_poisson_loss(z, y, a, y * np.log(y) if y > 0.0 else 0.0)
            g = exp_poisson_delta(a, y)  # already dL/dz
        elif code == SOFTMAX and loss == CATEGORICAL_CROSS_ENTROPY:
            a = work[d_off + i] / total
            if y != 0.0:
                value += y * (top + log_total - z)
            g = -y  # completed below to a * sum(y) - y
        else:
            if code == SOFTMAX:
                a = work[d_off + i] / total
            else:
                a = activation(code, z, 0.0, LEAKY_SLOPE)
            if loss == SQUARED:
                value += (a - y) * (a - y)
                g = 2.0 * (a - y)
            elif loss == BINARY_CROSS_ENTROPY:
                ac = min(max(a, clip), 1.0 - clip)
                value -= y * np.log(ac) + (1.0 - y) * np.log(1.0 - ac)
                g = (ac - y) / (ac * (1.0 - ac))
            else:
                ac = max(a, clip)
                if y != 0.0:
                    value -= y * np.log(ac)
                g = -y / ac
        work[o + i] = a
        work[d_off + i] = g
    if code == SOFTMAX and loss == CATEGORICAL_CROSS_ENTROPY:
        for i in range(n_out):
            work[d_off + i] += work[o + i] * target_sum
    elif code == SOFTMAX:
        # Softmax Jacobian-vector product: a_i * (g_i - sum_j g_j a_j).
        inner = 0.0
        for i in range(n_out):
            inner += work[d_off + i] * work[o + i]
        for i in range(n_out):
            work[d_off + i] = work[o + i] * (work[d_off + i] - inner)
    elif not (sigmoid_bce_pair or exp_poisson_pair):
        for i in range(n_out):
            work[d_off + i] *= derivative(code, work[o + i], 1.0, 0.0, LEAKY_SLOPE)
    scale = loss_scale * weight
    for i in range(n_out):
        work[d_off + i] *= scale
    return loss_scale * value


@njit(cache=True, _nrt=False, error_model=NUMPY_ERRORS)
def sigmoid_bce(work, o, d_off, scratch, count, n_out, Y, order, lo, sample_weight, loss_scale):
    """``output_loss`` for sigmoid outputs with binary cross-entropy, over a chunk's
    ``count`` rows at once: returns their summed weighted loss, leaves the activations
    in place and dL/dz (times the weight) at ``d_off``. The transcendental part runs in
    one loop over the whole block, which vectorizes; ``work[scratch:]`` holds its
    softplus terms meanwhile."""
    n = np.uint64(count * n_out)
    zo, do_, so = np.uint64(o), np.uint64(d_off), np.uint64(scratch)
    for t in range(n):
        z = work[zo + t]
        a, softplus = sigmoid_softplus(z)
        work[zo + t] = a
        work[do_ + t] = z
        work[so + t] = softplus
    total = 0.0
    for b in range(count):
        row = order[lo + b]
        weight = sample_weight[row] if sample_weight.shape[0] > 0 else 1.0
        scale = loss_scale * weight
        value = 0.0
        for i in range(n_out):
            t = b * n_out + i
            y = Y[row, i]
            value += sigmoid_bce_loss(work[d_off + t], y, work[scratch + t])
            work[d_off + t] = sigmoid_bce_delta(work[o + t], y) * scale
        total += weight * loss_scale * value
    return total


@njit(cache=True, _nrt=False, inline="always")  # as a call: notebook 1.02-1.04x the time
def block_loss(
    code,
    loss,
    loss_scale,
    clip,
    work,
    o,
    d_off,
    scratch,
    count,
    n_out,
    Y,
    labels,
    order,
    lo,
    sample_weight,
):
    """The summed (weighted) loss of a block of ``count`` output rows, which become
    activations in place, their dL/dz going to ``d_off``: ``sigmoid_bce`` for its pair,
    ``output_loss`` row by row for the rest."""
    if code == SIGMOID and loss == BINARY_CROSS_ENTROPY:
        return sigmoid_bce(
            work, o, d_off, scratch, count, n_out, Y, order, lo, sample_weight, loss_scale
        )
    total = 0.0
    for b in range(count):
        row = order[lo + b]
        weight = sample_weight[row] if sample_weight.shape[0] > 0 else 1.0
        total += weight * output_loss(
            code,
            loss,
            loss_scale,
            clip,
            work,
            o + b * n_out,
            n_out,
            Y,
            labels,
            row,
            weight,
            d_off + b * n_out,
        )
    return total


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
