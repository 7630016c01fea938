"""Checks of everything a user hands to fastbp, raising errors that name the argument.

Every function here either returns a clean value or raises before anything is changed,
so a rejected call always leaves the network as it was.
"""

import math
import mmap
import numbers
import os
import sys
import warnings

import numpy as np

ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax", "exp")
#: Activations of the output layer only: softmax, and exp (the log link of ``poisson``).
OUTPUT_ONLY = ("softmax", "exp")
#: The names a hidden layer may take.
HIDDEN_ACTIVATIONS = frozenset(ACTIVATIONS) - set(OUTPUT_ONLY)
LOSSES = ("mse", "half_mse", "bce", "cce", "poisson")
REDUCTIONS = ("mean", "sum")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")
DEVICES = ("cpu", "cuda")
DTYPES = (np.float32, np.float64)
FLOAT32, FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)


def choice(value, name, allowed):
    """``value`` if it is one of the ``allowed`` strings, else a ValueError naming ``name``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def flag(value, name):
    """``value`` as a bool, refusing anything but True/False (``"no"`` would be truthy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def seed(value):
    """None or a non-negative integer."""
    if value is None or (type(value) is int and value >= 0):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise TypeError(f"seed must be None or a non-negative integer; got {value!r}")
    return int(value)


def uint64(value, name):
    """``value`` as an int in ``0 .. 2**64 - 1``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer in 0 .. 2**64 - 1; got {value!r}")
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must be in 0 .. 2**64 - 1; got {value!r}")
    return int(value)


def positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer; got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def positive_float(value, name, allow_zero=False):
    # Plain floats skip the abstract-class checks: fit checks six of them on every call.
    if type(value) is not float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number; got {value!r}")
        value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a finite {kind} number; got {value!r}")
    return value


def file_path(value, name):
    """``value`` as a str path to a file (it need not exist), not to a folder."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike); got {value!r}")
    value = os.fspath(value)
    if not isinstance(value, str) or not value or os.path.isdir(value):
        raise ValueError(f"{name} must be the path of a file; got {value!r}")
    return value


def layer_sizes(sizes):
    """Tuple of at least two positive integers."""
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
        raise TypeError(f"layer_sizes must be a sequence of positive integers; got {sizes!r}")
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes needs at least an input and an output size; got {sizes!r}")
    checked = tuple(sizes)
    if set(map(type, checked)) == {int} and min(checked) > 0:  # the usual plain ints
        return checked
    return tuple(positive_int(s, f"layer_sizes[{i}]") for i, s in enumerate(checked))


def activations(names, n_layers):
    """One activation name per weight layer; softmax and exp only on the output layer."""
    if isinstance(names, str):
        names = [names] * n_layers
    try:
        names = tuple(names)
    except TypeError:
        raise TypeError(
            f"activations must be a name or a sequence of names; got {names!r}"
        ) from None
    if len(names) != n_layers:
        raise ValueError(
            f"activations must be one name or {n_layers} names (one per weight layer); "
            f"got {len(names)}"
        )
    if set(map(type, names)) == {str} and HIDDEN_ACTIVATIONS.issuperset(names[:-1]):
        if names[-1] in ACTIVATIONS:  # the usual plain names, softmax or exp last at most
            return names
    for i, name in enumerate(names):
        choice(name, f"activations[{i}]", ACTIVATIONS)
        if name in OUTPUT_ONLY and i != n_layers - 1:
            raise ValueError(f"activations[{i}]: {name} is allowed on the output layer only")
    return names


#: Output activations that can leave [0, 1], with their ranges.
UNBOUNDED_OUTPUTS = {
    "identity": "all reals",
    "tanh": "(-1, 1)",
    "relu": "[0, inf)",
    "leaky_relu": "all reals",
    "exp": "(0, inf)",
}


def bce_outputs(loss, output_activation):
    """Warn when binary cross-entropy meets an output activation that can leave [0, 1]:
    outputs there are clipped to [eps, 1 - eps] and the loss and its gradient are taken
    at the clipped value, so training can stall at a constant loss or take huge
    steps."""
    if loss == "bce" and output_activation in UNBOUNDED_OUTPUTS:
        warnings.warn(
            f"loss='bce' needs outputs in [0, 1], but the output activation "
            f"{output_activation!r} ranges over {UNBOUNDED_OUTPUTS[output_activation]}: "
            "outputs outside [0, 1] are clipped to [eps, 1 - eps], where the loss and its "
            "gradient are those of the clipped value. "
            "Use 'sigmoid' (or 'softmax') on the output layer.",
            UserWarning,
            stacklevel=3,
        )


