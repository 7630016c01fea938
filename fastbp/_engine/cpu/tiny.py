"""``tiny_run``: whole training runs of notebook-sized networks with the parameters in
registers."""

import numpy as np
from numba import types
from numba.extending import overload

from ..codes import (
    BINARY_CROSS_ENTROPY,
    H_L2,
    H_LR,
    L_ACTIVATION,
    L_BIAS,
    L_FAN_IN,
    L_FAN_OUT,
    L_WEIGHT,
    LEAKY_SLOPE,
    SIGMOID,
)
from ..shuffle import shuffle_order
from ..sources import njit
from .compile_options import NUMPY_ERRORS
from .losses import output_loss
from .scalar import (
    activation,
    derivative,
    sigmoid_bce_delta,
    sigmoid_bce_loss,
    sigmoid_softplus,
)

#
# The networks of hand-written NumPy notebooks (one hidden layer of one or two units, a
# batch of one or two samples, plain gradient descent) spend their time in the engine's
# bookkeeping, not in arithmetic: a 2-2-1 epoch took 204 ns, 33 of them around
# ``sample_pass`` and most of the rest in loops over sizes of 1 or 2 that go through
# memory. ``tiny_run`` trains such a network with its parameters held in registers for
# the whole run, as rows of two lanes, computing each entry with the operations of
# ``sample_pass``, ``compiled_run`` and ``apply_gradient`` in their order: the same bits.
# (Four lanes, for layers up to 4 wide, did more padded work than they saved: 211 ns.)

#: The widest layer ``tiny_run`` takes.
TINY_WIDTH = 2


def cast_like(like, x):
    """``x`` rounded to the type of ``like`` (compiled code only)."""
    raise TypeError("cast_like is for compiled code")


@overload(cast_like)
def _cast_like(like, x):
    if like == types.float32:
        return lambda like, x: np.float32(x)
    return lambda like, x: np.float64(x)


@njit(cache=True, inline="always")
def load_lanes(array, off, count, zero):
    """``array[off:off + count]`` as two lanes, zero past ``count``."""
    return (array[off] if count > 0 else zero, array[off + 1] if count > 1 else zero)


@njit(cache=True, inline="always")
def load_row_lanes(matrix, row, count, zero):
    """``matrix[row, :count]`` as two lanes, zero past ``count`` (no view is built)."""
    return (matrix[row, 0] if count > 0 else zero, matrix[row, 1] if count > 1 else zero)


@njit(cache=True, inline="always")
def store_lanes(array, off, count, v):
    """``array[off:off + count] = v[:count]``."""
    array[off] = v[0]
    if count > 1:
        array[off + 1] = v[1]


@njit(cache=True, inline="always")
def load_rows(params, off, fan_in, fan_out, zero):
    """A ``fan_in`` x ``fan_out`` weight matrix as two rows of lanes, zero past it."""
    return (
        load_lanes(params, off, fan_out, zero),
        load_lanes(params, off + fan_out, fan_out if fan_in > 1 else 0, zero),
    )


@njit(cache=True, inline="always")
def store_rows(params, off, fan_in, fan_out, m):
    """``load_rows`` reversed."""
    store_lanes(params, off, fan_out, m[0])
    if fan_in > 1:
        store_lanes(params, off + fan_out, fan_out, m[1])


@njit(cache=True, inline="always")
def axpy_lanes(z, x, w):
    """``z + x * w`` lane by lane: a multiply, then an add, as ``sample_pass`` rounds."""
    return z[0] + x * w[0], z[1] + x * w[1]


@njit(cache=True, inline="always")
def product_lanes(z, x, m, fan_in):
    """``z + x @ m``, the terms added in row order."""
    z = axpy_lanes(z, x[0], m[0])
    if fan_in > 1:
        z = axpy_lanes(z, x[1], m[1])
    return z


@njit(cache=True, inline="always")
def outer_lanes(g, x, d):
    """``g + outer(x, d)`` by rows: each row's entries gain ``x[k] * d``."""
    return axpy_lanes(g[0], x[0], d), axpy_lanes(g[1], x[1], d)


@njit(cache=True, inline="always")
def back_lane(row, d, fan_out, zero):
    """``sum_j row[j] * d[j]`` from zero, in ``j`` order (``sample_pass``'s delta)."""
    back = zero + row[0] * d[0]
    if fan_out > 1:
        back += row[1] * d[1]
    return back


