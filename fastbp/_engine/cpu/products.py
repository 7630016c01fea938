"""Register-blocked matrix products over row-contiguous operands: ``P @ Q.T``
(``dot_nt``) and ``P @ Q`` (``dot_nn``)."""

import numpy as np

from ..sources import njit
from .compile_options import FASTMATH

# Entries of the Q operand kept hot while a product sweeps over P (about 256 KiB of
# float64, half of this machine's per-core L2).
PANEL_ENTRIES = 32768

#: Products ``dot_nn`` computes (the rest go to ``dot_nt``): the contraction length below
#: which it wins, by the width of the output rows, as ``((min width, longest k), ...)``.
#: Measured on one core, 64 rows: at width 100 and k = 20 dot_nn runs 35 against 19
#: GFLOP/s in float64 (52 against 33 in float32); at width 16 and k = 16, 18 against 33.
NN_SHORTEST = ((64, 32), (32, 15), (16, 7))


@njit(cache=True, _nrt=False, fastmath=FASTMATH)
def store4(out, o, s0, s1, s2, s3, accumulate):
    """``out[o:o + 4] = (s0, s1, s2, s3)``, or ``+=`` when ``accumulate``."""
    if accumulate:
        s0 += out[o]
        s1 += out[o + 1]
        s2 += out[o + 2]
        s3 += out[o + 3]
    out[o] = s0
    out[o + 1] = s1
    out[o + 2] = s2
    out[o + 3] = s3