def poisson_output(loss, output_activation):
    """Refuse ``poisson`` on any output but ``exp``: the half Poisson deviance needs positive
    predictions, which its log link gives."""
    if loss == "poisson" and output_activation != "exp":
        raise ValueError(
            f"loss='poisson' needs the output activation 'exp' (its log link); "
            f"got activations[-1]={output_activation!r}"
        )


def dtype(value):
    if value is np.float64 or value is FLOAT64:
        return FLOAT64
    if value is np.float32 or value is FLOAT32:
        return FLOAT32
    if value is None:
        raise TypeError("dtype must be float32 or float64; got None")
    try:
        resolved = np.dtype(value)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64; got {value!r}") from None
    if resolved not in (FLOAT32, FLOAT64):
        raise ValueError(f"dtype must be float32 or float64; got {resolved}")
    return resolved


def as_array(value, name):
    """``np.asarray(value)``; nested sequences of unequal lengths raise a ValueError that
    names ``name`` instead of NumPy's anonymous one."""
    try:
        return np.asarray(value)
    except ValueError as error:
        raise ValueError(f"{name} must be a rectangular array of numbers: {error}") from None


def numeric_array(value, name, dtype, ndim):
    """``value`` as a C-contiguous ``dtype`` array of ``ndim`` dimensions, finite and non-empty.

    Floats of the other precision, integers and booleans are converted; complex, object
    and string data are refused."""
    array = as_array(value, name)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers; got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional; got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if not (array.dtype == dtype and array.flags.c_contiguous) and memory_mapped(array):
        raise ValueError(
            f"{name} is a memory-mapped {array.dtype} array"
            + ("" if array.flags.c_contiguous else " in Fortran order")
            + f"; using it as C-ordered {np.dtype(dtype).name} would copy it whole into "
            f"memory: store it that way (np.save(path, np.ascontiguousarray({name}, "
            f"np.{np.dtype(dtype).name}))) or load it without mmap_mode"
        )
    array = np.ascontiguousarray(array, dtype=dtype)
    if not all_finite(array):
        raise ValueError(f"{name} contains NaN or infinity")
    return array


def memory_mapped(array):
    """Whether ``array`` views a memory-mapped file (``np.load(..., mmap_mode=...)``)."""
    while array is not None:
        if isinstance(array, (np.memmap, mmap.mmap)):
            return True
        array = getattr(array, "base", None)
    return False


#: Elements checked at a time: a memory-mapped array is read in pieces, never held whole.
_FINITE_PIECE = 1 << 20


def all_finite(array):
    """Whether every value of a float or integer array is finite. For a large array, a sum
    reads the data once without allocating; only a sum that overflows or is NaN is
    followed by the exact check, piece by piece."""
    if array.dtype.kind in "iub":
        return True
    if array.size <= _FINITE_PIECE:
        return bool(np.isfinite(array).all())
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(array.sum(dtype=np.float64)):
            return True
    flat = array.reshape(-1)
    for start in range(0, flat.shape[0], _FINITE_PIECE):
        if not np.isfinite(flat[start : start + _FINITE_PIECE]).all():
            return False
    return True


