"""The CPU backend: ``run`` takes a ``Request``, plans it (chunks, work buffers, BLAS and
threads) and calls the compiled entry point ``compiled_run``.

Chunks fix the order in which gradients are summed, so every choice here depends on the
network, its dtype and the batch size alone, never on the thread count.
"""

import ctypes
import threading
import time

import numpy as np
from numba import get_num_threads, typeof, types
from numba._dispatcher import compute_fingerprint

from .. import config
from ..codes import H_BETA1, H_BETA2, H_EPSILON, H_L2, H_LR, H_MOMENTUM, SGD, SQUARED
from ..layout import build_layout
from ..request import Hyperparameters, Mode, OptimizerState, Request, SparseRows
from . import blas_threads, compile_ahead
from .addresses import address_of
from .entry import compiled_run, parallel_groups
from .passes import group_pass
from .plan import SAMPLE_PASS_ROWS, Plan, work_offsets, work_plan
from .tiny import TINY_WIDTH, tiny_run
from .updates import parallel_update

#: ``group_pass_at``, ``parallel_groups_at`` and ``parallel_update_at`` of
#: ``compiled_run`` by the fingerprints of the arguments that set their types.
_group_pass_at = {}
_parallel_groups_at = {}
_parallel_update_at = {}

#: The ``group_pass_at`` of runs whose batches all go to ``sample_pass``, the
#: ``parallel_groups_at`` of runs that never spread a batch over threads, and the
#: ``parallel_update_at`` of runs that update on one thread: calling it raises.
NOT_COMPILED = (0, 0)


def run(request):
    """Carry out ``request`` (``fastbp._engine.request``) on the CPU. Returns -1, or for
    a training run whose loss or parameters became non-finite the failing epoch, after
    restoring the parameters and optimizer state of the last finite one."""
    n = request.X.shape[0]
    batch_size = n if request.batch_size is None else request.batch_size
    sparse = isinstance(request.X, SparseRows)
    return _run_with_plan(
        request, work_plan(request.layout, request.params.dtype, batch_size, time_layer, sparse)
    )


#: The CSR arrays ``compiled_run`` takes with dense input, by dtype: empty.
_NO_ROWS = {}


def _csr_arguments(X, dtype):
    """``(X, indptr, indices, values)`` as ``compiled_run`` takes them: dense ``X`` with
    empty CSR arrays, or for ``SparseRows`` its arrays with a placeholder ``X`` of no
    columns (no memory), so that both kinds of input share one compiled signature."""
    if isinstance(X, SparseRows):
        return np.empty((X.shape[0], 0), dtype), X.indptr, X.indices, X.data
    empty = _NO_ROWS.get(dtype)
    if empty is None:
        empty = _NO_ROWS[dtype] = (np.zeros(0, np.int64), np.zeros(0, dtype))
    return X, empty[0], empty[0], empty[1]


