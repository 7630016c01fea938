"""Training over several processes with MPI: ``MLP.fit(..., comm=MPI.COMM_WORLD)``.

Every process calls ``fit`` with the same arguments. Each computes a contiguous share of
every batch's chunk groups, reading only their rows; the groups' gradients are gathered
(numba-mpi, from inside the compiled run) and summed in the one fixed order, so every
process ends with the bits of a one-process fit. Input refused in one process is
reported in all of them, so none waits for the others forever.
"""

from __future__ import annotations

EXTRA = 'pip install "fastbp[mpi]"'


def ranks(comm) -> tuple[int, int]:
    """``(rank, size)`` of ``comm``, which must be mpi4py's world communicator (numba-mpi
    runs its collectives on MPI_COMM_WORLD); a clear error otherwise."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError(f"comm needs mpi4py and an MPI library: {EXTRA}") from None
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py communicator (MPI.COMM_WORLD); got {comm!r}")
    if MPI.Comm.Compare(comm, MPI.COMM_WORLD) not in (MPI.IDENT, MPI.CONGRUENT):
        raise ValueError(
            "comm must be MPI.COMM_WORLD (or a duplicate of it): the gradients are gathered "
            "over all of MPI's processes"
        )
    try:
        import numba_mpi  # noqa: F401  (the compiled exchange needs it)
    except ImportError:
        raise ImportError(f"comm needs numba-mpi: {EXTRA}") from None
    return comm.Get_rank(), comm.Get_size()


def agree(comm, error: BaseException | None) -> None:
    """Raise in every process if any process's input was refused (``error``): its own
    error where it has one, else a ValueError naming the process that refused."""
    messages = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    refused = [(rank, message) for rank, message in enumerate(messages) if message]
    if not refused:
        return
    if error is not None:
        raise error
    rank, message = refused[0]
    raise ValueError(f"process {rank} of {len(messages)} refused its input: {message}")


def checked_everywhere(comm, check):
    """``check()``'s result, once every process has run its own; if it raised in any
    process, it raises in all (``agree``)."""
    try:
        result = check()
    except Exception as error:
        agree(comm, error)
        raise
    agree(comm, None)
    return result
