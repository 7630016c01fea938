"""Sparse input (scipy.sparse CSR and CSC, matrices and arrays): the first layer multiplies
the stored entries, never a dense copy of the rows.

Held to the same data densified (fastbp's dense path), to central finite differences of
``MLP.loss``, and to scikit-learn's own estimators on the same sparse data; the bits do not
depend on the thread count; bad sparse input is refused, naming the argument, before
anything changes.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import fastbp
from fastbp._engine import config as _config
from fastbp._engine.cpu.plan import work_offsets, work_plan
from fastbp._engine.layout import build_layout

ROOT = Path(__file__).resolve().parents[1]

CONTAINERS = [sp.csr_matrix, sp.csr_array, sp.csc_matrix, sp.csc_array]
IDS = [c.__name__ for c in CONTAINERS]


def _sparse_data(rng, n, n_in, density=0.1):
    """A dense array with about ``density`` of its entries nonzero, some rows empty."""
    X = rng.normal(size=(n, n_in)) * (rng.uniform(size=(n, n_in)) < density)
    X[rng.choice(n, n // 10, replace=False)] = 0.0
    return X


def _flat(arrays):
    return np.concatenate([a.ravel() for a in arrays])


def _close(actual, expected, rtol):
    scale = max(np.abs(expected).max(), 1e-300)
    assert np.abs(actual - expected).max() <= rtol * scale


RTOL = {"float64": 1e-12, "float32": 1e-4}  # Adam amplifies rounding


# ---------------------------------------------------------------- sparse against dense


@pytest.mark.parametrize("container", CONTAINERS, ids=IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_training_forward_loss_and_gradients_match_the_dense_data(rng, container, dtype):
    """A first layer wide enough for BLAS on dense input, several chunks per batch."""
    n, n_in = 330, 300
    X = _sparse_data(rng, n, n_in)
    labels = rng.integers(0, 4, n)
    sizes, acts = [n_in, 48, 16, 4], ["relu", "tanh", "softmax"]
    nets = [fastbp.MLP(sizes, acts, "cce", seed=5, dtype=dtype) for _ in range(2)]
    kwargs = dict(epochs=3, lr=0.01, batch_size=128, shuffle=True, optimizer="adam", l2=1e-3)
    sparse_history = nets[0].fit(container(X), labels, **kwargs)
    dense_history = nets[1].fit(X, labels, **kwargs)
    rtol = RTOL[dtype]
    _close(sparse_history, dense_history, rtol)
    _close(_flat(nets[0].weights + nets[0].biases), _flat(nets[1].weights + nets[1].biases), rtol)
    _close(nets[0].forward(container(X)), nets[0].forward(X), rtol)
    loss_s, dW_s, db_s = nets[0].gradients(container(X), labels, l2=1e-3)
    loss_d, dW_d, db_d = nets[0].gradients(X, labels, l2=1e-3)
    _close(np.array([loss_s]), np.array([loss_d]), rtol)
    for sparse_grad, dense_grad in zip(dW_s + db_s, dW_d + db_d, strict=True):
        _close(sparse_grad, dense_grad, 10 * rtol)
    assert nets[0].loss(container(X), labels) == pytest.approx(nets[0].loss(X, labels), rel=rtol)


@pytest.mark.parametrize("batch_size", [1, 7, 40], ids=["online", "small", "full"])
def test_small_batches_and_few_features_match_the_dense_data(rng, batch_size):
    """Batches that dense input trains sample by sample (or in ``tiny_run``) go through
    ``group_pass`` when sparse; plain SGD, mse, no biases, several outputs."""
    X = _sparse_data(rng, 40, 2, density=0.7)
    Y = rng.normal(size=(40, 2))
    nets = [fastbp.MLP([2, 2, 2], ["tanh", "identity"], "mse", seed=1, bias=False) for _ in "ab"]
    kwargs = dict(epochs=4, lr=0.05, batch_size=batch_size)
    _close(nets[0].fit(sp.csr_array(X), Y, **kwargs), nets[1].fit(X, Y, **kwargs), 1e-13)
    _close(_flat(nets[0].weights), _flat(nets[1].weights), 1e-13)


def test_duplicate_unsorted_and_explicit_zero_entries_count_as_scipy_sums_them(rng):
    """Non-canonical CSR: duplicate column entries add up, unsorted ones are fine, stored
    zeros change nothing, and ``data``/``indices`` longer than ``indptr[-1]`` are cut."""
    indptr = np.array([0, 3, 3, 6])
    indices = np.array([4, 1, 4, 0, 2, 3, 9, 9], np.int32)
    data = np.array([1.5, -2.0, 0.5, 0.0, 3.0, 1.0, 7.0, 7.0])
    X = sp.csr_matrix((data, indices, indptr), shape=(3, 5))
    assert not X.has_canonical_format
    net = fastbp.MLP([5, 3, 2], ["sigmoid", "identity"], "mse", seed=2)
    np.testing.assert_allclose(net.forward(X), net.forward(X.toarray()), rtol=1e-14)
    Y = rng.normal(size=(3, 2))
    _, sparse_grads, _ = net.gradients(X, Y)
    _, dense_grads, _ = net.gradients(X.toarray(), Y)
    np.testing.assert_allclose(sparse_grads[0], dense_grads[0], rtol=1e-14, atol=1e-16)


def test_int32_and_int64_indices_and_integer_data_train_alike(rng):
    X = sp.csr_matrix((rng.uniform(size=(60, 30)) < 0.2).astype(np.int64))
    X64 = X.copy()
    X64.indices, X64.indptr = X.indices.astype(np.int64), X.indptr.astype(np.int64)
    y = rng.integers(0, 3, 60)
    nets = [fastbp.MLP([30, 8, 3], ["relu", "softmax"], "cce", seed=4) for _ in "ab"]
    for net, data in zip(nets, (X, X64), strict=True):
        net.fit(data, y, epochs=2, lr=0.1, batch_size=20)
    np.testing.assert_array_equal(_flat(nets[0].weights), _flat(nets[1].weights))


def test_a_wide_sparse_input_is_never_densified(rng):
    """200,000 x 1,000,000 float64 would take 1.6 TB dense; a network with a few
    hidden units trains, predicts and differentiates on its 600,000 entries, and its plan
    keeps no input rows in the work buffer."""
    n, n_in, nnz = 200_000, 1_000_000, 600_000
    rows = np.sort(rng.integers(0, n, nnz))
    X = sp.csr_array((rng.uniform(size=nnz), (rows, rng.integers(0, n_in, nnz))), shape=(n, n_in))
    y = rng.integers(0, 2, n)
    net = fastbp.MLP([n_in, 4, 2], ["relu", "softmax"], "cce", seed=0)
    layout = net._layout
    plan = work_plan(layout, net.dtype, 200, sparse=True)
    assert plan.work_size == work_offsets(layout, plan.chunk, sparse=True)[1]
    assert plan.work_size < 64 * plan.chunk and not plan.blas[0]
    history = net.fit(X, y, epochs=1, lr=0.01, batch_size=2000, optimizer="adam")
    assert np.isfinite(history).all()
    assert net.forward(X[:1000]).shape == (1000, 2)
    assert np.isfinite(net.gradients(X[:1000], y[:1000])[0])


def test_sparse_batches_take_one_chunk_group_unless_the_dense_layers_have_work():
    """Every group clears and sums a gradient buffer of the first layer's weights; sparse
    rows make few products there, so only the later layers' work pays for more groups."""
    f64 = np.dtype(np.float64)
    for sizes in ([1_000_000, 20, 2], [50_000, 100, 20], [1000, 20, 2]):
        layout, _ = build_layout(sizes, ["relu", "softmax"], True)
        assert work_plan(layout, f64, 200, sparse=True).max_groups == 1
        assert work_plan(layout, f64, 200).max_groups >= 2
    layout, _ = build_layout([1000, 20, 200, 2], ["relu", "relu", "softmax"], True)
    assert (
        work_plan(layout, f64, 200, sparse=True).max_groups
        == work_plan(layout, f64, 200).max_groups
        == _config.MAX_GROUPS
    )


