"""CUDA kernels: the entry point ``run`` of the CPU backend, on an NVIDIA GPU.

``run`` takes the same arguments, updates the same arrays in place and returns the same
value as the CPU engine. It copies the data set to the device once, launches one
persistent kernel for the whole call (one per epoch when shuffling, the permutation being
drawn on the host by the CPU engine's ``shuffle_order``) and copies results back at the
end. The kernel's blocks step through epochs, mini-batches and the phases of each batch
together, separated by grid-wide barriers, so parameters and optimizer state never leave
the device and no launch is paid per batch.

Two schedules, picked by the width of the network:

* narrow networks (every layer at most ``backend.CHUNK_MAX_WIDTH`` wide): a block takes chunks of
  ``TPB`` samples through the forward pass, the loss and the backward pass on its own, one
  thread per output with plain loops, leaving each chunk group's gradient in a partial
  buffer; two grid barriers per batch;
* wide networks: each layer's matrix product is split into shared-memory tiles over all
  blocks (bias as an extra input column of ones, activation or its derivative applied as
  the tile is stored), with a grid barrier between layers; weight gradients of large
  batches are summed per slice of rows.

Every sum has a fixed order that depends on the batch and the network alone: each output
is summed by one thread, partial gradients are added in index order, and block
reductions use a fixed tree. No floating-point atomics are used, so results are bitwise
reproducible and do not depend on the number of blocks.

Keep every CUDA kernel in this module, behind ``backend.run``: the backend is meant to
move to another GPU toolkit without touching the rest of fastbp.
"""

import math

import numpy as np

from .. import codes as K
from .. import formulas as F
from ..sources import CACHE
from .importing import numba_cuda

cuda = numba_cuda()

try:
    from numba.cuda.core import config as _cuda_config
except ImportError:  # numba-cuda releases that keep it elsewhere
    from numba.core import config as _cuda_config

#: True under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which runs each thread as a
#: Python thread and supports a single block per cooperative grid.
SIMULATOR = bool(_cuda_config.ENABLE_CUDASIM)

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX, EXP = (
    K.IDENTITY,
    K.SIGMOID,
    K.TANH,
    K.RELU,
    K.LEAKY_RELU,
    K.SOFTMAX,
    K.EXP,
)
LEAKY_SLOPE = K.LEAKY_SLOPE
SQUARED, BINARY_CROSS_ENTROPY, POISSON = K.SQUARED, K.BINARY_CROSS_ENTROPY, K.POISSON
SGD, MOMENTUM, NESTEROV = K.SGD, K.MOMENTUM, K.NESTEROV

# Block geometry. A tile of TILE x TILE outputs is computed by T x T threads, each owning
# R x R outputs; BK is the depth of one shared-memory stage. The simulator gets the
# smallest geometry, since every simulated thread is a Python thread.
R = 4
T = 4 if SIMULATOR else 16
TPB = T * T
TILE = T * R
BK = 4 if SIMULATOR else 16
LD = TILE + 1  # padded row of a shared tile: stores along BK hit distinct banks
STAGE = BK * LD
RR = R * R
# Elements of the data type that the float64 reduction scratch at the start of the
# dynamic shared buffer may take (TPB float64 are 2 * TPB float32).
RED_SPACE = 2 * TPB
FLOAT64 = np.dtype(np.float64)

#: At most this many partial gradients per batch: chunk groups, or row slices of a batch
#: on the wide schedule.
MAX_CHUNK_GROUPS = 1024
#: Rows per slice of a batch when the wide schedule splits its weight gradients.
SPLIT_ROWS = 2 * TILE if SIMULATOR else 16 * TILE
#: Most entries all partial gradients of the wide schedule may take together.
PART_ENTRIES = 1 << 26
#: Parameters per work item of the update (and of the squared-weight sum for L2).
SEGMENT = TPB * 16

# Modes of the kernel.
TRAIN, GRADIENT, FORWARD = 0, 1, 2

# Entries of the integer settings array ``meta``.
(
    M_N,
    M_BATCH,
    M_N_BATCHES,
    M_EPOCHS,
    M_MODE,
    M_CHUNKED,
    M_LOSS,
    M_REDUCE_SUM,
    M_OPTIMIZER,
    M_STEP0,
    M_HAS_LABELS,
    M_HAS_WEIGHTS,
    M_MAX_OUT,
    M_N_SQ,
    M_N_UPDATE,
) = range(15)
META_SIZE = 15

# Entries of the float64 settings array ``reals``.
(F_LR, F_MOMENTUM, F_BETA1, F_BETA2, F_EPSILON, F_L2, F_LOSS_SCALE, F_CLIP, F_TOTAL_NORM) = range(9)

# Entries of ``status``: the epoch that failed (-1 while none has), and a flag raised
# when the current epoch's loss or parameters are not finite.
S_FAILED, S_BAD = 0, 1


# ---------------------------------------------------------------- scalar math
# The shared formulas of the activations, their derivatives and the sigmoid/BCE and
# exp/Poisson losses (``formulas.py``), compiled for the device over libdevice's exp and
# tanh rather than the CPU's branch-free versions: CUDA results are compared with the
# CPU's within tolerances, not bit for bit. (numba-cuda compiles the CPU versions too, bit
# casts included.)


