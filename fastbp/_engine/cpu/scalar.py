"""Scalar math for compiled code: exp, tanh, sigmoid and softplus without libm calls or
branches, so loops over a layer vectorize; the shared formulas of the activations, their
derivatives and the sigmoid/BCE and exp/Poisson losses (``formulas.py``) compiled over them."""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .. import formulas as F
from ..sources import njit
from .compile_options import NUMPY_ERRORS

#
# Written without branches, libm calls or Python's ZeroDivisionError check
# (``error_model="numpy"``), so loops over a layer's outputs vectorize: a tanh costs about
# 1 ns instead of 10-25 ns for a scalar libm call. Accuracy stays within 2.5 ulp of the
# argument's precision: ``exp``, ``tanh`` and ``sigmoid`` compute a float32 in float32,
# twice as many lanes to a vector as float64 (big-batch float32 trains 3-7% faster).

# exp(x) = 2**n * exp(r), |r| <= ln(2)/2, with Cephes' Pade coefficients (1-2 ulp).
LOG2E = 1.4426950408889634
LN2_HI = 6.93145751953125e-1
LN2_LO = 1.42860682030941723212e-6
EXP_P0, EXP_P1, EXP_P2 = 1.26177193074810590878e-4, 3.02994407707441961300e-2, 1.0
EXP_Q0, EXP_Q1, EXP_Q2, EXP_Q3 = (
    3.00198505138664455042e-6,
    2.52448340349684104192e-3,
    2.27265548208155028766e-1,
    2.0,
)
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
    p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z - 1.61468768441708447952e3
    q = (
        (z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3
    ) * z + 4.84406305325125486048e3
    small = x + x * z * p / q
    return small if ax <= 0.625 else large


# log(1 + t) = t - t**2 / 2 + t**3 P(t) / Q(t) for 1 + t in [sqrt(1/2), sqrt(2)] (Cephes).
LOG_P = (
    1.01875663804580931796e-4,
    4.97494994976747001425e-1,
    4.70579119878881725854e0,
    1.44989225341610930846e1,
    1.79368678507819816313e1,
    7.70838733755885391666e0,
)
LOG_Q = (
    1.12873587189167450590e1,
    4.52279145837532221105e1,
    8.29875266912776603211e1,
    7.11544750618563894466e1,
    2.31251620126765340583e1,
)
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
    p = ((((LOG_P[0] * t + LOG_P[1]) * t + LOG_P[2]) * t + LOG_P[3]) * t + LOG_P[4]) * t + LOG_P[5]
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
F32_EXP_P = tuple(
    np.float32(c)
    for c in (
        1.9875691500e-4,
        1.3981999507e-3,
        8.3334519073e-3,
        4.1665795894e-2,
        1.6666665459e-1,
        5.0000001201e-1,
    )
)
#: 1.5 * 2**23: adding it rounds a float32 of magnitude below 2**22 to an integer.
F32_ROUNDER = np.float32(12582912.0)
#: Below the smallest normal result exp returns 0; above 88 (2**127 is the largest power
#: of two it builds) infinity.
F32_EXP_MIN, F32_EXP_MAX = np.float32(-87.33654), np.float32(88.0)
F32_TANH_P = tuple(
    np.float32(c)
    for c in (
        -5.70498872745e-3,
        2.06390887954e-2,
        -5.37397155531e-2,
        1.33314422036e-1,
        -3.33332819422e-1,
    )
)
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
F32_LOG_P = tuple(
    np.float32(c)
    for c in (
        7.0376836292e-2,
        -1.1514610310e-1,
        1.1676998740e-1,
        -1.2420140846e-1,
        1.4249322787e-1,
        -1.6668057665e-1,
        2.0000714765e-1,
        -2.4999993993e-1,
        3.3333331174e-1,
    )
)


@njit(cache=True, error_model=NUMPY_ERRORS)
def log_unit32(u):
    """log(u) of a float32 u in [1, 2], as ``log_unit``, with no division."""
    halve = u > F32_SQRT2
    f = u * F32_HALF if halve else u
    k = F32_ONE if halve else F32_ZERO
    t = f - F32_ONE
    z = t * t
    c = F32_LOG_P
    p = (
        ((((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) * t + c[6]) * t
        + c[7]
    ) * t + c[8]
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
        raise TypeError(
            f"{float64_version.__name__[:-2]} is for compiled code; call "
            f"{float64_version.__name__} or {float32_version.__name__}"
        )

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


# The shared formulas (``formulas.py``) over this file's scalar math, inlined into every
# CPU kernel that calls them.
activation = njit(inline="always", error_model=NUMPY_ERRORS)(F.activation_over(sigmoid, tanh, exp))
derivative = njit(inline="always")(F.derivative)
sigmoid_bce_loss = njit(inline="always")(F.sigmoid_bce_loss)
sigmoid_bce_delta = njit(inline="always")(F.sigmoid_bce_delta)
exp_poisson_loss = njit(inline="always")(F.exp_poisson_loss)
exp_poisson_delta = njit(inline="always")(F.exp_poisson_delta)


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