def is_sparse(value):
    """Whether ``value`` is a scipy.sparse matrix or array (scipy is not imported for it:
    without ``scipy.sparse`` loaded nothing can be one)."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(value)


#: The scipy.sparse formats fastbp takes; CSC is converted to CSR once (``tocsr``).
SPARSE_FORMATS = ("csr", "csc")


def _writeable(array):
    """``array``, or a copy where it is read-only: the engine compiles one kernel per
    array type, and read-only arrays would be another."""
    return array if array.flags.writeable else array.copy()


def sparse_features(X, n_in, dtype, name="X"):
    """CSR or CSC input as the tuple ``(indptr, indices, data, shape)`` (the fields of the
    engine's ``SparseRows``, which this module does not import: ``fastbp.reference`` uses
    it without the engine): int64 ``indptr`` and ``indices``, ``data`` in ``dtype``,
    finite, column indices in range; CSC is converted to CSR first (one copy, scipy's
    ``tocsr``). The rows are never densified. Other sparse formats are refused (convert
    them with ``tocsr()``)."""
    if X.format not in SPARSE_FORMATS:
        raise TypeError(
            f"{name}: sparse input must be CSR or CSC (csr_matrix, csr_array, csc_matrix, "
            f"csc_array); got {type(X).__name__} (format {X.format!r}): convert it with "
            f"{name}.tocsr()"
        )
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-dimensional; got shape {X.shape}")
    if X.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers; got dtype {X.dtype}")
    n, n_cols = X.shape
    if n == 0 or n_cols == 0:
        raise ValueError(f"{name} is empty (shape {X.shape})")
    if n_cols != n_in:
        raise ValueError(f"{name} has {n_cols} columns but the network takes {n_in} inputs")
    if X.format == "csc":
        X = X.tocsr()
    indptr = np.asarray(X.indptr)
    if indptr.shape != (n + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise ValueError(f"{name}: its CSR row pointers (indptr) are malformed")
    nnz = int(indptr[-1])
    indices, data = np.asarray(X.indices), np.asarray(X.data)
    if indices.shape[0] < nnz or data.shape[0] < nnz:
        raise ValueError(f"{name}: its CSR arrays hold fewer entries than indptr says")
    indices, data = indices[:nnz], data[:nnz]
    if nnz and (indices.min() < 0 or indices.max() >= n_cols):
        raise ValueError(f"{name}: its CSR column indices leave 0..{n_cols - 1}")
    data = np.ascontiguousarray(data, dtype=dtype)
    if not np.isfinite(data).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return (
        _writeable(np.ascontiguousarray(indptr, dtype=np.int64)),
        _writeable(np.ascontiguousarray(indices, dtype=np.int64)),
        _writeable(data),
        (n, n_cols),
    )


def features(X, n_in, dtype):
    """Dense ``X`` as a checked C-contiguous ``dtype`` array; sparse ``X`` is
    ``sparse_features``' job (``fastbp.network.features`` chooses)."""
    X = numeric_array(X, "X", dtype, 2)
    if X.shape[1] != n_in:
        raise ValueError(f"X has {X.shape[1]} columns but the network takes {n_in} inputs")
    return X


def targets(Y, n_samples, n_out, loss, dtype):
    """Targets as ``(Y, labels)``: a 2-D float array, or for ``cce`` a 1-D array (or one
    column) of integer class labels (then ``Y`` is an empty placeholder)."""
    if is_sparse(Y):
        raise TypeError("Y: sparse targets are not supported; pass a dense array (Y.toarray())")
    raw = as_array(Y, "Y")
    if raw.dtype.kind not in "fiub":
        raise TypeError(f"Y must hold real numbers; got dtype {raw.dtype}")
    if loss == "cce" and raw.ndim == 2 and raw.shape[1] == 1 < n_out:
        raw = raw[:, 0]  # a column of class labels (as a table's target column reads)
    if loss == "cce" and raw.ndim == 1:
        if raw.dtype.kind == "f":
            if not np.isfinite(raw).all() or np.any(raw != np.round(raw)):
                raise ValueError("Y: 1-D targets for cce must be integer class labels")
        labels = numeric_array(raw, "Y", np.int64, 1)
        if labels.shape[0] != n_samples:
            raise ValueError(f"Y has {labels.shape[0]} labels but X has {n_samples} rows")
        if labels.min() < 0 or labels.max() >= n_out:
            raise ValueError(f"Y: class labels must lie in 0..{n_out - 1}")
        return np.empty((0, n_out), dtype), labels
    if raw.ndim == 1 and n_out == 1:
        raw = raw.reshape(-1, 1)
    Y = numeric_array(raw, "Y", dtype, 2)
    if Y.shape != (n_samples, n_out):
        raise ValueError(
            f"Y must have shape ({n_samples}, {n_out}) to match X and the output layer; "
            f"got {Y.shape}"
        )
    if loss == "bce" and (Y.min() < 0 or Y.max() > 1):
        raise ValueError("Y: bce targets must lie in [0, 1]")
    if loss == "cce" and Y.min() < 0:
        raise ValueError("Y: cce targets must be non-negative (one-hot or class probabilities)")
    if loss == "poisson" and Y.min() < 0:
        raise ValueError("Y: poisson targets must be non-negative (counts or rates)")
    return Y, np.empty(0, np.int64)