# ---------------------------------------------------------------- finite differences


@pytest.mark.parametrize(
    "acts,loss",
    [(["tanh", "sigmoid", "softmax"], "cce"), (["sigmoid", "leaky_relu", "identity"], "mse")],
    ids=["cce", "mse"],
)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradients_of_sparse_input_match_finite_differences(rng, acts, loss, reduction):
    n, n_in = 7, 9
    dense = _sparse_data(rng, n, n_in, density=0.35)
    dense[0, 0] = 0.8  # no input column may be all zero: its weights would go untested
    X = sp.csr_matrix(dense)
    net = fastbp.MLP([n_in, 5, 4, 3], acts, loss, seed=3, reduction=reduction)
    if loss == "cce":
        Y = rng.integers(0, 3, n)
    else:
        Y = rng.normal(size=(n, 3))
    weights = rng.uniform(0.5, 2.0, n)
    _, dWs, dbs = net.gradients(X, Y, sample_weight=weights, l2=0.01)
    analytic = _flat(dWs + dbs)
    numeric = np.empty_like(analytic)
    params = net.weights + net.biases
    step = 1e-6
    i = 0
    for p in params:
        flat = p.reshape(-1)
        for k in range(flat.shape[0]):
            saved = flat[k]
            flat[k] = saved + step
            up = net.loss(X, Y, sample_weight=weights, l2=0.01)
            flat[k] = saved - step
            down = net.loss(X, Y, sample_weight=weights, l2=0.01)
            flat[k] = saved
            numeric[i] = (up - down) / (2 * step)
            i += 1
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
    touched = np.abs(dWs[0]).sum(axis=1)
    assert (touched[np.unique(X.indices)] > 0).all()


