"""``compiled_run``, the one compiled entry point, and ``parallel_groups``, which spreads
a batch's chunk groups over threads."""

import numpy as np
from numba import prange, types

from ..codes import H_L2, L_FAN_IN, L_FAN_OUT
from ..shuffle import shuffle_order
from ..sources import njit
from .addresses import Named, caller_of
from .blas import reads_transposed, transpose_weights
from .compile_options import PRANGE_ONLY
from .elementwise import prefetch_samples
from .passes import group_pass, sample_pass
from .plan import SAMPLE_PASS_ROWS
from .sparse import clear_leading
from .updates import UPDATE_BLOCK, apply_gradient, parallel_update, squared_weights

#: ``sample_pass`` batches prefetch the next batch's samples when X has at least this
#: many bytes: smaller data stays in L2, and the call cost the online row 1.03-1.05x
#: its time (the notebook 1.08-1.12x before full batches skipped it).
PREFETCH_MIN_BYTES = 1 << 20

# Return types given, so that ``group_pass`` compiles only when ``run`` takes its address:
# runs whose batches all go to ``sample_pass`` (online learning) start without it.
call_group_pass = caller_of(group_pass, returns=types.float64)
check_group_pass = caller_of(group_pass, call=False, returns=types.none)


@njit(parallel=PRANGE_ONLY, cache=True)
def parallel_groups(
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
    work,
    offs,
    grads,
    out,
    group_loss,
    group_pass_at,
):
    """``group_pass`` for every group of a batch, spread over threads. Kept apart from
    ``run`` because parallel compilation analyses the whole enclosing function."""
    # Checked before the loop: an exception raised inside it would not reach the caller.
    check_group_pass(
        group_pass_at,
        (
            np.int64(0),
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
            work[0],
            offs,
            grads[0],
            out,
        ),
    )
    for g in prange(n_groups):
        # prange counts in uint64; int64 keeps group_pass to one compiled signature.
        group_loss[g] = call_group_pass(
            group_pass_at,
            (
                np.int64(g),
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
                work[g],
                offs,
                grads[g],
                out,
            ),
        )


call_parallel_groups = caller_of(parallel_groups, returns=types.none)
# ``exchange.exchange_groups``: compiled, with MPI, only for runs over several processes.
call_exchange = caller_of(Named("exchange_groups"), returns=types.none)
call_parallel_update = caller_of(parallel_update, returns=types.none)


@njit(cache=True, nogil=True)
def save_state(saved, params, state_m, state_v):
    """``params``, then ``state_m`` and ``state_v``, into ``saved``: the last finite
    epoch's state, which a diverging run restores."""
    n_params, n_m = params.shape[0], state_m.shape[0]
    for i in range(n_params):
        saved[i] = params[i]
    for i in range(n_m):
        saved[n_params + i] = state_m[i]
    for i in range(state_v.shape[0]):
        saved[n_params + n_m + i] = state_v[i]