@cuda.jit(device=True)
def sigmoid(z):
    """1 / (1 + exp(-z)), from an exp that never overflows."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


activation = cuda.jit(device=True)(F.activation_over(sigmoid, math.tanh, math.exp))
derivative = cuda.jit(device=True)(F.derivative)
sigmoid_bce_loss = cuda.jit(device=True)(F.sigmoid_bce_loss)
sigmoid_bce_delta = cuda.jit(device=True)(F.sigmoid_bce_delta)
exp_poisson_loss = cuda.jit(device=True)(F.exp_poisson_loss)
exp_poisson_delta = cuda.jit(device=True)(F.exp_poisson_delta)


@cuda.jit(device=True)
def activate(code, z):
    """Elementwise activation, with the CPU output layer's float64 constants."""
    return activation(code, z, 0.0, LEAKY_SLOPE)


@cuda.jit(device=True)
def derivative_from_output(code, a):
    """d activation / dz from the output ``a``, with float64 constants."""
    return derivative(code, a, 1.0, 0.0, LEAKY_SLOPE)


@cuda.jit(device=True)
def output_activation(code, z, o, n_out, out, row):
    """Output activations of one row of pre-activations ``z[o:o + n_out]`` into ``out[row]``."""
    if code == SOFTMAX:
        top = z[o]
        for i in range(1, n_out):
            top = max(top, z[o + i])
        total = 0.0
        for i in range(n_out):
            total += math.exp(z[o + i] - top)
        for i in range(n_out):
            out[row, i] = math.exp(z[o + i] - top) / total
    else:
        for i in range(n_out):
            out[row, i] = activate(code, z[o + i])


@cuda.jit(device=True)
def output_loss(
    code, loss, loss_scale, clip, work, o, n_out, Y, labels, has_labels, row, weight, delta, d_off
):
    """One sample's loss, as the CPU kernels' ``output_loss``: activations replace the
    pre-activations ``work[o:o + n_out]`` and dL/dz times ``weight`` goes to
    ``delta[d_off:d_off + n_out]``."""
    top = 0.0
    log_total = 0.0
    if code == SOFTMAX:
        top = work[o]
        for i in range(1, n_out):
            top = max(top, work[o + i])
        total = 0.0
        for i in range(n_out):
            total += math.exp(work[o + i] - top)
        log_total = math.log(total)
    label = labels[row] if has_labels else -1
    target_sum = 0.0
    value = 0.0
    for i in range(n_out):
        z = work[o + i]
        a = math.exp(z - top - log_total) if code == SOFTMAX else activate(code, z)
        y = (1.0 if i == label else 0.0) if label >= 0 else Y[row, i]
        target_sum += y
        if loss == SQUARED:
            value += (a - y) * (a - y)
            g = 2.0 * (a - y)
        elif loss == POISSON:  # with an exp output only
            value += exp_poisson_loss(z, y, a, y * math.log(y) if y > 0.0 else 0.0)
            g = exp_poisson_delta(a, y)
        elif loss == BINARY_CROSS_ENTROPY:
            if code == SIGMOID:
                value += sigmoid_bce_loss(z, y, max(z, 0.0) + math.log1p(math.exp(-abs(z))))
                g = sigmoid_bce_delta(a, y)
            else:
                ac = min(max(a, clip), 1.0 - clip)
                value -= y * math.log(ac) + (1.0 - y) * math.log(1.0 - ac)
                g = (ac - y) / (ac * (1.0 - ac))
        else:
            if code == SOFTMAX:
                if y != 0.0:
                    value += y * (top + log_total - z)
                g = -y
            else:
                ac = max(a, clip)
                if y != 0.0:
                    value -= y * math.log(ac)
                g = -y / ac
        work[o + i] = a
        delta[d_off + i] = g
    if code == SOFTMAX and loss != SQUARED and loss != BINARY_CROSS_ENTROPY:
        for i in range(n_out):
            delta[d_off + i] += work[o + i] * target_sum
    elif code == SOFTMAX:
        inner = 0.0
        for i in range(n_out):
            inner += delta[d_off + i] * work[o + i]
        for i in range(n_out):
            delta[d_off + i] = work[o + i] * (delta[d_off + i] - inner)
    elif not ((code == SIGMOID and loss == BINARY_CROSS_ENTROPY) or loss == POISSON):
        for i in range(n_out):
            delta[d_off + i] *= derivative_from_output(code, work[o + i])
    scale = loss_scale * weight
    for i in range(n_out):
        delta[d_off + i] *= scale
    return loss_scale * value


# ---------------------------------------------------------------- block helpers


@cuda.jit(device=True)
def barrier(n_blocks):
    """Wait for every thread of the grid (of the block alone when there is one)."""
    if n_blocks == 1:
        cuda.syncthreads()
    else:
        cuda.cg.this_grid().sync()


