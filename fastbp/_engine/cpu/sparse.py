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
    indptr, indices, values, order, lo, count, work, d_off, grad, w_off, fan_in, fan_out, accumulate
):
    """``dW (+)= X[rows].T @ D`` for the rows of ``sparse_forward`` and the
    sample-major delta D in ``work`` at ``d_off``: the block of ``grad`` at ``w_off`` is
    cleared first unless ``accumulate``, then each stored entry scatters its row of D."""
    width = np.uint64(fan_out)
    w_off = np.uint64(w_off)
    if not accumulate:
        for i in range(w_off, w_off + np.uint64(fan_in) * width):
            grad[i] = 0
    for b in range(count):
        d = np.uint64(d_off + b * fan_out)
        row = order[lo + b]
        for p in range(indptr[row], indptr[row + 1]):
            x = values[p]
            g = w_off + np.uint64(indices[p]) * width
            for k in range(width):
                grad[g + k] += x * work[d + k]


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "8e8e2ef99c67e8b4515a720a10a19477a3a87898a23aa81d4a8d5cb126acb701"
