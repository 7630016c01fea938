"""``fastbp.MLP``: a multilayer perceptron trained by compiled kernels.

The class validates and allocates; the loops live in the kernel modules. Parameters are
one flat array (see ``fastbp._layout``); ``weights`` and ``biases`` are views into it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _config, _layout
from . import _validation as check
from ._backends import kernels
from ._init import initial_weights

_blas_controller = None

#: Work plans by architecture, dtype, batch size and settings, shared by all networks:
#: the first fit of a new 2-2-1 network spent 8 us of its 28 working one out.
_work_plans = {}
WORK_PLANS_KEPT = 1024


def _one_blas_thread():
    """Hold BLAS to one thread while the kernels run: its own threading changes the bits
    with the thread count, the kernels spread their chunk groups over threads, and BLAS
    threads left waiting for work beside them make them wait for a core.

    The BLAS libraries are looked up once, after scipy's, the one the kernels call, is
    loaded: threadpoolctl's search of the loaded libraries took 0.8 ms, more than a
    gradient of a small network."""
    global _blas_controller
    if _blas_controller is None:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS the kernels call)
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


class MLP:
    """A fully connected network trained by backpropagation.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_in, h1, ..., n_out]``, at least two entries.
    activations : str or sequence of str
        One name for every layer, or one per weight layer: ``identity``, ``sigmoid``,
        ``tanh``, ``relu``, ``leaky_relu`` (slope 0.01), ``softmax`` (output layer only).
    loss : str
        ``mse`` (mean of (y - yhat)**2 over the outputs), ``half_mse`` (half of it),
        ``bce`` (binary cross-entropy averaged over the outputs) or ``cce`` (categorical
        cross-entropy; targets one-hot, class probabilities or integer labels).
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

    def __init__(self, layer_sizes: Sequence[int], activations: str | Sequence[str],
                 loss: str, *, bias: bool = True, reduction: str = "mean",
                 dtype: DTypeLike = np.float64, seed: int | None = None,
                 device: str = "cpu"):
        self.layer_sizes = check.layer_sizes(layer_sizes)
        self.activations = check.activations(activations, len(self.layer_sizes) - 1)
        self.loss_name = check.choice(loss, "loss", check.LOSSES)
        check.bce_outputs(self.loss_name, self.activations[-1])
        self.bias = check.flag(bias, "bias")
        self.reduction = check.choice(reduction, "reduction", check.REDUCTIONS)
        self.dtype = check.dtype(dtype)
        self.device = check.choice(device, "device", check.DEVICES)
        self._kernels = kernels(self.device)
        self.seed = check.seed(seed)
        self._layout, n_params = _layout.build_layout(self.layer_sizes, self.activations,
                                                      self.bias)
        self._loss_code, self._loss_scale = _layout.loss_code(self.loss_name,
                                                              self.layer_sizes[-1])
        # Layers of BLAS_MIN_ENTRIES weights or more multiply through BLAS, on longer chunks.
        self._blas_min = _config.BLAS_MIN_ENTRIES
        self._uses_blas = bool((self._layout[:, 0] * self._layout[:, 1] >= self._blas_min).any())
        self._blas_threads = (_one_blas_thread if self._uses_blas and self.device == "cpu"
                              else contextlib.nullcontext)
        self._plan_key = (self._layout.tobytes(), self.dtype.str, self._uses_blas)
        rng = np.random.default_rng(seed)
        self._params = np.zeros(n_params, self.dtype)
        initial = initial_weights(self.layer_sizes, self.activations, rng)
        for view, w in zip(self.weights, initial, strict=True):
            view[...] = w
        self._shuffle_state = np.array([rng.integers(0, 2**63)], dtype=np.uint64)
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

    def set_params(self, weights: Sequence[ArrayLike],
                   biases: Sequence[ArrayLike] | None = None) -> MLP:
        """Copy user weights (and biases, if given; otherwise they stay as they are) in,
        after checking every shape and value; resets the optimizer state."""
        new_w, new_b = check.parameters(weights, biases, self.layer_sizes, self.bias, self.dtype)
        params = self._params.copy()
        for view, w in zip(_layout.weight_views(params, self._layout), new_w, strict=True):
            view[...] = w
        if new_b is not None:
            for view, b in zip(_layout.bias_views(params, self._layout), new_b, strict=True):
                view[...] = b
        self._params = params
        self.reset_optimizer()
        return self

    def get_params(self) -> tuple[list[NDArray], list[NDArray] | None]:
        """Copies of ``(weights, biases)``."""
        biases = self.biases
        return ([w.copy() for w in self.weights],
                None if biases is None else [b.copy() for b in biases])

    def reset_optimizer(self) -> None:
        """Forget momentum and Adam moments; the next ``fit`` starts them from zero."""
        self._optimizer = None
        self._state_m = np.zeros(0, self.dtype)
        self._state_v = np.zeros(0, self.dtype)
        self._step = np.zeros(1, np.int64)

    def _check_finite_params(self):
        if not np.isfinite(self._params).all():
            raise ValueError("the network's weights or biases contain NaN or infinity; "
                             "set finite values with set_params")

    # ---------------------------------------------------------------- evaluation

    def forward(self, X: ArrayLike) -> NDArray:
        """Output activations, shape ``(n_samples, n_out)``."""
        X = check.features(X, self.layer_sizes[0], self.dtype)
        self._check_finite_params()
        out = np.empty((X.shape[0], self.layer_sizes[-1]), self.dtype)
        no_targets = np.empty((0, self.layer_sizes[-1]), self.dtype)
        self._run(X, no_targets, np.empty(0, np.int64), np.empty(0), out=out)
        return out

    predict = forward

    def _data(self, X, Y, sample_weight):
        X = check.features(X, self.layer_sizes[0], self.dtype)
        Y, labels = check.targets(Y, X.shape[0], self.layer_sizes[-1], self.loss_name,
                                  self.dtype)
        return X, Y, labels, check.sample_weights(sample_weight, X.shape[0])

    def _run(self, X, Y, labels, sample_weight, *, order=None, epochs=1, batch_size=None,
             shuffle=False, optimizer="sgd", hyper=None, history=None, out_grad=None, out=None):
        """Call the compiled engine; every mode goes through this one entry point."""
        empty = np.zeros(0, self.dtype)
        training = out_grad is None and out is None
        batch_size = batch_size or X.shape[0]
        chunk, offs, work_size = self._work_plan(batch_size)
        with self._blas_threads():
            return self._kernels.run(
                X, Y, labels, sample_weight, np.arange(X.shape[0]) if order is None else order,
                self._params, self._layout, offs, work_size, self._loss_code,
                self._loss_scale, np.finfo(self.dtype).eps, self.reduction == "sum", epochs,
                batch_size, shuffle,
                self._shuffle_state if training else self._shuffle_state.copy(),
                _layout.OPTIMIZER_CODES[optimizer],
                np.array([0.0, 0.0, 0.0, 0.0, 1.0, 0.0]) if hyper is None else hyper,
                self._step if training else np.zeros(1, np.int64),
                self._state_m if training else empty, self._state_v if training else empty,
                chunk, self._max_groups(), _config.PARALLEL_MIN_MACS, self._blas_min,
                np.zeros(1) if history is None else history,
                empty if out_grad is None else out_grad,
                np.zeros((0, 0), self.dtype) if out is None else out)

    def _work_plan(self, batch_size):
        """``(chunk rows, work offsets, work size)`` for batches of ``batch_size`` rows.

        Chunks fix the summation order, so they depend on the network, its dtype and the
        batch size alone, never on the thread count. A batch is cut into chunks of equal
        size, so that threads get equal shares, and into an even number of them (at least
        two) when it has more than FEWEST_CHUNK_ROWS rows, so that two cores get equal
        work: three chunks leave one core idle a third of the time. Chunks are as long as
        their work buffer allows (see WORK_BUFFER_BYTES); networks with BLAS layers take
        chunks of about half a batch (at most BLAS_CHUNK_ROWS), long enough for BLAS to
        run near its peak."""
        key = (*self._plan_key, batch_size, _config.CHUNK_ROWS, _config.WORK_BUFFER_BYTES,
               _config.BLAS_CHUNK_ROWS)
        plan = _work_plans.get(key)
        if plan is not None:
            return plan
        half = -(-batch_size // 2)
        if self._uses_blas:
            most = max(_config.FEWEST_CHUNK_ROWS, min(_config.BLAS_CHUNK_ROWS, half))
        else:
            per_row = _layout.work_offsets(self._layout, 1)[1] * self.dtype.itemsize
            fits = _config.WORK_BUFFER_BYTES // per_row
            most = min(_config.CHUNK_ROWS, max(_config.FEWEST_CHUNK_ROWS, min(fits, half)))
        n_chunks = -(-batch_size // most)
        if n_chunks > 1:
            n_chunks += n_chunks % 2
        chunk = -(-batch_size // n_chunks)
        if len(_work_plans) >= WORK_PLANS_KEPT:
            _work_plans.clear()
        plan = _work_plans[key] = (chunk, *_layout.work_offsets(self._layout, chunk))
        return plan

    def _gradient(self, X, Y, labels, sample_weight, l2):
        """Loss and flat gradient of the whole data set as one batch."""
        self._check_finite_params()
        grad = np.empty_like(self._params)
        history = np.zeros(1)
        self._run(X, Y, labels, sample_weight, hyper=np.array([0.0, 0.0, 0.0, 0.0, 1.0, l2]),
                  history=history, out_grad=grad)
        return float(history[0]), grad

    def loss(self, X: ArrayLike, Y: ArrayLike, *, sample_weight: ArrayLike | None = None,
             l2: float = 0.0) -> float:
        """Loss of the whole data set, reduced over samples as ``reduction`` says; ``l2``
        adds ``0.5 * l2 * sum(W**2)`` divided like the data term."""
        l2 = check.positive_float(l2, "l2", allow_zero=True)
        return self._gradient(*self._data(X, Y, sample_weight), l2)[0]

    def gradients(self, X: ArrayLike, Y: ArrayLike, *,
                  sample_weight: ArrayLike | None = None, l2: float = 0.0
                  ) -> tuple[float, list[NDArray], list[NDArray] | None]:
        """``(loss, dWs, dbs)`` of the whole data set as one batch; parameters unchanged.
        ``dbs`` is None for a network without biases."""
        l2 = check.positive_float(l2, "l2", allow_zero=True)
        value, grad = self._gradient(*self._data(X, Y, sample_weight), l2)
        biases = _layout.bias_views(grad, self._layout)
        return value, _layout.weight_views(grad, self._layout), biases

    # ---------------------------------------------------------------- training

    def _max_groups(self):
        by_memory = max(2, _config.GRADIENT_BUFFER_ENTRIES // self.n_params)
        return min(_config.MAX_GROUPS, by_memory)

    def fit(self, X: ArrayLike, Y: ArrayLike, *, epochs: int, lr: float,
            batch_size: int | None = None, shuffle: bool = False, optimizer: str = "sgd",
            momentum: float = 0.9, beta1: float = 0.9, beta2: float = 0.999,
            epsilon: float = 1e-8, l2: float = 0.0, sample_weight: ArrayLike | None = None,
            order: ArrayLike | None = None) -> NDArray[np.float64]:
        """Train in place; returns the loss of every epoch (the mean, or with
        ``reduction="sum"`` the sum, over the epoch's samples, each measured before the
        update of its batch).

        Mini-batches run in row order, or in ``order`` (a permutation of the rows, or one
        per epoch as an ``(epochs, n)`` array, for callers that draw their own), or in a
        permutation drawn from ``seed`` each epoch when ``shuffle``; the last partial
        batch is included; ``batch_size=None`` is the full batch. ``optimizer`` is
        ``sgd``, ``momentum``, ``nesterov`` or ``adam`` (the bias-corrected step of
        scikit-learn's Adam); its state carries over to the next ``fit`` while the
        optimizer stays the same. ``l2`` adds ``0.5 * l2 * sum(W**2)`` to each batch loss,
        divided like the data term.

        If the loss or the parameters become non-finite, training stops, the parameters
        of the last finite epoch are restored and FloatingPointError names the epoch.
        """
        epochs = check.positive_int(epochs, "epochs")
        lr = check.positive_float(lr, "lr")
        if batch_size is not None:
            batch_size = check.positive_int(batch_size, "batch_size")
        optimizer = check.choice(optimizer, "optimizer", check.OPTIMIZERS)
        shuffle = check.flag(shuffle, "shuffle")
        momentum = check.positive_float(momentum, "momentum", allow_zero=True)
        beta1 = check.positive_float(beta1, "beta1", allow_zero=True)
        beta2 = check.positive_float(beta2, "beta2", allow_zero=True)
        epsilon = check.positive_float(epsilon, "epsilon")
        l2 = check.positive_float(l2, "l2", allow_zero=True)
        if momentum >= 1 or beta1 >= 1 or beta2 >= 1:
            raise ValueError("momentum, beta1 and beta2 must be below 1")
        X, Y, labels, sample_weight = self._data(X, Y, sample_weight)
        if order is not None:
            order = check.permutations(order, X.shape[0], epochs)
            if shuffle:
                raise ValueError("order and shuffle=True exclude each other")
        return self._train(X, Y, labels, sample_weight, epochs=epochs, lr=lr,
                           batch_size=batch_size, shuffle=shuffle, order=order,
                           optimizer=optimizer, momentum=momentum, beta1=beta1, beta2=beta2,
                           epsilon=epsilon, l2=l2)

    def _train(self, X, Y, labels, sample_weight, *, epochs, lr, batch_size, shuffle, order,
               optimizer, momentum, beta1, beta2, epsilon, l2):
        """``fit`` on arguments already checked (``_data``, ``check.permutations`` and
        ``fit``'s checks of the rest; ``order`` flat). The estimators check their data once
        and then call this: checking 75,000 rows again cost 1 ms an epoch."""
        self._check_finite_params()
        hyper = np.array([lr, momentum, beta1, beta2, epsilon, l2], dtype=float)
        n = X.shape[0]
        batch_size = n if batch_size is None else min(batch_size, n)

        if optimizer != self._optimizer:
            self.reset_optimizer()
            self._optimizer = optimizer
            if optimizer != "sgd":
                self._state_m = np.zeros_like(self._params)
            if optimizer == "adam":
                self._state_v = np.zeros_like(self._params)
        history = np.full(epochs, np.nan)
        failed = self._run(X, Y, labels, sample_weight, order=order, epochs=epochs,
                           batch_size=batch_size,
                           shuffle=shuffle, optimizer=optimizer, hyper=hyper,
                           history=history)
        if failed >= 0:
            error = FloatingPointError(
                f"training diverged in epoch {failed + 1} of {epochs}: the loss or the "
                f"parameters became NaN or infinite; the parameters are those at the end of "
                f"epoch {failed} (lower lr?)")
            error.history = history[:failed]
            raise error
        return history

    def save(self, path: str | os.PathLike) -> None:
        """Write the network to ``path`` in fastbp's ``.npz`` model format
        (``fastbp.persistence``); ``fastbp.load(path)`` reads it back exactly."""
        from .persistence import save

        save(self, path)

    def __repr__(self):
        return (f"MLP({list(self.layer_sizes)}, {list(self.activations)}, "
                f"{self.loss_name!r}, bias={self.bias}, reduction={self.reduction!r}, "
                f"dtype={self.dtype.name}, device={self.device!r})")