# ---------------------------------------------------------------- against scikit-learn


def _fit_both(make, X, y, **params):
    from sklearn import neural_network

    ours = getattr(fastbp, make)(**params)
    theirs = getattr(neural_network, make)(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(X, y)
        theirs.fit(X, y)
    return ours, theirs


def _assert_same_fit(ours, theirs, rtol=1e-10):
    for a, b in zip(
        ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True
    ):
        assert a.dtype == b.dtype
        _close(a, b, rtol)
    assert ours.n_iter_ == theirs.n_iter_


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("container", CONTAINERS, ids=IDS)
def test_classifier_matches_scikit_learn_on_sparse_data(rng, solver, container):
    X = container(_sparse_data(rng, 240, 80, density=0.08))
    y = rng.integers(0, 4, 240)
    params = dict(hidden_layer_sizes=(24,), solver=solver, max_iter=12, random_state=7)
    ours, theirs = _fit_both("MLPClassifier", X, y, batch_size=64, **params)
    _assert_same_fit(ours, theirs)
    _close(ours.predict_proba(X), theirs.predict_proba(X), 1e-10)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_regressor_matches_scikit_learn_on_sparse_data(rng, solver):
    X = sp.csr_array(_sparse_data(rng, 200, 50, density=0.1))
    y = rng.normal(size=(200, 2))
    params = dict(hidden_layer_sizes=(16, 8), solver=solver, max_iter=10, random_state=1)
    ours, theirs = _fit_both("MLPRegressor", X, y, alpha=1e-3, **params)
    _assert_same_fit(ours, theirs)
    _close(ours.predict(X), theirs.predict(X), 1e-10)


def test_partial_fit_and_early_stopping_match_scikit_learn_on_sparse_data(rng):
    from sklearn import neural_network

    X = sp.csr_matrix(_sparse_data(rng, 300, 60, density=0.1))
    y = rng.integers(0, 3, 300)
    params = dict(hidden_layer_sizes=(12,), random_state=3, batch_size=50)
    ours = fastbp.MLPClassifier(**params)
    theirs = neural_network.MLPClassifier(**params)
    for lo in range(0, 300, 100):
        ours.partial_fit(X[lo : lo + 100], y[lo : lo + 100], classes=[0, 1, 2])
        theirs.partial_fit(X[lo : lo + 100], y[lo : lo + 100], classes=[0, 1, 2])
    _assert_same_fit(ours, theirs)
    ours, theirs = _fit_both(
        "MLPClassifier", X, y, early_stopping=True, max_iter=15, n_iter_no_change=3, **params
    )
    _assert_same_fit(ours, theirs)
    assert ours.validation_scores_ == pytest.approx(theirs.validation_scores_, rel=1e-12)


def test_float32_sparse_data_trains_in_float32_as_scikit_learn(rng):
    X = sp.csr_matrix(_sparse_data(rng, 150, 40, density=0.15).astype(np.float32))
    y = rng.integers(0, 2, 150)
    ours, theirs = _fit_both(
        "MLPClassifier", X, y, hidden_layer_sizes=(10,), max_iter=5, random_state=0
    )
    assert ours.coefs_[0].dtype == np.float32
    _assert_same_fit(ours, theirs, rtol=1e-4)


# ---------------------------------------------------------------- bad input


def _state(net):
    return (
        _flat(net.weights + net.biases).tobytes(),
        {
            k: v.tobytes() if isinstance(v, np.ndarray) else v
            for k, v in net.optimizer_state().items()
        },
    )


def _trained(rng):
    net = fastbp.MLP([5, 4, 2], ["relu", "identity"], "mse", seed=0)
    net.fit(rng.normal(size=(10, 5)), rng.normal(size=(10, 2)), epochs=2, lr=0.01, optimizer="adam")
    return net


GOOD = sp.csr_matrix(np.eye(10, 5))
NAN = GOOD.copy()
NAN.data[2] = np.nan
INF = GOOD.copy()
INF.data[0] = -np.inf
BAD_INDEX = sp.csr_matrix((np.ones(2), np.array([0, 7]), np.array([0, 1, 2])), shape=(2, 8))
BAD_INDEX.indices[1] = 9  # scipy's own checks would refuse it at construction
BAD_INDEX._shape = (2, 5)

BAD_X = [
    ("columns", sp.csr_matrix(np.eye(10, 6)), ValueError, "6 columns"),
    ("csc-columns", sp.csc_array(np.eye(10, 4)), ValueError, "4 columns"),
    ("nan", NAN, ValueError, "NaN"),
    ("inf", INF, ValueError, "NaN or infinity"),
    ("coo", sp.coo_matrix(np.eye(10, 5)), TypeError, "tocsr"),
    ("lil", sp.lil_array(np.eye(10, 5)), TypeError, "CSR or CSC"),
    ("complex", sp.csr_matrix(np.eye(10, 5) * 1j), TypeError, "real numbers"),
    ("index", BAD_INDEX, ValueError, "column indices"),
    ("empty", sp.csr_matrix((0, 5)), ValueError, "empty"),
]


@pytest.mark.parametrize("X,error,message", [case[1:] for case in BAD_X], ids=[c[0] for c in BAD_X])
@pytest.mark.parametrize("call", ["fit", "forward", "loss", "gradients"])
def test_bad_sparse_input_is_refused_and_changes_nothing(rng, X, error, message, call):
    net = _trained(rng)
    before = _state(net)
    Y = np.zeros((X.shape[0], 2))
    calls = {
        "fit": lambda: net.fit(X, Y, epochs=1, lr=0.1, optimizer="adam"),
        "forward": lambda: net.forward(X),
        "loss": lambda: net.loss(X, Y),
        "gradients": lambda: net.gradients(X, Y),
    }
    with pytest.raises(error, match=message) as info:
        calls[call]()
    assert str(info.value).startswith("X")
    assert _state(net) == before


def test_sparse_targets_are_refused_and_change_nothing(rng):
    net = _trained(rng)
    before = _state(net)
    with pytest.raises(TypeError, match="^Y: sparse targets"):
        net.fit(GOOD, sp.csr_matrix(np.ones((10, 2))), epochs=1, lr=0.1)
    with pytest.raises(TypeError, match="^Y: sparse targets"):
        net.gradients(GOOD, sp.csr_matrix(np.ones((10, 2))))
    assert _state(net) == before


@pytest.mark.parametrize("make", ["MLPClassifier", "MLPRegressor"])
def test_estimators_refuse_bad_sparse_input_and_keep_their_fit(rng, make):
    X = sp.csr_matrix(_sparse_data(rng, 60, 8, density=0.3))
    y = rng.integers(0, 2, 60)
    estimator = getattr(fastbp, make)(hidden_layer_sizes=(4,), max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(X, y)
    coefs = [c.copy() for c in estimator.coefs_]
    bad = X.copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimator.partial_fit(bad, y)
    with pytest.raises(ValueError, match="features"):
        estimator.predict(sp.csr_matrix(np.ones((3, 9))))
    with pytest.raises(ValueError, match="features"):
        estimator.partial_fit(sp.csr_matrix(np.ones((60, 9))), y)
    for before, after in zip(coefs, estimator.coefs_, strict=True):
        np.testing.assert_array_equal(before, after)


def test_other_sparse_formats_are_converted_by_the_estimators_as_by_scikit_learn(rng):
    X = _sparse_data(rng, 80, 10, density=0.3)
    y = rng.integers(0, 3, 80)
    params = dict(hidden_layer_sizes=(5,), max_iter=4, random_state=2)
    fits = []
    for data in (sp.coo_matrix(X), sp.lil_array(X), X):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits.append(fastbp.MLPClassifier(**params).fit(data, y))
    for fit in fits[:2]:
        _close(_flat(fit.coefs_), _flat(fits[2].coefs_), 1e-12)


# ---------------------------------------------------------------- thread count

CHILD = r"""
import hashlib, json
import numpy as np, numba, scipy.sparse as sp
import fastbp
from fastbp._engine.cpu.plan import work_plan

def digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()

rng = np.random.default_rng(7)
X = rng.normal(size=(450, 120)) * (rng.uniform(size=(450, 120)) < 0.05)
labels = rng.integers(0, 4, 450)
result = {"threads": numba.get_num_threads()}
for dtype in ("float64", "float32"):
    net = fastbp.MLP([120, 24, 4], ["relu", "softmax"], "cce", seed=1, dtype=dtype)
    history = net.fit(sp.csr_matrix(X), labels, epochs=3, lr=0.01, batch_size=200,
                      shuffle=True, optimizer="adam", l2=1e-3)
    loss, dWs, dbs = net.gradients(sp.csr_matrix(X), labels)
    result["groups"] = work_plan(net._layout, net.dtype, 200, sparse=True).max_groups
    result[dtype] = [digest(net.weights + net.biases), digest([history]),
                     digest([net.forward(sp.csr_matrix(X))]), digest(dWs + dbs), loss.hex()]
print(json.dumps(result))
"""


def _child(threads):
    env = dict(
        os.environ,
        NUMBA_NUM_THREADS=str(threads),
        FASTBP_CHUNK_ROWS="8",
        FASTBP_PARALLEL_MIN_MACS="1",
        FASTBP_PARALLEL_UPDATE_MIN_PARAMS="1",
        FASTBP_MAX_GROUPS="5",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sparse_training_gives_the_same_bits_with_one_and_two_threads():
    one, two = _child(1), _child(2)
    assert (one["threads"], two["threads"]) == (1, 2)
    assert one["groups"] == two["groups"] == 5  # 25 chunks of 8 rows in 5 groups
    for dtype in ("float64", "float32"):
        assert one[dtype] == two[dtype], dtype
