"""Forward and backward passes of a batch: ``sample_pass`` for batches of a few rows,
``group_pass`` for one chunk group of a larger batch."""

import numpy as np

from ..codes import L_ACTIVATION, L_BIAS, L_FAN_IN, L_FAN_OUT, L_WEIGHT
from ..sources import njit
from .blas import blas_backward, blas_forward, blas_weight_gradient
from .compile_options import NUMPY_ERRORS
from .elementwise import (
    add_bias,
    bias_activation,
    column_sums,
    prefetch_rows,
    row_sums,
    times_derivative,
    transpose,
)
from .losses import block_loss, output_activation
from .products import dot_nn, dot_nt, outer, short_product
from .sparse import sparse_forward, sparse_weight_gradient


@njit(cache=True, _nrt=False, error_model=NUMPY_ERRORS)
def sample_pass(
    X,
    Y,
    labels,
    sample_weight,
    order,
    start,
    size,
    params,
    layout,
    loss,
    loss_scale,
    clip,
    work,
    offs,
    grad,
):
    """Forward and backward passes of a small batch, every product a loop in this
    function: for batches of a few rows the calls of ``group_pass`` between compiled
    functions cost more than the arithmetic. Layer by layer, each loop runs over the
    batch's samples, so that their independent chains (the output's exp and divisions
    above all) overlap. Returns the summed (weighted) loss and leaves the gradient sum in
    ``grad``, the samples added in order as one chunk would. Indices are unsigned, which
    keeps numba's negative-index handling out of the short loops."""
    n_layers = layout.shape[0]
    n_in = np.uint64(layout[0, L_FAN_IN])
    n_out = layout[n_layers - 1, L_FAN_OUT]
    out_code = layout[n_layers - 1, L_ACTIVATION]
    base = 2 * (n_layers + 1)
    rows = np.uint64(size)
    no_bias = np.int64(-1)  # typed: a literal would compile bias_activation twice
    for i in range(np.uint64(grad.shape[0])):
        grad[i] = 0
    a0 = np.uint64(offs[0])
    for b in range(rows):
        row = order[start + b]
        for k in range(n_in):
            work[a0 + b * n_in + k] = X[row, k]
    for l in range(n_layers):
        fan_in = np.uint64(layout[l, L_FAN_IN])
        fan_out = np.uint64(layout[l, L_FAN_OUT])
        w, a, z = np.uint64(layout[l, L_WEIGHT]), np.uint64(offs[l]), np.uint64(offs[l + 1])
        bias = layout[l, L_BIAS]
        for b in range(rows):
            ab, zb = a + b * fan_in, z + b * fan_out
            if bias >= 0:
                for j in range(fan_out):
                    work[zb + j] = params[np.uint64(bias) + j]
            else:
                for j in range(fan_out):
                    work[zb + j] = 0
            for k in range(fan_in):
                x = work[ab + k]
                row_w = w + k * fan_out
                for j in range(fan_out):
                    work[zb + j] += x * params[row_w + j]
        if l < n_layers - 1:
            bias_activation(
                work,
                offs[l + 1],
                size,
                layout[l, L_FAN_OUT],
                params,
                no_bias,
                layout[l, L_ACTIVATION],
            )

    total = block_loss(
        out_code,
        loss,
        loss_scale,
        clip,
        work,
        offs[n_layers],
        offs[base],
        offs[base + 1],
        size,
        n_out,
        Y,
        labels,
        order,
        start,
        sample_weight,
    )

    cur = 0
    for l in range(n_layers - 1, -1, -1):
        fan_in = np.uint64(layout[l, L_FAN_IN])
        fan_out = np.uint64(layout[l, L_FAN_OUT])
        w, a = np.uint64(layout[l, L_WEIGHT]), np.uint64(offs[l])
        d = np.uint64(offs[base + cur])
        for b in range(rows):
            ab, db = a + b * fan_in, d + b * fan_out
            for k in range(fan_in):
                x = work[ab + k]
                row_w = w + k * fan_out
                for j in range(fan_out):
                    grad[row_w + j] += x * work[db + j]
        if layout[l, L_BIAS] >= 0:
            bo = np.uint64(layout[l, L_BIAS])
            for b in range(rows):
                db = d + b * fan_out
                for j in range(fan_out):
                    grad[bo + j] += work[db + j]
        if l == 0:
            break
        cur = 1 - cur
        d_prev = np.uint64(offs[base + cur])
        for b in range(rows):
            db, pb = d + b * fan_out, d_prev + b * fan_in
            for k in range(fan_in):
                row_w = w + k * fan_out
                back = work.dtype.type(0)
                for j in range(fan_out):
                    back += params[row_w + j] * work[db + j]
                work[pb + k] = back
        times_derivative(
            work, offs[base + cur], offs[l], size, layout[l, L_FAN_IN], layout[l - 1, L_ACTIVATION]
        )
    return total


