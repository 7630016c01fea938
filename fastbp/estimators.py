"""scikit-learn estimators trained by fastbp's compiled engine.

``MLPClassifier`` and ``MLPRegressor`` take scikit-learn's constructor parameters with
the same defaults, set the same fitted attributes and follow the same training
procedure: the same initial weights drawn from ``random_state``, the same early-stopping
split, the same mini-batches in the same order, the same optimizer formulas, learning-rate
schedules and stopping rules. Given the same data and ``random_state`` they follow the
trajectory of ``sklearn.neural_network`` up to floating-point rounding.

What differs is where the work happens: every epoch of ``sgd`` or ``adam`` is one call of
``fastbp.MLP.fit`` (forward, backward and optimizer steps of all its mini-batches in
compiled code), and ``lbfgs`` drives scipy's L-BFGS-B with the compiled whole-data loss
and gradient. The Python loop between epochs keeps scikit-learn's bookkeeping: early
stopping, ``tol``/``n_iter_no_change``, the learning-rate schedules and warnings.

Beyond scikit-learn: ``dtype`` (float32 data trains in float32 end to end, as in
scikit-learn; the parameter can force either),
``device`` (passed to ``fastbp.MLP``), ``fit``'s ``X_val``/``y_val`` (early stopping on
data of the caller's choice), ``validation_loss_curve_``, ``learning_rate_`` and
``optimizer_state()`` (what scikit-learn keeps in its private ``_optimizer``).

Sparse input: CSR and CSC matrices and arrays (others are converted to CSR, as
scikit-learn does) train and predict without being densified: the first layer multiplies
the stored entries (``fastbp.MLP``; CSC becomes CSR once, on the CPU only).

Known differences: ``momentum`` must be below 1; ``MLPRegressor(loss="poisson")``
refuses negative targets (scikit-learn trains on them with a NaN loss). With
``sample_weight``, ``loss_`` and ``loss_curve_`` average the per-sample losses with the
weights (scikit-learn weights each batch's loss by its number of samples); for several
regression outputs, ``loss_curve_`` sums half squared errors over the outputs (the loss
whose gradient both libraries follow; scikit-learn reports its mean over the outputs).
Parameters, predictions and every other attribute agree.

This module imports scikit-learn; the rest of fastbp does not need it.
"""

import numbers
import types
import warnings

import numpy as np
import scipy
import scipy.optimize
from scipy.special import xlogy
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted

from . import _validation as check
from . import streaming
from ._engine.cpu.blas_threads import one_blas_thread
from .network import MLP, features

try:
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # scikit-learn < 1.6

    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)


__all__ = ["MLPClassifier", "MLPRegressor"]

_ENGINE_ACTIVATIONS = {
    "identity": "identity",
    "logistic": "sigmoid",
    "tanh": "tanh",
    "relu": "relu",
    "softmax": "softmax",
    "exp": "exp",
}
_STOCHASTIC = ("sgd", "adam")


# ---------------------------------------------------------------- parameter checks


def _check_real(value, name, low, high, *, low_open=False, high_open=False):
    """``value`` as a float in scikit-learn's interval from ``low`` to ``high`` (None: no
    bound, infinity included), each end closed unless said open; ``_validation``'s
    ``positive_float`` has no upper bound and refuses infinity."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    value = float(value)
    below = value <= low if low_open else value < low
    above = high is not None and (value >= high if high_open else value > high)
    if np.isnan(value) or below or above:
        interval = (
            ("(" if low_open else "[")
            + f"{low}, "
            + ("inf)" if high is None else f"{high}" + (")" if high_open else "]"))
        )
        raise ValueError(f"{name} must lie in {interval}; got {value!r}")
    return value


def _check_random_state(value):
    """What ``check_random_state`` accepts, without seeding a generator for the usual
    values (None, a RandomState, an int seed): seeding took 88 us of every fit call."""
    if value is None or isinstance(value, np.random.RandomState):
        return
    if isinstance(value, numbers.Integral) and 0 <= value < 2**32:
        return
    check_random_state(value)  # raises scikit-learn's error for anything else


def _check_hidden(sizes):
    """``hidden_layer_sizes`` as a list of positive ints (an int means one layer)."""
    if isinstance(sizes, numbers.Integral) and not isinstance(sizes, (bool, np.bool_)):
        sizes = [sizes]
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise TypeError(
            f"hidden_layer_sizes must be a positive integer or a sequence of them; got {sizes!r}"
        )
    return [check.positive_int(s, f"hidden_layer_sizes[{i}]") for i, s in enumerate(sizes)]


def _check_sample_weight(sample_weight, n_samples, dtype, name="sample_weight"):
    """Sample weights as a new ``dtype`` array ``(n_samples,)``: finite and not all zero,
    negative ones allowed as scikit-learn allows them (a number means that weight for
    every sample). Always a copy, so the caller's array stays untouched."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Number):
        sample_weight = np.full(n_samples, sample_weight, dtype=dtype)
    weights = check.numeric_array(sample_weight, name, dtype, 1).copy()
    if weights.shape != (n_samples,):
        data = "X_val" if name == "sample_weight_val" else "X"
        raise ValueError(
            f"{name} must have shape ({n_samples},) to match {data}; got {weights.shape}"
        )
    if not weights.any():
        raise ValueError(f"{name} must contain at least one non-zero weight")
    return weights


def _check_poisson_targets(loss, y, name):
    """Refuse negative targets for ``loss='poisson'``, where the deviance is undefined."""
    if loss == "poisson" and np.min(y) < 0:
        raise ValueError(f"{name} must be non-negative for loss='poisson'")


#: The sparse formats the estimators keep; scikit-learn's validation converts others to
#: the first, as it does for scikit-learn's MLP.
_SPARSE = ["csr", "csc"]


# ---------------------------------------------------------------- engine helpers


def _shuffled(sample_idx, random_state):
    """``sklearn.utils.shuffle(sample_idx, random_state=random_state)``: the same draw
    from the same generator, without the input checks that cost 0.75 ms an epoch."""
    indices = np.arange(sample_idx.shape[0])
    random_state.shuffle(indices)
    return sample_idx[indices]


def _loss_value(out_activation, y, prob, sample_weight):
    """scikit-learn's loss of predictions ``prob`` for 2-D targets ``y``, without the L2
    term: half squared error (mean over outputs), half Poisson deviance (summed over
    outputs), binary log loss (summed over outputs) or multiclass log loss; probabilities
    are clipped to ``[eps, 1 - eps]``."""
    y = y.astype(prob.dtype)
    if out_activation == "identity":
        return float(0.5 * np.average((y - prob) ** 2, weights=sample_weight, axis=0).mean())
    if out_activation == "exp":
        terms = xlogy(y, y / prob) - y + prob
        return float(np.average(terms, weights=sample_weight, axis=0).sum())
    eps = np.finfo(prob.dtype).eps
    prob = np.clip(prob, eps, 1 - eps)
    if out_activation == "logistic":
        terms = xlogy(y, prob) + xlogy(1 - y, 1 - prob)
    else:
        terms = xlogy(y, prob)
    return float(-np.average(terms, weights=sample_weight, axis=0).sum())


