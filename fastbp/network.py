"""``fastbp.MLP``: a multilayer perceptron trained by compiled kernels.

The class validates and allocates; the loops live in the kernel modules. Parameters are
one flat array (see ``fastbp._engine.layout``); ``weights`` and ``biases`` are views into it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _init
from . import _validation as check
from ._engine import layout as _layout
from ._engine.backends import backend
from ._engine.request import Hyperparameters, Mode, OptimizerState, Request, SparseRows


class _Architecture(NamedTuple):
    """What a network's sizes, activations and bias fix: its layout table (read-only,
    copied into each network), number of parameters, initial-weight bounds and the
    shapes of its weights and biases (None without biases)."""

    layout: np.ndarray
    n_params: int
    limits: np.ndarray
    weight_shapes: tuple
    bias_shapes: tuple | None


@functools.lru_cache(maxsize=256)
def _architecture(sizes, activations, bias):
    """The ``_Architecture`` of checked arguments, built once per architecture."""
    layout, n_params = _layout.build_layout(sizes, activations, bias)
    layout.flags.writeable = False
    weight_shapes = tuple(zip(sizes[:-1], sizes[1:], strict=True))
    bias_shapes = tuple((n,) for n in sizes[1:]) if bias else None
    limits = np.array(_init.limits(sizes, activations))
    return _Architecture(layout, n_params, limits, weight_shapes, bias_shapes)


@functools.cache
def _distributed():
    """``fastbp.distributed``, imported when a call first gets a ``comm``."""
    from . import distributed

    return distributed


def _checked(comm, check):
    """``check()``; over MPI, an error in one process raises in all (``fastbp.distributed``)."""
    return check() if comm is None else _distributed().checked_everywhere(comm, check)


@functools.cache
def _compiled():
    """``fastbp._engine``'s compiled helpers, imported on first use: numba loads with the
    first network, not with ``import fastbp``."""
    from ._engine import finite, pcg64

    return SimpleNamespace(
        all_finite=finite.all_finite, draw=pcg64.draw_parameters, stream=pcg64.stream
    )


def features(X, n_in: int, dtype) -> NDArray | SparseRows:
    """``X`` checked for a network of ``n_in`` inputs and ``dtype``, as its calls with
    ``check_input=False`` take it: a C-contiguous ``dtype`` array, or for a scipy.sparse
    CSR or CSC matrix or array the engine's ``SparseRows`` (int64 ``indptr`` and
    ``indices``, ``data`` in ``dtype``; CSC converted to CSR once). Raises naming ``X``."""
    if check.is_sparse(X):
        return SparseRows(*check.sparse_features(X, n_in, dtype))
    return check.features(X, n_in, dtype)


def _like(arrays, shapes, dtype):
    """Whether ``arrays`` is a list or tuple of ndarrays of ``dtype`` and these shapes."""
    if type(arrays) not in (list, tuple) or len(arrays) != len(shapes):
        return False
    for array, shape in zip(arrays, shapes, strict=True):
        if type(array) is not np.ndarray or array.dtype != dtype or array.shape != shape:
            return False
    return True


def _diverged(history, failed, first, total, restored):
    """The FloatingPointError of a run that diverged in its epoch ``failed`` (counted from
    ``first`` of ``total``), carrying the losses of the epochs before it."""
    kept = (
        f"the parameters are those at the end of epoch {first + failed}"
        if restored
        else "the parameters are left as they became"
    )
    error = FloatingPointError(
        f"training diverged in epoch {first + failed + 1} of {total}: the loss or the "
        f"parameters became NaN or infinite; {kept} (lower lr?)"
    )
    error.history = history[:failed]
    return error


class MLP:
    """A fully connected network trained by backpropagation.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_in, h1, ..., n_out]``, at least two entries.
    activations : str or sequence of str
        One name for every layer, or one per weight layer: ``identity``, ``sigmoid``,
        ``tanh``, ``relu``, ``leaky_relu`` (slope 0.01), ``softmax`` and ``exp`` (output
        layer only).
    loss : str
        ``mse`` (mean of (y - yhat)**2 over the outputs), ``half_mse`` (half of it),
        ``bce`` (binary cross-entropy averaged over the outputs), ``cce`` (categorical
        cross-entropy; targets one-hot, class probabilities or integer labels) or
        ``poisson`` (half the Poisson deviance ``y log(y / yhat) - y + yhat`` summed over
        the outputs; needs the ``exp`` output and non-negative targets).
    bias : bool
        Whether every layer has a bias vector.
    reduction : {"mean", "sum"}
        Whether the loss and gradients of a batch average or sum the per-sample values.
    dtype : float32 or float64
        Precision of parameters and arithmetic; data is converted to it.
    seed : int or None
        Seeds the initial weights (Glorot, or He for ReLU-like layers; zero biases) and
        the shuffling of mini-batches.
    device : {"cpu", "cuda"}
    """

    def __init__(
        self,
        layer_sizes: Sequence[int],
        activations: str | Sequence[str],
        loss: str,
        *,
        bias: bool = True,
        reduction: str = "mean",
        dtype: DTypeLike = np.float64,
        seed: int | None = None,
        device: str = "cpu",
    ):
        self.layer_sizes = check.layer_sizes(layer_sizes)
        self.activations = check.activations(activations, len(self.layer_sizes) - 1)
        self.loss_name = check.choice(loss, "loss", check.LOSSES)
        check.poisson_output(self.loss_name, self.activations[-1])
        check.bce_outputs(self.loss_name, self.activations[-1])
        self.bias = check.flag(bias, "bias")
        self.reduction = check.choice(reduction, "reduction", check.REDUCTIONS)
        self.dtype = check.dtype(dtype)
        self.device = check.choice(device, "device", check.DEVICES)
        self._backend = backend(self.device)
        self.seed = check.seed(seed)
        arch = self._architecture = _architecture(self.layer_sizes, self.activations, self.bias)
        self._layout = arch.layout.copy()
        self._loss_code, self._loss_scale = _layout.loss_code(self.loss_name, self.layer_sizes[-1])
        # The bits of fastbp._init.initial_weights(..., np.random.default_rng(seed)), and
        # then its integers(0, 2**63) as the shuffle seed, drawn in compiled code.
        self._params = np.empty(arch.n_params, self.dtype)
        engine = _compiled()
        shuffle_seed = engine.draw(
            self._params, self._layout, arch.limits, engine.stream(self.seed)
        )
        self._shuffle_state = np.array([shuffle_seed], dtype=np.uint64)
        self.reset_optimizer()

    # ---------------------------------------------------------------- parameters

    @property
    def weights(self) -> list[NDArray]:
        """List of weight matrices shaped ``(fan_in, fan_out)``, views into the network."""
        return _layout.weight_views(self._params, self._layout)

    @property
    def biases(self) -> list[NDArray] | None:
        """List of bias vectors shaped ``(fan_out,)``, or None when ``bias=False``."""
        return _layout.bias_views(self._params, self._layout)

    @property
    def n_params(self) -> int:
        """Number of weights and biases."""
        return self._params.shape[0]

    def set_params(
        self, weights: Sequence[ArrayLike], biases: Sequence[ArrayLike] | None = None
    ) -> MLP:
        """Copy user weights (and biases, if given; otherwise they stay as they are) in,
        after checking every shape and value; resets the optimizer state."""
        shapes, dtype = self._architecture, self.dtype
        # The usual input, arrays of the network's dtype and shapes, goes in as it is and
        # is checked flat, at once; anything else is checked array by array first.
        if not (
            _like(weights, shapes.weight_shapes, dtype)
            and (biases is None or (self.bias and _like(biases, shapes.bias_shapes, dtype)))
        ):
            weights, biases = check.parameters(weights, biases, self.layer_sizes, self.bias, dtype)
        params = _layout.join(weights, self.biases if biases is None else biases)
        if not _compiled().all_finite(params):
            # The checks array by array name the argument; they pass only where biases
            # kept as they are were set to NaN or infinity through ``biases``' views.
            check.parameters(weights, biases, self.layer_sizes, self.bias, dtype)
        self._params = params
        self.reset_optimizer()
        return self

    def get_params(self) -> tuple[list[NDArray], list[NDArray] | None]:
        """Copies of ``(weights, biases)``."""
        biases = self.biases
        return (
            [w.copy() for w in self.weights],
            None if biases is None else [b.copy() for b in biases],
        )

    def reset_optimizer(self) -> None:
        """Forget momentum and Adam moments; the next ``fit`` starts them from zero."""
        self._optimizer = None
        self._state = OptimizerState.empty(self.dtype)

    def optimizer_state(self) -> dict:
        """A copy of the optimizer's state, to save, compare or restore with
        ``load_optimizer_state``: ``{"optimizer": name or None, "m": first moments (or
        momentum), "v": second moments, "step": updates taken}``; moments are arrays shaped
        like the flat parameters, empty where the optimizer keeps none."""
        return {
            "optimizer": self._optimizer,
            "m": self._state.m.copy(),
            "v": self._state.v.copy(),
            "step": int(self._state.step[0]),
        }

    def load_optimizer_state(self, state: dict) -> None:
        """Restore a state from ``optimizer_state`` (of this network or one of the same
        architecture and dtype); the next ``fit`` with that optimizer continues from it.
        Everything is checked before anything changes."""
        name, m, v, step = check.optimizer_state(state, self.n_params, self.dtype)
        self._optimizer, self._state = name, OptimizerState(m, v, step)

    @property
    def shuffle_state(self) -> int:
        """The state of the stream that draws each shuffled epoch's order (a uint64 seeded
        from ``seed``, advanced by every shuffled epoch): saved and restored by checkpoints,
        so a resumed run draws the orders an uninterrupted one would."""
        return int(self._shuffle_state[0])

    @shuffle_state.setter
    def shuffle_state(self, value: int) -> None:
        self._shuffle_state = np.array([check.uint64(value, "shuffle_state")], np.uint64)

    @property
    def loss_scale(self) -> float:
        """The factor of each sample's summed element losses: ``1 / n_out`` for ``mse``
        and ``bce``, ``0.5 / n_out`` for ``half_mse``, 1 for ``cce`` and ``poisson``.
        Callers that follow another convention (scikit-learn's, for example) may set it."""
        return self._loss_scale

    @loss_scale.setter
    def loss_scale(self, value: float) -> None:
        self._loss_scale = check.positive_float(value, "loss_scale")

    def _check_finite_params(self):
        if not _compiled().all_finite(self._params):
            raise ValueError(
                "the network's weights or biases contain NaN or infinity; "
                "set finite values with set_params"
            )

    def _features(self, X):
        """``features`` of ``X`` for this network; sparse input is refused on a GPU
        before anything changes (the CUDA backend has no sparse products)."""
        X = features(X, self.layer_sizes[0], self.dtype)
        if self.device != "cpu" and isinstance(X, SparseRows):
            raise TypeError(
                f"X: sparse input is supported on device='cpu' only; densify it "
                f"(X.toarray()) for device={self.device!r}"
            )
        return X

    # ---------------------------------------------------------------- evaluation

    def forward(self, X: ArrayLike, *, check_input: bool = True) -> NDArray:
        """Output activations, shape ``(n_samples, n_out)``; ``X`` dense or sparse (see
        ``fit``). With ``check_input=False``, ``X`` must already be as ``features``
        returns it: a C-contiguous ``(n_samples, n_in)`` array of the network's dtype with
        finite values, or ``SparseRows`` (see ``fit``)."""
        from . import streaming

        if streaming.is_row_source(X):
            return self._forward_blocks(X)
        if check_input:
            X = self._features(X)
        self._check_finite_params()
        out = np.empty((X.shape[0], self.layer_sizes[-1]), self.dtype)
        self._backend.run(
            Request(
                Mode.FORWARD,
                X,
                np.empty((0, self.layer_sizes[-1]), self.dtype),
                np.empty(0, np.int64),
                np.empty(0),
                self._params,
                self._layout,
                self._loss_code,
                self._loss_scale,
                out=out,
            )
        )
        return out

    predict = forward

    def _forward_blocks(self, X):
        """``forward`` of a row source, block by block as a thread reads them."""
        from . import streaming

        self._check_finite_params()
        n = X.shape[0]
        out = np.empty((n, self.layer_sizes[-1]), self.dtype)
        plan = streaming.Plan.of(n, 1, self.dtype.itemsize * self.layer_sizes[0])
        visits = plan.visits(False, None)
        start = 0
        for block in streaming.read_blocks(X, None, None, plan, visits, lambda block: block):
            stop = start + block.X.shape[0]
            out[start:stop] = self.forward(block.X)
            start = stop
        return out

    def _data(self, X, Y, sample_weight, check_input=True):
        """``(X, Y, labels, sample_weight)`` as the engine takes them (``Request``)."""
        if not check_input:
            weights = np.empty(0) if sample_weight is None else sample_weight
            if Y.ndim == 1:  # class labels
                return X, np.empty((0, self.layer_sizes[-1]), self.dtype), Y, weights
            return X, Y, np.empty(0, np.int64), weights
        from . import streaming

        # Row sources here are read whole (the gradient of all rows): copied to a file.
        X = self._features(streaming.mapped(X, self.dtype))
        Y = streaming.mapped(Y, self.dtype)
        Y, labels = check.targets(Y, X.shape[0], self.layer_sizes[-1], self.loss_name, self.dtype)
        return X, Y, labels, check.sample_weights(sample_weight, X.shape[0])

    def _gradient(self, X, Y, labels, sample_weight, l2, ranks=(0, 1)):
        """Loss and flat gradient of the whole data set as one batch."""
        self._check_finite_params()
        grad = np.empty_like(self._params)
        history = np.zeros(1)
        self._backend.run(
            Request(
                Mode.GRADIENT,
                X,
                Y,
                labels,
                sample_weight,
                self._params,
                self._layout,
                self._loss_code,
                self._loss_scale,
                self.reduction == "sum",
                hyper=Hyperparameters(l2=l2),
                history=history,
                out=grad,
                ranks=ranks,
            )
        )
        return float(history[0]), grad

    def loss(
        self,
        X: ArrayLike,
        Y: ArrayLike,
        *,
        sample_weight: ArrayLike | None = None,
        l2: float = 0.0,
        check_input: bool = True,
        comm=None,
    ) -> float:
        """Loss of the whole data set, reduced over samples as ``reduction`` says; ``l2``
        adds ``0.5 * l2 * sum(W**2)`` divided like the data term. ``check_input`` and
        ``comm`` as in ``fit``."""
        return self._whole_batch(X, Y, sample_weight, l2, check_input, comm)[0]

    def gradients(
        self,
        X: ArrayLike,
        Y: ArrayLike,
        *,
        sample_weight: ArrayLike | None = None,
        l2: float = 0.0,
        check_input: bool = True,
        comm=None,
    ) -> tuple[float, list[NDArray], list[NDArray] | None]:
        """``(loss, dWs, dbs)`` of the whole data set as one batch; parameters unchanged.
        ``dbs`` is None for a network without biases. ``check_input`` and ``comm`` as in
        ``fit``."""
        value, grad = self._whole_batch(X, Y, sample_weight, l2, check_input, comm)
        biases = _layout.bias_views(grad, self._layout)
        return value, _layout.weight_views(grad, self._layout), biases

    def _ranks(self, comm):
        """``(rank, size)`` of a checked ``comm``."""
        if self.device != "cpu":
            raise ValueError("comm: training over MPI runs on device='cpu' only")
        return _distributed().ranks(comm)

    def _whole_batch(self, X, Y, sample_weight, l2, check_input, comm):
        """``(loss, flat gradient)`` of ``loss`` and ``gradients``, checked first."""
        ranks = (0, 1) if comm is None else self._ranks(comm)

        def checked():
            return check.positive_float(l2, "l2", allow_zero=True), self._data(
                X, Y, sample_weight, check_input
            )

        l2, data = _checked(comm, checked)
        return self._gradient(*data, l2, ranks)

    # ---------------------------------------------------------------- training

    def fit(
        self,
        X: ArrayLike,
        Y: ArrayLike,
        *,
        epochs: int,
        lr: float,
        batch_size: int | None = None,
        shuffle: bool | str = False,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        l2: float = 0.0,
        sample_weight: ArrayLike | None = None,
        order: ArrayLike | None = None,
        check_input: bool = True,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        checkpoint_seconds: float | None = None,
        comm=None,
        restore_finite: bool = True,
    ) -> NDArray[np.float64]:
        """Train in place; returns the loss of every epoch (the mean, or with
        ``reduction="sum"`` the sum, over the epoch's samples, each measured before the
        update of its batch).

        ``X`` is an array ``(n, n_in)`` or a scipy.sparse CSR or CSC matrix or array (as
        are the ``X`` of ``forward``, ``loss`` and ``gradients``). Sparse rows are never
        densified: the first layer gathers the rows of W_0 that each row's stored entries
        name, and scatters their gradient; CSC is converted to CSR once (scipy's
        ``tocsr``); other sparse formats are refused; on ``device="cuda"`` sparse input
        is refused. Targets must be dense.

        Mini-batches run in row order, or in ``order`` (a permutation of the rows, or one
        per epoch as an ``(epochs, n)`` array, for callers that draw their own), or in a
        permutation drawn from ``seed`` each epoch when ``shuffle``; the last partial
        batch is included; ``batch_size=None`` is the full batch. ``optimizer`` is
        ``sgd``, ``momentum``, ``nesterov`` or ``adam`` (the bias-corrected step of
        scikit-learn's Adam); its state carries over to the next ``fit`` while the
        optimizer stays the same. ``l2`` adds ``0.5 * l2 * sum(W**2)`` to each batch loss,
        divided like the data term.

        Data on disk trains block by block (``fastbp.streaming``): a memory map visited in
        row order, or a row source (an object with ``shape`` and ``read(start, stop)``
        returning those rows as an array, as ``X`` or ``Y``), is read in blocks of whole
        batches by a thread while the engine trains, to the bits of the same rows in
        memory; rows are checked as they are read, and bad ones restore the state at the
        start of their epoch. ``shuffle="blocks"`` visits such blocks in a seeded random
        order and the rows of each in a seeded random order (sequential reads; the same
        bits wherever the rows come from, not those of ``shuffle=True``). A row source
        visited in any other order (``shuffle=True``, ``order``; also ``loss`` and
        ``gradients``) is first copied to a memory-mapped scratch file
        (``fastbp.streaming.mapped``).

        ``check_input=False`` is a fast path for callers that checked their arguments once
        and train many times (as the estimators do, epoch block by epoch block): ``X`` a
        C-contiguous ``(n, n_in)`` array of the network's dtype or ``SparseRows``, as
        ``fastbp.network.features`` returns them, ``Y`` a C-contiguous
        ``(n, n_out)`` array of it or, for ``cce``, int64 ``(n,)`` class labels,
        ``sample_weight`` None or a float64 ``(n,)`` array, ``order`` None or a flat int64
        array of ``epochs`` permutations or one, all finite and in range, and every other
        argument valid.
        Nothing is checked then: other input gives wrong results or crashes. Checking
        75,000 rows again cost 1 ms an epoch.

        If the loss or the parameters become non-finite, training stops, the parameters
        and optimizer state of the last finite epoch are restored and FloatingPointError
        names the epoch. Keeping them costs a copy of both: ``restore_finite=False`` saves
        that memory, leaving the parameters as they became (on the CPU; for callers that
        keep their own copy, as the estimators do).

        ``checkpoint`` (a path) makes the run resumable (``fastbp.checkpoint``): the state
        is written there, atomically, every ``checkpoint_every`` epochs (default 1) or,
        with ``checkpoint_seconds``, once that many seconds have passed (checked between
        epochs), and when the run ends. If ``path`` holds a checkpoint of this same run
        (network and its state at the start, data, settings), ``fit`` resumes from it and
        returns what an uninterrupted run returns, to the bit; a checkpoint of another run,
        or any other file, is refused with an error that says what differs.

        ``comm`` (mpi4py's ``MPI.COMM_WORLD``, with ``pip install "fastbp[mpi]"``) trains
        over all of MPI's processes: each calls ``fit`` with the same arguments, computes a
        share of every batch (reading only its rows) and ends with the parameters, to the
        bit, of this fit in one process (``fastbp.distributed``). Input refused in one
        process raises in all. With ``checkpoint``, process 0 writes it and all resume.
        """
        from . import streaming

        ranks = (0, 1) if comm is None else self._ranks(comm)
        if check_input:
            restore_finite = check.flag(restore_finite, "restore_finite")
        if order is not None or (shuffle is not False and shuffle != "blocks"):
            # Rows visited in any order: row sources are copied to a memory-mapped file.
            X, Y = streaming.mapped(X, self.dtype), streaming.mapped(Y, self.dtype)
        blockwise = order is None and streaming.blockwise(X, Y, shuffle)
        if blockwise and checkpoint is not None and streaming.is_row_source(X):
            raise ValueError(
                "checkpoint: a run read from a row source cannot be fingerprinted; save the "
                "data as .npy and train on np.load(path, mmap_mode='r')"
            )
        if blockwise and self.device != "cpu":
            raise ValueError(
                f"X: data read block by block trains on device='cpu', not {self.device!r}"
            )
        data, order, batch_size, hyper = _checked(
            comm,
            lambda: self._fit_arguments(
                X, Y, epochs, lr, batch_size, shuffle, optimizer, momentum, beta1, beta2,
                epsilon, l2, sample_weight, order, check_input, blockwise,
            ),
        )  # fmt: skip
        train_epochs = self._train_blocks if blockwise else self._train
        if checkpoint is None:
            return train_epochs(
                data, order, epochs, batch_size, shuffle, optimizer, hyper, ranks,
                restore=restore_finite,
            )  # fmt: skip
        from . import checkpoint as checkpoints

        n = data[0].shape[0]

        def train(first, count):
            if order is not None and order.shape[0] > n:  # one permutation per epoch
                block = order[first * n : (first + count) * n]
            else:
                block = order
            return train_epochs(
                data, block, count, batch_size, shuffle, optimizer, hyper, ranks, first,
                epochs, restore_finite,
            )  # fmt: skip

        X, Y, labels, sample_weight = data
        return checkpoints.run(
            self,
            checkpoint,
            epochs,
            train,
            data={"X": X, "Y": Y, "labels": labels, "sample_weight": sample_weight, "order": order},
            settings=dict(
                batch_size=batch_size,
                shuffle=shuffle,
                optimizer=optimizer,
                lr=lr,
                momentum=momentum,
                beta1=beta1,
                beta2=beta2,
                epsilon=epsilon,
                l2=l2,
            ),
            every=checkpoint_every,
            seconds=checkpoint_seconds,
            writer=ranks[0] == 0,
            comm=comm,
        )

    def _fit_arguments(
        self, X, Y, epochs, lr, batch_size, shuffle, optimizer, momentum, beta1, beta2,
        epsilon, l2, sample_weight, order, check_input, blockwise=False,
    ):  # fmt: skip
        """``fit``'s arguments checked: ``(data, order, batch_size, hyperparameters)``;
        data read block by block is checked as it is read (``_engine_block``)."""
        if check_input:
            epochs = check.positive_int(epochs, "epochs")
            lr = check.positive_float(lr, "lr")
            if batch_size is not None:
                batch_size = check.positive_int(batch_size, "batch_size")
            optimizer = check.choice(optimizer, "optimizer", check.OPTIMIZERS)
            if not (isinstance(shuffle, str) and shuffle == "blocks"):
                shuffle = check.flag(shuffle, "shuffle")
            momentum = check.positive_float(momentum, "momentum", allow_zero=True)
            beta1 = check.positive_float(beta1, "beta1", allow_zero=True)
            beta2 = check.positive_float(beta2, "beta2", allow_zero=True)
            epsilon = check.positive_float(epsilon, "epsilon")
            l2 = check.positive_float(l2, "l2", allow_zero=True)
            if momentum >= 1 or beta1 >= 1 or beta2 >= 1:
                raise ValueError("momentum, beta1 and beta2 must be below 1")
        if blockwise:
            X, Y, labels, sample_weight = self._block_data(X, Y, sample_weight)
        else:
            X, Y, labels, sample_weight = self._data(X, Y, sample_weight, check_input)
        if order is not None:
            if check_input:
                order = check.permutations(order, X.shape[0], epochs)
            if shuffle:
                raise ValueError("order and shuffle=True exclude each other")
        self._check_finite_params()
        n = X.shape[0]
        batch_size = n if batch_size is None else min(batch_size, n)
        hyper = Hyperparameters(lr, momentum, beta1, beta2, epsilon, l2)
        return (X, Y, labels, sample_weight), order, batch_size, hyper

    def _train(
        self,
        data,
        order,
        epochs,
        batch_size,
        shuffle,
        optimizer,
        hyper,
        ranks=(0, 1),
        first=0,
        total=None,
        restore=True,
    ):
        """Train checked ``data`` for ``epochs`` epochs; errors count epochs from ``first``
        of ``total``, for runs trained in blocks."""
        X, Y, labels, sample_weight = data
        self._use_optimizer(optimizer)
        history = np.full(epochs, np.nan)
        failed = self._backend.run(
            Request(
                Mode.TRAIN,
                X,
                Y,
                labels,
                sample_weight,
                self._params,
                self._layout,
                self._loss_code,
                self._loss_scale,
                self.reduction == "sum",
                order=order,
                epochs=epochs,
                batch_size=batch_size,
                shuffle=shuffle,
                shuffle_state=self._shuffle_state,
                optimizer=_layout.OPTIMIZER_CODES[optimizer],
                hyper=hyper,
                state=self._state,
                history=history,
                ranks=ranks,
                restore=restore,
            )
        )
        if failed >= 0:
            raise _diverged(history, failed, first, total or epochs, restore)
        return history

    def _use_optimizer(self, optimizer):
        """Start ``optimizer``'s state afresh unless it is the one that trained last."""
        if optimizer != self._optimizer:
            self.reset_optimizer()
            self._optimizer = optimizer
            if optimizer != "sgd":
                m = np.zeros_like(self._params)
                v = np.zeros_like(self._params) if optimizer == "adam" else self._state.v
                self._state = OptimizerState(m, v, self._state.step)

    def _block_data(self, X, Y, sample_weight):
        """``(X, Y, no labels, sample_weight)`` for a fit block by block: shapes checked here,
        values as each block is read; the weights, one number a row, checked whole."""
        from . import streaming

        if streaming.is_row_source(X) or isinstance(X, np.ndarray):
            shape = tuple(X.shape)
            if len(shape) != 2 or shape[1] != self.layer_sizes[0]:
                raise ValueError(
                    f"X must have shape (n_samples, {self.layer_sizes[0]}); got {shape}"
                )
        else:  # sparse rows, in memory: checked whole here, sliced into blocks as CSR
            self._features(X)
            X = X.tocsr() if X.format == "csc" else X
        n = X.shape[0]
        if n == 0:
            raise ValueError("X has no rows")
        rows = Y.shape[0] if streaming.is_row_source(Y) else len(Y)
        if rows != n:
            raise ValueError(f"Y has {rows} rows but X has {n}")
        return X, Y, np.empty(0, np.int64), check.sample_weights(sample_weight, n)

    def _engine_block(self, block):
        """One block's ``(X, Y, labels, sample_weight)`` as the engine takes them, its
        values checked."""
        X = self._features(block.X)
        Y, labels = check.targets(
            block.Y, X.shape[0], self.layer_sizes[-1], self.loss_name, self.dtype
        )
        weights = block.sample_weight
        weights = np.empty(0) if weights is None else np.ascontiguousarray(weights)
        return X, Y, labels, weights

    def _train_blocks(
        self, data, order, epochs, batch_size, shuffle, optimizer, hyper, ranks=(0, 1),
        first=0, total=None, restore=True,
    ):  # fmt: skip
        """``_train`` block by block (``fastbp.streaming``): a thread reads each block
        while the engine trains on the one before, carrying the epoch's sums on. With
        ``restore``, an error or a divergence restores the state of the epoch's start."""
        from . import streaming

        X, Y, _, sample_weight = data
        weights = sample_weight if sample_weight.shape[0] else None
        row_bytes = self.dtype.itemsize * (self.layer_sizes[0] + self.layer_sizes[-1])
        plan = streaming.Plan.of(X.shape[0], batch_size, row_bytes)
        self._use_optimizer(optimizer)
        history = np.full(epochs, np.nan)
        in_order = np.arange(plan.block_rows)  # every block's visiting order, as read
        for epoch in range(epochs):
            kept = self._state_copy() if restore else None
            carry, loss = np.zeros(2), np.full(1, np.nan)
            visits = plan.visits(shuffle == "blocks", self._shuffle_state)
            try:
                for Xb, Yb, labels, wb in streaming.read_blocks(
                    X, Y, weights, plan, visits, self._engine_block
                ):
                    failed = self._backend.run(
                        Request(
                            Mode.TRAIN, Xb, Yb, labels, wb, self._params, self._layout,
                            self._loss_code, self._loss_scale, self.reduction == "sum",
                            order=in_order[: Xb.shape[0]], epochs=1, batch_size=batch_size,
                            optimizer=self._optimizer_code(),
                            hyper=hyper, state=self._state, history=loss, ranks=ranks,
                            restore=False, carry=carry,
                        )
                    )  # fmt: skip
                    if failed >= 0:
                        raise _diverged(history, epoch, first, total or epochs, restore)
            except BaseException:
                if kept is not None:
                    self._load_state_copy(kept)
                raise
            history[epoch] = loss[0]
        return history

    def _optimizer_code(self):
        return _layout.OPTIMIZER_CODES[self._optimizer]

    def _state_copy(self):
        """A copy of everything training changes, to put back with ``_load_state_copy``."""
        state = self._state
        return (
            self._params.copy(),
            OptimizerState(state.m.copy(), state.v.copy(), state.step.copy()),
            self._shuffle_state.copy(),
        )

    def _load_state_copy(self, kept):
        params, state, shuffle_state = kept
        self._params[:] = params
        self._state.m[:] = state.m
        self._state.v[:] = state.v
        self._state.step[:] = state.step
        self._shuffle_state[:] = shuffle_state

    def save(self, path: str | os.PathLike) -> None:
        """Write the network to ``path`` in fastbp's ``.npz`` model format
        (``fastbp.persistence``); ``fastbp.load(path)`` reads it back exactly."""
        from .persistence import save

        save(self, path)

    def __repr__(self):
        return (
            f"MLP({list(self.layer_sizes)}, {list(self.activations)}, "
            f"{self.loss_name!r}, bias={self.bias}, reduction={self.reduction!r}, "
            f"dtype={self.dtype.name}, device={self.device!r})"
        )