@cuda.jit(device=True)
def block_sum(red, value):
    """Sum of ``value`` over the block's threads by a fixed tree; every thread gets it."""
    tid = cuda.threadIdx.x
    red[tid] = value
    cuda.syncthreads()
    half = TPB // 2
    while half > 0:
        if tid < half:
            red[tid] += red[tid + half]
        cuda.syncthreads()
        half //= 2
    total = red[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def array_sum(values, count, red):
    """Sum of ``values[:count]`` (float64): strided per thread, then a fixed tree."""
    s = 0.0
    for i in range(cuda.threadIdx.x, count, TPB):
        s += values[i]
    return block_sum(red, s)


@cuda.jit(device=True)
def multiply_tile(sA, sB, acc, bv):
    """``acc += sA^T sB`` over one stage: thread (ty, tx) owns rows ty + T*i, columns
    tx + T*j of the tile."""
    tid = cuda.threadIdx.x
    tx = tid % T
    ty = tid // T
    for kk in range(BK):
        for j in range(R):
            bv[j] = sB[kk * LD + tx + T * j]
        for i in range(R):
            a = sA[kk * LD + ty + T * i]
            for j in range(R):
                acc[i * R + j] += a * bv[j]


# ---------------------------------------------------------------- tiles


@cuda.jit(device=True)
def forward_tile(X, order, ostart, acts, aoff, params, layout, l, b0, b_end, j0, sA, sB, acc, bv):
    """Outputs of layer ``l`` for batch rows ``b0 .. b0 + TILE`` (below ``b_end``) and units
    ``j0 .. j0 + TILE``: ``[A, 1] @ [W; b]``, activated unless ``l`` is the output layer
    (whose pre-activations the loss needs)."""
    tid = cuda.threadIdx.x
    fi = layout[l, K.L_FAN_IN]
    fo = layout[l, K.L_FAN_OUT]
    w_off = layout[l, K.L_WEIGHT]
    depth = fi + 1 if layout[l, K.L_BIAS] >= 0 else fi
    in_off = aoff[l - 1] if l > 0 else 0
    for q in range(RR):
        acc[q] = 0
    for k0 in range(0, depth, BK):
        for e in range(tid, BK * TILE, TPB):
            kk = e % BK
            b = b0 + e // BK
            k = k0 + kk
            s = kk * LD + e // BK
            if b >= b_end or k >= depth:
                sA[s] = 0
            elif k == fi:
                sA[s] = 1
            elif l == 0:
                sA[s] = X[order[ostart + b], k]
            else:
                sA[s] = acts[in_off + b * fi + k]
        for e in range(tid, BK * TILE, TPB):
            nn = e % TILE
            k = k0 + e // TILE
            s = (e // TILE) * LD + nn
            if k < depth and j0 + nn < fo:
                sB[s] = params[w_off + k * fo + j0 + nn]
            else:
                sB[s] = 0
        cuda.syncthreads()
        multiply_tile(sA, sB, acc, bv)
        cuda.syncthreads()
    hidden = l < layout.shape[0] - 1
    code = layout[l, K.L_ACTIVATION]
    out_off = aoff[l]
    tx = tid % T
    ty = tid // T
    for i in range(R):
        b = b0 + ty + T * i
        if b < b_end:
            for j in range(R):
                u = j0 + tx + T * j
                if u < fo:
                    z = acc[i * R + j]
                    if hidden:
                        acts[out_off + b * fo + u] = activate(code, z)
                    else:
                        acts[out_off + b * fo + u] = z


@cuda.jit(device=True)
def weight_grad_tile(
    X,
    order,
    ostart,
    acts,
    aoff,
    delta,
    d_off,
    layout,
    l,
    r0,
    r_end,
    k0m,
    j0,
    part,
    p_off,
    accumulate,
    sA,
    sB,
    acc,
    bv,
):
    """Gradient of layer ``l``'s weights (and bias, as input row ``fan_in``) summed over
    batch rows ``r0 .. r_end``: rows ``k0m ..`` and columns ``j0 ..`` of ``[A, 1]^T D``,
    written (or, with ``accumulate``, added) to ``part[p_off + w_off + ...]``."""
    tid = cuda.threadIdx.x
    fi = layout[l, K.L_FAN_IN]
    fo = layout[l, K.L_FAN_OUT]
    w_off = layout[l, K.L_WEIGHT]
    depth = fi + 1 if layout[l, K.L_BIAS] >= 0 else fi
    in_off = aoff[l - 1] if l > 0 else 0
    for q in range(RR):
        acc[q] = 0
    for s0 in range(r0, r_end, BK):
        for e in range(tid, BK * TILE, TPB):
            mm = e % TILE
            b = s0 + e // TILE
            k = k0m + mm
            s = (e // TILE) * LD + mm
            if b >= r_end or k >= depth:
                sA[s] = 0
            elif k == fi:
                sA[s] = 1
            elif l == 0:
                sA[s] = X[order[ostart + b], k]
            else:
                sA[s] = acts[in_off + b * fi + k]
        for e in range(tid, BK * TILE, TPB):
            nn = e % TILE
            b = s0 + e // TILE
            s = (e // TILE) * LD + nn
            if b < r_end and j0 + nn < fo:
                sB[s] = delta[d_off + b * fo + j0 + nn]
            else:
                sB[s] = 0
        cuda.syncthreads()
        multiply_tile(sA, sB, acc, bv)
        cuda.syncthreads()
    tx = tid % T
    ty = tid // T
    for i in range(R):
        k = k0m + ty + T * i
        if k < depth:
            for j in range(R):
                u = j0 + tx + T * j
                if u < fo:
                    p = p_off + w_off + k * fo + u
                    if accumulate:
                        part[p] = part[p] + acc[i * R + j]
                    else:
                        part[p] = acc[i * R + j]


@cuda.jit(device=True)
def input_delta_tile(
    acts, aoff, delta, d_off, d_prev, params, layout, l, b0, b_end, k0n, sA, sB, acc, bv
):
    """dL/dz of layer ``l - 1`` for batch rows ``b0 ..`` and units ``k0n ..``:
    ``(D @ W^T) * act'(A)`` with the weights as they were before this batch's update."""
    tid = cuda.threadIdx.x
    fi = layout[l, K.L_FAN_IN]
    fo = layout[l, K.L_FAN_OUT]
    w_off = layout[l, K.L_WEIGHT]
    for q in range(RR):
        acc[q] = 0
    for j0 in range(0, fo, BK):
        for e in range(tid, BK * TILE, TPB):
            kk = e % BK
            b = b0 + e // BK
            s = kk * LD + e // BK
            if b < b_end and j0 + kk < fo:
                sA[s] = delta[d_off + b * fo + j0 + kk]
            else:
                sA[s] = 0
        for e in range(tid, BK * TILE, TPB):
            kk = e % BK
            k = k0n + e // BK
            s = kk * LD + e // BK
            if k < fi and j0 + kk < fo:
                sB[s] = params[w_off + k * fo + j0 + kk]
            else:
                sB[s] = 0
        cuda.syncthreads()
        multiply_tile(sA, sB, acc, bv)
        cuda.syncthreads()
    code = layout[l - 1, K.L_ACTIVATION]
    a_off = aoff[l - 1]
    tx = tid % T
    ty = tid // T
    for i in range(R):
        b = b0 + ty + T * i
        if b < b_end:
            for j in range(R):
                k = k0n + tx + T * j
                if k < fi:
                    d_prev[b * fi + k] = acc[i * R + j] * derivative_from_output(
                        code, acts[a_off + b * fi + k]
                    )


# ---------------------------------------------------------------- whole-batch pieces


@cuda.jit(device=True)
def delta_offset(layout, l, rows, max_out):
    """Where layer ``l``'s dL/dz starts: two buffers alternate from the output layer down."""
    return ((layout.shape[0] - 1 - l) % 2) * rows * max_out


@cuda.jit(device=True)
def loss_rows(Y, labels, sw, order, ostart, acts, aoff, delta, layout, meta, reals, r0, r_end, red):
    """Loss and output deltas of batch rows ``r0 .. r_end`` (one per thread); returns their
    weighted loss sum, reduced over the block by a fixed tree."""
    n_layers = layout.shape[0]
    n_out = layout[n_layers - 1, K.L_FAN_OUT]
    code = layout[n_layers - 1, K.L_ACTIVATION]
    z_off = aoff[n_layers - 1]
    d_off = delta_offset(layout, n_layers - 1, meta[M_BATCH], meta[M_MAX_OUT])
    has_weights = meta[M_HAS_WEIGHTS] != 0
    total = 0.0
    for b in range(r0 + cuda.threadIdx.x, r_end, TPB):
        row = order[ostart + b]
        weight = sw[row] if has_weights else 1.0
        total += weight * output_loss(
            code,
            meta[M_LOSS],
            reals[F_LOSS_SCALE],
            reals[F_CLIP],
            acts,
            z_off + b * n_out,
            n_out,
            Y,
            labels,
            meta[M_HAS_LABELS] != 0,
            row,
            weight,
            delta,
            d_off + b * n_out,
        )
    return block_sum(red, total)


@cuda.jit(device=True)
def output_rows(order, ostart, acts, aoff, layout, r0, r_end, out):
    """Output activations of batch rows ``r0 .. r_end`` into ``out`` at their data rows."""
    n_layers = layout.shape[0]
    n_out = layout[n_layers - 1, K.L_FAN_OUT]
    code = layout[n_layers - 1, K.L_ACTIVATION]
    for b in range(r0 + cuda.threadIdx.x, r_end, TPB):
        output_activation(code, acts, aoff[n_layers - 1] + b * n_out, n_out, out, order[ostart + b])


@cuda.jit(device=True)
def weight_segment(layout, item):
    """``(lo, hi)`` of work item ``item`` of the squared-weight sum (weights only)."""
    for l in range(layout.shape[0]):
        lo = layout[l, K.L_WEIGHT]
        size = layout[l, K.L_FAN_IN] * layout[l, K.L_FAN_OUT]
        count = (size + SEGMENT - 1) // SEGMENT
        if item < count:
            return lo + item * SEGMENT, min(lo + size, lo + (item + 1) * SEGMENT), True
        item -= count
    return 0, 0, False


@cuda.jit(device=True)
def update_segment(layout, item):
    """``(lo, hi, is_weight)`` of work item ``item`` of the update, in parameter order."""
    for r in range(2 * layout.shape[0]):
        l = r // 2
        if r % 2 == 0:
            lo = layout[l, K.L_WEIGHT]
            size = layout[l, K.L_FAN_IN] * layout[l, K.L_FAN_OUT]
        else:
            lo = layout[l, K.L_BIAS]
            size = layout[l, K.L_FAN_OUT] if lo >= 0 else 0
        count = (size + SEGMENT - 1) // SEGMENT
        if item < count:
            return lo + item * SEGMENT, min(lo + size, lo + (item + 1) * SEGMENT), r % 2 == 0
        item -= count
    return 0, 0, False


@cuda.jit(device=True)
def squared_weights_item(params, layout, item, sq_part, red):
    """One segment's sum of squared weights, for the L2 term of the batch loss."""
    lo, hi, _ = weight_segment(layout, item)
    s = 0.0
    for i in range(lo + cuda.threadIdx.x, hi, TPB):
        p = params[i]
        s += p * p
    total = block_sum(red, s)
    if cuda.threadIdx.x == 0:
        sq_part[item] = total


@cuda.jit(device=True)
def update_item(
    params, state_m, state_v, part, n_parts, layout, meta, reals, norm, step, item, out_grad
):
    """Sum one segment's partial gradients in order, divide by ``norm``, add L2 on weights
    and step the optimizer (or store the gradient), as the CPU kernels' ``apply_gradient``."""
    lo, hi, is_weight = update_segment(layout, item)
    n_params = params.shape[0]
    optimizer = meta[M_OPTIMIZER]
    lr = reals[F_LR]
    mu = reals[F_MOMENTUM]
    beta1 = reals[F_BETA1]
    beta2 = reals[F_BETA2]
    eps = reals[F_EPSILON]
    l2 = reals[F_L2] if is_weight else 0.0
    lr_t = lr
    if optimizer == K.ADAM:
        lr_t = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
    gradient_only = meta[M_MODE] == GRADIENT
    for i in range(lo + cuda.threadIdx.x, hi, TPB):
        g = part[i]
        for s in range(1, n_parts):
            g += part[s * n_params + i]
        g = g / norm
        if l2 > 0.0:
            g += l2 * params[i] / norm
        if gradient_only:
            out_grad[i] = g
        elif optimizer == SGD:
            params[i] -= lr * g
        elif optimizer == MOMENTUM:
            v = mu * state_m[i] - lr * g
            state_m[i] = v
            params[i] += v
        elif optimizer == NESTEROV:
            v = mu * state_m[i] - lr * g
            state_m[i] = v
            params[i] += mu * v - lr * g
        else:
            m = beta1 * state_m[i] + (1.0 - beta1) * g
            v = beta2 * state_v[i] + (1.0 - beta2) * g * g
            state_m[i] = m
            state_v[i] = v
            params[i] -= lr_t * m / (math.sqrt(v) + eps)


# ---------------------------------------------------------------- one batch, two schedules


@cuda.jit(device=True)
def narrow_forward(X, order, ostart, acts, aoff, params, layout, l, r0, r_end):
    """Outputs of layer ``l`` for batch rows ``r0 .. r_end``, one thread per output:
    ``A @ W + b`` summed in input order, activated unless it is the output layer."""
    fi = layout[l, K.L_FAN_IN]
    fo = layout[l, K.L_FAN_OUT]
    w_off = layout[l, K.L_WEIGHT]
    bias = layout[l, K.L_BIAS]
    hidden = l < layout.shape[0] - 1
    code = layout[l, K.L_ACTIVATION]
    in_off = aoff[l - 1] if l > 0 else 0
    out_off = aoff[l]
    for o in range(cuda.threadIdx.x, (r_end - r0) * fo, TPB):
        b = r0 + o // fo
        j = o % fo
        z = X.dtype.type(0)
        if l == 0:
            row = order[ostart + b]
            for k in range(fi):
                z += X[row, k] * params[w_off + k * fo + j]
        else:
            for k in range(fi):
                z += acts[in_off + b * fi + k] * params[w_off + k * fo + j]
        if bias >= 0:
            z += params[bias + j]
        if hidden:
            acts[out_off + b * fo + j] = activate(code, z)
        else:
            acts[out_off + b * fo + j] = z


@cuda.jit(device=True)
def narrow_input_delta(acts, aoff, delta, d_off, d_prev, params, layout, l, r0, r_end):
    """dL/dz of layer ``l - 1`` for batch rows ``r0 .. r_end``, one thread per unit:
    ``(D @ W^T) * act'(A)``."""
    fi = layout[l, K.L_FAN_IN]
    fo = layout[l, K.L_FAN_OUT]
    w_off = layout[l, K.L_WEIGHT]
    code = layout[l - 1, K.L_ACTIVATION]
    a_off = aoff[l - 1]
    for o in range(cuda.threadIdx.x, (r_end - r0) * fi, TPB):
        b = r0 + o // fi
        k = o % fi
        s = delta.dtype.type(0)
        for j in range(fo):
            s += delta[d_off + b * fo + j] * params[w_off + k * fo + j]
        d_prev[b * fi + k] = s * derivative_from_output(code, acts[a_off + b * fi + k])


@cuda.jit(device=True)
def narrow_weight_grad(
    X,
    order,
    ostart,
    acts,
    aoff,
    delta,
    d_off,
    layout,
    l,
    r0,
    r_end,
    part,
    p_off,
    accumulate,
    scratch,
):
    """Gradient of layer ``l``'s weights and bias summed over batch rows ``r0 .. r_end``,
    written (or added) to ``part[p_off + ...]``. When there are fewer weights than
    threads, each weight's rows are split over several threads (row ``r0 + s`` plus
    multiples of the split go to slice ``s``) and the slices added in order."""
    tid = cuda.threadIdx.x
    fi = layout[l, K.L_FAN_IN]
    fo = layout[l, K.L_FAN_OUT]
    w_off = layout[l, K.L_WEIGHT]
    depth = fi + 1 if layout[l, K.L_BIAS] >= 0 else fi
    in_off = aoff[l - 1] if l > 0 else 0
    pairs = depth * fo
    split = 1
    while split * 2 * pairs <= TPB:
        split *= 2
    slots = TPB // split
    piece = tid // slots
    for p0 in range(0, pairs, slots):
        p = p0 + tid % slots
        s = delta.dtype.type(0)
        if p < pairs:
            k = p // fo
            j = p % fo
            for b in range(r0 + piece, r_end, split):
                if k == fi:
                    s += delta[d_off + b * fo + j]
                elif l == 0:
                    s += X[order[ostart + b], k] * delta[d_off + b * fo + j]
                else:
                    s += acts[in_off + b * fi + k] * delta[d_off + b * fo + j]
        scratch[tid] = s
        cuda.syncthreads()
        if tid < slots and p < pairs:
            total = scratch[tid]
            for q in range(1, split):
                total += scratch[q * slots + tid]
            i = p_off + w_off + p
            part[i] = part[i] + total if accumulate else total
        cuda.syncthreads()


@cuda.jit(device=True)
def chunk_pass(
    X,
    Y,
    labels,
    sw,
    order,
    ostart,
    size,
    acts,
    aoff,
    delta,
    part,
    loss_part,
    params,
    layout,
    meta,
    reals,
    group,
    n_groups,
    out,
    scratch,
    red,
):
    """Forward, loss and backward passes of one group of consecutive chunks of ``TPB``
    rows, all in this block; the group's gradient goes to ``part[group]`` and its loss to
    ``loss_part``."""
    n_layers = layout.shape[0]
    rows = meta[M_BATCH]
    max_out = meta[M_MAX_OUT]
    forward_only = meta[M_MODE] == FORWARD
    n_params = params.shape[0]
    n_chunks = (size + TPB - 1) // TPB
    first = group * n_chunks // n_groups
    group_loss = 0.0
    for c in range(first, (group + 1) * n_chunks // n_groups):
        r0 = c * TPB
        r_end = min(r0 + TPB, size)
        for l in range(n_layers):
            narrow_forward(X, order, ostart, acts, aoff, params, layout, l, r0, r_end)
            cuda.syncthreads()
        if forward_only:
            output_rows(order, ostart, acts, aoff, layout, r0, r_end, out)
            continue
        group_loss += loss_rows(
            Y, labels, sw, order, ostart, acts, aoff, delta, layout, meta, reals, r0, r_end, red
        )
        for l in range(n_layers - 1, -1, -1):
            d_off = delta_offset(layout, l, rows, max_out)
            if l > 0:
                narrow_input_delta(
                    acts,
                    aoff,
                    delta,
                    d_off,
                    delta[delta_offset(layout, l - 1, rows, max_out) :],
                    params,
                    layout,
                    l,
                    r0,
                    r_end,
                )
            narrow_weight_grad(
                X,
                order,
                ostart,
                acts,
                aoff,
                delta,
                d_off,
                layout,
                l,
                r0,
                r_end,
                part,
                group * n_params,
                c > first,
                scratch,
            )
    if cuda.threadIdx.x == 0 and not forward_only:
        loss_part[group] = group_loss


@cuda.jit(device=True)
def chunked_batch(
    X,
    Y,
    labels,
    sw,
    order,
    ostart,
    size,
    acts,
    aoff,
    delta,
    part,
    loss_part,
    sq_part,
    params,
    layout,
    meta,
    reals,
    out,
    scratch,
    red,
):
    """One batch on the narrow schedule: chunk groups (and the squared-weight segments of
    the L2 term) spread over the blocks. Returns the number of partial gradients."""
    n_groups = min((size + TPB - 1) // TPB, MAX_CHUNK_GROUPS)
    n_sq = meta[M_N_SQ] if reals[F_L2] > 0.0 and meta[M_MODE] != FORWARD else 0
    for w in range(cuda.blockIdx.x, n_groups + n_sq, cuda.gridDim.x):
        if w < n_groups:
            chunk_pass(
                X,
                Y,
                labels,
                sw,
                order,
                ostart,
                size,
                acts,
                aoff,
                delta,
                part,
                loss_part,
                params,
                layout,
                meta,
                reals,
                w,
                n_groups,
                out,
                scratch,
                red,
            )
        else:
            squared_weights_item(params, layout, w - n_groups, sq_part, red)
    barrier(cuda.gridDim.x)
    return n_groups


@cuda.jit(device=True)
def row_splits(size, n_params):
    """Slices of a batch's rows whose weight gradients the wide schedule sums apart."""
    return max(
        1, min((size + SPLIT_ROWS - 1) // SPLIT_ROWS, MAX_CHUNK_GROUPS, PART_ENTRIES // n_params)
    )


@cuda.jit(device=True)
def layered_batch(
    X,
    Y,
    labels,
    sw,
    order,
    ostart,
    size,
    acts,
    aoff,
    delta,
    part,
    loss_part,
    sq_part,
    params,
    layout,
    meta,
    reals,
    out,
    sA,
    sB,
    acc,
    bv,
    red,
):
    """One batch on the wide schedule: every layer's tiles spread over all blocks, a
    barrier between layers. Returns the numbers of loss and gradient partials."""
    n_layers = layout.shape[0]
    bid = cuda.blockIdx.x
    n_blocks = cuda.gridDim.x
    rows = meta[M_BATCH]
    max_out = meta[M_MAX_OUT]
    forward_only = meta[M_MODE] == FORWARD
    n_bt = (size + TILE - 1) // TILE
    for l in range(n_layers):
        n_ut = (layout[l, K.L_FAN_OUT] + TILE - 1) // TILE
        n_sq = meta[M_N_SQ] if l == 0 and reals[F_L2] > 0.0 and not forward_only else 0
        for w in range(bid, n_bt * n_ut + n_sq, n_blocks):
            if w < n_bt * n_ut:
                forward_tile(
                    X,
                    order,
                    ostart,
                    acts,
                    aoff,
                    params,
                    layout,
                    l,
                    (w // n_ut) * TILE,
                    size,
                    (w % n_ut) * TILE,
                    sA,
                    sB,
                    acc,
                    bv,
                )
            else:
                squared_weights_item(params, layout, w - n_bt * n_ut, sq_part, red)
        barrier(n_blocks)
    n_lc = (size + TPB - 1) // TPB
    if forward_only:
        for w in range(bid, n_lc, n_blocks):
            output_rows(order, ostart, acts, aoff, layout, w * TPB, min(size, (w + 1) * TPB), out)
        return n_lc, 1
    for w in range(bid, n_lc, n_blocks):
        total = loss_rows(
            Y,
            labels,
            sw,
            order,
            ostart,
            acts,
            aoff,
            delta,
            layout,
            meta,
            reals,
            w * TPB,
            min(size, (w + 1) * TPB),
            red,
        )
        if cuda.threadIdx.x == 0:
            loss_part[w] = total
    barrier(n_blocks)
    n_params = params.shape[0]
    n_split = row_splits(size, n_params)
    for l in range(n_layers - 1, -1, -1):
        fi = layout[l, K.L_FAN_IN]
        fo = layout[l, K.L_FAN_OUT]
        depth = fi + 1 if layout[l, K.L_BIAS] >= 0 else fi
        n_ut = (fo + TILE - 1) // TILE
        n_wt = ((depth + TILE - 1) // TILE) * n_ut
        n_kt = (fi + TILE - 1) // TILE
        n_dt = n_bt * n_kt if l > 0 else 0
        d_off = delta_offset(layout, l, rows, max_out)
        d_prev = delta[delta_offset(layout, l - 1, rows, max_out) :] if l > 0 else delta
        for w in range(bid, n_dt + n_wt * n_split, n_blocks):
            if w < n_dt:
                input_delta_tile(
                    acts,
                    aoff,
                    delta,
                    d_off,
                    d_prev,
                    params,
                    layout,
                    l,
                    (w // n_kt) * TILE,
                    size,
                    (w % n_kt) * TILE,
                    sA,
                    sB,
                    acc,
                    bv,
                )
            else:
                tile = (w - n_dt) // n_split
                piece = (w - n_dt) % n_split
                weight_grad_tile(
                    X,
                    order,
                    ostart,
                    acts,
                    aoff,
                    delta,
                    d_off,
                    layout,
                    l,
                    piece * size // n_split,
                    (piece + 1) * size // n_split,
                    (tile // n_ut) * TILE,
                    (tile % n_ut) * TILE,
                    part,
                    piece * n_params,
                    False,
                    sA,
                    sB,
                    acc,
                    bv,
                )
        barrier(n_blocks)
    return n_lc, n_split


# ---------------------------------------------------------------- the kernel


@cuda.jit(cache=CACHE)
def train_kernel(
    X,
    Y,
    labels,
    sw,
    order,
    norms,
    params,
    state_m,
    state_v,
    saved_params,
    saved_m,
    saved_v,
    layout,
    aoff,
    acts,
    delta,
    part,
    loss_part,
    sq_part,
    batch_raw,
    sq_total,
    history,
    status,
    out_grad,
    out,
    meta,
    reals,
    epoch_lo,
    epoch_hi,
):
    """Epochs ``epoch_lo .. epoch_hi`` of training (or one gradient, or one forward pass)
    on a cooperative grid; see ``run``."""
    # One dynamic shared buffer: the float64 reduction scratch, then the two tiles.
    red = cuda.shared.array(0, FLOAT64)
    tiles = cuda.shared.array(0, X.dtype)
    sA = tiles[RED_SPACE : RED_SPACE + STAGE]
    sB = tiles[RED_SPACE + STAGE : RED_SPACE + 2 * STAGE]
    acc = cuda.local.array(RR, X.dtype)
    bv = cuda.local.array(R, X.dtype)
    tid = cuda.threadIdx.x
    bid = cuda.blockIdx.x
    n_blocks = cuda.gridDim.x
    first_thread = cuda.grid(1)
    n_threads = n_blocks * TPB
    n = meta[M_N]
    batch = meta[M_BATCH]
    n_batches = meta[M_N_BATCHES]
    mode = meta[M_MODE]
    n_params = params.shape[0]
    l2 = reals[F_L2]
    reduce_sum = meta[M_REDUCE_SUM] != 0
    for epoch in range(epoch_lo, epoch_hi):
        if status[S_FAILED] >= 0:
            return
        for t in range(n_batches):
            ostart = t * batch
            size = min(batch, n - ostart)
            if meta[M_CHUNKED] != 0:
                n_parts = chunked_batch(
                    X,
                    Y,
                    labels,
                    sw,
                    order,
                    ostart,
                    size,
                    acts,
                    aoff,
                    delta,
                    part,
                    loss_part,
                    sq_part,
                    params,
                    layout,
                    meta,
                    reals,
                    out,
                    sA,
                    red,
                )
                n_loss = n_parts
            else:
                n_loss, n_parts = layered_batch(
                    X,
                    Y,
                    labels,
                    sw,
                    order,
                    ostart,
                    size,
                    acts,
                    aoff,
                    delta,
                    part,
                    loss_part,
                    sq_part,
                    params,
                    layout,
                    meta,
                    reals,
                    out,
                    sA,
                    sB,
                    acc,
                    bv,
                    red,
                )
            if mode == FORWARD:
                return
            norm = norms[t]
            if bid == 0:
                raw = array_sum(loss_part, n_loss, red)
                sq = array_sum(sq_part, meta[M_N_SQ], red) if l2 > 0.0 else 0.0
                if tid == 0:
                    batch_raw[t] = raw
                    sq_total[t] = sq
                    if mode == GRADIENT:
                        value = raw / norm
                        if l2 > 0.0:
                            value += 0.5 * l2 * sq / norm
                        history[0] = value
            step = meta[M_STEP0] + epoch * n_batches + t + 1
            for w in range(bid, meta[M_N_UPDATE], n_blocks):
                update_item(
                    params,
                    state_m,
                    state_v,
                    part,
                    n_parts,
                    layout,
                    meta,
                    reals,
                    norm,
                    step,
                    w,
                    out_grad,
                )
            if mode == GRADIENT:
                return
            barrier(n_blocks)

        # End of the epoch: loss history, finiteness, and the copy to restore on failure.
        for i in range(first_thread, n_params, n_threads):
            if not math.isfinite(params[i]):
                status[S_BAD] = 1
        if bid == 0:
            total = 0.0
            finite = 1
            for t in range(tid, n_batches, TPB):
                value = batch_raw[t] / norms[t]
                if l2 > 0.0:
                    value += 0.5 * l2 * sq_total[t] / norms[t]
                if not math.isfinite(value):
                    finite = 0
                total += value if reduce_sum else value * norms[t]
            total = block_sum(red, total)
            finite = cuda.syncthreads_and(finite)
            if tid == 0:
                if finite:
                    history[epoch] = total / reals[F_TOTAL_NORM]
                else:
                    status[S_BAD] = 1
        barrier(n_blocks)
        if status[S_BAD] != 0:
            for i in range(first_thread, n_params, n_threads):
                params[i] = saved_params[i]
            for i in range(first_thread, state_m.shape[0], n_threads):
                state_m[i] = saved_m[i]
            for i in range(first_thread, state_v.shape[0], n_threads):
                state_v[i] = saved_v[i]
            if first_thread == 0:
                status[S_FAILED] = epoch
            return
        if epoch + 1 < meta[M_EPOCHS]:
            for i in range(first_thread, n_params, n_threads):
                saved_params[i] = params[i]
            for i in range(first_thread, state_m.shape[0], n_threads):
                saved_m[i] = state_m[i]
            for i in range(first_thread, state_v.shape[0], n_threads):
                saved_v[i] = state_v[i]


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
