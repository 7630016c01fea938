"""BLAS (scipy's, called from compiled code) for the products of wide layers."""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np import linalg as numba_linalg

from ..codes import L_FAN_IN, L_FAN_OUT, L_WEIGHT
from ..sources import njit
from .elementwise import transpose
from .products import short_product

numba_linalg.ensure_blas()  # BLAS comes from scipy; fail at import if it is missing

#
# Layers of at least ``blas_min`` weights multiply through scipy's BLAS (the
# ``numba_xxgemm`` helper that numba's own ``np.dot`` calls), with beta = 1 so that
# weight gradients accumulate in place. BLAS's own threading changes the bits with the
# thread count, so the caller holds BLAS to one thread while chunk groups run in parallel.

NOTRANS, TRANS = ord("n"), ord("t")


@intrinsic
def _gemm(typingctx, trans_a, trans_b, m, n, k, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc):
    """Column-major ``C = op(A) @ op(B) + beta * C`` (m x n, inner size k) on flat arrays
    of one dtype, each operand starting at its offset."""
    if not (a.dtype == b.dtype == c.dtype and a.dtype in (types.float32, types.float64)):
        return None
    dtype = a.dtype

    def codegen(context, builder, signature, args):
        (trans_a, trans_b, m, n, k, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc) = args
        char, void_p, intp = ir.IntType(8), ir.IntType(8).as_pointer(), cgutils.intp_t
        fnty = ir.FunctionType(
            ir.IntType(32),
            [
                char,
                char,
                char,
                intp,
                intp,
                intp,
                void_p,
                void_p,
                intp,
                void_p,
                intp,
                void_p,
                void_p,
                intp,
            ],
        )
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")

        def pointer(array, ty, offset):
            data = context.make_array(ty)(context, builder, array).data
            return builder.bitcast(builder.gep(data, [offset]), void_p)

        alpha_slot = cgutils.alloca_once_value(builder, context.get_constant(dtype, 1.0))
        beta_value = context.cast(builder, beta, signature.args[11], dtype)
        beta_slot = cgutils.alloca_once_value(builder, beta_value)
        kind = ir.Constant(char, ord(numba_linalg.get_blas_kind(dtype)))
        res = builder.call(
            fn,
            (
                kind,
                builder.trunc(trans_a, char),
                builder.trunc(trans_b, char),
                m,
                n,
                k,
                builder.bitcast(alpha_slot, void_p),
                pointer(a, signature.args[5], a_off),
                lda,
                pointer(b, signature.args[8], b_off),
                ldb,
                builder.bitcast(beta_slot, void_p),
                pointer(c, signature.args[12], c_off),
                ldc,
            ),
        )
        numba_linalg.check_blas_return(context, builder, res)
        return context.get_dummy_value()

    sig = types.void(
        types.int64,
        types.int64,
        types.int64,
        types.int64,
        types.int64,
        a,
        types.int64,
        types.int64,
        b,
        types.int64,
        types.int64,
        types.float64,
        c,
        types.int64,
        types.int64,
    )
    return sig, codegen


@njit(cache=True, _nrt=False)
def blas_forward(a, a_off, params, w_off, work, z_off, rows, fan_in, fan_out):
    """``Z = A @ W`` for sample-major A (rows x fan_in, in ``a``: the work buffer, or X
    itself) and W (fan_in x fan_out)."""
    _gemm(
        NOTRANS,
        NOTRANS,
        fan_out,
        rows,
        fan_in,
        params,
        w_off,
        fan_out,
        a,
        a_off,
        fan_in,
        0.0,
        work,
        z_off,
        fan_out,
    )


@njit(cache=True, _nrt=False)
def blas_backward(work, d_off, params, w_off, out_off, rows, fan_in, fan_out):
    """``D_prev = D @ W.T`` for sample-major D (rows x fan_out)."""
    _gemm(
        TRANS,
        NOTRANS,
        fan_in,
        rows,
        fan_out,
        params,
        w_off,
        fan_out,
        work,
        d_off,
        fan_out,
        0.0,
        work,
        out_off,
        fan_in,
    )


@njit(cache=True, _nrt=False)
def blas_weight_gradient(a, a_off, work, d_off, grad, w_off, rows, fan_in, fan_out, accumulate):
    """``dW (+)= A.T @ D``, summed over the rows (A in ``a``, as for ``blas_forward``)."""
    _gemm(
        NOTRANS,
        TRANS,
        fan_out,
        fan_in,
        rows,
        work,
        d_off,
        fan_out,
        a,
        a_off,
        fan_in,
        1.0 if accumulate else 0.0,
        grad,
        w_off,
        fan_out,
    )


@njit(cache=True)
def reads_transposed(layout, blas):
    """Which layers' products read ``wt``: ``dot_nt``'s forward pass and ``dot_nn``'s
    backward pass (never needed for the first layer, whose delta is not computed)."""
    reads = np.zeros(layout.shape[0], np.bool_)
    for l in range(layout.shape[0]):
        fan_in = layout[l, L_FAN_IN]
        fan_out = layout[l, L_FAN_OUT]
        backward = l > 0 and short_product(fan_in, fan_out)
        reads[l] = not blas[l] and (not short_product(fan_out, fan_in) or backward)
    return reads


@njit(cache=True, _nrt=False)
def transpose_weights(params, wt, layout, reads):
    """Refresh ``wt`` (each W_l stored fan_out x fan_in) from ``params`` for the layers
    whose products read it (``reads[l]``)."""
    for l in range(layout.shape[0]):
        fan_in = layout[l, L_FAN_IN]
        fan_out = layout[l, L_FAN_OUT]
        if not reads[l]:
            continue
        off = layout[l, L_WEIGHT]
        # transpose's order (contiguous stores, strided loads): 0.17 against 0.29 ns an
        # entry measured for the order with strided stores.
        transpose(params, off, fan_in, fan_out, wt, off, fan_in)


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
