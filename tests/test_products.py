"""The engine's own matrix products, ``dot_nn`` and ``dot_nt``, against NumPy on every
block remainder: row counts past their 4-row blocks, contractions past their 4-term
steps, operands at offsets inside larger buffers with row strides, and accumulation."""

import numpy as np
import pytest

from fastbp._engine.cpu import products as K


def _product(kernel, P, Q_stored, m, n, k, accumulate, dtype):
    """``P @ Q`` (m x n) computed by ``kernel`` on flat buffers with offsets and strides;
    ``Q_stored`` is Q for ``dot_nn`` and Q^T for ``dot_nt``."""
    po, ps = 3, k + 2  # offset, and rows padded past k
    qo, qs = 5, Q_stored.shape[1] + 1
    oo, os = 7, n + 3
    Pf = np.full(po + m * ps + 4, np.nan, dtype)
    for i in range(m):
        Pf[po + i * ps : po + i * ps + k] = P[i]
    Qf = np.full(qo + Q_stored.shape[0] * qs + 4, np.nan, dtype)
    for r in range(Q_stored.shape[0]):
        Qf[qo + r * qs : qo + r * qs + Q_stored.shape[1]] = Q_stored[r]
    out = np.full(oo + m * os + 4, np.nan, dtype)
    start = np.arange(m * n, dtype=dtype).reshape(m, n) / 7
    for i in range(m):
        out[oo + i * os : oo + i * os + n] = start[i] if accumulate else np.nan
    kernel(Pf, po, ps, Qf, qo, qs, out, oo, os, m, n, k, np.bool_(accumulate))
    got = np.stack([out[oo + i * os : oo + i * os + n] for i in range(m)]) if m else out[:0]
    padding = np.delete(out, [oo + i * os + j for i in range(m) for j in range(n)])
    assert np.isnan(padding).all()  # nothing written outside the m x n block
    return got, (start if accumulate else 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["dot_nn", "dot_nt"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["store", "add"])
def test_products_match_numpy(name, accumulate, dtype):
    rng = np.random.default_rng(11)
    kernel = getattr(K, name)
    for m in (1, 2, 3, 4, 5, 7, 9):
        for n in (1, 3, 4, 6, 17):
            for k in (1, 3, 4, 5, 8, 13):
                P = rng.standard_normal((m, k)).astype(dtype)
                Q = rng.standard_normal((k, n)).astype(dtype)
                stored = Q if name == "dot_nn" else np.ascontiguousarray(Q.T)
                got, start = _product(kernel, P, stored, m, n, k, accumulate, dtype)
                want = start + P.astype(np.float64) @ Q.astype(np.float64)
                tol = 1e-12 if dtype == np.float64 else 1e-5
                np.testing.assert_allclose(
                    got, want, rtol=tol, atol=tol * 10, err_msg=f"{name} m={m} n={n} k={k}"
                )
