"""The CUDA backend's host side: ``run`` takes a ``Request``, copies the data set to the
device once, launches ``kernels.train_kernel`` (once per epoch when shuffling, the
permutation drawn on the host by ``shuffle_order``) and copies the results back."""

import warnings

import numpy as np

from .. import codes as K
from ..request import Mode, OptimizerState, SparseRows
from ..shuffle import shuffle_order
from .importing import numba_cuda
from .kernels import (
    F_CLIP,
    F_LOSS_SCALE,
    F_TOTAL_NORM,
    FORWARD,
    GRADIENT,
    M_BATCH,
    M_CHUNKED,
    M_EPOCHS,
    M_HAS_LABELS,
    M_HAS_WEIGHTS,
    M_LOSS,
    M_MAX_OUT,
    M_MODE,
    M_N,
    M_N_BATCHES,
    M_N_SQ,
    M_N_UPDATE,
    M_OPTIMIZER,
    M_REDUCE_SUM,
    M_STEP0,
    MAX_CHUNK_GROUPS,
    META_SIZE,
    PART_ENTRIES,
    RED_SPACE,
    S_FAILED,
    SEGMENT,
    SIMULATOR,
    SPLIT_ROWS,
    STAGE,
    TILE,
    TPB,
    TRAIN,
    train_kernel,
)

try:
    from numba.cuda.core.errors import NumbaPerformanceWarning
except ImportError:  # numba-cuda releases that keep it elsewhere
    from numba.core.errors import NumbaPerformanceWarning

cuda = numba_cuda()

#: Networks whose layers are all at most this wide use the chunk-per-block schedule (on
#: an H100 the tiles win from 64 wide on).
CHUNK_MAX_WIDTH = TILE if SIMULATOR else 32

#: Blocks of the cooperative grid; None lets ``run`` choose. Results do not depend on it.
GRID_BLOCKS = None


