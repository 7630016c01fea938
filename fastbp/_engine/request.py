"""What the API layer asks of a backend: one ``Request`` per call, every setting by name.

A backend (``fastbp._engine.cpu.backend`` or ``fastbp._engine.cuda.backend``) takes the
request and owns everything about how it runs: chunks, work plans, BLAS, threads, scratch
buffers, devices. Plain Python and NumPy: building a request imports no numba.

Requests are named tuples: immutable, every field by name, and built in 1-2 us (a frozen
dataclass of the same fields took 5-10 us, 5-10% of a 1,000-epoch fit of the notebooks'
2-2-1 network).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import numpy as np

from .codes import SGD


class Mode(enum.IntEnum):
    """What a call computes."""

    #: Train in place for ``epochs`` epochs; ``history`` gets each epoch's loss.
    TRAIN = 0
    #: The loss (to ``history[0]``) and flat gradient (to ``out``) of the data as one
    #: batch; parameters unchanged.
    GRADIENT = 1
    #: The output activations of the data, to ``out``; nothing else is read or written.
    FORWARD = 2


class Hyperparameters(NamedTuple):
    """The optimizer's settings. ``l2`` adds ``0.5 * l2 * sum(W**2)`` to each batch's loss,
    divided like the data term; the others are unused by optimizers that lack them."""

    lr: float = 0.0
    momentum: float = 0.0
    beta1: float = 0.0
    beta2: float = 0.0
    epsilon: float = 1.0
    l2: float = 0.0


class OptimizerState(NamedTuple):
    """Arrays a training run updates in place: the first and second moments (momentum and
    Adam; empty where the optimizer keeps none) and the step count, ``int64[1]``."""

    m: np.ndarray
    v: np.ndarray
    step: np.ndarray

    @classmethod
    def empty(cls, dtype) -> OptimizerState:
        """The state of an optimizer that keeps none (plain SGD, or no training). Its
        moments, of size 0, are shared: nothing can be written to them."""
        moments = _NO_MOMENTS.get(dtype)
        if moments is None:
            moments = _NO_MOMENTS[dtype] = np.zeros(0, dtype)
        return cls(moments, moments, np.zeros(1, np.int64))


#: The moments of ``OptimizerState.empty`` by dtype.
_NO_MOMENTS = {}


NO_HYPERPARAMETERS = Hyperparameters()


class SparseRows(NamedTuple):
    """Input rows in compressed sparse row form, as ``Request.X`` for sparse data: the
    CSR arrays of scipy.sparse, ``indptr`` and ``indices`` as int64 and ``data`` in the
    network's dtype, finite, and ``shape`` ``(n, n_in)``. The first layer multiplies
    them as they are: no dense copy of the rows is ever made."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple


class Request(NamedTuple):
    """One call of a backend. Arrays are already checked and in the network's dtype: ``X``
    ``(n, n_in)`` C-contiguous, or ``SparseRows``; ``Y`` ``(n, n_out)`` targets, or
    ``(0, n_out)`` when ``labels`` (int64 ``(n,)`` class indices) or nothing stands in for them;
    ``sample_weight`` float64 ``(n,)`` or empty."""

    mode: Mode
    X: np.ndarray | SparseRows
    Y: np.ndarray
    labels: np.ndarray
    sample_weight: np.ndarray
    #: The flat parameters (``fastbp._engine.layout``), trained in place.
    params: np.ndarray
    layout: np.ndarray
    #: Loss code (``fastbp._engine.codes``) and the per-sample factor of its sum.
    loss: int
    loss_scale: float
    #: Whether batch losses and gradients sum over samples instead of averaging.
    reduce_sum: bool = False
    #: Rows to visit: a permutation of ``0..n-1``, or ``epochs`` of them back to back;
    #: None visits rows in order. A shuffled run overwrites it with each epoch's draw.
    order: np.ndarray | None = None
    epochs: int = 1
    #: Rows per mini-batch; None takes the whole data set as one batch.
    batch_size: int | None = None
    #: Whether each epoch draws its visiting order from ``shuffle_state`` (uint64[1],
    #: advanced in place).
    shuffle: bool = False
    shuffle_state: np.ndarray | None = None
    optimizer: int = SGD
    hyper: Hyperparameters = NO_HYPERPARAMETERS
    state: OptimizerState | None = None
    #: TRAIN: float64 ``(epochs,)`` for each epoch's loss; GRADIENT: ``(1,)`` for its loss.
    history: np.ndarray | None = None
    #: GRADIENT: the flat gradient, shaped like ``params``; FORWARD: ``(n, n_out)``.
    out: np.ndarray | None = None
    #: ``(rank, size)``: this process's rank among ``size`` processes that run the same
    #: request over MPI, each computing a share of every batch; ``(0, 1)`` alone.
    ranks: tuple = (0, 1)
    #: TRAIN: whether a run whose loss or parameters become non-finite restores those of
    #: the last finite epoch (which costs a copy of the parameters and optimizer state) or
    #: leaves them as they became.
    restore: bool = True
    #: TRAIN, one block of an epoch's batches (CPU): float64 ``[loss, weight]`` sums of
    #: the epoch so far, carried on in place; None trains whole epochs.
    carry: np.ndarray | None = None