def _run_with_plan(request, plan):
    """``run`` with its work ``plan`` made."""
    X, params = request.X, request.params
    dtype = params.dtype
    n = X.shape[0]
    batch_size = n if request.batch_size is None else request.batch_size
    empty = np.zeros(0, dtype)
    training = request.mode == Mode.TRAIN
    state = request.state if training else OptimizerState.empty(dtype)
    hyper = request.hyper
    history = np.zeros(1) if request.history is None else request.history
    out_grad = request.out if request.mode == Mode.GRADIENT else empty
    out = request.out if request.mode == Mode.FORWARD else np.zeros((0, 0), dtype)
    shuffle_state = request.shuffle_state
    if shuffle_state is None or not training:
        shuffle_state = np.zeros(1, np.uint64)
    hyper_array = np.empty(6)
    hyper_array[H_LR], hyper_array[H_MOMENTUM] = hyper.lr, hyper.momentum
    hyper_array[H_BETA1], hyper_array[H_BETA2] = hyper.beta1, hyper.beta2
    hyper_array[H_EPSILON], hyper_array[H_L2] = hyper.epsilon, hyper.l2
    X, indptr, indices, values = _csr_arguments(X, dtype)
    with blas_threads.one_blas_thread() if plan.uses_blas else blas_threads.NO_LIMIT:
        # The request's arrays stay referenced meanwhile: the aliases hold no reference.
        return _run_planned(
            _writeable_typed(X),
            indptr,
            indices,
            values,
            _writeable_typed(request.Y),
            _writeable_typed(request.labels),
            _writeable_typed(request.sample_weight),
            np.arange(n) if request.order is None else request.order,
            params,
            request.layout,
            plan.offsets,
            plan.work_size,
            request.loss,
            request.loss_scale,
            np.finfo(dtype).eps,
            request.reduce_sum,
            request.epochs,
            batch_size,
            request.shuffle,
            shuffle_state,
            request.optimizer,
            hyper_array,
            state.step,
            state.m,
            state.v,
            _restore_buffer(params, state) if training and request.restore else empty,
            plan.chunk,
            plan.max_groups,
            config.PARALLEL_MIN_MACS,
            plan.blas,
            history,
            np.zeros(0) if request.carry is None else request.carry,
            out_grad,
            out,
            request.ranks,
        )


def _restore_buffer(params, state):
    """Room for the parameters and optimizer moments of the last finite epoch, which a
    diverging run restores."""
    return np.empty(params.shape[0] + state.m.shape[0] + state.v.shape[0], params.dtype)


def _writeable_typed(array):
    """``array``, or for a read-only one (a memory map opened with ``mmap_mode="r"``) an
    alias of its memory that numba types as writeable. The kernels compile once for both,
    and nothing is copied: typed read-only, the data compiled the products a second and
    third time (5 s more of a cold start). The kernels never write their data; a write
    through the alias would fault on a read-only map rather than change the file."""
    if array.flags.writeable or array.size == 0:
        return array
    memory = (ctypes.c_char * array.nbytes).from_address(array.ctypes.data)
    return np.frombuffer(memory, array.dtype).reshape(array.shape)


