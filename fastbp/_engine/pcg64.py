"""NumPy's PCG64 stream, compiled: the initial weights bit for bit as
``np.random.default_rng(seed).uniform`` draws them (``fastbp._init``), without the 15-20 us
of seeding a Generator and the per-call overhead of its draws.

PCG64 is a 128-bit linear congruential generator: each draw first advances the state,
``state = state * MULTIPLIER + inc``, then outputs its XSL-RR (the two halves xor-ed,
rotated right by the top 6 bits). ``Generator.uniform(low, high)`` is
``low + (high - low) * ((output >> 11) * 2**-53)``; ``Generator.integers(0, 2**63)`` is
``output >> 1`` (Lemire's method with a power-of-two range rejects nothing).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .codes import L_BIAS, L_FAN_IN, L_FAN_OUT, L_WEIGHT
from .sources import njit

MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645
MASK64 = (1 << 64) - 1
M_HI, M_LO = np.uint64(MULTIPLIER >> 64), np.uint64(MULTIPLIER & MASK64)
#: Four draws in one: ``state * MULTIPLIER**4 + inc * (1 + MULTIPLIER + MULTIPLIER**2 +
#: MULTIPLIER**3)`` is the state four steps on, so four interleaved chains hide the latency
#: of the 128-bit products (two chains drew 2.1 ns a value, four 1.3 ns).
M4 = MULTIPLIER**4 & ((1 << 128) - 1)
M4_HI, M4_LO = np.uint64(M4 >> 64), np.uint64(M4 & MASK64)
S4 = (1 + MULTIPLIER + MULTIPLIER**2 + MULTIPLIER**3) & ((1 << 128) - 1)
S4_HI, S4_LO = np.uint64(S4 >> 64), np.uint64(S4 & MASK64)
ZERO, ONE = np.uint64(0), np.uint64(1)
#: ``next_double``'s factor of the output's top 53 bits.
NEXT_DOUBLE_SCALE = 2.0**-53


@intrinsic
def _lcg(typingctx, hi, lo, m_hi, m_lo, a_hi, a_lo):
    """``(hi, lo)`` of ``(hi:lo) * (m_hi:m_lo) + (a_hi:a_lo)`` modulo 2**128, in LLVM's
    128-bit integers: three 64-bit multiplies and an add with carry."""
    u64 = types.uint64

    def codegen(context, builder, signature, args):
        wide, half = ir.IntType(128), ir.IntType(64)
        shift = ir.Constant(wide, 64)

        def join(high, low):
            return builder.or_(
                builder.shl(builder.zext(high, wide), shift), builder.zext(low, wide)
            )

        value = builder.add(builder.mul(join(*args[0:2]), join(*args[2:4])), join(*args[4:6]))
        parts = [builder.trunc(builder.lshr(value, shift), half), builder.trunc(value, half)]
        return context.make_tuple(builder, signature.return_type, parts)

    return types.UniTuple(u64, 2)(u64, u64, u64, u64, u64, u64), codegen


def _xsl_rr(builder, hi, lo):
    """PCG64's output of the state ``(hi, lo)``: the halves xor-ed, rotated right by the
    top 6 bits of ``hi``."""
    word = ir.IntType(64)
    rotate = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(word, [word, word, word]), "llvm.fshr.i64"
    )
    mixed = builder.xor(hi, lo)
    return builder.call(rotate, [mixed, mixed, builder.lshr(hi, ir.Constant(word, 58))])


# The outputs are intrinsics rather than small jitted functions, which numba would compile
# each on its own, with a Python wrapper: the module compiled in 0.8 s instead of 0.6.


@intrinsic
def _output(typingctx, hi, lo):
    """The uint64 output of the state ``(hi, lo)``."""

    def codegen(context, builder, signature, args):
        return _xsl_rr(builder, *args)

    return types.uint64(types.uint64, types.uint64), codegen


@intrinsic
def _top53(typingctx, hi, lo):
    """The output's top 53 bits, as the double NumPy's ``next_double`` scales by 2**-53
    (below 2**53, so a signed conversion is exact)."""

    def codegen(context, builder, signature, args):
        top = builder.lshr(_xsl_rr(builder, *args), ir.Constant(ir.IntType(64), 11))
        return builder.sitofp(top, ir.DoubleType())

    return types.float64(types.uint64, types.uint64), codegen


@njit(cache=True, _nrt=False)
def draw_parameters(params, layout, limits, stream):
    """Fill the flat ``params``: each layer's weights ``uniform(-limit, limit)`` (drawn in
    float64, then rounded to the dtype) in layer order, biases zero. ``stream`` is
    ``(state_hi, state_lo, inc_hi, inc_lo)`` of a fresh ``np.random.PCG64`` and is left
    unchanged. Returns the next ``integers(0, 2**63)`` draw, as a uint64."""
    hi, lo, inc_hi, inc_lo = stream[0], stream[1], stream[2], stream[3]
    c_hi, c_lo = _lcg(inc_hi, inc_lo, S4_HI, S4_LO, ZERO, ZERO)
    for layer in range(layout.shape[0]):
        start = layout[layer, L_WEIGHT]
        n = layout[layer, L_FAN_IN] * layout[layer, L_FAN_OUT]
        weights = params[start : start + n]
        low = -limits[layer]
        # NumPy's low + (high - low) * (top * 2**-53), with the power of two moved: scaling
        # by it is exact, so the rounding and the bits stay the same, one multiply fewer.
        step = (limits[layer] - low) * NEXT_DOUBLE_SCALE
        quads = n // 4
        if quads:
            h0, l0 = _lcg(hi, lo, M_HI, M_LO, inc_hi, inc_lo)
            h1, l1 = _lcg(h0, l0, M_HI, M_LO, inc_hi, inc_lo)
            h2, l2 = _lcg(h1, l1, M_HI, M_LO, inc_hi, inc_lo)
            h3, l3 = _lcg(h2, l2, M_HI, M_LO, inc_hi, inc_lo)
            i = 0
            while True:
                weights[i] = low + step * _top53(h0, l0)
                weights[i + 1] = low + step * _top53(h1, l1)
                weights[i + 2] = low + step * _top53(h2, l2)
                weights[i + 3] = low + step * _top53(h3, l3)
                i += 4
                if i == 4 * quads:
                    break
                h0, l0 = _lcg(h0, l0, M4_HI, M4_LO, c_hi, c_lo)
                h1, l1 = _lcg(h1, l1, M4_HI, M4_LO, c_hi, c_lo)
                h2, l2 = _lcg(h2, l2, M4_HI, M4_LO, c_hi, c_lo)
                h3, l3 = _lcg(h3, l3, M4_HI, M4_LO, c_hi, c_lo)
            hi, lo = h3, l3
        for i in range(4 * quads, n):
            hi, lo = _lcg(hi, lo, M_HI, M_LO, inc_hi, inc_lo)
            weights[i] = low + step * _top53(hi, lo)
        bias = layout[layer, L_BIAS]
        if bias >= 0:
            params[bias : bias + layout[layer, L_FAN_OUT]] = 0
    hi, lo = _lcg(hi, lo, M_HI, M_LO, inc_hi, inc_lo)
    return _output(hi, lo) >> ONE


#: Streams of recent seeds: seeding through NumPy's SeedSequence costs 15-20 us.
_streams = {}
STREAMS_KEPT = 64


def stream(seed):
    """``(state_hi, state_lo, inc_hi, inc_lo)`` as uint64[4] of ``np.random.PCG64(seed)``,
    the bit generator of ``np.random.default_rng(seed)``; fresh entropy for None. The
    array is read-only: calls with the same seed share it."""
    found = _streams.get(seed) if seed is not None else None
    if found is None:
        state = np.random.PCG64(seed).state["state"]
        found = np.array(
            [
                state["state"] >> 64,
                state["state"] & MASK64,
                state["inc"] >> 64,
                state["inc"] & MASK64,
            ],
            np.uint64,
        )
        found.flags.writeable = False
        if seed is not None:
            if len(_streams) >= STREAMS_KEPT:
                del _streams[next(iter(_streams))]
            _streams[seed] = found
    return found


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