def _segments(layout, weights_only):
    """Work items of the squared-weight sum (weights) or of the update (all parameters)."""
    count = 0
    for fan_in, fan_out, _, bias, _ in layout:
        count += -(-int(fan_in * fan_out) // SEGMENT)
        if not weights_only and bias >= 0:
            count += -(-int(fan_out) // SEGMENT)
    return count


def _narrow(layout):
    """Whether a network takes the narrow (chunk per block) schedule."""
    return int(max(layout[:, K.L_FAN_IN].max(), layout[:, K.L_FAN_OUT].max())) <= CHUNK_MAX_WIDTH


def _row_splits(size, n_params):
    """Host twin of the kernel's ``row_splits``."""
    return max(1, min(-(-size // SPLIT_ROWS), MAX_CHUNK_GROUPS, PART_ENTRIES // n_params))


def _batch_norms(order, sample_weight, batch, n, n_batches, reduce_sum):
    """Each batch's divisor: 1 for sums, else its sample count or weight total."""
    starts = np.arange(n_batches) * batch
    if reduce_sum:
        return np.ones(n_batches)
    if sample_weight.shape[0] == 0:
        return (np.minimum(starts + batch, n) - starts).astype(np.float64)
    return np.add.reduceat(np.asarray(sample_weight, np.float64)[order[:n]], starts)


def _device(array, stream, dtype=None):
    """``array`` on the device; an empty one becomes one element the kernel never reads."""
    array = np.ascontiguousarray(array, dtype=dtype)
    if array.size == 0:
        array = np.zeros((1,) * max(array.ndim, 1), array.dtype)
    return cuda.to_device(array, stream=stream)


def _grid_blocks(kernel, args, work):
    """Blocks of the cooperative grid: enough for the work, all resident at once."""
    if SIMULATOR:
        return kernel, 1
    specialized = kernel.specialize(*args)
    compiled = next(iter(specialized.overloads.values()))
    resident = compiled.max_cooperative_grid_blocks(TPB)
    if GRID_BLOCKS is not None:
        return specialized, max(1, min(int(GRID_BLOCKS), resident))
    return specialized, max(1, min(resident, work))


def run(request):
    """Carry out ``request`` (``fastbp._engine.request``) on the GPU: the same in-place
    updates and return value as the CPU backend's ``run``. Sparse input is refused:
    its first-layer products exist on the CPU only."""
    if isinstance(request.X, SparseRows):
        raise TypeError(
            "X: sparse input is supported on device='cpu' only; densify it (X.toarray()) "
            "for device='cuda'"
        )
    X, Y, labels, sample_weight = request.X, request.Y, request.labels, request.sample_weight
    params, layout, loss, loss_scale = (
        request.params,
        request.layout,
        request.loss,
        request.loss_scale,
    )
    reduce_sum, epochs, shuffle = request.reduce_sum, request.epochs, request.shuffle
    optimizer, hyper = request.optimizer, request.hyper
    n = X.shape[0]
    order = np.arange(n) if request.order is None else request.order
    batch_size = n if request.batch_size is None else request.batch_size
    clip = np.finfo(params.dtype).eps
    training = request.mode == Mode.TRAIN
    state = request.state if training else OptimizerState.empty(params.dtype)
    step, state_m, state_v = state.step, state.m, state.v
    shuffle_state = request.shuffle_state
    history = np.zeros(1) if request.history is None else request.history
    empty = np.zeros(0, params.dtype)
    out_grad = request.out if request.mode == Mode.GRADIENT else empty
    out = request.out if request.mode == Mode.FORWARD else np.zeros((0, 0), params.dtype)
    mode = FORWARD if out.shape[0] > 0 else GRADIENT if out_grad.shape[0] > 0 else TRAIN
    batch = min(int(batch_size), n)
    n_batches = -(-n // batch) if mode == TRAIN else 1
    epochs = int(epochs) if mode == TRAIN else 1
    shuffle = bool(shuffle) and mode == TRAIN
    layout = np.ascontiguousarray(layout, np.int64)
    for fan_in, fan_out, w_off, bias, _ in layout:
        if bias >= 0 and bias != w_off + fan_in * fan_out:
            raise ValueError("the CUDA kernels need each bias right after its weights")
    n_params = params.shape[0]
    narrow = _narrow(layout)
    max_out = int(layout[:, K.L_FAN_OUT].max())
    widths = [int(w) for w in layout[:, K.L_FAN_OUT]]
    aoff = np.cumsum([0] + [batch * w for w in widths])
    if narrow:
        n_parts = min(-(-batch // TPB), MAX_CHUNK_GROUPS)
        n_loss = n_parts
    else:
        n_parts = _row_splits(batch, n_params)
        n_loss = -(-batch // TPB)
    n_sq = _segments(layout, True)
    n_update = _segments(layout, False)
    save = mode == TRAIN
    meta = np.zeros(META_SIZE, np.int64)
    meta[[M_N, M_BATCH, M_N_BATCHES, M_EPOCHS, M_MODE, M_CHUNKED, M_LOSS]] = [
        n,
        batch,
        n_batches,
        epochs,
        mode,
        narrow,
        loss,
    ]
    meta[[M_REDUCE_SUM, M_OPTIMIZER, M_STEP0, M_HAS_LABELS, M_HAS_WEIGHTS, M_MAX_OUT]] = [
        bool(reduce_sum),
        optimizer,
        step[0],
        labels.shape[0] > 0,
        sample_weight.shape[0] > 0,
        max_out,
    ]
    meta[[M_N_SQ, M_N_UPDATE]] = [n_sq, n_update]
    total_norm = 1.0
    if not reduce_sum:
        total_norm = sample_weight.sum() if sample_weight.shape[0] > 0 else float(n)
    reals = np.zeros(9)
    reals[:6] = (hyper.lr, hyper.momentum, hyper.beta1, hyper.beta2, hyper.epsilon, hyper.l2)
    reals[[F_LOSS_SCALE, F_CLIP, F_TOTAL_NORM]] = [loss_scale, clip, total_norm]

    dtype = params.dtype
    stream = cuda.stream()
    d_X = _device(X, stream)
    d_Y = _device(Y, stream)
    d_labels = _device(labels, stream, np.int64)
    d_sw = _device(sample_weight, stream, np.float64)
    d_params = cuda.to_device(params, stream=stream)
    d_m = _device(state_m, stream)
    d_v = _device(state_v, stream)
    if save:
        d_saved = cuda.device_array_like(d_params, stream=stream)
        d_saved.copy_to_device(d_params, stream=stream)
        d_saved_m = cuda.device_array_like(d_m, stream=stream)
        d_saved_m.copy_to_device(d_m, stream=stream)
        d_saved_v = cuda.device_array_like(d_v, stream=stream)
        d_saved_v.copy_to_device(d_v, stream=stream)
    else:
        d_saved, d_saved_m, d_saved_v = d_params, d_m, d_v
    training = mode != FORWARD
    d_layout = cuda.to_device(layout, stream=stream)
    d_aoff = cuda.to_device(aoff[:-1].astype(np.int64), stream=stream)
    d_acts = cuda.device_array(max(int(aoff[-1]), 1), dtype, stream=stream)
    d_delta = cuda.device_array(2 * batch * max_out if training else 1, dtype, stream=stream)
    d_part = cuda.device_array(n_parts * n_params if training else 1, dtype, stream=stream)
    d_loss_part = cuda.device_array(max(n_loss, 1), np.float64, stream=stream)
    d_sq_part = cuda.device_array(max(n_sq, 1), np.float64, stream=stream)
    d_batch_raw = cuda.device_array(n_batches, np.float64, stream=stream)
    d_sq_total = cuda.device_array(n_batches, np.float64, stream=stream)
    d_history = cuda.to_device(np.ascontiguousarray(history, np.float64), stream=stream)
    d_status = cuda.to_device(np.array([-1, 0], np.int64), stream=stream)
    d_out_grad = _device(out_grad, stream, dtype)
    d_out = _device(out, stream, dtype)
    d_meta = cuda.to_device(meta, stream=stream)
    d_reals = cuda.to_device(reals, stream=stream)

    if narrow:
        work = max(n_parts, n_update)
    else:
        tiles = [-(-batch // TILE) * -(-w // TILE) for w in widths]
        tiles += [
            n_parts * -(-(fan_in + 1) // TILE) * -(-fan_out // TILE)
            for fan_in, fan_out in layout[:, :2]
        ]
        work = max(max(tiles), n_update, n_loss)
    states = []
    stacked = order.shape[0] > n  # one permutation per epoch, back to back
    launches = [(e, e + 1) for e in range(epochs)] if shuffle or stacked else [(0, epochs)]
    d_order = cuda.device_array(n, np.int64, stream=stream)
    d_norms = cuda.device_array(n_batches, np.float64, stream=stream)
    kernel = grid = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        for lo, hi in launches:
            if shuffle:
                states.append(shuffle_state.copy())
                shuffle_order(order, shuffle_state)
            epoch_order = order[lo * n : hi * n] if stacked else order
            d_order.copy_to_device(np.ascontiguousarray(epoch_order, np.int64), stream=stream)
            norms = _batch_norms(epoch_order, sample_weight, batch, n, n_batches, reduce_sum)
            d_norms.copy_to_device(norms, stream=stream)
            args = (
                d_X,
                d_Y,
                d_labels,
                d_sw,
                d_order,
                d_norms,
                d_params,
                d_m,
                d_v,
                d_saved,
                d_saved_m,
                d_saved_v,
                d_layout,
                d_aoff,
                d_acts,
                d_delta,
                d_part,
                d_loss_part,
                d_sq_part,
                d_batch_raw,
                d_sq_total,
                d_history,
                d_status,
                d_out_grad,
                d_out,
                d_meta,
                d_reals,
                lo,
                hi,
            )
            if kernel is None:
                kernel, grid = _grid_blocks(train_kernel, args, work)
            kernel[grid, TPB, stream, (RED_SPACE + 2 * STAGE) * dtype.itemsize](*args)
    status = d_status.copy_to_host(stream=stream)
    stream.synchronize()
    failed = int(status[S_FAILED])
    if mode == FORWARD:
        d_out.copy_to_host(out, stream=stream)
    elif mode == GRADIENT:
        d_out_grad.copy_to_host(out_grad, stream=stream)
        history[0] = d_history.copy_to_host(stream=stream)[0]
    else:
        d_params.copy_to_host(params, stream=stream)
        if state_m.shape[0] > 0:
            d_m.copy_to_host(state_m, stream=stream)
        if state_v.shape[0] > 0:
            d_v.copy_to_host(state_v, stream=stream)
        history[:] = d_history.copy_to_host(stream=stream)
        step[0] += n_batches * (epochs if failed < 0 else failed)
        if shuffle and failed >= 0:
            # Redraw the failed epoch's permutation so order and state end where the
            # CPU engine, which stops drawing there, leaves them.
            shuffle_state[:] = states[failed]
            shuffle_order(order, shuffle_state)
    stream.synchronize()
    return failed