def _run_planned(
    X,
    indptr,
    indices,
    values,
    Y,
    labels,
    sample_weight,
    order,
    params,
    layout,
    offs,
    work_size,
    loss,
    loss_scale,
    clip,
    reduce_sum,
    epochs,
    batch_size,
    shuffle,
    shuffle_state,
    optimizer,
    hyper,
    step,
    state_m,
    state_v,
    saved,
    chunk,
    max_groups,
    parallel_min_macs,
    blas,
    history,
    carry,
    out_grad,
    out,
    ranks=(0, 1),
):
    """``run`` on its arguments as ``compiled_run`` takes them. Trains tiny networks in
    ``tiny_run``; otherwise finds ``group_pass``, and ``parallel_groups`` and
    ``parallel_update`` where the run may use them, compiled for these argument types
    first."""
    sparse = indptr.shape[0] > 0
    if (
        out.shape[0] == 0
        and not sparse
        and carry.shape[0] == 0
        and _tiny(X, layout, batch_size, optimizer, blas, out_grad)
    ):
        return tiny_run(
            X,
            Y,
            labels,
            sample_weight,
            order,
            params,
            layout,
            loss,
            loss_scale,
            clip,
            reduce_sum,
            epochs,
            batch_size,
            shuffle,
            shuffle_state,
            hyper,
            step,
            history,
            np.zeros(2 * TINY_WIDTH, params.dtype),
        )
    if epochs * X.shape[0] * 3 * params.shape[0] < CALL_PARALLEL_MIN_MACS:
        parallel_min_macs = max(parallel_min_macs, CALL_PARALLEL_MIN_MACS)
    typed = (
        X,
        indptr,
        indices,
        values,
        Y,
        labels,
        sample_weight,
        order,
        params,
        layout,
        offs,
        loss,
        loss_scale,
        clip,
        chunk,
        out,
    )
    key = tuple(compute_fingerprint(value) for value in typed)
    group_pass_at = NOT_COMPILED
    helper = None  # another process compiling group_pass meanwhile
    if sparse or out.shape[0] > 0 or blas.any() or min(batch_size, X.shape[0]) >= SAMPLE_PASS_ROWS:
        group_pass_at = _group_pass_at.get(key)
        if group_pass_at is None:
            group_pass_types = _group_pass_types(*typed)
            helper = compile_ahead.start(group_pass, group_pass_types)
            if helper is None:
                group_pass_at = _group_pass_at[key] = address_of(group_pass, group_pass_types)
            else:
                group_pass_at = NOT_COMPILED  # until the helper is done
    parallel_groups_at = NOT_COMPILED
    if _may_run_in_parallel(
        X.shape[0], batch_size, chunk, max_groups, params.shape[0], parallel_min_macs
    ):
        parallel_groups_at = _parallel_groups_at.get(key)
        if parallel_groups_at is None:
            parallel_groups_at = _parallel_groups_at[key] = address_of(
                parallel_groups, _parallel_groups_types(*typed)
            )
    parallel_update_at = NOT_COMPILED
    if out.shape[0] == 0 and params.shape[0] >= config.PARALLEL_UPDATE_MIN_PARAMS:
        updated = (params, layout, optimizer, hyper, state_m, state_v, out_grad)
        update_key = tuple(compute_fingerprint(value) for value in updated)
        parallel_update_at = _parallel_update_at.get(update_key)
        if parallel_update_at is None:
            parallel_update_at = _parallel_update_at[update_key] = address_of(
                parallel_update, _parallel_update_types(*updated)
            )
    groups = _most_groups(X.shape[0], batch_size, chunk, max_groups)
    n_grad = params.shape[0]
    if out.shape[0] > 0:
        # A forward pass sums nothing across chunks, so its outputs do not depend on how
        # chunks are grouped: one group a thread, no gradient buffers. 20 groups' buffers
        # for 2,000 rows of a 64-100-10 network cost more than the pass (1.30 -> 0.55 ms).
        groups, n_grad = min(groups, get_num_threads()), 0
    work, grads = _scratch(params.dtype, groups, work_size, n_grad)
    rank, size = ranks
    exchange_at, send, send_loss = NOT_COMPILED, _NO_SEND.get(params.dtype), _NO_SEND_LOSS
    if send is None:
        send = _NO_SEND[params.dtype] = np.zeros(0, params.dtype)
    if size > 1 and out.shape[0] == 0:
        # Room for every process's share of the largest batch's groups (the last share
        # may be short), and the exchange compiled for these types.
        share = -(-groups // size)
        grads = np.zeros((share * size, n_grad), params.dtype)
        send, send_loss = np.zeros(share * n_grad, params.dtype), np.zeros(share)
        exchange_at = _exchange_at(grads, send, send_loss)
    arguments = [
        X,
        indptr,
        indices,
        values,
        Y,
        labels,
        sample_weight,
        order,
        params,
        layout,
        offs,
        work,
        grads,
        loss,
        loss_scale,
        clip,
        reduce_sum,
        epochs,
        batch_size,
        shuffle,
        shuffle_state,
        optimizer,
        hyper,
        step,
        state_m,
        state_v,
        saved,
        chunk,
        parallel_min_macs,
        blas,
        history,
        carry,
        out_grad,
        out,
        group_pass_at,
        parallel_groups_at,
        parallel_update_at,
        np.array(ranks, np.int64),
        exchange_at,
        send,
        send_loss,
    ]
    if helper is not None:
        # compiled_run compiles here while the helper compiles group_pass, then
        # group_pass loads from numba's cache (or compiles here if the helper failed).
        compiled_run.compile(tuple(compiled_run.typeof_pyval(value) for value in arguments))
        helper.wait()
        arguments[_GROUP_PASS_AT] = _group_pass_at[key] = address_of(group_pass, group_pass_types)
    return compiled_run(*arguments)


#: Where ``group_pass_at`` stands among ``compiled_run``'s arguments.
_GROUP_PASS_AT = -7
#: The empty exchange buffers of runs in one process.
_NO_SEND = {}
_NO_SEND_LOSS = np.zeros(0)


def _exchange_at(grads, send, send_loss):
    """The address of ``exchange.exchange_groups`` for these buffers (imported here: it
    needs MPI)."""
    from . import exchange

    argtypes = tuple(
        typeof(value) for value in (grads.reshape(-1), np.zeros(1), send, send_loss, 0, 0, 0)
    )
    return address_of(exchange.exchange_groups, argtypes)


#: The groups' work and gradient buffers of recent runs, by dtype and shape, kept for the
#: next run: allocating and zeroing them cost 40 of the 100 us of a 1-epoch fit of a
#: 4-100-3 network on 150 rows. The kernels write every entry before reading it, so a
#: run never sees the last one's values (a test fills them with NaN). Each Python thread
#: keeps its own: the kernels run without the GIL, so two threads may train at once.
_scratch_buffers = threading.local()
SCRATCH_KEPT = 4
SCRATCH_KEPT_BYTES = 8 << 20


def _scratch(dtype, groups, work_size, n_params):
    """``(work, grads)`` buffers of ``groups`` rows for ``compiled_run``: the ones of an
    earlier run of the same shapes, or new ones, kept when small enough (the oldest kept
    ones make room)."""
    key = (dtype, groups, work_size, n_params)
    kept = getattr(_scratch_buffers, "kept", None)
    if kept is None:
        kept = _scratch_buffers.kept = {}
    buffers = kept.get(key)
    if buffers is None:
        buffers = (np.zeros((groups, work_size), dtype), np.zeros((groups, n_params), dtype))
        if buffers[0].nbytes + buffers[1].nbytes <= SCRATCH_KEPT_BYTES:
            kept[key] = buffers
            while (
                len(kept) > SCRATCH_KEPT
                or sum(w.nbytes + g.nbytes for w, g in kept.values()) > SCRATCH_KEPT_BYTES
            ):
                del kept[next(iter(kept))]
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


def _tiny(X, layout, batch_size, optimizer, blas, out_grad):
    """Whether a training run is ``tiny_run``'s: two layers at most ``TINY_WIDTH`` wide,
    none through BLAS, every batch one that ``compiled_run`` would give ``sample_pass``,
    plain SGD."""
    if not (
        TINY_RUNS
        and layout.shape[0] == 2
        and optimizer == SGD
        and out_grad.shape[0] == 0
        and min(batch_size, X.shape[0]) < SAMPLE_PASS_ROWS
    ):
        return False
    (n_in, hidden, *_), (_, n_out, *_) = layout.tolist()
    return max(n_in, hidden, n_out) <= TINY_WIDTH and not blas.any()


def _most_groups(n, batch_size, chunk, max_groups):
    """Chunk groups of the largest batch of a run over ``n`` rows."""
    return min(-(-min(batch_size, n) // chunk), max_groups)


def _may_run_in_parallel(n, batch_size, chunk, max_groups, n_params, parallel_min_macs):
    """Whether ``compiled_run`` may spread a batch over threads: its largest batch has
    more than one chunk group and enough multiply-adds (the test it applies per batch)."""
    return (
        _most_groups(n, batch_size, chunk, max_groups) > 1
        and min(batch_size, n) * 3 * n_params >= parallel_min_macs
    )


def _group_pass_types(
    X,
    indptr,
    indices,
    values,
    Y,
    labels,
    sample_weight,
    order,
    params,
    layout,
    offs,
    loss,
    loss_scale,
    clip,
    chunk,
    out,
):
    """The numba types of the arguments ``compiled_run`` passes ``group_pass``."""
    (
        X,
        indptr,
        indices,
        values,
        Y,
        labels,
        sample_weight,
        order,
        params,
        layout,
        offs,
        loss,
        loss_scale,
        clip,
        chunk,
        out,
    ) = (
        typeof(value)
        for value in (
            X,
            indptr,
            indices,
            values,
            Y,
            labels,
            sample_weight,
            order,
            params,
            layout,
            offs,
            loss,
            loss_scale,
            clip,
            chunk,
            out,
        )
    )
    vector = types.Array(params.dtype, 1, "C")  # wt, and rows of work and grads
    index = types.int64
    return (
        index,
        index,
        index,
        X,
        indptr,
        indices,
        values,
        Y,
        labels,
        sample_weight,
        order,
        index,
        index,
        chunk,
        params,
        vector,
        layout,
        types.Array(types.boolean, 1, "C"),
        loss,
        loss_scale,
        clip,
        vector,
        offs,
        vector,
        out,
    )


def _parallel_groups_types(*typed):
    """The numba types of the arguments ``compiled_run`` passes ``parallel_groups``:
    ``group_pass``'s without the group, with the whole work and gradient buffers, and
    then the groups' losses and ``group_pass_at``."""
    (
        _,
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
        _,
        offs,
        _,
        out,
    ) = _group_pass_types(*typed)
    buffers = types.Array(params.dtype, 2, "C")
    return (
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
        buffers,
        offs,
        buffers,
        out,
        types.Array(types.float64, 1, "C"),
        types.UniTuple(types.int64, 2),
    )


def _parallel_update_types(params, layout, optimizer, hyper, state_m, state_v, out_grad):
    """The numba types of the arguments ``compiled_run`` passes ``parallel_update``."""
    params, layout, optimizer, hyper, state_m, state_v, out_grad = (
        typeof(value) for value in (params, layout, optimizer, hyper, state_m, state_v, out_grad)
    )
    return (
        types.Array(params.dtype, 2, "C"),
        types.int64,
        params,
        layout,
        types.float64,
        optimizer,
        hyper,
        types.int64,
        state_m,
        state_v,
        out_grad,
        types.int64,
    )


#: Rows a calibration run trains on, in batches of one chunk: enough batches that one run
#: takes about ``CALIBRATION_SECONDS``.
CALIBRATION_SECONDS = 2e-3


def time_layer(fan_in, fan_out, dtype, chunk, first, through_blas):
    """Seconds one training batch of ``chunk`` rows spends in a ``fan_in`` x ``fan_out``
    layer (the network's first when ``first``: no input delta), through BLAS or fastbp's
    own products: ``calibration``'s measurement, made with the kernels that will run it
    (one chunk a batch, so one thread; BLAS on one thread)."""
    sizes = [fan_in, fan_out] if first else [1, fan_in, fan_out]
    layout, n_params = build_layout(sizes, ["identity"] * (len(sizes) - 1), True)
    blas = np.zeros(layout.shape[0], np.bool_)
    blas[-1] = through_blas
    plan = Plan(chunk, *work_offsets(layout, chunk), blas, bool(through_blas), 1)
    batches = min(50, max(2, int(CALIBRATION_SECONDS * 2e10 / (6 * chunk * fan_in * fan_out))))
    rng = np.random.default_rng(0)
    request = Request(
        Mode.TRAIN,
        rng.standard_normal((batches * chunk, sizes[0])).astype(dtype),
        rng.standard_normal((batches * chunk, fan_out)).astype(dtype),
        np.empty(0, np.int64),
        np.empty(0),
        (0.01 * rng.standard_normal(n_params)).astype(dtype),
        layout,
        SQUARED,
        1.0 / fan_out,
        batch_size=chunk,
        hyper=Hyperparameters(lr=1e-6),
        state=OptimizerState.empty(dtype),
        history=np.zeros(1),
    )
    _run_with_plan(request, plan)  # loads the code, warms the caches
    start = time.perf_counter()
    _run_with_plan(request, plan)
    return (time.perf_counter() - start) / batches
