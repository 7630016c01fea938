"""The chunk groups' gradients shared between MPI processes, from inside compiled code.

Imported only for runs over several processes: numba-mpi needs an MPI library. Each
process computes a contiguous share of a batch's chunk groups; one ``allgather`` gives
every process all of them, so each sums them in the one fixed order and ends with the
bits of a single process (``MPI_Allreduce`` would sum in an order of its own).
"""

import numba_mpi
import numpy as np

from ..sources import njit


@njit  # not cached: numba-mpi's calls hold addresses of this process's MPI library
def exchange_groups(grads_flat, group_loss, send, send_loss, n_groups, share, n_params):
    """Gather every process's groups ``[rank * share, rank * share + share)`` (fewer at the
    end) into ``grads_flat`` (groups' gradients, rows of ``n_params``) and ``group_loss``.
    Raises if MPI reports an error, so no process trains on with missing gradients."""
    rank = numba_mpi.rank()
    size = numba_mpi.size()
    first = rank * share
    for j in range(share):
        g = first + j
        if g < n_groups:
            for i in range(n_params):
                send[j * n_params + i] = grads_flat[g * n_params + i]
            send_loss[j] = group_loss[g]
        else:  # past the last group: zeros, as a later batch's groups start from them
            for i in range(n_params):
                send[j * n_params + i] = 0
            send_loss[j] = 0.0
    # As bytes: the same bits, and numba-mpi gathers no float32.
    count = share * n_params * send.itemsize
    sent, gathered = send.view(np.uint8), grads_flat.view(np.uint8)
    status = numba_mpi.allgather(sent[:count], gathered[: size * count], count)
    if status != 0:
        raise RuntimeError("MPI allgather of the gradients failed")
    status = numba_mpi.allgather(send_loss[:share], group_loss[: size * share], share)
    if status != 0:
        raise RuntimeError("MPI allgather of the losses failed")
