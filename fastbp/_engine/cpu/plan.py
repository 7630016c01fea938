"""Work plans: how the CPU backend cuts a batch into chunks and where each chunk's
arrays live in its work buffer.

Chunks fix the order in which gradients are summed, so a plan depends on the network, its
dtype, the batch size and the settings alone, never on the thread count.
"""

from typing import NamedTuple

import numpy as np

from .. import config
from ..codes import L_FAN_IN, L_FAN_OUT
from . import calibration

#: Training batches of fewer rows run sample by sample (``passes.sample_pass``), never
#: through BLAS below ``BLAS_MIN_ENTRIES``.
SAMPLE_PASS_ROWS = 16

#: Sparse input's batches run in one chunk group unless the multiply-adds of the layers
#: after the first (batch x 3 x their parameters) reach this many times the first
#: layer's weights: each further group clears and sums a gradient buffer of them for
#: every batch. ``bench_sklearn --sparse`` (20,000 x 50,000 CSR, 100 hidden units, 5
#: epochs of Adam): 13.3 s in the three groups the memory rule allows, 9.3 s in one (on
#: two draws of its data, 852,300 and 777,579 entries).
SPARSE_GROUP_COST = 4

#: Plans by architecture, dtype, batch size and settings, shared by every network: the
#: first fit of a new 2-2-1 network spent 8 us of its 28 working one out.
_plans = {}
PLANS_KEPT = 1024


class Plan(NamedTuple):
    """How one network's batches of one size run."""

    #: Rows per chunk, and the offsets and size of a chunk's work buffer (``work_offsets``).
    chunk: int
    offsets: np.ndarray
    work_size: int
    #: Which layers multiply through BLAS (bool per layer), and whether any does.
    blas: np.ndarray
    uses_blas: bool
    #: Most chunk groups, each with a gradient buffer, that a batch may run in parallel.
    max_groups: int


def work_plan(layout, dtype, batch_size, time_layer=None, sparse=False):
    """The ``Plan`` of a network with this ``layout`` and ``dtype`` for batches of
    ``batch_size`` rows, of dense input or, with ``sparse``, of CSR rows.

    Layers of at least ``BLAS_MIN_ENTRIES`` weights multiply through BLAS; those of at
    least ``BLAS_TRY_ENTRIES`` do where BLAS measured faster on this machine
    (``calibration``, timed by ``time_layer(fan_in, fan_out, dtype, chunk, first,
    through_blas) -> seconds``; without it, they never do).

    A batch is cut into chunks of equal size, so that threads get equal shares, and into
    an even number of them (at least two) when it has more than FEWEST_CHUNK_ROWS rows, so
    that two cores get equal work: three chunks leave one core idle a third of the time.
    Chunks are as long as their work buffer allows (see WORK_BUFFER_BYTES); networks with
    BLAS layers take chunks of about half a batch (at most BLAS_CHUNK_ROWS), long enough
    for BLAS to run near its peak.

    Sparse input never goes through BLAS in the first layer (``sparse.sparse_forward``
    multiplies it) and keeps no input rows in the work buffer. Its batches run in one
    chunk group where the dense layers' multiply-adds are few beside the first layer's
    weights (``SPARSE_GROUP_COST``): every group's buffer for the first layer's gradient
    is cleared and summed whole for every batch, while the sparse products are few."""
    key = (
        sparse,
        layout.tobytes(),
        dtype.str,
        batch_size,
        config.CHUNK_ROWS,
        config.WORK_BUFFER_BYTES,
        config.BLAS_CHUNK_ROWS,
        config.BLAS_MIN_ENTRIES,
        config.BLAS_TRY_ENTRIES,
        time_layer is None,
        calibration.generation,
        config.MAX_GROUPS,
        config.GRADIENT_BUFFER_ENTRIES,
    )
    plan = _plans.get(key)
    if plan is not None:
        return plan
    entries = layout[:, L_FAN_IN] * layout[:, L_FAN_OUT]
    entries_0 = int(entries[0])
    blas = entries >= config.BLAS_MIN_ENTRIES
    if sparse:
        entries[0] = 0  # never timed either
        blas[0] = False
    half = -(-batch_size // 2)
    blas_most = max(config.FEWEST_CHUNK_ROWS, min(config.BLAS_CHUNK_ROWS, half))
    if time_layer is not None and batch_size >= SAMPLE_PASS_ROWS:
        blas_chunk = _chunk(batch_size, blas_most)
        for l in np.flatnonzero(~blas & (entries >= config.BLAS_TRY_ENTRIES)):
            fan_in, fan_out = int(layout[l, L_FAN_IN]), int(layout[l, L_FAN_OUT])
            first = bool(l == 0)

            def timed(through_blas, fan_in=fan_in, fan_out=fan_out, first=first):
                return time_layer(fan_in, fan_out, dtype, blas_chunk, first, through_blas)

            blas[l] = calibration.through_blas(fan_in, fan_out, dtype, blas_chunk, first, timed)
    uses_blas = bool(blas.any())
    if uses_blas:
        most = blas_most
    else:
        per_row = work_offsets(layout, 1, sparse)[1] * dtype.itemsize
        fits = config.WORK_BUFFER_BYTES // per_row
        most = min(config.CHUNK_ROWS, max(config.FEWEST_CHUNK_ROWS, min(fits, half)))
    chunk = _chunk(batch_size, most)
    n_params = _n_params(layout)
    max_groups = min(config.MAX_GROUPS, max(2, config.GRADIENT_BUFFER_ENTRIES // n_params))
    if sparse and batch_size * 3 * (n_params - entries_0) < SPARSE_GROUP_COST * entries_0:
        max_groups = 1
    if len(_plans) >= PLANS_KEPT:
        _plans.clear()
    offsets, work_size = work_offsets(layout, chunk, sparse)
    plan = _plans[key] = Plan(chunk, offsets, work_size, blas, uses_blas, max_groups)
    return plan


def _chunk(batch_size, most):
    """Rows per chunk: equal chunks of at most ``most`` rows, an even number of them
    when there are several."""
    n_chunks = -(-batch_size // most)
    if n_chunks > 1:
        n_chunks += n_chunks % 2
    return -(-batch_size // n_chunks)


def _n_params(layout):
    """Weights and biases of the network ``layout`` describes: its last block's end."""
    fan_in, fan_out, w_off, b_off, _ = (int(v) for v in layout[-1])
    return b_off + fan_out if b_off >= 0 else w_off + fan_in * fan_out


def work_offsets(layout, chunk, sparse=False):
    """Offsets inside one chunk group's work buffer, and the buffer's size.

    For layers 0..L the activations A_l (chunk x width, sample-major) start at
    ``offs[l]`` and their transposes at ``offs[L + 1 + l]``; then come two delta buffers
    and their two transposes, each chunk x the widest layer. With ``sparse`` input the
    input rows take no room (A_0 and its transpose are empty), and neither do the
    input's widths in the deltas: the first layer's delta is never computed."""
    n_layers = layout.shape[0]
    widths = [int(w) for w in layout[:, L_FAN_IN]] + [int(layout[-1, L_FAN_OUT])]
    if sparse:
        widths[0] = 0
    offs = np.zeros(2 * (n_layers + 1) + 4, np.int64)
    pos = 0
    for i, width in enumerate(widths + widths):
        offs[i] = pos
        pos += chunk * width
    for d in range(4):
        offs[2 * (n_layers + 1) + d] = pos
        pos += chunk * max(widths)
    return offs, pos