@njit(cache=True, inline="always")
def finite_lanes(v):
    return np.isfinite(v[0]) and np.isfinite(v[1])


@njit(cache=True, inline="always")
def squares_rows(total, m, fan_in, fan_out):
    """``total`` plus the squared entries of a weight matrix, in ``squared_weights``'s
    order (row by row)."""
    total += m[0][0] * m[0][0]
    if fan_out > 1:
        total += m[0][1] * m[0][1]
    if fan_in > 1:
        total += m[1][0] * m[1][0]
        if fan_out > 1:
            total += m[1][1] * m[1][1]
    return total


@njit(cache=True, inline="always")
def step_lane(p, g, scaled, scale, decayed, decay, lr):
    """``apply_gradient``'s plain SGD step of one entry (``scale``, ``decay`` and ``lr``
    of the parameters' type): the gradient times ``scale`` if ``scaled``, plus ``decay``
    times the weight if ``decayed``, then ``p - lr * g``."""
    if scaled:
        g = g * scale
    if decayed:
        g = g + decay * p
    return p - lr * g


@njit(cache=True, inline="always")
def step_lanes(p, g, scaled, scale, decayed, decay, lr):
    return (
        step_lane(p[0], g[0], scaled, scale, decayed, decay, lr),
        step_lane(p[1], g[1], scaled, scale, decayed, decay, lr),
    )


