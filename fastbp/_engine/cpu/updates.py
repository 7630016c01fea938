"""The optimizer step: the groups' gradients summed in order, then SGD, momentum,
Nesterov or Adam, block by block."""

import numpy as np
from numba import prange

from ..codes import (
    H_BETA1,
    H_BETA2,
    H_EPSILON,
    H_L2,
    H_LR,
    H_MOMENTUM,
    L_FAN_IN,
    L_FAN_OUT,
    L_WEIGHT,
    MOMENTUM,
    NESTEROV,
    SGD,
)
from ..sources import njit
from .compile_options import NUMPY_ERRORS, PRANGE_ONLY

#: Entries of ``params`` one call of ``apply_gradient`` covers: each buffer's slice stays
#: in cache between the update's passes (sum of groups, scale, L2, step), and blocks are
#: fixed, so a parallel update gives the bits of a serial one.
UPDATE_BLOCK = 16384


@njit(cache=True, _nrt=False, error_model=NUMPY_ERRORS)
def apply_gradient(
    grads,
    n_groups,
    params,
    layout,
    norm,
    optimizer,
    hyper,
    step,
    state_m,
    state_v,
    out_grad,
    clear,
    lo,
    hi,
):
    """For entries ``lo:hi``: sum the groups' gradients in group order, divide by
    ``norm``, add the L2 term on weights (not biases) and apply the optimizer step, or,
    when ``out_grad`` is non-empty, store the gradient there and leave the parameters
    alone.

    The sum lands in ``grads[0]``; every branch sits outside the element loops, which
    keeps them vectorized. No fastmath: the loops are elementwise and vectorize without
    it, and with it numba rounded Adam's step differently in freshly compiled and in
    cached code.

    Afterwards the first ``clear`` entries of the groups' buffers (within ``lo:hi``) are
    set to zero: a sparse first layer's weight gradient is scattered into a buffer
    kept clear this way, while its entries are in cache, not by a pass of its own.

    The arithmetic stays in the parameters' dtype, the hyperparameters rounded to it
    first, as NumPy computes ``p -= lr * g`` for a float32 ``p`` and a Python float
    ``lr``: float32 networks updated in float64, converting every entry twice."""
    real = params.dtype.type
    lr = real(hyper[H_LR])
    mu = real(hyper[H_MOMENTUM])
    beta1 = real(hyper[H_BETA1])
    beta2 = real(hyper[H_BETA2])
    eps = real(hyper[H_EPSILON])
    one = real(1)
    g = grads[0]
    lo, hi = np.uint64(lo), np.uint64(hi)
    for s in range(1, n_groups):
        other = grads[s]
        for i in range(lo, hi):
            g[i] += other[i]
    if norm != 1.0:  # single-sample mean and summed batches skip a pass
        scale = real(1.0 / norm)
        for i in range(lo, hi):
            g[i] *= scale
    if hyper[H_L2] > 0.0:
        decay = real(hyper[H_L2] / norm)
        for l in range(layout.shape[0]):
            w_lo = np.uint64(layout[l, L_WEIGHT])
            w_hi = w_lo + np.uint64(layout[l, L_FAN_IN] * layout[l, L_FAN_OUT])
            for i in range(max(lo, w_lo), min(hi, w_hi)):
                g[i] += decay * params[i]
    if out_grad.shape[0] > 0:
        for i in range(lo, hi):
            out_grad[i] = g[i]
    elif optimizer == SGD:
        for i in range(lo, hi):
            params[i] -= lr * g[i]
    elif optimizer == MOMENTUM:
        for i in range(lo, hi):
            state_m[i] = mu * state_m[i] - lr * g[i]
            params[i] += state_m[i]
    elif optimizer == NESTEROV:
        for i in range(lo, hi):
            state_m[i] = mu * state_m[i] - lr * g[i]
            params[i] += mu * state_m[i] - lr * g[i]
    else:
        lr_t = real(
            hyper[H_LR] * np.sqrt(1.0 - hyper[H_BETA2] ** step) / (1.0 - hyper[H_BETA1] ** step)
        )
        for i in range(lo, hi):
            state_m[i] = beta1 * state_m[i] + (one - beta1) * g[i]
            state_v[i] = beta2 * state_v[i] + (one - beta2) * g[i] * g[i]
            params[i] -= lr_t * state_m[i] / (np.sqrt(state_v[i]) + eps)
    stop = min(hi, np.uint64(clear))
    for s in range(n_groups):
        buffer = grads[s]
        for i in range(lo, stop):
            buffer[i] = 0


@njit(parallel=PRANGE_ONLY, cache=True)
def parallel_update(
    grads, n_groups, params, layout, norm, optimizer, hyper, step, state_m, state_v, out_grad, clear
):
    """``apply_gradient`` over every block of ``params``, spread over threads. Only
    networks of many parameters use it: the update then streams every gradient buffer,
    and on one thread it took 14% of a 1024-wide network's epoch."""
    n = params.shape[0]
    for b in prange((n + UPDATE_BLOCK - 1) // UPDATE_BLOCK):
        lo = np.int64(b) * UPDATE_BLOCK
        apply_gradient(
            grads,
            n_groups,
            params,
            layout,
            norm,
            optimizer,
            hyper,
            step,
            state_m,
            state_v,
            out_grad,
            clear,
            lo,
            min(lo + UPDATE_BLOCK, n),
        )


@njit(cache=True, _nrt=False)
def squared_weights(params, layout):
    """Sum of squared weights (biases excluded), for the L2 penalty."""
    total = 0.0
    for l in range(layout.shape[0]):
        lo = layout[l, L_WEIGHT]
        for i in range(lo, lo + layout[l, L_FAN_IN] * layout[l, L_FAN_OUT]):
            total += params[i] * params[i]
    return total


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
