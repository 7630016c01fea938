"""Compiled CPU kernels: forward pass, backward pass and whole training runs.

Every layer's parameters live in one flat array described by a ``layout`` table (one row
per weight layer: fan_in, fan_out, weight offset, bias offset or -1, activation code), so
one compiled function serves any depth. Activations, losses and optimizers arrive as the
integer codes below, so each kernel compiles once per dtype.

Work is split into chunks of a fixed number of samples. Consecutive chunks form groups;
each group owns a gradient buffer, groups run in parallel, and their buffers are summed in
group order. Group boundaries depend on the batch and the network alone, never on the
thread count, so results are bitwise reproducible.

Matrix products are written as ``out = P @ Q.T`` over row-contiguous operands, with 4x4
register blocks: every loaded value feeds several multiply-adds and the contraction loop
vectorizes. The forward pass therefore reads a transposed copy of each weight matrix
(``wt``), kept in step with ``params`` after every update. Short contractions into
wide outputs use ``out = P @ Q`` instead (``dot_nn``), and layers of ``blas_min`` weights
or more call BLAS, which reads every operand as it is stored.

Kernels that allocate nothing compile without numba's reference counting
(``_nrt=False``): they only borrow arrays that ``run`` owns, and counting references
costs two atomic operations per array argument of every call, about 12 ns, more than a
tiny layer's arithmetic.

Keep every kernel and its helpers in this module: numba's cache is invalidated only
when the file of the cached function changes.
"""

import zlib

import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange, typeof, types
from numba._dispatcher import compute_fingerprint
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np import linalg as numba_linalg

from . import _config

numba_linalg.ensure_blas()  # BLAS comes from scipy; fail at import if it is missing

# Activation codes.
IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX = 0, 1, 2, 3, 4, 5
LEAKY_SLOPE = 0.01

# Loss codes. The per-sample loss is ``loss_scale * sum over outputs`` of the element loss.
SQUARED, BINARY_CROSS_ENTROPY, CATEGORICAL_CROSS_ENTROPY = 0, 1, 2

# Optimizer codes.
SGD, MOMENTUM, NESTEROV, ADAM = 0, 1, 2, 3

# Indices into the ``hyper`` array of optimizer settings.
H_LR, H_MOMENTUM, H_BETA1, H_BETA2, H_EPSILON, H_L2 = 0, 1, 2, 3, 4, 5

# Columns of the ``layout`` table.
L_FAN_IN, L_FAN_OUT, L_WEIGHT, L_BIAS, L_ACTIVATION = 0, 1, 2, 3, 4

# Vectorized reductions need reassociation; no flag here assumes finite values.
FASTMATH = {"reassoc", "contract"}

# Parallelize explicit prange loops only: every automatically parallelized array
# expression would cost a compiled function of its own.
PRANGE_ONLY = {
    "prange": True, "comprehension": False, "reduction": False, "inplace_binop": False,
    "setitem": False, "numpy": False, "stencil": False, "fusion": False,
}

# Entries of the Q operand kept hot while a product sweeps over P (about 256 KiB of
# float64, half of this machine's per-core L2).
PANEL_ENTRIES = 32768

#: Training batches of fewer rows run sample by sample (``sample_pass``).
SAMPLE_PASS_ROWS = 16

#: ``sample_pass`` batches prefetch the next batch's samples when X has at least this
#: many bytes: smaller data stays in L2, and the call cost the online row 1.03-1.05x
#: its time (the notebook 1.08-1.12x before full batches skipped it).
PREFETCH_MIN_BYTES = 1 << 20

#: Products ``dot_nn`` computes (the rest go to ``dot_nt``): the contraction length below
#: which it wins, by the width of the output rows, as ``((min width, longest k), ...)``.
#: Measured on one core, 64 rows: at width 100 and k = 20 dot_nn runs 35 against 19
#: GFLOP/s in float64 (52 against 33 in float32); at width 16 and k = 16, 18 against 33.
NN_SHORTEST = ((64, 32), (32, 15), (16, 7))



# ---------------------------------------------------------------- scalar math
#
# Written without branches, libm calls or Python's ZeroDivisionError check
# (``error_model="numpy"``), so loops over a layer's outputs vectorize: a tanh costs about
# 1 ns instead of 10-25 ns for a scalar libm call. Accuracy stays within 2.5 ulp of the
# argument's precision: ``exp``, ``tanh`` and ``sigmoid`` compute a float32 in float32,
# twice as many lanes to a vector as float64 (big-batch float32 trains 3-7% faster).

#: Compile options of every kernel: division without a raise-on-zero branch vectorizes.
NUMPY_ERRORS = "numpy"

# exp(x) = 2**n * exp(r), |r| <= ln(2)/2, with Cephes' Pade coefficients (1-2 ulp).
LOG2E = 1.4426950408889634
LN2_HI = 6.93145751953125e-1
LN2_LO = 1.42860682030941723212e-6
EXP_P0, EXP_P1, EXP_P2 = 1.26177193074810590878e-4, 3.02994407707441961300e-2, 1.0
EXP_Q0, EXP_Q1, EXP_Q2, EXP_Q3 = (3.00198505138664455042e-6, 2.52448340349684104192e-3,
                                  2.27265548208155028766e-1, 2.0)
#: Adding 1.5 * 2**52 rounds a float64 of magnitude below 2**51 to an integer, which then
#: sits in the low bits of the sum's mantissa.
ROUNDER = 6755399441055744.0
EXP_MIN, EXP_MAX = -708.0, 709.0