# ---------------------------------------------------------------- shared base


class _BaseMLP(BaseEstimator):
    """Training procedure shared by the classifier and the regressor."""

    def __init__(
        self,
        hidden_layer_sizes,
        activation,
        solver,
        alpha,
        batch_size,
        learning_rate,
        learning_rate_init,
        power_t,
        max_iter,
        loss,
        shuffle,
        random_state,
        tol,
        verbose,
        warm_start,
        momentum,
        nesterovs_momentum,
        early_stopping,
        validation_fraction,
        beta_1,
        beta_2,
        epsilon,
        n_iter_no_change,
        max_fun,
        dtype,
        device,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.loss = loss
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype
        self.device = device

    # ------------------------------------------------------------ validation

    def _check_params(self):
        """Every constructor parameter checked before anything changes; returns the
        cleaned hidden layer sizes and dtype (None: the data's, see ``_fit_dtype``)."""
        hidden = _check_hidden(self.hidden_layer_sizes)
        check.choice(self.activation, "activation", ("identity", "logistic", "tanh", "relu"))
        check.choice(self.solver, "solver", ("lbfgs", "sgd", "adam"))
        _check_real(self.alpha, "alpha", 0, None)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            if isinstance(self.batch_size, str):
                raise ValueError(
                    f"batch_size must be 'auto' or a positive integer; got {self.batch_size!r}"
                )
            check.positive_int(self.batch_size, "batch_size")
        check.choice(self.learning_rate, "learning_rate", ("constant", "invscaling", "adaptive"))
        _check_real(self.learning_rate_init, "learning_rate_init", 0, None, low_open=True)
        _check_real(self.power_t, "power_t", 0, None)
        check.positive_int(self.max_iter, "max_iter")
        check.flag(self.shuffle, "shuffle")
        _check_random_state(self.random_state)
        _check_real(self.tol, "tol", 0, None)
        if not isinstance(self.verbose, (bool, np.bool_, numbers.Integral)):
            raise TypeError(f"verbose must be a bool or an integer; got {self.verbose!r}")
        check.flag(self.warm_start, "warm_start")
        _check_real(self.momentum, "momentum", 0, 1, high_open=True)
        check.flag(self.nesterovs_momentum, "nesterovs_momentum")
        check.flag(self.early_stopping, "early_stopping")
        _check_real(self.validation_fraction, "validation_fraction", 0, 1, high_open=True)
        if self.early_stopping and self.validation_fraction == 0:
            raise ValueError("validation_fraction must be positive when early_stopping=True")
        _check_real(self.beta_1, "beta_1", 0, 1, high_open=True)
        _check_real(self.beta_2, "beta_2", 0, 1, high_open=True)
        _check_real(self.epsilon, "epsilon", 0, None, low_open=True)
        if not (isinstance(self.n_iter_no_change, float) and self.n_iter_no_change == np.inf):
            check.positive_int(self.n_iter_no_change, "n_iter_no_change")
        check.positive_int(self.max_fun, "max_fun")
        # None follows the data (see _fit_dtype).
        dtype = None if self.dtype is None else check.dtype(self.dtype)
        check.choice(self.device, "device", check.DEVICES)
        return hidden, dtype

    def _check_solver(self):
        if self.solver not in _STOCHASTIC:
            raise AttributeError(
                f"partial_fit is only available for stochastic optimizers. {self.solver} is "
                "not stochastic."
            )
        return True

    # ------------------------------------------------------------ the engine network

    def _engine_activations(self):
        hidden = _ENGINE_ACTIVATIONS[self.activation]
        return [hidden] * (self.n_layers_ - 2) + [_ENGINE_ACTIVATIONS[self.out_activation_]]

    def _engine_loss(self):
        """Engine loss name and per-sample scale giving scikit-learn's gradients: the
        binary log loss, the half Poisson deviance and half the squared error are summed
        over the outputs."""
        if self.out_activation_ == "softmax":
            return "cce", 1.0
        if self.out_activation_ == "logistic":
            return "bce", 1.0
        if self.out_activation_ == "exp":
            return "poisson", 1.0
        return "half_mse", 0.5

    def _sync_net(self, dtype, device):
        """The engine network holding ``coefs_`` and ``intercepts_`` (copied in, so
        assignments to those attributes take effect); rebuilt when the architecture,
        dtype or device changed, otherwise reused with its optimizer state."""
        sizes = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
        acts = self._engine_activations()
        for i, (coef, intercept) in enumerate(zip(self.coefs_, self.intercepts_, strict=True)):
            if coef.shape != (sizes[i], sizes[i + 1]) or intercept.shape != (sizes[i + 1],):
                raise ValueError(
                    f"coefs_[{i}] and intercepts_[{i}] do not fit the network "
                    f"{sizes}: shapes {coef.shape} and {intercept.shape}"
                )
        key = (tuple(sizes), tuple(acts), dtype, device)
        net = getattr(self, "_net", None)
        if net is None or self._net_key != key:
            loss, scale = self._engine_loss()
            net = MLP(sizes, acts, loss, dtype=dtype, device=device, seed=0)
            net.loss_scale = scale
            self._net, self._net_key = net, key
        for view, coef in zip(net.weights, self.coefs_, strict=True):
            view[...] = coef
        for view, intercept in zip(net.biases, self.intercepts_, strict=True):
            view[...] = intercept
        return net

    def _read_net(self):
        """Copy the trained parameters out of the engine network."""
        self.coefs_ = self.intercepts_ = None  # the old arrays go before the new come
        self.coefs_, self.intercepts_ = self._net.get_params()

    def __getstate__(self):
        state = super().__getstate__()
        state = dict(state)
        net = state.pop("_net", None)
        state.pop("_net_key", None)
        if net is not None:
            state["_engine_optimizer"] = net.optimizer_state()
        return state

    def __setstate__(self, state):
        optimizer = state.pop("_engine_optimizer", None)
        if "_learning_rate" in state:  # pickled before learning_rate_ was public
            state["learning_rate_"] = state.pop("_learning_rate")
        super().__setstate__(state)
        if optimizer is not None and hasattr(self, "coefs_"):
            net = self._sync_net(self.coefs_[0].dtype, self._fit_device)
            net.load_optimizer_state(optimizer)

    # ------------------------------------------------------------ fitting

    def _snapshot(self):
        state = {k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()}
        net = getattr(self, "_net", None)
        return state, (net, net.optimizer_state()) if net is not None else None

    def _restore(self, snapshot):
        state, engine = snapshot
        self.__dict__.clear()
        self.__dict__.update(state)
        if engine is not None:
            net, optimizer = engine
            net.load_optimizer_state(optimizer)

    def _fit(
        self, X, y, sample_weight=None, incremental=False, classes=None, validation=None, comm=None
    ):
        if comm is not None:
            from .distributed import ranks

            ranks(comm)  # a communicator refused alike in every process
        hidden, dtype = self._check_params()
        # Row sources (fastbp.ParquetColumns) are copied to a memory-mapped scratch file.
        if streaming.is_row_source(y):
            y = streaming.mapped(y)
            y = y[:, 0] if y.shape[1] == 1 else y
        X = streaming.mapped(X)
        if validation is not None:
            validation = tuple(streaming.mapped(v) for v in validation)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        snapshot = self._snapshot()
        # Until every process has checked its data, an error is reported to all of them.
        self._comm, self._agreed = comm, comm is None
        try:
            return self._fit_checked(
                X, y, sample_weight, incremental, classes, hidden, dtype, validation
            )
        except BaseException as error:
            try:
                if not self._agreed and isinstance(error, Exception):
                    from .distributed import agree

                    agree(comm, error)
            finally:
                self._restore(snapshot)
            raise
        finally:
            self.__dict__.pop("_comm", None)
            self.__dict__.pop("_agreed", None)

    def _data_agreed(self):
        """Over MPI, wait until every process has checked its data (raising if one refused
        it); from here on all processes train alike."""
        if not self._agreed:
            from .distributed import agree

            agree(self._comm, None)
            self._agreed = True

    def _fit_checked(self, X, y, sample_weight, incremental, classes, hidden, dtype, validation):
        if incremental:
            self._partial_fit_classes(y, classes)
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        dtype = self._fit_dtype(dtype, first_pass)
        X, y = self._validate_input(X, y, incremental, reset=first_pass, dtype=dtype)
        dtype = X.dtype
        sample_weight = _check_sample_weight(sample_weight, X.shape[0], dtype)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        self.n_outputs_ = y.shape[1]
        validation = self._validation_set(validation, dtype)
        layer_units = [X.shape[1]] + hidden + [self.n_outputs_]
        random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, dtype, random_state)
        elif [c.shape[0] for c in self.coefs_] + [self.coefs_[-1].shape[1]] != layer_units:
            raise ValueError(
                f"hidden_layer_sizes {hidden} and the data ({X.shape[1]} features, "
                f"{self.n_outputs_} outputs) do not match the fitted network; refit "
                "without warm_start"
            )
        net = self._sync_net(dtype, self.device)
        self._fit_device = self.device
        if self.solver in _STOCHASTIC:
            self._fit_stochastic(net, X, y, sample_weight, incremental, random_state, validation)
        else:
            self._fit_lbfgs(net, X, y, sample_weight)
        if not all(np.isfinite(w).all() for w in self.coefs_ + self.intercepts_):
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may"
                " contain large values and need to be preprocessed."
            )
        return self

    def _fit_dtype(self, dtype, first_pass):
        """The dtype to train in, or the choice handed to ``validate_data``: the
        ``dtype`` parameter if set; else, as scikit-learn does, float32 data stays float32
        and other data becomes float64 on a first fit, and later ``partial_fit`` or
        ``warm_start`` calls keep the fitted network's dtype."""
        if dtype is not None:
            return dtype
        if first_pass:
            return (np.float64, np.float32)
        return self.coefs_[0].dtype

    def _initialize(self, y, layer_units, dtype, random_state):
        """scikit-learn's initial state: Glorot-uniform weights and biases drawn from
        ``random_state`` layer by layer (weights, then biases)."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._output_activation()
        factor = 2.0 if self.activation == "logistic" else 6.0
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:], strict=True):
            bound = np.sqrt(factor / (fan_in + fan_out))
            coef = random_state.uniform(-bound, bound, (fan_in, fan_out))
            intercept = random_state.uniform(-bound, bound, fan_out)
            self.coefs_.append(coef.astype(dtype, copy=False))
            self.intercepts_.append(intercept.astype(dtype, copy=False))
        if self.early_stopping:  # the best epoch's weights, as scikit-learn keeps them
            self._best_coefs = [c.copy() for c in self.coefs_]
            self._best_intercepts = [i.copy() for i in self.intercepts_]
        for name in (
            "loss_curve_",
            "validation_scores_",
            "validation_loss_curve_",
            "best_loss_",
            "best_validation_score_",
            "learning_rate_",
        ):
            self.__dict__.pop(name, None)
        if self.solver in _STOCHASTIC:
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.validation_loss_curve_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.validation_loss_curve_ = None
                self.best_validation_score_ = None

    @property
    def _optimizer(self):
        """scikit-learn's ``_optimizer`` as far as its tests read it: ``learning_rate``
        (see the class docstring); only after a fit with ``sgd`` or ``adam``."""
        if "learning_rate_" not in self.__dict__:
            raise AttributeError("_optimizer is set by a fit with solver 'sgd' or 'adam'")
        rate = self.learning_rate_
        state = self._net.optimizer_state() if "_net" in self.__dict__ else None
        if state is not None and state["optimizer"] == "adam" and state["step"]:
            step = state["step"]
            rate *= np.sqrt(1 - self.beta_2**step) / (1 - self.beta_1**step)
        return types.SimpleNamespace(learning_rate=rate)

    def engine_optimizer(self):
        """Name of the ``fastbp.MLP.fit`` optimizer that carries out ``solver`` with these
        parameters (``'sgd'``, ``'momentum'``, ``'nesterov'`` or ``'adam'``); None for
        ``lbfgs``, which scipy drives."""
        if self.solver not in _STOCHASTIC:
            return None
        if self.solver == "adam":
            return "adam"
        if self.momentum == 0:
            return "sgd"
        return "nesterov" if self.nesterovs_momentum else "momentum"

    def _validation_set(self, validation, dtype):
        """``fit``'s ``(X_val, y_val, sample_weight_val)`` checked against the training
        data, ``y_val`` as the target matrix; None without ``X_val`` and ``y_val``."""
        X_val, y_val, sw_val = validation or (None, None, None)
        if X_val is None and y_val is None:
            if sw_val is not None:
                raise ValueError("sample_weight_val is given without X_val and y_val")
            return None
        if y_val is None or X_val is None:
            given, missing = ("X_val", "y_val") if y_val is None else ("y_val", "X_val")
            raise ValueError(f"{given} is provided, but {missing} was not provided.")
        if not self.early_stopping or self.solver not in _STOCHASTIC:
            raise ValueError(
                "X_val and y_val are used by early stopping: pass them with "
                "early_stopping=True and solver 'sgd' or 'adam'"
            )
        try:
            X_val = _validate_data(self, X_val, accept_sparse=_SPARSE, reset=False, dtype=dtype)
        except ValueError as error:
            raise ValueError(f"X_val: {error}") from error
        y_val = self._validation_targets(y_val, dtype)
        if y_val.shape[0] != X_val.shape[0]:
            raise ValueError(f"y_val has {y_val.shape[0]} rows but X_val has {X_val.shape[0]}")
        sw_val = _check_sample_weight(sw_val, X_val.shape[0], dtype, "sample_weight_val")
        return X_val, y_val, sw_val

    def _fit_stochastic(self, net, X, y, sample_weight, incremental, random_state, validation=None):
        if not incremental or not hasattr(self, "learning_rate_"):
            net.reset_optimizer()
            self.learning_rate_ = float(self.learning_rate_init)
        early_stopping = self.early_stopping
        if validation is not None:  # given to fit: no split
            X_train, y_train, sw_train = X, y, sample_weight
        elif early_stopping:
            # scikit-learn stratifies on the one column of booleans, which
            # train_test_split turns into text by a join per row (150 ms for 75,000
            # rows); the column as text at once gives the same split and error message.
            one_column = self._is_classifier() and self.n_outputs_ == 1
            stratify = y[:, 0].astype(str) if one_column else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            split = train_test_split(
                *arrays,
                random_state=random_state,
                test_size=self.validation_fraction,
                stratify=stratify,
            )
            X_train, X_val, y_train, y_val = split[:4]
            sw_train, sw_val = split[4:] if sample_weight is not None else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase "
                    "'validation_fraction' or the size of your dataset."
                )
            validation = (X_val, y_val, sw_val)
        else:
            X_train, y_train, sw_train = X, y, sample_weight
            validation = None
        n_samples = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than sample size. It is "
                    "going to be clipped",
                    stacklevel=3,
                )
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        # Checked once here, not by every epoch's call.
        X_fit, Y_fit, sw_fit = self._engine_data(net, X_train, y_train, sw_train)
        self._data_agreed()
        sample_idx = np.arange(n_samples, dtype=np.int64)
        optimizer = self.engine_optimizer()
        try:
            self.n_iter_ = 0
            stop = diverged = False
            while not stop and self.n_iter_ < self.max_iter:
                epochs = self._epochs_per_call(
                    n_samples, one=incremental or early_stopping or self._invscaling()
                )
                orders = None  # each epoch's visiting order, drawn ahead, in one array
                if self.shuffle:
                    orders = np.empty((epochs, n_samples), np.int64)
                    for epoch in range(epochs):
                        sample_idx = orders[epoch] = _shuffled(sample_idx, random_state)
                if diverged:  # scikit-learn's NaN epochs, as below
                    history = [np.nan]
                else:
                    try:
                        history = net.fit(
                            X_fit,
                            Y_fit,
                            sample_weight=sw_fit,
                            epochs=epochs,
                            lr=self.learning_rate_,
                            batch_size=batch_size,
                            shuffle=False,
                            order=None if orders is None else orders.reshape(-1),
                            optimizer=optimizer,
                            momentum=self.momentum,
                            beta1=self.beta_1,
                            beta2=self.beta_2,
                            epsilon=self.epsilon,
                            l2=self.alpha,
                            check_input=False,
                            comm=self._comm,
                            # Without early stopping a diverged fit raises and _fit
                            # restores the state before it: no copy kept here.
                            restore_finite=early_stopping,
                        )
                    except FloatingPointError as error:
                        if not early_stopping:
                            for loss in error.history:  # the epochs that ended finite
                                self._end_epoch(net, loss, n_samples, validation)
                            raise ValueError(
                                "Solver produced non-finite parameter weights. The input data "
                                "may contain large values and need to be preprocessed."
                            ) from error
                        # With early stopping scikit-learn trains on with NaN parameters:
                        # every later epoch has a NaN loss and validation score (which never
                        # counts as no improvement) until max_iter, and the best weights stay
                        # (its issue 29504). One epoch per call, so none ended finite here.
                        diverged = True
                        history = [np.nan]
                for loss in history:
                    stop = self._end_epoch(net, loss, n_samples, validation) or incremental
                    if stop:
                        break
                if self.n_iter_ == self.max_iter and not stop:
                    warnings.warn(
                        "Stochastic Optimizer: Maximum iterations (%d) reached and the "
                        "optimization hasn't converged yet." % self.max_iter,
                        ConvergenceWarning,
                        stacklevel=3,
                    )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        self._read_net()
        if early_stopping:
            self.coefs_ = self._best_coefs
            self.intercepts_ = self._best_intercepts

    def _invscaling(self):
        """Whether the step size changes after every epoch (sgd's ``invscaling``)."""
        return self.solver == "sgd" and self.learning_rate == "invscaling"

    def _epochs_per_call(self, n_samples, one):
        """How many epochs the next call of the engine trains: as many as can pass before
        the stopping rule may fire (it needs ``n_iter_no_change + 1`` epochs without
        improvement, so it can fire at the last of them at the earliest), at most
        ``max_iter`` in all, and 2**17 visited rows, each epoch's order drawn ahead (1 MB
        of orders: with 2**21, 10 epochs of 75,000 rows held 12 MB more than scikit-learn
        at its peak). One
        when every epoch changes something the next one uses (``one``): a validation
        score, an ``invscaling`` step size, a ``partial_fit``."""
        if one:
            return 1
        return max(
            1,
            min(
                self.n_iter_no_change + 1 - self._no_improvement_count,
                self.max_iter - self.n_iter_,
                (1 << 17) // n_samples,
            ),
        )

    def _end_epoch(self, net, loss, n_samples, validation):
        """scikit-learn's bookkeeping after an epoch of mean loss ``loss``; True when its
        stopping rule ends training."""
        self.n_iter_ += 1
        self.loss_ = float(loss)
        self.t_ += n_samples
        self.loss_curve_.append(self.loss_)
        if self.verbose:
            print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
        self._update_no_improvement_count(net, validation)
        if self._invscaling():
            self.learning_rate_ = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t
        if self._no_improvement_count > self.n_iter_no_change:
            if validation is not None:
                msg = (
                    "Validation score did not improve more than tol=%f for %d "
                    "consecutive epochs." % (self.tol, self.n_iter_no_change)
                )
            else:
                msg = (
                    "Training loss did not improve more than tol=%f for %d "
                    "consecutive epochs." % (self.tol, self.n_iter_no_change)
                )
            if self._trigger_stopping(msg):
                return True
            self._no_improvement_count = 0
        return False

    def _trigger_stopping(self, msg):
        """scikit-learn's rule: stop, except that the adaptive schedule of ``sgd``
        first divides the learning rate by 5 until it falls to 1e-6."""
        if self.solver == "adam" or self.learning_rate != "adaptive":
            if self.verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate_ <= 1e-6:
            if self.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate_ /= 5.0
        if self.verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate_)
        return False

    def _update_no_improvement_count(self, net, validation):
        if validation is None:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]
            return
        X_val, y_val, sw_val = validation
        prob = net.forward(X_val)
        if np.isnan(self.loss_):  # diverged: scikit-learn's parameters would be NaN
            prob = np.full_like(prob, np.nan)
        self.validation_loss_curve_.append(_loss_value(self.out_activation_, y_val, prob, sw_val))
        score = self._score_output(prob, y_val, sw_val)
        self.validation_scores_.append(score)
        if self.verbose:
            print("Validation score: %f" % score)
        if score < self.best_validation_score_ + self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        if score > self.best_validation_score_:
            self.best_validation_score_ = score
            self._best_coefs, self._best_intercepts = net.get_params()

    def _engine_data(self, net, X, y, sample_weight):
        """``(X, targets, sample_weight)`` checked once as ``net``'s calls with
        ``check_input=False`` take them: targets as class labels or an array of the
        network's dtype, weights float64 (negative ones allowed, as scikit-learn allows)."""
        X = features(X, net.layer_sizes[0], net.dtype)
        Y, labels = check.targets(
            self._engine_targets(y, net.dtype),
            X.shape[0],
            net.layer_sizes[-1],
            net.loss_name,
            net.dtype,
        )
        if sample_weight is not None:
            sample_weight = check.sample_weights(sample_weight, X.shape[0], allow_negative=True)
        return X, labels if labels.shape[0] else Y, sample_weight

    def _fit_lbfgs(self, net, X, y, sample_weight):
        """scipy's L-BFGS-B over scikit-learn's packing (all weights, then all biases),
        with loss and gradient from the compiled engine."""
        # Checked once here, not by each of L-BFGS-B's calls.
        X, targets, sample_weight = self._engine_data(net, X, y, sample_weight)
        self._data_agreed()
        comm = self._comm
        shapes = [c.shape for c in self.coefs_]
        bounds = np.cumsum([0] + [a * b for a, b in shapes] + [b for _, b in shapes])
        n_layers = len(shapes)
        n_out = self.n_outputs_
        weight_total = X.shape[0] if sample_weight is None else float(sample_weight.sum())

        def unpack(packed):
            for i, (view, bias) in enumerate(zip(net.weights, net.biases, strict=True)):
                view[...] = packed[bounds[i] : bounds[i + 1]].reshape(shapes[i])
                bias[...] = packed[bounds[n_layers + i] : bounds[n_layers + i + 1]]

        def loss_and_gradient(packed):
            unpack(packed)
            loss, dWs, dbs = net.gradients(
                X, targets, sample_weight=sample_weight, l2=self.alpha, check_input=False, comm=comm
            )
            if self.out_activation_ == "identity" and n_out > 1:
                # scikit-learn reports the squared error averaged over the outputs while
                # following the gradient of its sum; L-BFGS-B sees the same pair.
                penalty = (
                    0.5
                    * self.alpha
                    * sum(float(np.dot(w.ravel(), w.ravel())) for w in net.weights)
                    / weight_total
                )
                loss = (loss - penalty) / n_out + penalty
            grad = np.concatenate([g.ravel() for g in dWs] + [g.ravel() for g in dbs])
            return loss, grad.astype(np.float64, copy=False)

        packed = np.hstack([c.ravel() for c in self.coefs_ + self.intercepts_])
        options = {"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol}
        if tuple(int(p) for p in scipy.__version__.split(".")[:2]) < (1, 15):
            options["iprint"] = 1 if self.verbose else -1
        # L-BFGS-B's vector operations call BLAS: with BLAS's own threads waiting for
        # work beside the engine's, the engine's threads waited for a core, and an iris
        # fit took 544 ms instead of 12 (scikit-learn's: 18 ms).
        finished = (0, packed)  # iterations done and their parameters, swapped in at once

        def keep(xk):
            nonlocal finished
            finished = (finished[0] + 1, np.array(xk, dtype=np.float64))

        try:
            with one_blas_thread():
                result = scipy.optimize.minimize(
                    loss_and_gradient,
                    packed,
                    method="L-BFGS-B",
                    jac=True,
                    options=options,
                    callback=keep,
                )
        except KeyboardInterrupt:
            # As the stochastic solvers do: keep what the finished iterations reached.
            iterations, parameters = finished
            if iterations == 0:
                raise
            warnings.warn("Training interrupted by user.", stacklevel=4)
            self.n_iter_ = iterations
            self.loss_ = float(loss_and_gradient(parameters)[0])
            self._read_net()
            return
        self.n_iter_ = min(result.nit, self.max_iter)
        if result.status != 0:
            message = (
                f"lbfgs failed to converge after {self.n_iter_} iteration(s) "
                f"(status={result.status}):\n{result.message}\n"
            )
            if self.n_iter_ == self.max_iter:
                message += (
                    "\nIncrease the number of iterations to improve the convergence "
                    f"(max_iter={self.max_iter})."
                )
            message += (
                "\nYou might also want to scale the data as shown in:\n"
                "    https://scikit-learn.org/stable/modules/preprocessing.html"
            )
            warnings.warn(message, ConvergenceWarning, stacklevel=4)
        self.loss_ = float(result.fun)
        unpack(result.x)
        self._read_net()

    # ------------------------------------------------------------ prediction

    def _forward(self, X):
        """Output activations ``(n_samples, n_outputs)`` of the fitted network."""
        if not hasattr(self, "coefs_"):  # check_is_fitted's test, without its 5 us
            check_is_fitted(self, "coefs_")
        dtype = self.coefs_[0].dtype
        X = streaming.mapped(X, dtype)
        if self._valid_as_is(X, dtype):
            return self._sync_net(dtype, self._fitted_device()).forward(X, check_input=False)
        X = _validate_data(self, X, accept_sparse=_SPARSE, reset=False, dtype=dtype)
        return self._sync_net(dtype, self._fitted_device()).forward(X)

    def _valid_as_is(self, X, dtype):
        """Whether ``validate_data(self, X, reset=False, dtype=dtype)`` would return ``X``
        itself, with no warning, and the network may take it unchecked: a writeable
        C-contiguous ndarray of ``dtype`` with ``n_features_in_`` columns, at least one
        row and finite values, while the fit saw no feature names. It costs 1-2 us where
        ``validate_data`` took 130 us for ten rows; any other ``X`` takes its path."""
        return (
            type(X) is np.ndarray
            and X.dtype == dtype
            and X.ndim == 2
            and X.flags.carray
            and X.flags.writeable
            and X.shape[0] > 0
            and X.shape[1] == getattr(self, "n_features_in_", None)
            and not hasattr(self, "feature_names_in_")
            and bool(np.isfinite(X).all())
        )

    def _fitted_device(self):
        return getattr(self, "_fit_device", "cpu")

    # ------------------------------------------------------------ the fitted network

    def to_network(self):
        """The fitted network as a new ``fastbp.MLP``: ``coefs_`` and ``intercepts_``,
        the engine's activations, loss and scikit-learn's loss scale, the fit's dtype and
        device, a fresh optimizer. Save it with ``fastbp.persistence``, or time and train
        it on its own; changing it leaves the estimator as it was."""
        check_is_fitted(self, "coefs_")
        fitted = self._sync_net(self.coefs_[0].dtype, self._fitted_device())
        net = MLP(
            fitted.layer_sizes,
            fitted.activations,
            fitted.loss_name,
            dtype=fitted.dtype,
            device=fitted.device,
            seed=0,
        )
        net.loss_scale = fitted.loss_scale
        for view, value in zip(
            net.weights + net.biases, fitted.weights + fitted.biases, strict=True
        ):
            view[...] = value
        return net

    def optimizer_state(self):
        """A copy of the optimizer's state after the last ``sgd`` or ``adam`` training:
        ``fastbp.MLP.optimizer_state`` of the fitted network (momentum or Adam's moments
        over its flat parameters, updates taken), which ``to_network()``'s network takes
        with ``load_optimizer_state`` to train on where the estimator stopped."""
        check_is_fitted(self, "coefs_")
        return self._sync_net(self.coefs_[0].dtype, self._fitted_device()).optimizer_state()

    def engine_targets(self, y):
        """Targets ``y`` (labels, or an indicator matrix for multi-label; values for a
        regressor) as the network of ``to_network`` trains on them: int64 class indices
        ``(n_samples,)`` for a softmax output, else ``(n_samples, n_outputs)`` in the
        fitted dtype."""
        check_is_fitted(self, "coefs_")
        return self._engine_targets(self._target_matrix(np.asarray(y)), self.coefs_[0].dtype)

    def validation_loss(self, X, y, sample_weight=None):
        """scikit-learn's loss of the fitted model on ``X``, ``y`` without the L2 term,
        weighted by ``sample_weight``: what ``validation_loss_curve_`` records for the
        held-out data after each epoch, here for data of the caller's choice."""
        prob = self._forward(X)
        y = self._target_matrix(np.asarray(y))
        if y.shape[0] != prob.shape[0]:
            raise ValueError(f"y has {y.shape[0]} rows but X has {prob.shape[0]}")
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, prob.shape[0], prob.dtype)
        return _loss_value(self.out_activation_, y, prob, sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multioutput": True, "multilabel": True}


_PARAMETER_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default=(100,)
        Width of each hidden layer.
    activation : {'identity', 'logistic', 'tanh', 'relu'}, default='relu'
        Activation of the hidden layers.
    solver : {'lbfgs', 'sgd', 'adam'}, default='adam'
        ``sgd`` and ``adam`` train mini-batches in the compiled engine, one engine call
        per epoch; ``lbfgs`` runs scipy's L-BFGS-B on the compiled full-batch loss and
        gradient. A KeyboardInterrupt keeps the last finished epoch or iteration (with
        ``lbfgs``, once one has finished) and warns, as scikit-learn's stochastic solvers do.
    alpha : float, default=0.0001
        L2 penalty: ``0.5 * alpha * sum(W**2)`` per batch, divided like the data term.
    batch_size : int or 'auto', default='auto'
        Mini-batch size; ``'auto'`` is ``min(200, n_samples)``.
    learning_rate : {'constant', 'invscaling', 'adaptive'}, default='constant'
        Schedule of ``sgd``: constant, ``learning_rate_init / (t + 1) ** power_t`` after
        each epoch (``t`` counts samples seen), or divided by 5 whenever
        ``n_iter_no_change`` epochs fail to improve by ``tol``.
    learning_rate_init : float, default=0.001
        Initial learning rate of ``sgd`` and ``adam``.
    power_t : float, default=0.5
        Exponent of the ``invscaling`` schedule.
    max_iter : int, default=200
        Epochs of ``sgd``/``adam``; iterations of ``lbfgs``.
    shuffle : bool, default=True
        Whether to draw a new sample order each epoch from ``random_state``.
    random_state : int, RandomState instance or None, default=None
        Source of the initial weights, the early-stopping split and the sample order,
        drawn in scikit-learn's order, so both libraries start and shuffle alike.
    tol : float, default=1e-4
        Improvement of the loss (or validation score) that counts as progress; the
        gradient tolerance of ``lbfgs``.
    verbose : bool or int, default=False
        Print the loss after every epoch.
    warm_start : bool, default=False
        Continue from the fitted weights instead of initializing anew.
    momentum : float, default=0.9
        Momentum of ``sgd``, in ``[0, 1)``.
    nesterovs_momentum : bool, default=True
        Use Nesterov's momentum with ``sgd``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data (or score ``fit``'s ``X_val``,
        ``y_val``) and stop when its score stops improving; the best weights are kept.
    validation_fraction : float, default=0.1
        Share of the data held out for early stopping, unless ``fit`` is given ``X_val``.
    beta_1, beta_2 : float, default=0.9, 0.999
        Decay rates of Adam's first and second moments.
    epsilon : float, default=1e-8
        Adam's denominator offset.
    n_iter_no_change : int, default=10
        Epochs without improvement by ``tol`` before stopping.
    max_fun : int, default=15000
        Most loss evaluations of ``lbfgs``.
    dtype : float32, float64 or None, default=None
        Precision of the parameters and of all arithmetic; data is converted to it. None
        follows the data as scikit-learn does: float32 ``X`` trains in float32, any other
        in float64; ``partial_fit`` and ``warm_start`` keep the dtype of the first fit.
    device : {'cpu', 'cuda'}, default='cpu'
        Where the engine runs (``fastbp.MLP``'s ``device``).

    Attributes
    ----------
    coefs_, intercepts_ : list of ndarray
        Weights ``(fan_in, fan_out)`` and biases ``(fan_out,)`` of each layer.
    loss_ : float
        Loss of the last epoch (or of the ``lbfgs`` solution), L2 term included.
    best_loss_ : float or None
        Lowest training loss; None with early stopping.
    loss_curve_ : list of float
        Loss of every epoch (``sgd``/``adam``).
    validation_scores_ : list of float or None
        Score on the held-out data after every epoch, with early stopping.
    validation_loss_curve_ : list of float or None
        Loss (without the L2 term) on the held-out data (or ``X_val``, ``y_val``) after
        every epoch, with early stopping; compare with ``loss_curve_`` to see over-fitting.
    best_validation_score_ : float or None
        Best of ``validation_scores_``.
    learning_rate_ : float
        Step size of the schedule (``sgd``/``adam``), as the next epoch or
        ``partial_fit`` uses it: ``learning_rate_init``, after ``invscaling``'s update or
        ``adaptive``'s divisions by 5; Adam scales it by its bias correction each step.
    _optimizer
        For code written against scikit-learn's private optimizer: its
        ``learning_rate``, the step of the last update as scikit-learn reports it
        (``learning_rate_``, times Adam's bias correction). Read only; prefer
        ``learning_rate_``.
    t_ : int
        Training samples seen.
    n_iter_ : int
        Epochs (or ``lbfgs`` iterations) of the last fit.
    n_layers_, n_outputs_ : int
        Layers including input and output; output units.
    out_activation_ : str
        Output activation.
    n_features_in_ : int
        Number of features seen in fit.
    feature_names_in_ : ndarray of str
        Feature names, when X had string column names.
"""


# ---------------------------------------------------------------- the estimators


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = (
        """Multilayer perceptron classifier (log loss) trained by fastbp's engine.

    A drop-in replacement of ``sklearn.neural_network.MLPClassifier``: softmax output for
    several classes, a logistic output per column for two classes and for multi-label
    targets.
"""
        + _PARAMETER_DOC
        + """    classes_ : ndarray or list of ndarray
        Class labels.
"""
    )

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        dtype=None,
        device="cpu",
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            loss="log_loss",
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
            dtype=dtype,
            device=device,
        )

    def _is_classifier(self):
        return True

    def _output_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _partial_fit_classes(self, y, classes):
        """scikit-learn's first-call rule: ``classes`` is required the first time and
        must not change later."""
        if getattr(self, "classes_", None) is None and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if classes is None:
            return
        if getattr(self, "classes_", None) is not None:
            if not np.array_equal(self.classes_, unique_labels(classes)):
                raise ValueError(
                    f"`classes={classes!r}` is not the same as on last call to "
                    f"partial_fit, was: {self.classes_!r}"
                )
            return
        self.classes_ = unique_labels(classes)
        self._label_binarizer = LabelBinarizer()
        if type_of_target(y).startswith("multilabel"):
            self._label_binarizer.fit(y)
        else:
            self._label_binarizer.fit(classes)

    def _validate_input(self, X, y, incremental, reset, dtype):
        X, y = _validate_data(
            self, X, y, accept_sparse=_SPARSE, multi_output=True, dtype=dtype, reset=reset
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in "
                        f"the previous call to fit. Previously got {self.classes_}, `y` has "
                        f"{classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has "
                    f"{self.classes_}. 'y' has {classes}."
                )
        return X, self._binarized(y)

    def _binarized(self, y):
        """``self._label_binarizer.transform(y).astype(bool)``, for 1-D labels of a binary
        or multiclass fit computed directly: the transform's checks and its sparse matrix
        took 0.5 ms of a 200-row partial_fit. Labels it does not know take its path."""
        binarizer = self._label_binarizer
        classes = binarizer.classes_
        if y.ndim == 1 and binarizer.y_type_ in ("binary", "multiclass") and len(classes) > 1:
            try:
                index = np.searchsorted(classes, y)
                known = (index < len(classes)).all() and (
                    classes[np.minimum(index, len(classes) - 1)] == y
                ).all()
            except TypeError:  # labels that do not compare with the classes
                known = False
            if known and binarizer.y_type_ == "binary":
                return (index == 1).reshape(-1, 1)
            if known:
                onehot = np.zeros((y.shape[0], len(classes)), bool)
                onehot[np.arange(y.shape[0]), index] = True
                return onehot
        return binarizer.transform(y).astype(bool)

    def _target_matrix(self, y):
        """Labels ``y`` as the 0/1 matrix the outputs are compared with."""
        return self._binarized(y)

    def _validation_targets(self, y_val, dtype):
        """``y_val`` as the 0/1 target matrix: labels among ``classes_``, or an indicator
        matrix with the training targets' columns."""
        y_val = np.asarray(y_val)
        if y_val.ndim == 2 and y_val.shape[1] == 1:
            y_val = y_val.ravel()
        if self._label_binarizer.y_type_.startswith("multilabel"):
            if y_val.ndim != 2 or y_val.shape[1] != self.n_outputs_:
                raise ValueError(
                    f"y_val must be an indicator matrix with {self.n_outputs_} columns, "
                    f"as y; got shape {y_val.shape}"
                )
        elif y_val.ndim != 1:
            raise ValueError(f"y_val must hold one label per row; got shape {y_val.shape}")
        else:
            unknown = np.setdiff1d(unique_labels(y_val), self.classes_)
            if len(unknown):
                raise ValueError(f"y_val has labels not in classes_: {unknown}")
        return self._binarized(y_val)

    def _engine_targets(self, y, dtype):
        """Class indices for a softmax output, else 0/1 targets per output column."""
        if self.out_activation_ == "softmax":
            return np.argmax(y, axis=1).astype(np.int64)
        return y.astype(dtype)

    def _score_output(self, prob, y, sample_weight):
        """``accuracy_score`` of the labels of ``prob`` against the binarized targets
        ``y``, compared in the binarized form (the class of the largest output, or each
        output above 0.5): the same value without its input checks, which took 0.7 ms of
        an early-stopping epoch."""
        if not np.isfinite(prob).all():
            return np.nan
        if self._label_binarizer.y_type_ == "multiclass":
            correct = prob.argmax(axis=1) == y.argmax(axis=1)
        else:  # binary (one output) or multi-label: LabelBinarizer's threshold
            correct = ((prob > 0.5) == (y > 0.5)).all(axis=1)
        return float(np.average(correct, weights=sample_weight))

    def _labels(self, prob):
        """``self._label_binarizer.inverse_transform`` of the outputs, in its arithmetic
        (the class of the largest output, or each output above 0.5) without its checks,
        which took as long as a forward pass of ten rows."""
        binarizer = self._label_binarizer
        classes = binarizer.classes_
        if binarizer.y_type_ == "multiclass":
            return classes.take(prob.argmax(axis=1), mode="clip")
        if binarizer.y_type_ == "binary" and len(classes) > 1:
            return classes[(prob.ravel() > 0.5).astype(int)]
        if self.n_outputs_ == 1:
            prob = prob.ravel()
        return binarizer.inverse_transform(prob)

    def fit(
        self,
        X,
        y,
        sample_weight=None,
        *,
        X_val=None,
        y_val=None,
        sample_weight_val=None,
        comm=None,
    ):
        """Train on ``X`` ``(n_samples, n_features)`` and labels ``y`` ``(n_samples,)``
        (or a 0/1 indicator matrix ``(n_samples, n_labels)`` for multi-label), each
        sample weighted by ``sample_weight`` ``(n_samples,)``. With ``early_stopping``,
        ``X_val``, ``y_val`` (and ``sample_weight_val``) are the held-out data in place
        of the ``validation_fraction`` split, as in HistGradientBoosting. ``comm`` trains
        over MPI as ``fastbp.MLP.fit`` does: every process calls ``fit`` with the same
        arguments and ends with the same model, that of one process. Returns self."""
        validation = (X_val, y_val, sample_weight_val)
        return self._fit(X, y, sample_weight, incremental=False, validation=validation, comm=comm)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None, *, comm=None):
        """One epoch over ``X``, ``y``, continuing the optimizer's state; ``classes``
        (every label the model will see) is required on the first call; ``comm`` as in
        ``fit``. Returns self."""
        return self._fit(
            X, y, sample_weight=sample_weight, incremental=True, classes=classes, comm=comm
        )

    def predict(self, X):
        """Class labels ``(n_samples,)``, or an indicator matrix for multi-label."""
        return self._labels(self._forward(X))

    def predict_proba(self, X):
        """Class probabilities ``(n_samples, n_classes)`` in the order of ``classes_``."""
        prob = self._forward(X)
        if self.n_outputs_ == 1:
            prob = prob.ravel()
        if prob.ndim == 1:
            return np.vstack([1 - prob, prob]).T
        return prob

    def predict_log_proba(self, X):
        """Logarithm of ``predict_proba``."""
        prob = self.predict_proba(X)
        return np.log(prob, out=prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = (
        """Multilayer perceptron regressor (squared error or Poisson) trained by fastbp's engine.

    A drop-in replacement of ``sklearn.neural_network.MLPRegressor``; several targets are
    fitted at once.

    loss : {'squared_error', 'poisson'}, default='squared_error'
        Half the squared error with an identity output, or half the Poisson deviance
        with an exponential output (``out_activation_ = 'exp'``, scikit-learn's log
        link) for non-negative targets such as counts. ``score`` is ``r2_score`` for both.
"""
        + _PARAMETER_DOC
    )

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        dtype=None,
        device="cpu",
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            loss=loss,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
            dtype=dtype,
            device=device,
        )

    def _check_params(self):
        check.choice(self.loss, "loss", ("squared_error", "poisson"))
        return super()._check_params()

    def _is_classifier(self):
        return False

    def _output_activation(self):
        return "exp" if self.loss == "poisson" else "identity"

    def _partial_fit_classes(self, y, classes):
        pass

    def _validate_input(self, X, y, incremental, reset, dtype):
        X, y = _validate_data(
            self,
            X,
            y,
            accept_sparse=_SPARSE,
            multi_output=True,
            y_numeric=True,
            dtype=dtype,
            reset=reset,
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        _check_poisson_targets(self.loss, y, "y")
        return X, y

    def _target_matrix(self, y):
        """Targets ``y`` as a matrix ``(n_samples, n_outputs)``."""
        return y.reshape(-1, 1) if y.ndim == 1 else y

    def _validation_targets(self, y_val, dtype):
        """``y_val`` as a finite ``dtype`` matrix with the training targets' columns."""
        y_val = np.asarray(y_val)
        y_val = check.numeric_array(y_val, "y_val", dtype, 1 if y_val.ndim == 1 else 2)
        y_val = self._target_matrix(y_val)
        if y_val.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y_val must have {self.n_outputs_} target column(s), as y; got shape {y_val.shape}"
            )
        _check_poisson_targets(self.loss, y_val, "y_val")
        return y_val

    def _engine_targets(self, y, dtype):
        return np.ascontiguousarray(y, dtype=dtype)

    def _score_output(self, prob, y, sample_weight):
        """``r2_score`` of ``prob`` against ``y`` (outputs averaged uniformly, a
        constant target scoring 1 if met exactly, else 0), in its own arithmetic and
        dtype, without its input checks: 0.25 ms of an early-stopping epoch."""
        if not np.isfinite(prob).all():
            return np.nan
        if prob.shape[0] < 2:  # scikit-learn warns and returns NaN
            return float(r2_score(y, prob, sample_weight=sample_weight))
        dtype = np.result_type(y, prob, *(() if sample_weight is None else (sample_weight,)))
        y, prob = y.astype(dtype, copy=False), prob.astype(dtype, copy=False)
        weight = 1.0
        if sample_weight is not None:
            sample_weight = sample_weight.astype(dtype, copy=False)
            weight = sample_weight[:, None]
        numerator = np.sum(weight * (y - prob) ** 2, axis=0)
        denominator = np.sum(
            weight * (y - np.average(y, axis=0, weights=sample_weight)) ** 2, axis=0
        )
        scores = np.ones(y.shape[1], dtype)
        valid = (numerator != 0) & (denominator != 0)
        scores[valid] = 1 - numerator[valid] / denominator[valid]
        scores[(numerator != 0) & (denominator == 0)] = 0.0
        return float(np.average(scores))

    def fit(
        self,
        X,
        y,
        sample_weight=None,
        *,
        X_val=None,
        y_val=None,
        sample_weight_val=None,
        comm=None,
    ):
        """Train on ``X`` ``(n_samples, n_features)`` and targets ``y`` ``(n_samples,)``
        or ``(n_samples, n_targets)``, each sample weighted by ``sample_weight``
        ``(n_samples,)``. With ``early_stopping``, ``X_val``, ``y_val`` (and
        ``sample_weight_val``) are the held-out data in place of the
        ``validation_fraction`` split, as in HistGradientBoosting. ``comm`` trains over
        MPI as ``fastbp.MLP.fit`` does: every process calls ``fit`` with the same
        arguments and ends with the same model, that of one process. Returns self."""
        validation = (X_val, y_val, sample_weight_val)
        return self._fit(X, y, sample_weight, incremental=False, validation=validation, comm=comm)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, *, comm=None):
        """One epoch over ``X``, ``y``, continuing the optimizer's state; ``comm`` as in
        ``fit``. Returns self."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True, comm=comm)

    def predict(self, X):
        """Predictions ``(n_samples,)``, or ``(n_samples, n_targets)`` for several targets."""
        out = self._forward(X)
        return out.ravel() if out.shape[1] == 1 else out
