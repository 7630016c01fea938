"""The first layer's products for sparse input: CSR rows times a dense weight matrix.

A chunk's rows are read where they are stored, as CSR (``indptr``, ``indices``,
``values``: ``request.SparseRows``): each stored entry ``(row, j, x)`` adds ``x * W[j, :]``
to its row of ``Z = X @ W`` on the way forward (rows of W gathered) and ``x * D[row, :]``
to row ``j`` of the weight gradient on the way back (scattered). The rows are never
densified, and the first layer needs no input delta. Every sum runs in a fixed order
(the chunk's rows in visiting order, each row's entries as stored), so the bits do not
depend on threads.
"""

import numpy as np

from ..sources import njit


@njit(cache=True, _nrt=False)
def sparse_forward(indptr, indices, values, order, lo, count, params, w_off, fan_out, work, z_off):
    """``Z = X[rows] @ W`` for the ``count`` rows ``order[lo:lo + count]`` of CSR ``X``,
    W the ``fan_in x fan_out`` block of ``params`` at ``w_off``, Z sample-major in
    ``work`` at ``z_off``."""
    width = np.uint64(fan_out)
    w_off = np.uint64(w_off)
    for b in range(count):
        z = np.uint64(z_off + b * fan_out)
        for k in range(width):
            work[z + k] = 0
        row = order[lo + b]
        for p in range(indptr[row], indptr[row + 1]):
            x = values[p]
            w = w_off + np.uint64(indices[p]) * width
            for k in range(width):
                work[z + k] += x * params[w + k]


@njit(cache=True, _nrt=False)
def sparse_weight_gradient(
    indptr, indices, values, order, lo, count, work, d_off, grad, w_off, fan_out
):
    """``dW += X[rows].T @ D`` for the rows of ``sparse_forward`` and the sample-major
    delta D in ``work`` at ``d_off``: each stored entry scatters its row of D into the
    block of ``grad`` at ``w_off``. The block is clear before a batch's first chunk (see
    ``clear_leading``): clearing it here, for every group and batch, was a pass over the
    whole first layer of its own."""
    width = np.uint64(fan_out)
    w_off = np.uint64(w_off)
    for b in range(count):
        d = np.uint64(d_off + b * fan_out)
        row = order[lo + b]
        for p in range(indptr[row], indptr[row + 1]):
            x = values[p]
            g = w_off + np.uint64(indices[p]) * width
            for k in range(width):
                grad[g + k] += x * work[d + k]


@njit(cache=True, _nrt=False)
def clear_leading(grads, n_groups, count):
    """Zero the first ``count`` entries of the first ``n_groups`` rows of ``grads``."""
    for s in range(n_groups):
        buffer = grads[s]
        for i in range(count):
            buffer[i] = 0


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