@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float64 or float32 as a signed integer of the same width (a register
    move, no memory)."""
    width = x.bitwidth
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(width))
    return (types.int64 if width == 64 else types.int32)(x), codegen


@intrinsic
def _bits_float(typingctx, x):
    """The float64 (from an int64) or float32 (from an int32) whose bits are ``x``."""
    wide = x.bitwidth == 64
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType() if wide else ir.FloatType())
    return (types.float64 if wide else types.float32)(x), codegen


@njit(cache=True, error_model=NUMPY_ERRORS)
def exp64(x):
    """exp of a float64 within 2 ulp, branch-free: the exponent goes straight into the
    result's bits. Below -708 it returns 0 (subnormal results are flushed), above 709
    infinity; NaN stays NaN."""
    given = float(x)
    x = EXP_MIN if given < EXP_MIN else given
    x = EXP_MAX if x > EXP_MAX else x
    shifted = x * LOG2E + ROUNDER
    n = shifted - ROUNDER
    r = x - n * LN2_HI
    r = r - n * LN2_LO
    rr = r * r
    p = r * ((EXP_P0 * rr + EXP_P1) * rr + EXP_P2)
    q = ((EXP_Q0 * rr + EXP_Q1) * rr + EXP_Q2) * rr + EXP_Q3
    power = (_float_bits(shifted) - _float_bits(ROUNDER) + 1023) << 52
    result = (1.0 + 2.0 * p / (q - p)) * _bits_float(power)
    result = 0.0 if given < EXP_MIN else result
    return np.inf if given > EXP_MAX else result


@njit(cache=True, error_model=NUMPY_ERRORS)
def tanh64(x):
    """tanh of a float64 within 2 ulp: ``1 - 2 / (exp(2|x|) + 1)`` where that has no
    cancellation, a rational approximation (Cephes' coefficients) below |x| = 0.625. Both
    are computed and one selected, so loops of it vectorize."""
    x = float(x)
    ax = abs(x)
    twice = 2.0 * ax
    large = 1.0 - 2.0 / (exp64(40.0 if twice > 40.0 else twice) + 1.0)
    large = large if x > 0 else -large
    z = x * x
    p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z \
        - 1.61468768441708447952e3
    q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z \
        + 4.84406305325125486048e3
    small = x + x * z * p / q
    return small if ax <= 0.625 else large


# log(1 + t) = t - t**2 / 2 + t**3 P(t) / Q(t) for 1 + t in [sqrt(1/2), sqrt(2)] (Cephes).
LOG_P = (1.01875663804580931796e-4, 4.97494994976747001425e-1, 4.70579119878881725854e0,
         1.44989225341610930846e1, 1.79368678507819816313e1, 7.70838733755885391666e0)
LOG_Q = (1.12873587189167450590e1, 4.52279145837532221105e1, 8.29875266912776603211e1,
         7.11544750618563894466e1, 2.31251620126765340583e1)
LOG_LN2_HI, LOG_LN2_LO = 0.693359375, -2.121944400546905827679e-4
SQRT2 = 1.4142135623730951


@njit(cache=True, error_model=NUMPY_ERRORS)
def log_unit(u):
    """log(u) for a float64 u in [1, 2], branch-free: log(f) + k ln 2 with f = u or u / 2
    in [sqrt(1/2), sqrt(2)]."""
    halve = u > SQRT2
    f = u * 0.5 if halve else u
    k = 1.0 if halve else 0.0
    t = f - 1.0
    z = t * t
    p = ((((LOG_P[0] * t + LOG_P[1]) * t + LOG_P[2]) * t + LOG_P[3]) * t + LOG_P[4]) * t \
        + LOG_P[5]
    q = ((((t + LOG_Q[0]) * t + LOG_Q[1]) * t + LOG_Q[2]) * t + LOG_Q[3]) * t + LOG_Q[4]
    return t + (t * (z * p / q) + k * LOG_LN2_LO - 0.5 * z) + k * LOG_LN2_HI


@njit(cache=True, error_model=NUMPY_ERRORS)
def sigmoid_softplus64(z):
    """``(sigmoid(z), log(1 + exp(z)))``, both from one ``exp(-|z|)``, which never
    overflows: the activation and the binary cross-entropy of a sigmoid output.

    log(1 + e) is log(u) for u = 1 + e, plus (e - (u - 1)) / u for the rounding of u
    (fdlibm's log1p correction), where 1 / u is the sigmoid's own division."""
    z = float(z)
    e = exp64(-abs(z))
    u = 1.0 + e
    s = 1.0 / u
    softplus = log_unit(u) + (e - (u - 1.0)) * s
    return (s if z >= 0 else e * s), (z if z > 0 else 0.0) + softplus


@njit(cache=True, error_model=NUMPY_ERRORS)
def sigmoid64(z):
    """1 / (1 + exp(-z)) of a float64 from ``exp(-|z|)``, which never overflows."""
    z = float(z)
    e = exp64(-abs(z))
    s = 1.0 / (1.0 + e)
    return s if z >= 0 else e * s


# The float32 versions: Cephes' single-precision coefficients, every constant a float32
# so that no operation widens to float64.
F32_ZERO, F32_ONE, F32_TWO = np.float32(0.0), np.float32(1.0), np.float32(2.0)
F32_LOG2E = np.float32(LOG2E)
F32_LN2_HI, F32_LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
F32_EXP_P = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                          4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
#: 1.5 * 2**23: adding it rounds a float32 of magnitude below 2**22 to an integer.
F32_ROUNDER = np.float32(12582912.0)
#: Below the smallest normal result exp returns 0; above 88 (2**127 is the largest power
#: of two it builds) infinity.
F32_EXP_MIN, F32_EXP_MAX = np.float32(-87.33654), np.float32(88.0)
F32_TANH_P = tuple(np.float32(c) for c in (-5.70498872745e-3, 2.06390887954e-2,
                                           -5.37397155531e-2, 1.33314422036e-1,
                                           -3.33332819422e-1))
F32_TANH_SMALL, F32_TANH_FLAT = np.float32(0.625), np.float32(20.0)


@njit(cache=True, error_model=NUMPY_ERRORS)
def exp32_core(x):
    """exp of a float32 in [-87.33, 88] within 1 ulp: 2**n * exp(r) with a degree-7
    polynomial (Cephes' coefficients), the power 2**n put straight into the bits."""
    shifted = x * F32_LOG2E + F32_ROUNDER
    n = shifted - F32_ROUNDER
    r = x - n * F32_LN2_HI
    r = r - n * F32_LN2_LO
    c = F32_EXP_P
    p = ((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]
    p = p * (r * r) + r + F32_ONE
    # Numba widens int32 arithmetic to int64: narrowed back before the bits are read.
    power = np.int32((_float_bits(shifted) - _float_bits(F32_ROUNDER) + 127) << 23)
    return p * _bits_float(power)


@njit(cache=True, error_model=NUMPY_ERRORS)
def exp32(x):
    """exp of a float32 within 1 ulp, branch-free as ``exp64``. Below -87.33 (where
    results turn subnormal) it returns 0, above 88 infinity (as ``exp64`` above 709);
    NaN stays NaN."""
    clamped = F32_EXP_MIN if x < F32_EXP_MIN else x
    result = exp32_core(F32_EXP_MAX if clamped > F32_EXP_MAX else clamped)
    result = F32_ZERO if x < F32_EXP_MIN else result
    return np.float32(np.inf) if x > F32_EXP_MAX else result


@njit(cache=True, error_model=NUMPY_ERRORS)
def tanh32(x):
    """tanh of a float32 within 2 ulp, as ``tanh64``: a polynomial below |x| = 0.625."""
    ax = abs(x)
    twice = F32_TWO * ax
    flat = F32_TANH_FLAT if twice > F32_TANH_FLAT else twice  # exp32_core's range
    large = F32_ONE - F32_TWO / (exp32_core(flat) + F32_ONE)
    large = large if x > F32_ZERO else -large
    z = x * x
    c = F32_TANH_P
    p = (((c[0] * z + c[1]) * z + c[2]) * z + c[3]) * z + c[4]
    small = p * z * x + x
    return small if ax <= F32_TANH_SMALL else large


@njit(cache=True, error_model=NUMPY_ERRORS)
def sigmoid32(z):
    """1 / (1 + exp(-z)) of a float32, as ``sigmoid64``."""
    e = exp32(-abs(z))
    s = F32_ONE / (F32_ONE + e)
    return s if z >= F32_ZERO else e * s


F32_HALF, F32_SQRT2 = np.float32(0.5), np.float32(SQRT2)
# log(x) = t - t**2 / 2 + t**3 P(t), t = x - 1, for x in [sqrt(1/2), sqrt(2)] (Cephes' logf).
F32_LOG_P = tuple(np.float32(c) for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1,
                                          -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
                                          2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1))


@njit(cache=True, error_model=NUMPY_ERRORS)
def log_unit32(u):
    """log(u) of a float32 u in [1, 2], as ``log_unit``, with no division."""
    halve = u > F32_SQRT2
    f = u * F32_HALF if halve else u
    k = F32_ONE if halve else F32_ZERO
    t = f - F32_ONE
    z = t * t
    c = F32_LOG_P
    p = (((((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) * t + c[6]) * t
         + c[7]) * t + c[8]
    return t + (p * t * z + k * F32_LN2_LO - F32_HALF * z) + k * F32_LN2_HI


@njit(cache=True, error_model=NUMPY_ERRORS)
def sigmoid_softplus32(z):
    """``sigmoid_softplus64`` of a float32, in float32: the sigmoid is ``sigmoid32``'s."""
    e = exp32(-abs(z))
    u = F32_ONE + e
    s = F32_ONE / u
    softplus = log_unit32(u) + (e - (u - F32_ONE)) * s
    return (s if z >= F32_ZERO else e * s), (z if z > F32_ZERO else F32_ZERO) + softplus


def _by_precision(float64_version, float32_version):
    """A function for compiled code that runs ``float32_version`` on a float32 and
    ``float64_version`` on anything else, chosen while the caller compiles."""
    def either(x):
        raise TypeError(f"{float64_version.__name__[:-2]} is for compiled code; call "
                        f"{float64_version.__name__} or {float32_version.__name__}")

    @overload(either)
    def choose(x):
        if x == types.float32:
            return lambda x: float32_version(x)
        return lambda x: float64_version(x)

    return either


exp = _by_precision(exp64, exp32)
tanh = _by_precision(tanh64, tanh32)
sigmoid = _by_precision(sigmoid64, sigmoid32)
sigmoid_softplus = _by_precision(sigmoid_softplus64, sigmoid_softplus32)


@njit(cache=True, error_model=NUMPY_ERRORS)
def activate(code, z):
    """Elementwise activation (softmax is applied per row by ``output_loss``)."""
    if code == SIGMOID:
        return sigmoid(z)
    if code == TANH:
        return tanh(z)
    if code == RELU:
        return z if z > 0 else 0.0 * z
    if code == LEAKY_RELU:
        return z if z > 0 else LEAKY_SLOPE * z
    return z


@njit(cache=True)
def derivative_from_output(code, a):
    """d activation / dz, written in terms of the activation's output ``a``."""
    if code == SIGMOID:
        return a * (1.0 - a)
    if code == TANH:
        return 1.0 - a * a
    if code == RELU:
        return 1.0 if a > 0 else 0.0
    if code == LEAKY_RELU:
        return 1.0 if a > 0 else LEAKY_SLOPE
    return 1.0


# ---------------------------------------------------------------- elementwise passes
#
# One loop per activation, with the branch outside: each loop runs over a contiguous
# row and vectorizes. Transposed copies are written in a pass of their own, since a
# strided store in the same loop would stop the vectorizer.


@njit(cache=True, _nrt=False)
def add_bias(work, off, rows, width, params, bias):
    """``Z += b`` in place over ``rows`` sample-major rows; nothing when ``bias`` < 0."""
    if bias < 0:
        return
    n = np.uint64(width)
    bo = np.uint64(bias)
    if width == 1:  # one column: a flat loop, which vectorizes over the rows
        value = params[bo]
        o = np.uint64(off)
        for b in range(np.uint64(rows)):
            work[o + b] += value
        return
    for b in range(rows):
        o = np.uint64(off + b * width)
        for j in range(n):
            work[o + j] += params[bo + j]


@njit(cache=True, _nrt=False, error_model=NUMPY_ERRORS)
def bias_activation(work, off, rows, width, params, bias, code):
    """``Z += b`` and ``A = act(Z)`` in place, over ``rows`` sample-major rows: the
    activation in one flat loop over the block, which vectorizes whatever the width."""
    add_bias(work, off, rows, width, params, bias)
    n = np.uint64(rows * width)
    o = np.uint64(off)
    zero = work.dtype.type(0)
    slope = work.dtype.type(LEAKY_SLOPE)
    if code == SIGMOID:
        for t in range(n):
            work[o + t] = sigmoid(work[o + t])
    elif code == TANH:
        for t in range(n):
            work[o + t] = tanh(work[o + t])
    elif code == RELU:
        for t in range(n):
            z = work[o + t]
            work[o + t] = z if z > 0 else zero * z
    elif code == LEAKY_RELU:
        for t in range(n):
            z = work[o + t]
            work[o + t] = z if z > 0 else slope * z


@njit(cache=True, _nrt=False, error_model=NUMPY_ERRORS)
def times_derivative(work, d_off, a_off, rows, width, code):
    """``D *= act'(A)`` in place, the derivative written in terms of the output ``A``."""
    n = np.uint64(rows * width)
    d = np.uint64(d_off)
    a = np.uint64(a_off)
    one = work.dtype.type(1)
    zero = work.dtype.type(0)
    slope = work.dtype.type(LEAKY_SLOPE)
    if code == SIGMOID:
        for i in range(n):
            work[d + i] *= work[a + i] * (one - work[a + i])
    elif code == TANH:
        for i in range(n):
            work[d + i] *= one - work[a + i] * work[a + i]
    elif code == RELU:
        for i in range(n):
            work[d + i] = work[d + i] if work[a + i] > 0 else zero * work[d + i]
    elif code == LEAKY_RELU:
        for i in range(n):
            work[d + i] = work[d + i] if work[a + i] > 0 else slope * work[d + i]


@intrinsic
def prefetch(typingctx, array, index):
    """Ask the CPU to start loading the cache line of ``array[index]`` (``llvm.prefetch``
    into L1): a hint, with no effect on results."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()
    return types.void(array, types.int64), codegen


@njit(cache=True, _nrt=False)
def prefetch_rows(x_flat, order, lo, hi, width):
    """Prefetch every (64-byte) cache line of the rows ``order[lo:hi]`` of a row-major
    matrix seen flat. Gathering shuffled rows without it waits on each row's loads in
    turn."""
    per_line = 64 // x_flat.itemsize
    for b in range(lo, hi):
        r = order[b] * width
        for k in range(0, width, per_line):
            prefetch(x_flat, r + k)
        prefetch(x_flat, r + width - 1)


@njit(cache=True, _nrt=False)
def prefetch_samples(x_flat, n_in, Y, labels, sample_weight, order, lo, hi):
    """Prefetch everything ``sample_pass`` reads of the samples ``order[lo:hi]``: rows
    of X and Y, labels, weights. A shuffled online step otherwise waits on memory for
    most of its time (1,000,000 rows of 8, batch 1: 599 ns a step against 318 in order;
    347 ns with the prefetch)."""
    prefetch_rows(x_flat, order, lo, hi, n_in)
    if Y.shape[0] > 0:
        prefetch_rows(Y.reshape(Y.size), order, lo, hi, Y.shape[1])
    for b in range(lo, hi):
        if labels.shape[0] > 0:
            prefetch(labels, order[b])
        if sample_weight.shape[0] > 0:
            prefetch(sample_weight, order[b])


@njit(cache=True, _nrt=False)
def transpose(source, src, rows, width, work, dst, dst_stride):
    """``work[dst + j * dst_stride + b] = source[src + b * width + j]``: a sample-major
    block of ``rows`` x ``width`` copied feature-major."""
    n = np.uint64(rows)
    w = np.uint64(width)
    for j in range(width):
        s = np.uint64(src + j)
        t = np.uint64(dst + j * dst_stride)
        for b in range(n):
            work[t + b] = source[s + b * w]


@njit(cache=True, _nrt=False, fastmath=FASTMATH)
def row_sums(work, off, stride, rows, width, grad, out_off, accumulate):
    """``grad[out_off + j] (+)= sum over b < rows of work[off + j * stride + b]``: the
    bias gradient from a feature-major (transposed) block, each sum one vectorized
    reduction (``column_sums`` adds whole rows, one dependent add per row)."""
    n = np.uint64(rows)
    o = np.uint64(out_off)
    for j in range(np.uint64(width)):
        row = np.uint64(off + j * stride)
        total = grad.dtype.type(0)
        for b in range(n):
            total += work[row + b]
        grad[o + j] = total + grad[o + j] if accumulate else total


@njit(cache=True, _nrt=False)
def column_sums(work, off, rows, width, grad, out_off, accumulate):
    """``grad[out_off + j] (+)= sum over b of work[off + b * width + j]``: the bias
    gradient, summed sample by sample from a sample-major block."""
    n = np.uint64(width)
    o = np.uint64(out_off)
    if not accumulate:
        for j in range(n):
            grad[o + j] = 0
    for b in range(rows):
        row = np.uint64(off + b * width)
        for j in range(n):
            grad[o + j] += work[row + j]


# ---------------------------------------------------------------- matrix products


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


# ---------------------------------------------------------------- BLAS for wide layers
#
# Layers of at least ``blas_min`` weights multiply through scipy's BLAS (the
# ``numba_xxgemm`` helper that numba's own ``np.dot`` calls), with beta = 1 so that
# weight gradients accumulate in place. BLAS's own threading changes the bits with the
# thread count, so the caller holds BLAS to one thread while chunk groups run in parallel.

NOTRANS, TRANS = ord("n"), ord("t")


@intrinsic
def _gemm(typingctx, trans_a, trans_b, m, n, k, a, a_off, lda, b, b_off, ldb, beta, c, c_off,
          ldc):
    """Column-major ``C = op(A) @ op(B) + beta * C`` (m x n, inner size k) on flat arrays
    of one dtype, each operand starting at its offset."""
    if not (a.dtype == b.dtype == c.dtype and a.dtype in (types.float32, types.float64)):
        return None
    dtype = a.dtype

    def codegen(context, builder, signature, args):
        (trans_a, trans_b, m, n, k, a, a_off, lda, b, b_off, ldb, beta, c, c_off,
         ldc) = args
        char, void_p, intp = ir.IntType(8), ir.IntType(8).as_pointer(), cgutils.intp_t
        fnty = ir.FunctionType(ir.IntType(32), [char, char, char, intp, intp, intp, void_p,
                                                void_p, intp, void_p, intp, void_p, void_p,
                                                intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")

        def pointer(array, ty, offset):
            data = context.make_array(ty)(context, builder, array).data
            return builder.bitcast(builder.gep(data, [offset]), void_p)

        alpha_slot = cgutils.alloca_once_value(builder, context.get_constant(dtype, 1.0))
        beta_value = context.cast(builder, beta, signature.args[11], dtype)
        beta_slot = cgutils.alloca_once_value(builder, beta_value)
        kind = ir.Constant(char, ord(numba_linalg.get_blas_kind(dtype)))
        res = builder.call(fn, (kind, builder.trunc(trans_a, char), builder.trunc(trans_b, char),
                                m, n, k, builder.bitcast(alpha_slot, void_p),
                                pointer(a, signature.args[5], a_off), lda,
                                pointer(b, signature.args[8], b_off), ldb,
                                builder.bitcast(beta_slot, void_p),
                                pointer(c, signature.args[12], c_off), ldc))
        numba_linalg.check_blas_return(context, builder, res)
        return context.get_dummy_value()

    sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64, a,
                     types.int64, types.int64, b, types.int64, types.int64, types.float64, c,
                     types.int64, types.int64)
    return sig, codegen


@njit(cache=True, _nrt=False)
def blas_forward(a, a_off, params, w_off, work, z_off, rows, fan_in, fan_out):
    """``Z = A @ W`` for sample-major A (rows x fan_in, in ``a``: the work buffer, or X
    itself) and W (fan_in x fan_out)."""
    _gemm(NOTRANS, NOTRANS, fan_out, rows, fan_in, params, w_off, fan_out, a, a_off, fan_in,
          0.0, work, z_off, fan_out)


@njit(cache=True, _nrt=False)
def blas_backward(work, d_off, params, w_off, out_off, rows, fan_in, fan_out):
    """``D_prev = D @ W.T`` for sample-major D (rows x fan_out)."""
    _gemm(TRANS, NOTRANS, fan_in, rows, fan_out, params, w_off, fan_out, work, d_off, fan_out,
          0.0, work, out_off, fan_in)


@njit(cache=True, _nrt=False)
def blas_weight_gradient(a, a_off, work, d_off, grad, w_off, rows, fan_in, fan_out,
                         accumulate):
    """``dW (+)= A.T @ D``, summed over the rows (A in ``a``, as for ``blas_forward``)."""
    _gemm(NOTRANS, TRANS, fan_out, fan_in, rows, work, d_off, fan_out, a, a_off, fan_in,
          1.0 if accumulate else 0.0, grad, w_off, fan_out)


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


# ---------------------------------------------------------------- one group of chunks


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
            work[o + i] = activate(code, work[o + i])


@njit(cache=True, _nrt=False)
def output_loss(code, loss, loss_scale, clip, work, o, n_out, Y, labels, row, weight, d_off):
    """Turn one row of output pre-activations into activations (in place), return the
    sample's loss, and write dL/dz (times ``weight``) to ``work[d_off:d_off + n_out]``.

    Canonical pairs (sigmoid with BCE, softmax with CCE) use the exact logit forms, which
    never overflow; every other pairing chains dL/da through the activation's derivative."""
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
        if code == SIGMOID and loss == BINARY_CROSS_ENTROPY:
            a, softplus = sigmoid_softplus(z)
            value += softplus - z * y
            g = a - y  # already dL/dz
        elif code == SOFTMAX and loss == CATEGORICAL_CROSS_ENTROPY:
            a = work[d_off + i] / total
            if y != 0.0:
                value += y * (top + log_total - z)
            g = -y  # completed below to a * sum(y) - y
        else:
            a = work[d_off + i] / total if code == SOFTMAX else activate(code, z)
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
    elif not (code == SIGMOID and loss == BINARY_CROSS_ENTROPY):
        for i in range(n_out):
            work[d_off + i] *= derivative_from_output(code, work[o + i])
    scale = loss_scale * weight
    for i in range(n_out):
        work[d_off + i] *= scale
    return loss_scale * value


@njit(cache=True, _nrt=False, error_model=NUMPY_ERRORS)
def sigmoid_bce(work, o, d_off, scratch, count, n_out, Y, order, lo, sample_weight,
                loss_scale):
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
            value += work[scratch + t] - work[d_off + t] * y
            work[d_off + t] = (work[o + t] - y) * scale
        total += weight * loss_scale * value
    return total


@njit(cache=True, _nrt=False, inline="always")  # as a call: notebook 1.02-1.04x the time
def block_loss(code, loss, loss_scale, clip, work, o, d_off, scratch, count, n_out, Y, labels,
               order, lo, sample_weight):
    """The summed (weighted) loss of a block of ``count`` output rows, which become
    activations in place, their dL/dz going to ``d_off``: ``sigmoid_bce`` for its pair,
    ``output_loss`` row by row for the rest."""
    if code == SIGMOID and loss == BINARY_CROSS_ENTROPY:
        return sigmoid_bce(work, o, d_off, scratch, count, n_out, Y, order, lo, sample_weight,
                           loss_scale)
    total = 0.0
    for b in range(count):
        row = order[lo + b]
        weight = sample_weight[row] if sample_weight.shape[0] > 0 else 1.0
        total += weight * output_loss(code, loss, loss_scale, clip, work, o + b * n_out, n_out,
                                      Y, labels, row, weight, d_off + b * n_out)
    return total


@njit(cache=True, _nrt=False, error_model=NUMPY_ERRORS)
def sample_pass(X, Y, labels, sample_weight, order, start, size, params, layout, loss,
                loss_scale, clip, work, offs, grad):
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
            bias_activation(work, offs[l + 1], size, layout[l, L_FAN_OUT], params, no_bias,
                            layout[l, L_ACTIVATION])

    total = block_loss(out_code, loss, loss_scale, clip, work, offs[n_layers], offs[base],
                       offs[base + 1], size, n_out, Y, labels, order, start, sample_weight)

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
        times_derivative(work, offs[base + cur], offs[l], size, layout[l, L_FAN_IN],
                         layout[l - 1, L_ACTIVATION])
    return total


# ---------------------------------------------------------------- tiny networks
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
    return (load_lanes(params, off, fan_out, zero),
            load_lanes(params, off + fan_out, fan_out if fan_in > 1 else 0, zero))


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


@njit(cache=True, inline="always", error_model=NUMPY_ERRORS)
def activate_lane(code, z, zero, slope):
    """``bias_activation``'s expression for one value."""
    if code == SIGMOID:
        return sigmoid(z)
    if code == TANH:
        return tanh(z)
    if code == RELU:
        return z if z > 0 else zero * z
    if code == LEAKY_RELU:
        return z if z > 0 else slope * z
    return z


@njit(cache=True, inline="always")
def derivative_lane(code, d, a, zero, one, slope):
    """``times_derivative``'s expression for one value."""
    if code == SIGMOID:
        return d * (a * (one - a))
    if code == TANH:
        return d * (one - a * a)
    if code == RELU:
        return d if a > 0 else zero * d
    if code == LEAKY_RELU:
        return d if a > 0 else slope * d
    return d


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
    return (step_lane(p[0], g[0], scaled, scale, decayed, decay, lr),
            step_lane(p[1], g[1], scaled, scale, decayed, decay, lr))


@njit(cache=True, _nrt=False, error_model=NUMPY_ERRORS)
def tiny_run(X, Y, labels, sample_weight, order, params, layout, loss, loss_scale, clip,
             reduce_sum, epochs, batch_size, shuffle, shuffle_state, hyper, step, history,
             out_buffer):
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
                a1 = (activate_lane(code1, z1[0], zero, slope),
                      activate_lane(code1, z1[1], zero, slope) if hidden > 1 else zero)
                z2 = product_lanes(b2, a1, m2, hidden)
                weight = sample_weight[row] if sample_weight.shape[0] > 0 else 1.0
                scale = loss_scale * weight
                if canonical:  # sigmoid_bce's expressions
                    value = 0.0
                    ys = load_row_lanes(Y, row, n_out, zero)
                    a, softplus = sigmoid_softplus(z2[0])
                    value += softplus - z2[0] * ys[0]
                    d2 = (cast_like(zero, (a - ys[0]) * scale), zero)
                    if n_out > 1:
                        a, softplus = sigmoid_softplus(z2[1])
                        value += softplus - z2[1] * ys[1]
                        d2 = (d2[0], cast_like(zero, (a - ys[1]) * scale))
                    total += weight * loss_scale * value
                else:
                    store_lanes(out_buffer, 0, n_out, z2)
                    total += weight * output_loss(out_code, loss, loss_scale, clip, out_buffer,
                                                  0, n_out, Y, labels, row, weight,
                                                  TINY_WIDTH)
                    d2 = load_lanes(out_buffer, TINY_WIDTH, n_out, zero)
                g2 = outer_lanes(g2, a1, d2)
                gb2 = axpy_lanes(gb2, one, d2)
                d1 = (derivative_lane(code1, back_lane(m2[0], d2, n_out, zero), a1[0], zero,
                                      one, slope),
                      derivative_lane(code1, back_lane(m2[1], d2, n_out, zero), a1[1], zero,
                                      one, slope) if hidden > 1 else zero)
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
            m1 = (step_lanes(m1[0], g1[0], scaled, scale, decayed, decay, rate),
                  step_lanes(m1[1], g1[1], scaled, scale, decayed, decay, rate))
            m2 = (step_lanes(m2[0], g2[0], scaled, scale, decayed, decay, rate),
                  step_lanes(m2[1], g2[1], scaled, scale, decayed, decay, rate))
            if bias1 >= 0:
                b1 = step_lanes(b1, gb1, scaled, scale, False, decay, rate)
            if bias2 >= 0:
                b2 = step_lanes(b2, gb2, scaled, scale, False, decay, rate)
        if ok:
            history[epoch] = epoch_loss if reduce_sum else epoch_loss / epoch_norm
            ok = (finite_lanes(m1[0]) and finite_lanes(m1[1]) and finite_lanes(m2[0])
                  and finite_lanes(m2[1]) and finite_lanes(b1) and finite_lanes(b2))
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


@njit(cache=True, _nrt=False)
def group_pass(group, n_groups, n_chunks, X, Y, labels, sample_weight, order, start, size,
               chunk, params, wt, layout, blas, loss, loss_scale, clip, work, offs, grad, out):
    """Forward and backward passes over one group's consecutive chunks of a batch.

    Returns the group's summed (weighted) loss and leaves its gradient sum in ``grad``
    (the first chunk writes, later ones add). With a non-empty ``out`` it only runs the
    forward pass and copies the output activations there.

    ``work`` holds, for one chunk, every layer's activations sample-major and transposed
    (the transposes feed dW = A^T @ D; a layer of one output takes its dW, a row, as
    d^T @ A without them) and two delta buffers with their transposes;
    ``offs`` says where (``fastbp._layout.work_offsets``). Buffers are addressed by flat
    offsets: building 2-D views costs about 70 ns each, more than a tiny layer's work."""
    n_layers = layout.shape[0]
    n_in = layout[0, L_FAN_IN]
    n_out = layout[n_layers - 1, L_FAN_OUT]
    out_code = layout[n_layers - 1, L_ACTIVATION]
    base = 2 * (n_layers + 1)
    first = group * n_chunks // n_groups
    training = out.shape[0] == 0
    x_flat = X.reshape(X.size)  # a view: X is C-contiguous
    overwrite = np.bool_(False)  # a typed False: a literal one would compile products twice
    total = 0.0
    for c in range(first, (group + 1) * n_chunks // n_groups):
        lo = start + c * chunk
        count = min(chunk, start + size - lo)

        # Forward: the chunk's rows, read in place when they are consecutive rows of X,
        # else gathered; then z = A @ W + b by layer.
        source, a_in = work, offs[0]
        first_row = order[lo]
        consecutive = True
        for b in range(count):
            consecutive = consecutive and order[lo + b] == first_row + b
        if consecutive:
            source, a_in = x_flat, first_row * n_in
        else:
            prefetch_rows(x_flat, order, lo, lo + count, n_in)
            for b in range(count):
                row = order[lo + b]
                for k in range(n_in):
                    work[a_in + b * n_in + k] = X[row, k]
        if training and not blas[0] and layout[0, L_FAN_OUT] > 1:
            transpose(source, a_in, count, n_in, work, offs[n_layers + 1], chunk)
        for l in range(n_layers):
            fan_in = layout[l, L_FAN_IN]
            fan_out = layout[l, L_FAN_OUT]
            bias = layout[l, L_BIAS]
            code = layout[l, L_ACTIVATION]
            z_out = offs[l + 1]
            t_out = offs[n_layers + 2 + l]
            a, a_off = (source, a_in) if l == 0 else (work, offs[l])
            if blas[l]:
                blas_forward(a, a_off, params, layout[l, L_WEIGHT], work, z_out, count, fan_in,
                             fan_out)
            elif short_product(fan_out, fan_in):
                dot_nn(a, a_off, fan_in, params, layout[l, L_WEIGHT], fan_out, work, z_out,
                       fan_out, count, fan_out, fan_in, overwrite)
            else:
                dot_nt(a, a_off, fan_in, wt, layout[l, L_WEIGHT], fan_in, work, z_out,
                       fan_out, count, fan_out, fan_in, overwrite)
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
        total += block_loss(out_code, loss, loss_scale, clip, work, a_last, offs[base],
                            offs[base + 1], count, n_out, Y, labels, order, lo, sample_weight)

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
            by_rows = not wide and bias >= 0 and 4 * fan_out <= count  # narrow: long sums
            if by_rows or not (wide or fan_out == 1 or short_product(fan_out, count)):
                transpose(work, d_cur, count, fan_out, work, dt_cur, chunk)
            a, a_off = (source, a_in) if l == 0 else (work, offs[l])
            if wide:
                blas_weight_gradient(a, a_off, work, d_cur, grad, w_off, count, fan_in, fan_out,
                                     accumulate)
            elif fan_out == 1:  # dW is the row d^T A: A as stored, no transpose
                # m = fan_out, not a literal 1, which would compile dot_nn a second time
                dot_nn(work, d_cur, count, a, a_off, fan_in, grad, w_off, fan_in, fan_out,
                       fan_in, count, accumulate)
            elif short_product(fan_out, count):
                dot_nn(work, offs[n_layers + 1 + l], chunk, work, d_cur, fan_out, grad, w_off,
                       fan_out, fan_in, fan_out, count, accumulate)
            else:
                dot_nt(work, offs[n_layers + 1 + l], chunk, work, dt_cur, chunk, grad, w_off,
                       fan_out, fan_in, fan_out, count, accumulate)
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
                dot_nn(work, d_cur, fan_out, wt, w_off, fan_in, work, d_next, fan_in, count,
                       fan_in, fan_out, overwrite)
            else:
                dot_nt(work, d_cur, fan_out, params, w_off, fan_out, work, d_next, fan_in,
                       count, fan_in, fan_out, overwrite)
            times_derivative(work, d_next, offs[l], count, fan_in, layout[l - 1, L_ACTIVATION])
    return total


# ---------------------------------------------------------------- updates


#: Entries of ``params`` one call of ``apply_gradient`` covers: each buffer's slice stays
#: in cache between the update's passes (sum of groups, scale, L2, step), and blocks are
#: fixed, so a parallel update gives the bits of a serial one.
UPDATE_BLOCK = 16384


@njit(cache=True, _nrt=False, error_model=NUMPY_ERRORS)
def apply_gradient(grads, n_groups, params, layout, norm, optimizer, hyper, step, state_m,
                   state_v, out_grad, lo, hi):
    """For entries ``lo:hi``: sum the groups' gradients in group order, divide by
    ``norm``, add the L2 term on weights (not biases) and apply the optimizer step, or,
    when ``out_grad`` is non-empty, store the gradient there and leave the parameters
    alone.

    The sum lands in ``grads[0]``; every branch sits outside the element loops, which
    keeps them vectorized. No fastmath: the loops are elementwise and vectorize without
    it, and with it numba rounded Adam's step differently in freshly compiled and in
    cached code.

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
        lr_t = real(hyper[H_LR] * np.sqrt(1.0 - hyper[H_BETA2]**step)
                    / (1.0 - hyper[H_BETA1]**step))
        for i in range(lo, hi):
            state_m[i] = beta1 * state_m[i] + (one - beta1) * g[i]
            state_v[i] = beta2 * state_v[i] + (one - beta2) * g[i] * g[i]
            params[i] -= lr_t * state_m[i] / (np.sqrt(state_v[i]) + eps)


@njit(parallel=PRANGE_ONLY, cache=True)
def parallel_update(grads, n_groups, params, layout, norm, optimizer, hyper, step, state_m,
                    state_v, out_grad):
    """``apply_gradient`` over every block of ``params``, spread over threads. Only
    networks of many parameters use it: the update then streams every gradient buffer,
    and on one thread it took 14% of a 1024-wide network's epoch."""
    n = params.shape[0]
    for b in prange((n + UPDATE_BLOCK - 1) // UPDATE_BLOCK):
        lo = np.int64(b) * UPDATE_BLOCK
        apply_gradient(grads, n_groups, params, layout, norm, optimizer, hyper, step, state_m,
                       state_v, out_grad, lo, min(lo + UPDATE_BLOCK, n))


@njit(cache=True, _nrt=False)
def squared_weights(params, layout):
    """Sum of squared weights (biases excluded), for the L2 penalty."""
    total = 0.0
    for l in range(layout.shape[0]):
        lo = layout[l, L_WEIGHT]
        for i in range(lo, lo + layout[l, L_FAN_IN] * layout[l, L_FAN_OUT]):
            total += params[i] * params[i]
    return total


@njit(cache=True, _nrt=False)
def shuffle_order(order, state):
    """Reset ``order`` to 0..n-1 and Fisher-Yates shuffle it with a splitmix64 stream
    whose state lives in ``state[0]`` (``fastbp.reference`` draws the same stream)."""
    n = order.shape[0]
    for i in range(n):
        order[i] = i
    s = state[0]
    for i in range(n - 1, 0, -1):
        s = s + np.uint64(0x9E3779B97F4A7C15)
        z = s
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        j = np.int64(z % np.uint64(i + 1))
        t = order[i]
        order[i] = order[j]
        order[j] = t
    state[0] = s


# ---------------------------------------------------------------- calls by address
#
# ``run`` and ``parallel_groups`` call ``group_pass`` through an address passed in at run
# time, not by name. A call by name links the callee's code into the caller, and numba
# optimizes and compiles the linked code again in every caller: ``group_pass`` was
# compiled four times, and the cold start took 17-19 s instead of 12-15 s. ``run`` calls
# ``parallel_groups`` by address too, and compiles it only for runs whose batches are
# large enough to use it: small networks start 1-2 s sooner. ``sample_pass`` stays a
# call by name: it runs once per tiny batch, and LLVM, seeing its code, passes its
# arguments more cheaply (by address it cost about 90 ns more a call).


def signature_code(argtypes):
    """A checksum of numba argument types, the same in every process."""
    return zlib.crc32(repr(tuple(argtypes)).encode())


def _caller_of(dispatcher, call=True, returns=None):
    """An intrinsic ``(at, args)``: calls ``dispatcher``'s compiled code at ``at[0]`` with
    the tuple ``args``. ``at[1]`` must be ``signature_code`` of the types of ``args``;
    anything else raises instead of calling code compiled for other types. With
    ``call=False`` it only checks. Given the numba type the callee ``returns``, the
    caller compiles without it, and the callee compiles only when its address is taken."""

    @intrinsic
    def intrinsic_call(typingctx, at, args):
        argtypes = tuple(args.types)
        if returns is None:
            dispatcher.compile(argtypes)
        restype = (types.none if not call else returns if returns is not None
                   else dispatcher.overloads[argtypes].signature.return_type)
        expected = signature_code(argtypes)

        def codegen(context, builder, signature, llargs):
            at, packed = llargs
            address, code = builder.extract_value(at, 0), builder.extract_value(at, 1)
            wrong = builder.icmp_unsigned("!=", code, code.type(expected))
            with builder.if_then(wrong, likely=False):
                context.call_conv.return_user_exc(
                    builder, RuntimeError,
                    (f"{dispatcher.__name__} was given the address of code compiled for "
                     "other argument types",))
            if not call:
                return context.get_dummy_value()
            values = [builder.extract_value(packed, i) for i in range(len(argtypes))]
            fnty = context.call_conv.get_function_type(restype, argtypes)
            callee = builder.inttoptr(address, fnty.as_pointer())
            status, result = context.call_conv.call_function(builder, callee, restype,
                                                             argtypes, values)
            with builder.if_then(status.is_error, likely=False):
                context.call_conv.return_status_propagate(builder, status)
            return result

        return restype(types.UniTuple(types.int64, 2), args), codegen

    return intrinsic_call


def _address(dispatcher, argtypes):
    """``(address, signature_code)`` of ``dispatcher`` compiled (or loaded from the cache)
    for ``argtypes``: the ``at`` of its intrinsic caller."""
    dispatcher.compile(argtypes)
    compiled = dispatcher.overloads[argtypes]
    address = compiled.library.get_pointer_to_function(compiled.fndesc.mangled_name)
    return address, signature_code(argtypes)


# ---------------------------------------------------------------- entry points


call_group_pass = _caller_of(group_pass)
check_group_pass = _caller_of(group_pass, call=False)


@njit(parallel=PRANGE_ONLY, cache=True)
def parallel_groups(n_groups, n_chunks, X, Y, labels, sample_weight, order, start, size, chunk,
                    params, wt, layout, blas, loss, loss_scale, clip, work, offs, grads, out,
                    group_loss, group_pass_at):
    """``group_pass`` for every group of a batch, spread over threads. Kept apart from
    ``run`` because parallel compilation analyses the whole enclosing function."""
    # Checked before the loop: an exception raised inside it would not reach the caller.
    check_group_pass(group_pass_at, (np.int64(0), n_groups, n_chunks, X, Y, labels,
                                     sample_weight, order, start, size, chunk, params, wt,
                                     layout, blas, loss, loss_scale, clip, work[0], offs,
                                     grads[0], out))
    for g in prange(n_groups):
        # prange counts in uint64; int64 keeps group_pass to one compiled signature.
        group_loss[g] = call_group_pass(
            group_pass_at,
            (np.int64(g), n_groups, n_chunks, X, Y, labels, sample_weight, order, start, size,
             chunk, params, wt, layout, blas, loss, loss_scale, clip, work[g], offs, grads[g],
             out))


call_parallel_groups = _caller_of(parallel_groups, returns=types.none)
call_parallel_update = _caller_of(parallel_update, returns=types.none)


@njit(cache=True)
def compiled_run(X, Y, labels, sample_weight, order, params, layout, offs, work, grads, loss,
                 loss_scale, clip, reduce_sum, epochs, batch_size, shuffle, shuffle_state,
                 optimizer, hyper, step, state_m, state_v, chunk, parallel_min_macs,
                 blas_min, history, out_grad, out, group_pass_at, parallel_groups_at,
                 parallel_update_at):
    """``run``'s compiled body; ``group_pass_at``, ``parallel_groups_at`` and
    ``parallel_update_at`` are ``(address, signature_code)`` of ``group_pass``,
    ``parallel_groups`` and ``parallel_update`` compiled for the types they are called
    with (the last two are ``NOT_COMPILED`` for runs that never use them: batches too
    small for threads, networks too small for a parallel update).

    The one compiled entry point: training, or one gradient, or a forward pass.

    ``work`` and ``grads`` hold a work buffer and a gradient buffer for each chunk group
    of the largest batch (from ``run``'s ``_scratch``; a forward pass gets no gradient
    columns); whatever they hold on entry is never read.

    Trains in place for ``epochs`` epochs of mini-batches, visiting the rows of ``X`` in
    ``order`` (redrawn each epoch when ``shuffle``; or, ``epochs`` times as long, one
    permutation per epoch back to back), and fills ``history`` with each
    epoch's loss. Returns -1, or the epoch whose loss or parameters became non-finite,
    after restoring the parameters and optimizer state of the last finite epoch.
    With a non-empty ``out_grad`` nothing is trained: the gradient of the first batch goes
    there and its loss to ``history[0]``. With a non-empty ``out`` only the forward pass of
    the first batch runs, its output activations going to ``out``.

    One entry point serves all three because each compiled function that reaches the
    chunk loops costs seconds of compilation. A network with a layer of ``blas_min`` or
    more weights runs its chunks as one group and spreads each product over threads."""
    n = X.shape[0]
    n_params = params.shape[0]
    blas = layout[:, L_FAN_IN] * layout[:, L_FAN_OUT] >= blas_min
    reads_wt = reads_transposed(layout, blas)
    by_sample = out.shape[0] == 0 and not blas.any()
    # Batches that all run sample by sample read the weights as stored, never ``wt``.
    if by_sample and min(batch_size, n) < SAMPLE_PASS_ROWS:
        reads_wt[:] = False
    wt = np.empty_like(params)
    transpose_weights(params, wt, layout, reads_wt)
    most_groups = work.shape[0]
    group_loss = np.zeros(most_groups)
    first_work, first_grad = work[0], grads[0]  # views made once: each costs atomics
    x_flat = X.reshape(X.size)  # a view: X is C-contiguous
    far_data = X.nbytes >= PREFETCH_MIN_BYTES
    saved_params = params.copy()
    saved_m = state_m.copy()
    saved_v = state_v.copy()
    saved_step = step[0]
    stacked = order.shape[0] > n  # one permutation per epoch, back to back
    for epoch in range(epochs):
        if shuffle:
            shuffle_order(order, shuffle_state)
        base = epoch * n if stacked else 0  # where this epoch's visiting order starts
        epoch_loss = 0.0
        # The epoch's weight, summed batch by batch in visiting order, so that a fit in
        # ``order`` and a fit on the rows permuted alike report the same bits.
        epoch_norm = 0.0
        ok = True
        for batch_start in range(0, n, batch_size):
            size = min(batch_size, n - batch_start)
            start = base + batch_start  # the batch's first entry of ``order``
            n_chunks = (size + chunk - 1) // chunk
            n_groups = min(n_chunks, most_groups)
            if by_sample and size < SAMPLE_PASS_ROWS:
                ahead = batch_start + batch_size  # the next batch's samples load meanwhile
                if far_data and ahead < n:
                    prefetch_samples(x_flat, X.shape[1], Y, labels, sample_weight, order,
                                     base + ahead, base + min(ahead + batch_size, n))
                group_loss[0] = sample_pass(X, Y, labels, sample_weight, order, start, size,
                                            params, layout, loss, loss_scale, clip, first_work,
                                            offs, first_grad)
            elif n_groups > 1 and size * 3 * n_params >= parallel_min_macs:
                call_parallel_groups(
                    parallel_groups_at,
                    (n_groups, n_chunks, X, Y, labels, sample_weight, order, start, size, chunk,
                     params, wt, layout, blas, loss, loss_scale, clip, work, offs, grads, out,
                     group_loss, group_pass_at))
            else:
                for g in range(n_groups):
                    group_loss[g] = call_group_pass(
                        group_pass_at,
                        (g, n_groups, n_chunks, X, Y, labels, sample_weight, order, start, size,
                         chunk, params, wt, layout, blas, loss, loss_scale, clip, work[g], offs,
                         grads[g], out))
            if out.shape[0] > 0:
                return -1
            loss_sum = 0.0
            for g in range(n_groups):
                loss_sum += group_loss[g]
            norm = 1.0
            if not reduce_sum:
                norm = float(size)
                if sample_weight.shape[0] > 0:
                    norm = 0.0
                    for b in range(start, start + size):
                        norm += sample_weight[order[b]]
                    if norm == 0.0:
                        continue  # a batch of zero total weight carries nothing to learn
            batch_loss = loss_sum / norm
            if hyper[H_L2] > 0.0:
                batch_loss += 0.5 * hyper[H_L2] * squared_weights(params, layout) / norm
            storing = out_grad.shape[0] > 0  # the step count is then not read
            if storing:
                history[0] = batch_loss
            elif not np.isfinite(batch_loss):
                ok = False
                break
            else:
                epoch_loss += batch_loss if reduce_sum else batch_loss * norm
                epoch_norm += norm
                step[0] += 1
            # The update, block by block, here or on every thread. Written out here: a
            # function of its own around it cost a second of the cold start.
            if parallel_update_at[0] != 0:
                call_parallel_update(parallel_update_at,
                                     (grads, n_groups, params, layout, norm, optimizer, hyper,
                                      step[0], state_m, state_v, out_grad))
            else:
                for lo in range(0, n_params, UPDATE_BLOCK):
                    apply_gradient(grads, n_groups, params, layout, norm, optimizer, hyper,
                                   step[0], state_m, state_v, out_grad, lo,
                                   min(lo + UPDATE_BLOCK, n_params))
            if storing:
                return -1
            transpose_weights(params, wt, layout, reads_wt)
        if ok:
            history[epoch] = epoch_loss if reduce_sum else epoch_loss / epoch_norm
            for i in range(n_params):
                ok = ok and np.isfinite(params[i])
        if not ok:
            for i in range(n_params):
                params[i] = saved_params[i]
            for i in range(state_m.shape[0]):
                state_m[i] = saved_m[i]
            for i in range(state_v.shape[0]):
                state_v[i] = saved_v[i]
            step[0] = saved_step
            return epoch
        if epoch + 1 < epochs:
            for i in range(n_params):
                saved_params[i] = params[i]
            for i in range(state_m.shape[0]):
                saved_m[i] = state_m[i]
            for i in range(state_v.shape[0]):
                saved_v[i] = state_v[i]
            saved_step = step[0]
    return -1


#: ``group_pass_at``, ``parallel_groups_at`` and ``parallel_update_at`` of
#: ``compiled_run`` by the fingerprints of the arguments that set their types.
_group_pass_at = {}
_parallel_groups_at = {}
_parallel_update_at = {}

#: The ``parallel_groups_at`` of runs that never spread a batch over threads, and the
#: ``parallel_update_at`` of runs that update on one thread: calling it raises.
NOT_COMPILED = (0, 0)


def run(X, Y, labels, sample_weight, order, params, layout, offs, work_size, loss, loss_scale,
        clip, reduce_sum, epochs, batch_size, shuffle, shuffle_state, optimizer, hyper, step,
        state_m, state_v, chunk, max_groups, parallel_min_macs, blas_min, history, out_grad,
        out):
    """The one entry point: training, or one gradient, or a forward pass (see
    ``compiled_run``). Trains tiny networks in ``tiny_run``; otherwise finds
    ``group_pass``, and ``parallel_groups`` and ``parallel_update`` where the run may use
    them, compiled for these argument types first."""
    if out.shape[0] == 0 and _tiny(X, layout, batch_size, optimizer, blas_min, out_grad):
        return tiny_run(X, Y, labels, sample_weight, order, params, layout, loss, loss_scale,
                        clip, reduce_sum, epochs, batch_size, shuffle, shuffle_state, hyper,
                        step, history, np.zeros(2 * TINY_WIDTH, params.dtype))
    if epochs * X.shape[0] * 3 * params.shape[0] < CALL_PARALLEL_MIN_MACS:
        parallel_min_macs = max(parallel_min_macs, CALL_PARALLEL_MIN_MACS)
    typed = (X, Y, labels, sample_weight, order, params, layout, offs, loss, loss_scale, clip,
             chunk, out)
    key = tuple(compute_fingerprint(value) for value in typed)
    group_pass_at = _group_pass_at.get(key)
    if group_pass_at is None:
        group_pass_at = _group_pass_at[key] = _address(group_pass, _group_pass_types(*typed))
    parallel_groups_at = NOT_COMPILED
    if _may_run_in_parallel(X.shape[0], batch_size, chunk, max_groups, params.shape[0],
                            parallel_min_macs):
        parallel_groups_at = _parallel_groups_at.get(key)
        if parallel_groups_at is None:
            parallel_groups_at = _parallel_groups_at[key] = _address(
                parallel_groups, _parallel_groups_types(*typed))
    parallel_update_at = NOT_COMPILED
    if out.shape[0] == 0 and params.shape[0] >= _config.PARALLEL_UPDATE_MIN_PARAMS:
        updated = (params, layout, optimizer, hyper, state_m, state_v, out_grad)
        update_key = tuple(compute_fingerprint(value) for value in updated)
        parallel_update_at = _parallel_update_at.get(update_key)
        if parallel_update_at is None:
            parallel_update_at = _parallel_update_at[update_key] = _address(
                parallel_update, _parallel_update_types(*updated))
    groups = _most_groups(X.shape[0], batch_size, chunk, max_groups)
    n_grad = params.shape[0]
    if out.shape[0] > 0:
        # A forward pass sums nothing across chunks, so its outputs do not depend on how
        # chunks are grouped: one group a thread, no gradient buffers. 20 groups' buffers
        # for 2,000 rows of a 64-100-10 network cost more than the pass (1.30 -> 0.55 ms).
        groups, n_grad = min(groups, get_num_threads()), 0
    work, grads = _scratch(params.dtype, groups, work_size, n_grad)
    return compiled_run(X, Y, labels, sample_weight, order, params, layout, offs, work, grads,
                        loss, loss_scale, clip, reduce_sum, epochs, batch_size, shuffle,
                        shuffle_state, optimizer, hyper, step, state_m, state_v, chunk,
                        parallel_min_macs, blas_min, history, out_grad, out, group_pass_at,
                        parallel_groups_at, parallel_update_at)


#: The groups' work and gradient buffers of recent runs, by dtype and shape, kept for the
#: next run: allocating and zeroing them cost 40 of the 100 us of a 1-epoch fit of a
#: 4-100-3 network on 150 rows. The kernels write every entry before reading it, so a
#: run never sees the last one's values (a test fills them with NaN).
_scratch_buffers = {}
SCRATCH_KEPT = 4
SCRATCH_KEPT_BYTES = 8 << 20


def _scratch(dtype, groups, work_size, n_params):
    """``(work, grads)`` buffers of ``groups`` rows for ``compiled_run``: the ones of an
    earlier run of the same shapes, or new ones, kept when small enough (the oldest kept
    ones make room)."""
    key = (dtype, groups, work_size, n_params)
    buffers = _scratch_buffers.get(key)
    if buffers is None:
        buffers = (np.zeros((groups, work_size), dtype), np.zeros((groups, n_params), dtype))
        if buffers[0].nbytes + buffers[1].nbytes <= SCRATCH_KEPT_BYTES:
            _scratch_buffers[key] = buffers
            while (len(_scratch_buffers) > SCRATCH_KEPT
                   or sum(w.nbytes + g.nbytes for w, g in _scratch_buffers.values())
                   > SCRATCH_KEPT_BYTES):
                del _scratch_buffers[next(iter(_scratch_buffers))]
    return buffers


#: Multiply-adds a whole call (epochs x rows x 3 x parameters) needs before it uses
#: several threads. A call's threads start cold, and short calls between the caller's own
#: work (L-BFGS-B's gradients, early stopping's epochs) pay that alone: on this project's
#: 2-core virtual machine some waited 7.7 ms for a parked thread. An lbfgs fit of iris
#: (270,000 multiply-adds a call) took 32 ms on two threads, 6.7 ms on one; breast_cancer's
#: (4.1 million a call) still gains from two.
CALL_PARALLEL_MIN_MACS = 1 << 20

#: Whether ``run`` trains tiny networks in ``tiny_run`` (tests turn it off to compare).
TINY_RUNS = True


def _tiny(X, layout, batch_size, optimizer, blas_min, out_grad):
    """Whether a training run is ``tiny_run``'s: two layers at most ``TINY_WIDTH`` wide,
    none through BLAS, every batch one that ``compiled_run`` would give ``sample_pass``,
    plain SGD."""
    if not (TINY_RUNS and layout.shape[0] == 2 and optimizer == SGD
            and out_grad.shape[0] == 0 and min(batch_size, X.shape[0]) < SAMPLE_PASS_ROWS):
        return False
    (n_in, hidden, *_), (_, n_out, *_) = layout.tolist()
    return (max(n_in, hidden, n_out) <= TINY_WIDTH
            and max(n_in * hidden, hidden * n_out) < blas_min)


def _most_groups(n, batch_size, chunk, max_groups):
    """Chunk groups of the largest batch of a run over ``n`` rows."""
    return min(-(-min(batch_size, n) // chunk), max_groups)


def _may_run_in_parallel(n, batch_size, chunk, max_groups, n_params, parallel_min_macs):
    """Whether ``compiled_run`` may spread a batch over threads: its largest batch has
    more than one chunk group and enough multiply-adds (the test it applies per batch)."""
    return (_most_groups(n, batch_size, chunk, max_groups) > 1
            and min(batch_size, n) * 3 * n_params >= parallel_min_macs)


def _group_pass_types(X, Y, labels, sample_weight, order, params, layout, offs, loss,
                      loss_scale, clip, chunk, out):
    """The numba types of the arguments ``compiled_run`` passes ``group_pass``."""
    X, Y, labels, sample_weight, order, params, layout, offs, loss, loss_scale, clip, chunk, \
        out = (typeof(value) for value in (X, Y, labels, sample_weight, order, params, layout,
                                           offs, loss, loss_scale, clip, chunk, out))
    vector = types.Array(params.dtype, 1, "C")  # wt, and rows of work and grads
    index = types.int64
    return (index, index, index, X, Y, labels, sample_weight, order, index, index, chunk,
            params, vector, layout, types.Array(types.boolean, 1, "C"), loss, loss_scale, clip,
            vector, offs, vector, out)


def _parallel_groups_types(*typed):
    """The numba types of the arguments ``compiled_run`` passes ``parallel_groups``:
    ``group_pass``'s without the group, with the whole work and gradient buffers, and
    then the groups' losses and ``group_pass_at``."""
    (_, n_groups, n_chunks, X, Y, labels, sample_weight, order, start, size, chunk, params,
     wt, layout, blas, loss, loss_scale, clip, _, offs, _, out) = _group_pass_types(*typed)
    buffers = types.Array(params.dtype, 2, "C")
    return (n_groups, n_chunks, X, Y, labels, sample_weight, order, start, size, chunk,
            params, wt, layout, blas, loss, loss_scale, clip, buffers, offs, buffers, out,
            types.Array(types.float64, 1, "C"), types.UniTuple(types.int64, 2))


def _parallel_update_types(params, layout, optimizer, hyper, state_m, state_v, out_grad):
    """The numba types of the arguments ``compiled_run`` passes ``parallel_update``."""
    params, layout, optimizer, hyper, state_m, state_v, out_grad = (
        typeof(value) for value in (params, layout, optimizer, hyper, state_m, state_v,
                                    out_grad))
    return (types.Array(params.dtype, 2, "C"), types.int64, params, layout, types.float64,
            optimizer, hyper, types.int64, state_m, state_v, out_grad)