@njit(cache=True, _nrt=False)
def group_pass(
    group,
    n_groups,
    n_chunks,
    X,
    indptr,
    indices,
    values,
    Y,
    labels,
    sample_weight,
    order,
    start,
    size,
    chunk,
    params,
    wt,
    layout,
    blas,
    loss,
    loss_scale,
    clip,
    work,
    offs,
    grad,
    out,
):
    """Forward and backward passes over one group's consecutive chunks of a batch.

    Returns the group's summed (weighted) loss and leaves its gradient sum in ``grad``
    (the first chunk writes, later ones add). With a non-empty ``out`` it only runs the
    forward pass and copies the output activations there.

    ``work`` holds, for one chunk, every layer's activations sample-major and transposed
    (the transposes feed dW = A^T @ D; a layer of one output takes its dW, a row, as
    d^T @ A without them) and two delta buffers with their transposes;
    ``offs`` says where (``plan.work_offsets``). Buffers are addressed by flat
    offsets: building 2-D views costs about 70 ns each, more than a tiny layer's work.

    Sparse input comes as CSR arrays ``indptr``, ``indices``, ``values`` (``X`` then has
    no columns; dense input passes them empty): the first layer's products are
    ``sparse.sparse_forward`` and ``sparse.sparse_weight_gradient``, and the work buffer
    holds no input rows."""
    n_layers = layout.shape[0]
    n_in = layout[0, L_FAN_IN]
    n_out = layout[n_layers - 1, L_FAN_OUT]
    out_code = layout[n_layers - 1, L_ACTIVATION]
    base = 2 * (n_layers + 1)
    first = group * n_chunks // n_groups
    training = out.shape[0] == 0
    x_flat = X.reshape(X.size)  # a view: X is C-contiguous
    sparse = indptr.shape[0] > 0
    overwrite = np.bool_(False)  # a typed False: a literal one would compile products twice
    total = 0.0
    for c in range(first, (group + 1) * n_chunks // n_groups):
        lo = start + c * chunk
        count = min(chunk, start + size - lo)

        # Forward: the chunk's rows, read in place when they are consecutive rows of X,
        # else gathered; then z = A @ W + b by layer.
        # Sparse rows are read where they are stored, by sparse_forward.
        source, a_in = work, offs[0]
        first_row = order[lo]
        consecutive = not sparse
        for b in range(count if consecutive else 0):
            consecutive = consecutive and order[lo + b] == first_row + b
        if consecutive:
            source, a_in = x_flat, first_row * n_in
        elif not sparse:
            prefetch_rows(x_flat, order, lo, lo + count, n_in)
            for b in range(count):
                row = order[lo + b]
                for k in range(n_in):
                    work[a_in + b * n_in + k] = X[row, k]
        if training and not sparse and not blas[0] and layout[0, L_FAN_OUT] > 1:
            transpose(source, a_in, count, n_in, work, offs[n_layers + 1], chunk)
        for l in range(n_layers):
            fan_in = layout[l, L_FAN_IN]
            fan_out = layout[l, L_FAN_OUT]
            bias = layout[l, L_BIAS]
            code = layout[l, L_ACTIVATION]
            z_out = offs[l + 1]
            t_out = offs[n_layers + 2 + l]
            a, a_off = (source, a_in) if l == 0 else (work, offs[l])
            if l == 0 and sparse:
                sparse_forward(
                    indptr,
                    indices,
                    values,
                    order,
                    lo,
                    count,
                    params,
                    layout[0, L_WEIGHT],
                    fan_out,
                    work,
                    z_out,
                )
            elif blas[l]:
                blas_forward(
                    a, a_off, params, layout[l, L_WEIGHT], work, z_out, count, fan_in, fan_out
                )
            elif short_product(fan_out, fan_in):
                dot_nn(
                    a,
                    a_off,
                    fan_in,
                    params,
                    layout[l, L_WEIGHT],
                    fan_out,
                    work,
                    z_out,
                    fan_out,
                    count,
                    fan_out,
                    fan_in,
                    overwrite,
                )
            else:
                dot_nt(
                    a,
                    a_off,
                    fan_in,
                    wt,
                    layout[l, L_WEIGHT],
                    fan_in,
                    work,
                    z_out,
                    fan_out,
                    count,
                    fan_out,
                    fan_in,
                    overwrite,
                )
            if l < n_layers - 1:
                bias_activation(work, z_out, count, fan_out, params, bias, code)
                if training and not blas[l + 1] and layout[l + 1, L_FAN_OUT] > 1:
                    transpose(work, z_out, count, fan_out, work, t_out, chunk)
            else:  # the output activation comes with the loss
                add_bias(work, z_out, count, fan_out, params, bias)

        a_last = offs[n_layers]
        if not training:
            for b in range(count):
                output_activation(out_code, work, a_last + b * n_out, n_out)
                for i in range(n_out):
                    out[order[lo + b], i] = work[a_last + b * n_out + i]
            continue

        # Loss and output delta dL/dz, sample-major.
        total += block_loss(
            out_code,
            loss,
            loss_scale,
            clip,
            work,
            a_last,
            offs[base],
            offs[base + 1],
            count,
            n_out,
            Y,
            labels,
            order,
            lo,
            sample_weight,
        )

        # Backward: dW = A^T @ D and db = sum(D); then D <- (D @ W^T) * act'(A). D is
        # transposed only where dot_nt or row_sums reads it.
        accumulate = c > first
        cur = 0
        for l in range(n_layers - 1, -1, -1):
            fan_in = layout[l, L_FAN_IN]
            fan_out = layout[l, L_FAN_OUT]
            w_off = layout[l, L_WEIGHT]
            bias = layout[l, L_BIAS]
            d_cur = offs[base + cur]
            dt_cur = offs[base + 2 + cur]
            wide = blas[l]
            scatter = l == 0 and sparse  # sparse rows: dW by sparse_weight_gradient
            by_rows = not wide and bias >= 0 and 4 * fan_out <= count  # narrow: long sums
            if by_rows or not (scatter or wide or fan_out == 1 or short_product(fan_out, count)):
                transpose(work, d_cur, count, fan_out, work, dt_cur, chunk)
            a, a_off = (source, a_in) if l == 0 else (work, offs[l])
            if scatter:
                sparse_weight_gradient(
                    indptr,
                    indices,
                    values,
                    order,
                    lo,
                    count,
                    work,
                    d_cur,
                    grad,
                    w_off,
                    fan_out,
                )
            elif wide:
                blas_weight_gradient(
                    a, a_off, work, d_cur, grad, w_off, count, fan_in, fan_out, accumulate
                )
            elif fan_out == 1:  # dW is the row d^T A: A as stored, no transpose
                # m = fan_out, not a literal 1, which would compile dot_nn a second time
                dot_nn(
                    work,
                    d_cur,
                    count,
                    a,
                    a_off,
                    fan_in,
                    grad,
                    w_off,
                    fan_in,
                    fan_out,
                    fan_in,
                    count,
                    accumulate,
                )
            elif short_product(fan_out, count):
                dot_nn(
                    work,
                    offs[n_layers + 1 + l],
                    chunk,
                    work,
                    d_cur,
                    fan_out,
                    grad,
                    w_off,
                    fan_out,
                    fan_in,
                    fan_out,
                    count,
                    accumulate,
                )
            else:
                dot_nt(
                    work,
                    offs[n_layers + 1 + l],
                    chunk,
                    work,
                    dt_cur,
                    chunk,
                    grad,
                    w_off,
                    fan_out,
                    fan_in,
                    fan_out,
                    count,
                    accumulate,
                )
            if by_rows:
                row_sums(work, dt_cur, chunk, count, fan_out, grad, bias, accumulate)
            elif bias >= 0:
                column_sums(work, d_cur, count, fan_out, grad, bias, accumulate)
            if l == 0:
                break
            cur = 1 - cur
            d_next = offs[base + cur]
            if wide:
                blas_backward(work, d_cur, params, w_off, d_next, count, fan_in, fan_out)
            elif fan_out == 1:  # D_next = d w^T: one product per entry, stored once
                outer(work, d_cur, params, w_off, d_next, count, fan_in)
            elif short_product(fan_in, fan_out):
                dot_nn(
                    work,
                    d_cur,
                    fan_out,
                    wt,
                    w_off,
                    fan_in,
                    work,
                    d_next,
                    fan_in,
                    count,
                    fan_in,
                    fan_out,
                    overwrite,
                )
            else:
                dot_nt(
                    work,
                    d_cur,
                    fan_out,
                    params,
                    w_off,
                    fan_out,
                    work,
                    d_next,
                    fan_in,
                    count,
                    fan_in,
                    fan_out,
                    overwrite,
                )
            times_derivative(work, d_next, offs[l], count, fan_in, layout[l - 1, L_ACTIVATION])
    return total


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