def sample_weights(weights, n_samples, allow_negative=False):
    """Weights as a float64 ``(n_samples,)`` array: non-negative with a positive sum, or
    with ``allow_negative`` (scikit-learn's estimators take negative weights) any finite
    values whose sum is not zero, the divisor of every weighted mean."""
    if weights is None:
        return np.empty(0, np.float64)
    weights = numeric_array(weights, "sample_weight", np.float64, 1)
    if weights.shape[0] != n_samples:
        raise ValueError(f"sample_weight has {weights.shape[0]} entries but X has {n_samples} rows")
    if allow_negative:
        if weights.sum() == 0:
            raise ValueError("sample_weight must not sum to zero")
    elif weights.min() < 0 or weights.sum() <= 0:
        raise ValueError("sample_weight must be non-negative with a positive sum")
    return weights


def parameters(weights, biases, sizes, has_bias, dtype):
    """Validated copies of user weights ``(fan_in, fan_out)`` and biases ``(fan_out,)``."""
    n_layers = len(sizes) - 1
    if isinstance(weights, np.ndarray) or not hasattr(weights, "__len__"):
        raise TypeError("weights must be a list with one array per weight layer")
    if len(weights) != n_layers:
        raise ValueError(f"weights must hold {n_layers} arrays; got {len(weights)}")
    checked_w = []
    for i, w in enumerate(weights):
        w = numeric_array(w, f"weights[{i}]", dtype, 2)
        if w.shape != (sizes[i], sizes[i + 1]):
            raise ValueError(
                f"weights[{i}] must have shape {(sizes[i], sizes[i + 1])} (fan_in, fan_out); "
                f"got {w.shape}"
            )
        checked_w.append(w)
    if not has_bias:
        if biases is not None:
            raise ValueError("biases given to a network built with bias=False")
        return checked_w, None
    if biases is None:
        return checked_w, None
    if isinstance(biases, np.ndarray) or not hasattr(biases, "__len__"):
        raise TypeError("biases must be a list with one array per weight layer")
    if len(biases) != n_layers:
        raise ValueError(f"biases must hold {n_layers} arrays; got {len(biases)}")
    checked_b = []
    for i, b in enumerate(biases):
        b = as_array(b, f"biases[{i}]")
        if b.ndim == 2 and b.shape[0] == 1:
            b = b.reshape(-1)
        b = numeric_array(b, f"biases[{i}]", dtype, 1)
        if b.shape != (sizes[i + 1],):
            raise ValueError(f"biases[{i}] must have shape ({sizes[i + 1]},); got {b.shape}")
        checked_b.append(b)
    return checked_w, checked_b


def permutations(order, n, epochs):
    """``order``, a permutation of 0..n-1 or one per epoch (shape ``(epochs, n)``), as a
    flat int64 array: the engine reads an epoch's permutation from ``epoch * n`` on."""
    array = as_array(order, "order")
    if array.dtype.kind not in "iu" or array.shape not in ((n,), (epochs, n)):
        raise ValueError(
            f"order must be a permutation of 0..{n - 1}, or one per epoch "
            f"(integers, shape ({n},) or ({epochs}, {n}))"
        )
    array = np.ascontiguousarray(array, dtype=np.int64)
    if not (np.sort(array.reshape(-1, n), axis=1) == np.arange(n)).all():
        raise ValueError(
            f"order must be a permutation of 0..{n - 1}"
            + (" in every row" if array.ndim == 2 else "")
        )
    return array.reshape(-1)


def optimizer_state(state, n_params, dtype):
    """``(name, m, v, step)`` from a dict of ``MLP.optimizer_state``, checked whole and
    copied (``step`` as int64 ``[step]``), so a bad state changes nothing."""
    if not isinstance(state, dict) or set(state) != {"optimizer", "m", "v", "step"}:
        raise TypeError(
            "state must be a dict from optimizer_state(), with the keys "
            "'optimizer', 'm', 'v' and 'step'"
        )
    name = state["optimizer"]
    if name is not None:
        name = choice(name, "state['optimizer']", OPTIMIZERS)
    kept = {
        None: (0, 0),
        "sgd": (0, 0),
        "momentum": (n_params, 0),
        "nesterov": (n_params, 0),
        "adam": (n_params, n_params),
    }[name]
    moments = []
    for key, size in zip(("m", "v"), kept, strict=True):
        array = np.asarray(state[key])
        if array.shape != (size,) or array.dtype != dtype:
            raise ValueError(
                f"state[{key!r}] must be a {dtype} array of shape ({size},) for "
                f"optimizer {name!r}; got {array.dtype} {array.shape}"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"state[{key!r}] holds NaN or infinity")
        moments.append(array.copy())
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"state['step'] must be a non-negative integer; got {step!r}")
    return name, moments[0], moments[1], np.array([step], np.int64)