@njit(cache=True, _nrt=False, error_model=NUMPY_ERRORS)
def tiny_run(
    X,
    Y,
    labels,
    sample_weight,
    order,
    params,
    layout,
    loss,
    loss_scale,
    clip,
    reduce_sum,
    epochs,
    batch_size,
    shuffle,
    shuffle_state,
    hyper,
    step,
    history,
    out_buffer,
):
    """``compiled_run`` for a network of two layers at most ``TINY_WIDTH`` wide, batches
    of fewer than ``SAMPLE_PASS_ROWS`` samples and plain SGD (``run`` decides): the same
    training, results and return value, the parameters held in registers between the
    first load and the last store. ``out_buffer`` (``2 * TINY_WIDTH`` entries) holds an
    output row and its delta for ``output_loss``."""
    n = X.shape[0]
    n_in, hidden = layout[0, L_FAN_IN], layout[0, L_FAN_OUT]
    n_out = layout[1, L_FAN_OUT]
    w1, w2 = layout[0, L_WEIGHT], layout[1, L_WEIGHT]
    bias1, bias2 = layout[0, L_BIAS], layout[1, L_BIAS]
    code1, out_code = layout[0, L_ACTIVATION], layout[1, L_ACTIVATION]
    zero, one = params.dtype.type(0), params.dtype.type(1)
    slope = params.dtype.type(LEAKY_SLOPE)
    zeros = (zero, zero)
    no_rows = (zeros, zeros)
    rate, l2 = params.dtype.type(hyper[H_LR]), hyper[H_L2]
    canonical = out_code == SIGMOID and loss == BINARY_CROSS_ENTROPY
    m1 = load_rows(params, w1, n_in, hidden, zero)
    m2 = load_rows(params, w2, hidden, n_out, zero)
    b1 = load_lanes(params, bias1, hidden if bias1 >= 0 else 0, zero)
    b2 = load_lanes(params, bias2, n_out if bias2 >= 0 else 0, zero)
    saved = (m1, m2, b1, b2)
    saved_step = step[0]
    stacked = order.shape[0] > n
    failed = -1
    for epoch in range(epochs):
        if shuffle:
            shuffle_order(order, shuffle_state)
        base = epoch * n if stacked else 0
        epoch_loss = 0.0
        epoch_norm = 0.0
        ok = True
        for batch_start in range(0, n, batch_size):
            size = min(batch_size, n - batch_start)
            start = base + batch_start
            g1, g2, gb1, gb2 = no_rows, no_rows, zeros, zeros
            total = 0.0
            for b in range(size):
                row = order[start + b]
                x = load_row_lanes(X, row, n_in, zero)
                z1 = product_lanes(b1, x, m1, n_in)
                a1 = (
                    activation(code1, z1[0], zero, slope),
                    activation(code1, z1[1], zero, slope) if hidden > 1 else zero,
                )
                z2 = product_lanes(b2, a1, m2, hidden)
                weight = sample_weight[row] if sample_weight.shape[0] > 0 else 1.0
                scale = loss_scale * weight
                if canonical:  # sigmoid_bce's expressions
                    value = 0.0
                    ys = load_row_lanes(Y, row, n_out, zero)
                    a, softplus = sigmoid_softplus(z2[0])
                    value += sigmoid_bce_loss(z2[0], ys[0], softplus)
                    d2 = (cast_like(zero, sigmoid_bce_delta(a, ys[0]) * scale), zero)
                    if n_out > 1:
                        a, softplus = sigmoid_softplus(z2[1])
                        value += sigmoid_bce_loss(z2[1], ys[1], softplus)
                        d2 = (d2[0], cast_like(zero, sigmoid_bce_delta(a, ys[1]) * scale))
                    total += weight * loss_scale * value
                else:
                    store_lanes(out_buffer, 0, n_out, z2)
                    total += weight * output_loss(
                        out_code,
                        loss,
                        loss_scale,
                        clip,
                        out_buffer,
                        0,
                        n_out,
                        Y,
                        labels,
                        row,
                        weight,
                        TINY_WIDTH,
                    )
                    d2 = load_lanes(out_buffer, TINY_WIDTH, n_out, zero)
                g2 = outer_lanes(g2, a1, d2)
                gb2 = axpy_lanes(gb2, one, d2)
                d1 = (
                    back_lane(m2[0], d2, n_out, zero) * derivative(code1, a1[0], one, zero, slope),
                    back_lane(m2[1], d2, n_out, zero) * derivative(code1, a1[1], one, zero, slope)
                    if hidden > 1
                    else zero,
                )
                g1 = outer_lanes(g1, x, d1)
                gb1 = axpy_lanes(gb1, one, d1)
            loss_sum = 0.0
            loss_sum += total
            norm = 1.0
            if not reduce_sum:
                norm = float(size)
                if sample_weight.shape[0] > 0:
                    norm = 0.0
                    for b in range(start, start + size):
                        norm += sample_weight[order[b]]
                    if norm == 0.0:
                        continue
            batch_loss = loss_sum / norm
            if l2 > 0.0:
                squares = squares_rows(squares_rows(0.0, m1, n_in, hidden), m2, hidden, n_out)
                batch_loss += 0.5 * l2 * squares / norm
            if not np.isfinite(batch_loss):
                ok = False
                break
            epoch_loss += batch_loss if reduce_sum else batch_loss * norm
            epoch_norm += norm
            step[0] += 1
            scaled, decayed = norm != 1.0, l2 > 0.0
            scale, decay = params.dtype.type(1.0 / norm), params.dtype.type(l2 / norm)
            m1 = (
                step_lanes(m1[0], g1[0], scaled, scale, decayed, decay, rate),
                step_lanes(m1[1], g1[1], scaled, scale, decayed, decay, rate),
            )
            m2 = (
                step_lanes(m2[0], g2[0], scaled, scale, decayed, decay, rate),
                step_lanes(m2[1], g2[1], scaled, scale, decayed, decay, rate),
            )
            if bias1 >= 0:
                b1 = step_lanes(b1, gb1, scaled, scale, False, decay, rate)
            if bias2 >= 0:
                b2 = step_lanes(b2, gb2, scaled, scale, False, decay, rate)
        if ok:
            history[epoch] = epoch_loss if reduce_sum else epoch_loss / epoch_norm
            ok = (
                finite_lanes(m1[0])
                and finite_lanes(m1[1])
                and finite_lanes(m2[0])
                and finite_lanes(m2[1])
                and finite_lanes(b1)
                and finite_lanes(b2)
            )
        if not ok:
            m1, m2, b1, b2 = saved
            step[0] = saved_step
            failed = epoch
            break
        if epoch + 1 < epochs:
            saved = (m1, m2, b1, b2)
            saved_step = step[0]
    store_rows(params, w1, n_in, hidden, m1)
    store_rows(params, w2, hidden, n_out, m2)
    if bias1 >= 0:
        store_lanes(params, bias1, hidden, b1)
    if bias2 >= 0:
        store_lanes(params, bias2, n_out, b2)
    return failed


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