@njit(cache=True, nogil=True)
def compiled_run(
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
    ranks,
    exchange_at,
    send,
    send_loss,
):
    """``run``'s compiled body; ``group_pass_at``, ``parallel_groups_at`` and
    ``parallel_update_at`` are ``(address, signature_code)`` of ``group_pass``,
    ``parallel_groups`` and ``parallel_update`` compiled for the types they are called
    with (the last two are ``NOT_COMPILED`` for runs that never use them: batches too
    small for threads, networks too small for a parallel update).

    The one compiled entry point: training, or one gradient, or a forward pass.

    Sparse input comes as the CSR arrays ``indptr``, ``indices``, ``values``
    (``request.SparseRows``) with ``X`` a placeholder of no columns; dense input passes
    them empty. They are arguments of every call rather than a second entry point: one
    compiled signature per dtype serves both.

    ``work`` and ``grads`` hold a work buffer and a gradient buffer for each chunk group
    of the largest batch (from ``run``'s ``_scratch``; a forward pass gets no gradient
    columns); whatever they hold on entry is never read.

    Trains in place for ``epochs`` epochs of mini-batches, visiting the rows of ``X`` in
    ``order`` (redrawn each epoch when ``shuffle``; or, ``epochs`` times as long, one
    permutation per epoch back to back), and fills ``history`` with each
    epoch's loss. A non-empty ``carry`` (float64 ``[loss, weight]``) makes the call one
    block of an epoch's batches: its sums start from ``carry`` and go back there, so an
    epoch trained block by block reports the bits of one call. Returns -1, or the epoch
    whose loss or parameters became non-finite, after restoring the parameters and
    optimizer state of the last finite epoch from ``saved`` (room for them, or empty to
    leave them as they became).
    With a non-empty ``out_grad`` nothing is trained: the gradient of the first batch goes
    there and its loss to ``history[0]``. With a non-empty ``out`` only the forward pass of
    the first batch runs, its output activations going to ``out``.

    Over several processes (``ranks``: this one's rank and their number, ``[0, 1]``
    alone), each process computes a contiguous share of every batch's chunk groups and
    ``exchange_at`` (``exchange.exchange_groups``) gathers all groups' gradients and
    losses into ``grads`` and the group losses through ``send`` and ``send_loss``; every
    process then sums them in the one fixed order, so all end with the bits of one
    process. Batches of ``sample_pass`` and forward passes run whole in every process.

    One entry point serves all three because each compiled function that reaches the
    chunk loops costs seconds of compilation. ``blas`` says which layers multiply through
    BLAS (``plan.work_plan``)."""
    n = X.shape[0]
    n_params = params.shape[0]
    reads_wt = reads_transposed(layout, blas)
    sparse = indptr.shape[0] > 0
    # Sparse rows scatter the first layer's weight gradient into each group's buffer,
    # which stays clear between batches: cleared here, then by each update as it reads it.
    clear = 0
    if sparse:
        reads_wt[0] = False  # sparse rows gather rows of W_0 as stored
        if out.shape[0] == 0:
            clear = layout[0, L_FAN_IN] * layout[0, L_FAN_OUT]
            clear_leading(grads, grads.shape[0], clear)
    # Sparse rows go to group_pass, however small the batch: sample_pass reads X.
    by_sample = out.shape[0] == 0 and not blas.any() and not sparse
    # Batches that all run sample by sample read the weights as stored, never ``wt``.
    if by_sample and min(batch_size, n) < SAMPLE_PASS_ROWS:
        for l in range(reads_wt.shape[0]):
            reads_wt[l] = False
    wt = np.empty_like(params)
    transpose_weights(params, wt, layout, reads_wt)
    most_groups = work.shape[0]
    group_loss = np.zeros(most_groups + ranks[1])  # room for every process's share
    grads_flat = grads.reshape(grads.size)
    distributed = ranks[1] > 1 and out.shape[0] == 0
    first_work, first_grad = work[0], grads[0]  # views made once: each costs atomics
    x_flat = X.reshape(X.size)  # a view: X is C-contiguous
    far_data = X.nbytes >= PREFETCH_MIN_BYTES
    # The last finite epoch's parameters and moments, where the caller wants them
    # restored on divergence (``saved`` empty otherwise): saved before each epoch.
    restoring = saved.shape[0] > 0
    n_m = state_m.shape[0]
    if restoring:
        save_state(saved, params, state_m, state_v)
    saved_step = step[0]
    stacked = order.shape[0] > n  # one permutation per epoch, back to back
    carrying = carry.shape[0] > 0  # one block of an epoch's batches: the sums go on
    for epoch in range(epochs):
        if shuffle:
            shuffle_order(order, shuffle_state)
        base = epoch * n if stacked else 0  # where this epoch's visiting order starts
        epoch_loss = carry[0] if carrying else 0.0
        # The epoch's weight, summed batch by batch in visiting order, so that a fit in
        # ``order`` and a fit on the rows permuted alike report the same bits.
        epoch_norm = carry[1] if carrying else 0.0
        ok = True
        for batch_start in range(0, n, batch_size):
            size = min(batch_size, n - batch_start)
            start = base + batch_start  # the batch's first entry of ``order``
            n_chunks = (size + chunk - 1) // chunk
            n_groups = min(n_chunks, most_groups)
            if by_sample and size < SAMPLE_PASS_ROWS:
                ahead = batch_start + batch_size  # the next batch's samples load meanwhile
                if far_data and ahead < n:
                    prefetch_samples(
                        x_flat,
                        X.shape[1],
                        Y,
                        labels,
                        sample_weight,
                        order,
                        base + ahead,
                        base + min(ahead + batch_size, n),
                    )
                group_loss[0] = sample_pass(
                    X,
                    Y,
                    labels,
                    sample_weight,
                    order,
                    start,
                    size,
                    params,
                    layout,
                    loss,
                    loss_scale,
                    clip,
                    first_work,
                    offs,
                    first_grad,
                )
            elif n_groups > 1 and size * 3 * n_params >= parallel_min_macs and not distributed:
                call_parallel_groups(
                    parallel_groups_at,
                    (
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
                        work,
                        offs,
                        grads,
                        out,
                        group_loss,
                        group_pass_at,
                    ),
                )
            else:
                share, first = n_groups, 0
                if distributed:
                    share = (n_groups + ranks[1] - 1) // ranks[1]
                    first = min(ranks[0] * share, n_groups)
                for g in range(first, min(first + share, n_groups)):
                    group_loss[g] = call_group_pass(
                        group_pass_at,
                        (
                            g,
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
                            work[g],
                            offs,
                            grads[g],
                            out,
                        ),
                    )
                if distributed:
                    call_exchange(
                        exchange_at,
                        (grads_flat, group_loss, send, send_loss, n_groups, share, n_params),
                    )
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
                        # A batch of zero total weight carries nothing to learn. Its
                        # gradient is zero, or NaN where a delta was infinite: cleared.
                        clear_leading(grads, n_groups, clear)
                        continue
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
                call_parallel_update(
                    parallel_update_at,
                    (
                        grads,
                        n_groups,
                        params,
                        layout,
                        norm,
                        optimizer,
                        hyper,
                        step[0],
                        state_m,
                        state_v,
                        out_grad,
                        clear,
                    ),
                )
            else:
                for lo in range(0, n_params, UPDATE_BLOCK):
                    apply_gradient(
                        grads,
                        n_groups,
                        params,
                        layout,
                        norm,
                        optimizer,
                        hyper,
                        step[0],
                        state_m,
                        state_v,
                        out_grad,
                        clear,
                        lo,
                        min(lo + UPDATE_BLOCK, n_params),
                    )
            if storing:
                return -1
            transpose_weights(params, wt, layout, reads_wt)
        if ok:
            history[epoch] = epoch_loss if reduce_sum else epoch_loss / epoch_norm
            if carrying:
                carry[0], carry[1] = epoch_loss, epoch_norm
            for i in range(n_params):
                ok = ok and np.isfinite(params[i])
        if not ok:
            if restoring:
                for i in range(n_params):
                    params[i] = saved[i]
                for i in range(n_m):
                    state_m[i] = saved[n_params + i]
                for i in range(state_v.shape[0]):
                    state_v[i] = saved[n_params + n_m + i]
                step[0] = saved_step
            return epoch
        if restoring and epoch + 1 < epochs:
            save_state(saved, params, state_m, state_v)
            saved_step = step[0]
    return -1


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