@njit(cache=True, _nrt=False, fastmath=FASTMATH)
def dot_nt(P, po, ps, Q, qo, qs, out, oo, os, m, n, k_len, accumulate):
    """``out[i, j] (+)= sum_k P[i, k] * Q[j, k]`` for i < m, j < n, k < k_len, over flat
    row-major operands given as (array, offset, row stride).

    4x4 register blocks: each loaded value feeds four multiply-adds and the k loop
    vectorizes (64 x 64 x 64 in float64 on one core: 55 GFLOP/s, against 46 with 2x4
    blocks). Past the last full block of rows the missing rows reread the first one and
    are not stored. Indices are unsigned because numba's negative-index handling of
    signed indices stops the vectorizer (measured 1.6 against 15 GFLOP/s). Q is swept in
    panels that stay in L2."""
    zero = out.dtype.type(0)
    k_end = np.uint64(k_len)
    panel = max(4, (PANEL_ENTRIES // max(k_len, 1)) // 4 * 4)
    for j_lo in range(0, n, panel):
        j_hi = min(n, j_lo + panel)
        for i in range(0, m, 4):
            rows = min(4, m - i)
            p0 = np.uint64(po + i * ps)
            # uint64 throughout: a signed index stops the vectorizer
            p1 = p0 + np.uint64(ps) if rows > 1 else p0
            p2 = p1 + np.uint64(ps) if rows > 2 else p0
            p3 = p2 + np.uint64(ps) if rows > 3 else p0
            o = oo + i * os
            j = j_lo
            while j + 3 < j_hi:
                q0 = np.uint64(qo + j * qs)
                q1 = np.uint64(qo + (j + 1) * qs)
                q2 = np.uint64(qo + (j + 2) * qs)
                q3 = np.uint64(qo + (j + 3) * qs)
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
                s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
                for k in range(k_end):
                    y0 = Q[q0 + k]
                    y1 = Q[q1 + k]
                    y2 = Q[q2 + k]
                    y3 = Q[q3 + k]
                    x = P[p0 + k]
                    s00 += x * y0
                    s01 += x * y1
                    s02 += x * y2
                    s03 += x * y3
                    x = P[p1 + k]
                    s10 += x * y0
                    s11 += x * y1
                    s12 += x * y2
                    s13 += x * y3
                    x = P[p2 + k]
                    s20 += x * y0
                    s21 += x * y1
                    s22 += x * y2
                    s23 += x * y3
                    x = P[p3 + k]
                    s30 += x * y0
                    s31 += x * y1
                    s32 += x * y2
                    s33 += x * y3
                store4(out, o + j, s00, s01, s02, s03, accumulate)
                if rows > 1:
                    store4(out, o + os + j, s10, s11, s12, s13, accumulate)
                if rows > 2:
                    store4(out, o + 2 * os + j, s20, s21, s22, s23, accumulate)
                if rows > 3:
                    store4(out, o + 3 * os + j, s30, s31, s32, s33, accumulate)
                j += 4
            while j < j_hi:  # one column for the block's rows
                q0 = np.uint64(qo + j * qs)
                s0 = s1 = s2 = s3 = zero
                for k in range(k_end):
                    y0 = Q[q0 + k]
                    s0 += P[p0 + k] * y0
                    s1 += P[p1 + k] * y0
                    s2 += P[p2 + k] * y0
                    s3 += P[p3 + k] * y0
                for r, value in enumerate((s0, s1, s2, s3)):
                    if r < rows:
                        at = o + r * os + j
                        out[at] = value + out[at] if accumulate else value
                j += 1


@njit(cache=True, _nrt=False, fastmath=FASTMATH)
def dot_nn(P, po, ps, Q, qo, qs, out, oo, os, m, n, k_len, accumulate):
    """``out[i, j] (+)= sum_k P[i, k] * Q[k, j]``, Q's rows contiguous along j: the form
    for short contractions and wide outputs, where ``dot_nt`` would spend more on summing
    each output's vector lanes than on its multiply-adds.

    Two output rows take four rows of Q at a time, so each output vector is loaded and
    stored once per eight multiply-adds (once per one, it ran at a third of the speed).
    An odd last row pairs with itself, adding zeros the second time."""
    width = np.uint64(n)
    zero = out.dtype.type(0)
    i = 0
    while i < m:
        pair = i + 1 < m
        o0 = np.uint64(oo + i * os)
        o1 = np.uint64(oo + (i + 1) * os) if pair else o0
        a0 = np.uint64(po + i * ps)
        a1 = np.uint64(po + (i + 1) * ps) if pair else a0
        if not accumulate:
            for j in range(width):
                out[o0 + j] = zero
                out[o1 + j] = zero
        k = 0
        while k + 3 < k_len:
            x00, x01, x02, x03 = P[a0 + k], P[a0 + k + 1], P[a0 + k + 2], P[a0 + k + 3]
            x10, x11, x12, x13 = zero, zero, zero, zero
            if pair:
                x10, x11, x12, x13 = P[a1 + k], P[a1 + k + 1], P[a1 + k + 2], P[a1 + k + 3]
            q0 = np.uint64(qo + k * qs)
            q1 = np.uint64(qo + (k + 1) * qs)
            q2 = np.uint64(qo + (k + 2) * qs)
            q3 = np.uint64(qo + (k + 3) * qs)
            for j in range(width):
                y0 = Q[q0 + j]
                y1 = Q[q1 + j]
                y2 = Q[q2 + j]
                y3 = Q[q3 + j]
                out[o0 + j] += x00 * y0 + x01 * y1 + x02 * y2 + x03 * y3
                out[o1 + j] += x10 * y0 + x11 * y1 + x12 * y2 + x13 * y3
            k += 4
        while k < k_len:
            x0 = P[a0 + k]
            x1 = P[a1 + k] if pair else zero
            q = np.uint64(qo + k * qs)
            for j in range(width):
                y = Q[q + j]
                out[o0 + j] += x0 * y
                out[o1 + j] += x1 * y
            k += 1
        i += 2


@njit(cache=True, _nrt=False)
def outer(work, d_off, params, w_off, out_off, rows, width):
    """``out[b, j] = d[b] * w[j]`` over ``rows`` x ``width``, sample-major."""
    n = np.uint64(width)
    w = np.uint64(w_off)
    for b in range(rows):
        value = work[d_off + b]
        o = np.uint64(out_off + b * width)
        for j in range(n):
            work[o + j] = value * params[w + j]


@njit(cache=True)
def short_product(n, k_len):
    """Whether an ``n`` wide product over ``k_len`` terms is ``dot_nn``'s (see above)."""
    for width, longest in NN_SHORTEST:
        if n >= width:
            return k_len <= longest
    return False


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
