"""fastbp.MLPClassifier / MLPRegressor against scikit-learn's own estimators.

The estimators replay scikit-learn's procedure, so with the same data and random_state
the two must produce the same weights up to floating-point rounding.
"""

import pickle
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from scipy.special import xlogy  # noqa: E402
from sklearn import neural_network as sk  # noqa: E402
from sklearn.datasets import load_digits, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastbp import MLPClassifier, MLPRegressor  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def relative_difference(ours, theirs):
    return max(
        float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(ours, theirs, strict=True)
    )


def fit_both(kind, X, y, **params):
    """Fit fastbp's and scikit-learn's estimator alike, ignoring ConvergenceWarning."""
    ours = {"classifier": MLPClassifier, "regressor": MLPRegressor}[kind](**params)
    theirs = {"classifier": sk.MLPClassifier, "regressor": sk.MLPRegressor}[kind](**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y)
        theirs.fit(X, y)
    return ours, theirs


def assert_same_model(ours, theirs, rtol):
    assert relative_difference(ours.coefs_, theirs.coefs_) < rtol
    assert relative_difference(ours.intercepts_, theirs.intercepts_) < rtol
    for name in ("n_iter_", "t_", "n_layers_", "n_outputs_", "out_activation_", "n_features_in_"):
        assert getattr(ours, name) == getattr(theirs, name), name


# ---------------------------------------------------------------- scikit-learn's checks


def expected_failed_checks(estimator):
    # Nothing is expected to fail; the hook stays so a future check that no mini-batch
    # trainer can pass is declared here with its reason.
    return {}


# scikit-learn's common tests run its MLPs with max_iter=100 too.
@parametrize_with_checks(
    [MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)],
    expected_failed_checks=expected_failed_checks,
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------- same trajectory


SOLVERS = {
    "adam": dict(solver="adam"),
    "adam-early-stopping": dict(solver="adam", early_stopping=True, validation_fraction=0.2),
    "sgd-nesterov": dict(solver="sgd", learning_rate_init=0.01),
    "sgd-momentum-invscaling": dict(
        solver="sgd", nesterovs_momentum=False, learning_rate="invscaling", learning_rate_init=0.2
    ),
    "sgd-plain": dict(solver="sgd", momentum=0.0, learning_rate_init=0.05),
    # tol this large makes every epoch count as no progress: the rate is divided by 5
    # after each, checking that learning-rate changes reach the engine between epochs.
    "sgd-adaptive": dict(
        solver="sgd", learning_rate="adaptive", learning_rate_init=0.05, tol=0.5, n_iter_no_change=1
    ),
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_classifier_follows_scikit_learn_for_ten_epochs(digits, name):
    X, y = digits
    ours, theirs = fit_both(
        "classifier", X, y, hidden_layer_sizes=(40,), max_iter=10, random_state=0, **SOLVERS[name]
    )
    assert ours.n_iter_ == 10
    assert_same_model(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-9)
    assert ours.best_loss_ == theirs.best_loss_ or ours.best_loss_ == pytest.approx(
        theirs.best_loss_, rel=1e-9
    )
    if ours.early_stopping:
        assert ours.validation_scores_ == pytest.approx(theirs.validation_scores_)
        assert ours.best_validation_score_ == theirs.best_validation_score_
        assert len(ours.validation_loss_curve_) == 10
    else:
        assert ours.validation_scores_ is None and ours.validation_loss_curve_ is None
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-9)


def test_stopping_rules_and_warnings_match(digits):
    """tol/n_iter_no_change end training at the same epoch; early stopping restores the
    best weights; ConvergenceWarning is raised exactly when scikit-learn raises it."""
    X, y = digits
    X, y = X[:600], y[:600]
    for params in (
        dict(tol=1e-2, n_iter_no_change=2, max_iter=200),
        dict(early_stopping=True, n_iter_no_change=3, max_iter=200, tol=0.01),
        dict(max_iter=3),
    ):
        common = dict(hidden_layer_sizes=(16,), random_state=1, learning_rate_init=0.01)
        with warnings.catch_warnings(record=True) as ours_warned:
            warnings.simplefilter("always")
            ours = MLPClassifier(**common, **params).fit(X, y)
        with warnings.catch_warnings(record=True) as theirs_warned:
            warnings.simplefilter("always")
            theirs = sk.MLPClassifier(**common, **params).fit(X, y)
        assert ours.n_iter_ == theirs.n_iter_ and ours.n_iter_ < 200
        assert [w.category for w in ours_warned if w.category is ConvergenceWarning] == [
            w.category for w in theirs_warned if w.category is ConvergenceWarning
        ]
        assert_same_model(ours, theirs, rtol=1e-6)


@pytest.mark.parametrize(
    "params",
    [
        dict(tol=1e-2, n_iter_no_change=2, max_iter=200),  # stops on the training loss
        dict(solver="sgd", learning_rate="adaptive", tol=1e-2, n_iter_no_change=1, max_iter=40),
        dict(max_iter=25, shuffle=False, batch_size=64),
        dict(max_iter=30, tol=0.0, alpha=1e-2, solver="sgd", momentum=0.5),
    ],
    ids=["tol", "adaptive", "in-order", "max-iter"],
)
def test_epochs_trained_per_engine_call_change_no_bit(digits, monkeypatch, params):
    """Without a validation set the estimators train several epochs per call of the
    engine, as many as the stopping rule allows; one epoch per call gives the same bits,
    the same stopping epoch, warnings and random stream."""
    X, y = digits
    X, y = X[:500], y[:500]
    sample_weight = np.linspace(0.5, 1.5, X.shape[0])
    calls = []

    def fit():
        stream = np.random.RandomState(2)
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            model = MLPClassifier(
                hidden_layer_sizes=(16,), random_state=stream, learning_rate_init=0.02, **params
            )
            model.fit(X, y, sample_weight=sample_weight)
        return model, [w.category for w in warned], stream.randint(1 << 30)

    counted = MLPClassifier._epochs_per_call
    monkeypatch.setattr(
        MLPClassifier,
        "_epochs_per_call",
        lambda self, *a, **k: calls.append(counted(self, *a, **k)) or calls[-1],
    )
    blocks, blocks_warned, blocks_next = fit()
    assert max(calls) > 1
    monkeypatch.setattr(MLPClassifier, "_epochs_per_call", lambda self, *a, **k: 1)
    single, single_warned, single_next = fit()
    assert blocks.n_iter_ == single.n_iter_ and blocks.t_ == single.t_
    assert blocks_warned == single_warned and blocks_next == single_next
    assert blocks.loss_curve_ == single.loss_curve_
    for a, b in zip(
        blocks.coefs_ + blocks.intercepts_, single.coefs_ + single.intercepts_, strict=True
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_validation_score_is_scikit_learns_accuracy(kind):
    """Early stopping scores each epoch in the binarized form; the value is
    ``accuracy_score``'s on the labels, ties and sample weights included."""
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(7)
    n = 60
    X = rng.normal(size=(n, 3))
    y = {
        "binary": rng.integers(0, 2, n),
        "multiclass": rng.integers(0, 4, n),
        "multilabel": rng.integers(0, 2, (n, 3)),
    }[kind]
    model = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1).fit(X, y)
    binarized = model._label_binarizer.transform(y).astype(float)
    prob = rng.uniform(size=binarized.shape)
    prob[:5] = 0.5  # ties: all outputs equal, and at the threshold
    for weights in (None, rng.uniform(0.1, 2.0, n)):
        expected = accuracy_score(y, model._labels(prob), sample_weight=weights)
        assert model._score_output(prob, binarized, weights) == expected


LABELS = {
    "binary-int": np.array([3, 7, 7, 3, 7]),
    "binary-str": np.array(["no", "yes", "yes", "no", "no"]),
    "multiclass-int": np.array([2, 0, 5, 5, 1, 0]),
    "multiclass-float": np.array([2.0, 0.0, 5.0, 5.0, 1.0, 0.0]),
    "multiclass-str": np.array(["b", "a", "c", "c", "a", "b"]),
    "multiclass-object": np.array(["b", "a", "c", "c", "a", "b"], dtype=object),
    "one-class": np.array([4, 4, 4]),
}


@pytest.mark.parametrize("name", list(LABELS))
def test_labels_are_binarized_and_decoded_as_scikit_learn_does(name):
    """The classifier binarizes targets and decodes outputs itself for the common label
    kinds; both equal LabelBinarizer's ``transform`` and ``inverse_transform``, and
    labels it was not fitted on take LabelBinarizer's own path."""
    from sklearn.preprocessing import LabelBinarizer

    y = LABELS[name]
    model = MLPClassifier(hidden_layer_sizes=(3,), max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.arange(2 * len(y), dtype=float).reshape(-1, 2), y)
    binarizer = LabelBinarizer().fit(y)
    for labels in (y, y[::-1], y[:2]):
        ours = model._binarized(labels)
        assert ours.dtype == bool
        np.testing.assert_array_equal(ours, binarizer.transform(labels).astype(bool))
    width = 1 if len(binarizer.classes_) <= 2 else len(binarizer.classes_)
    prob = np.random.default_rng(1).uniform(size=(50, width))
    prob[:4] = 0.5  # ties, and outputs at the threshold
    np.testing.assert_array_equal(
        model._labels(prob), binarizer.inverse_transform(prob.ravel() if width == 1 else prob)
    )
    if name.startswith("multiclass"):
        unseen = np.concatenate([y[:2], y[:1]])
        unseen[2] = "z" if y.dtype.kind in "OU" else 9
        np.testing.assert_array_equal(
            model._binarized(unseen), binarizer.transform(unseen).astype(bool)
        )


@pytest.mark.parametrize(
    "seed",
    [
        None,
        0,
        2**32 - 1,
        np.int64(5),
        True,
        np.random.RandomState(0),
        -1,
        2**32,
        1.5,
        "0",
        np.random.default_rng(0),
    ],
)
def test_random_state_is_checked_as_scikit_learn_checks_it(digits, seed):
    """``random_state`` is checked before a fit without seeding a generator; what
    ``check_random_state`` accepts passes, and the rest raises its error."""
    from sklearn.utils import check_random_state

    X, y = digits
    try:
        check_random_state(seed)
    except ValueError as error:
        with pytest.raises(ValueError, match=re.escape(str(error))):
            MLPClassifier(hidden_layer_sizes=(3,), max_iter=1, random_state=seed).fit(
                X[:20], y[:20]
            )
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier(hidden_layer_sizes=(3,), max_iter=1, random_state=seed).fit(X[:20], y[:20])


def test_binary_early_stopping_holds_out_scikit_learns_rows(digits):
    """A binary problem stratifies its validation split on the one target column: the
    same rows held out, the same scores, the same stopping epoch."""
    X, y = digits
    X, y = X[:700], (y[:700] > 4).astype(int)
    params = dict(
        hidden_layer_sizes=(16,),
        random_state=3,
        early_stopping=True,
        n_iter_no_change=3,
        tol=1e-3,
        max_iter=100,
        learning_rate_init=0.01,
    )
    ours, theirs = fit_both("classifier", X, y, **params)
    assert ours.validation_scores_ == theirs.validation_scores_
    assert_same_model(ours, theirs, rtol=1e-6)


def test_stratification_error_is_scikit_learns():
    """Too few members of a class to stratify: scikit-learn's message, word for word."""
    X, y = [[1, 2], [2, 3], [3, 4], [4, 5]], [0, 0, 0, 1]
    messages = []
    for cls in (MLPClassifier, sk.MLPClassifier):
        with pytest.raises(ValueError) as error:
            cls(early_stopping=True).fit(X, y)
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "['True']" in messages[0]


@pytest.mark.parametrize("outputs", [1, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_validation_score_is_scikit_learns_r2(outputs, dtype):
    """The regressor's early-stopping score is ``r2_score``'s value, bit for bit, with
    and without weights, constant targets included."""
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(8)
    n = 40
    y = rng.normal(size=(n, outputs)).astype(dtype)
    prob = (y + rng.normal(scale=0.3, size=y.shape)).astype(dtype)
    cases = [(y, prob)]
    if outputs > 1:
        constant = y.copy()
        constant[:, 1] = 2.0
        met = prob.copy()
        met[:, 1] = 2.0
        cases += [(constant, prob), (constant, met)]  # zero denominator, missed and met
    for truth, predicted in cases:
        for weights in (None, rng.uniform(0.1, 2.0, n)):
            expected = r2_score(
                truth.ravel() if outputs == 1 else truth,
                predicted.ravel() if outputs == 1 else predicted,
                sample_weight=weights,
            )
            assert MLPRegressor()._score_output(predicted, truth, weights) == expected


def test_warm_start_and_partial_fit_match(digits):
    X, y = digits
    X, y = X[:500], y[:500]
    params = dict(
        hidden_layer_sizes=(20,), max_iter=3, random_state=np.random.RandomState(3), warm_start=True
    )
    ours = MLPClassifier(**params)
    theirs = sk.MLPClassifier(**{**params, "random_state": np.random.RandomState(3)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(2):
            ours.fit(X, y)
            theirs.fit(X, y)
    assert_same_model(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)

    classes = np.unique(y)
    ours = MLPClassifier(hidden_layer_sizes=(20,), random_state=4, solver="sgd")
    theirs = sk.MLPClassifier(hidden_layer_sizes=(20,), random_state=4, solver="sgd")
    for start in (0, 100, 200):
        ours.partial_fit(X[start : start + 300], y[start : start + 300], classes=classes)
        theirs.partial_fit(X[start : start + 300], y[start : start + 300], classes=classes)
    assert_same_model(ours, theirs, rtol=1e-6)
    with pytest.raises(ValueError, match="classes"):
        MLPClassifier().partial_fit(X, y)
    with pytest.raises(AttributeError, match="partial_fit"):
        MLPClassifier(solver="lbfgs").partial_fit  # noqa: B018


def test_multilabel_and_binary_classification_match(digits):
    X, y = digits
    Y = np.column_stack([y % 2, y > 4, y == 0])
    ours, theirs = fit_both(
        "classifier", X, Y, hidden_layer_sizes=(16,), max_iter=5, random_state=0
    )
    assert ours.out_activation_ == "logistic" and ours.n_outputs_ == 3
    assert_same_model(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    assert ours.predict(X).shape == Y.shape
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))

    labels = np.where(y > 4, "big", "small")
    ours, theirs = fit_both(
        "classifier",
        X,
        labels,
        hidden_layer_sizes=(8,),
        max_iter=5,
        random_state=0,
        early_stopping=True,
    )
    assert_same_model(ours, theirs, rtol=1e-6)
    assert list(ours.classes_) == ["big", "small"]
    assert ours.predict_proba(X).shape == (len(X), 2)
    np.testing.assert_allclose(ours.predict_log_proba(X[:5]), np.log(ours.predict_proba(X[:5])))
    assert ours.score(X, labels) == theirs.score(X, labels)


def test_sample_weight_matches_in_weights(digits):
    X, y = digits
    weights = np.random.RandomState(0).uniform(0.5, 2.0, len(y))
    ours = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0)
    theirs = sk.MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y, sample_weight=weights)
        theirs.fit(X, y, sample_weight=weights)
    assert_same_model(ours, theirs, rtol=1e-6)


def test_regressor_matches(digits):
    X, y = digits
    targets = np.column_stack([y, X[:, 20:22].sum(axis=1)])
    for Y, solver in ((y.astype(float), "adam"), (targets, "sgd")):
        ours, theirs = fit_both(
            "regressor",
            X,
            Y,
            hidden_layer_sizes=(16,),
            max_iter=10,
            random_state=0,
            solver=solver,
            learning_rate_init=0.001,
        )
        assert_same_model(ours, theirs, rtol=1e-6)
        assert ours.predict(X).shape == np.shape(Y)
        if Y.ndim == 1:
            np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
        else:
            # Documented: fastbp sums half squared errors over outputs, scikit-learn averages.
            assert ours.loss_ > theirs.loss_
        assert ours.score(X, Y) == pytest.approx(theirs.score(X, Y), rel=1e-6)


POISSON_SOLVERS = {
    "sgd": dict(solver="sgd", max_iter=10),
    "adam": dict(solver="adam", max_iter=10),
    "adam-early-stopping": dict(solver="adam", max_iter=10, early_stopping=True),
    "lbfgs": dict(solver="lbfgs", max_iter=30),
}


@pytest.mark.parametrize("name", list(POISSON_SOLVERS))
def test_poisson_regressor_matches(digits, name):
    """loss='poisson': scikit-learn's exp output, half Poisson deviance and r2 score."""
    X, y = digits
    X, y = X[:400], y[:400]
    counts = np.random.RandomState(0).poisson(np.exp(X[:, 20] + X[:, 30]))
    Y = np.column_stack([y, counts]) if name == "sgd" else y.astype(float)  # two outputs
    ours, theirs = fit_both(
        "regressor",
        X,
        Y,
        loss="poisson",
        hidden_layer_sizes=(16,),
        random_state=0,
        learning_rate_init=0.001,
        **POISSON_SOLVERS[name],
    )
    assert ours.out_activation_ == "exp"
    lbfgs = name == "lbfgs"
    assert_same_model(ours, theirs, rtol=1e-5 if lbfgs else 1e-6)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-7 if lbfgs else 1e-9)
    if not lbfgs:
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    if ours.early_stopping:
        assert ours.validation_scores_ == pytest.approx(theirs.validation_scores_)
    prediction = ours.predict(X)
    np.testing.assert_allclose(prediction, theirs.predict(X), rtol=1e-6)
    assert ours.score(X, Y) == pytest.approx(theirs.score(X, Y), rel=1e-6)
    Y2 = Y.reshape(len(Y), -1)
    deviance = xlogy(Y2, Y2 / prediction.reshape(Y2.shape)) - Y2 + prediction.reshape(Y2.shape)
    assert ours.validation_loss(X, Y) == pytest.approx(deviance.mean(axis=0).sum(), rel=1e-12)


def test_poisson_refuses_negative_targets_and_keeps_the_model(digits):
    X, y = digits
    est = MLPRegressor(loss="poisson", hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X[:50], y[:50])
    before = [c.copy() for c in est.coefs_]
    with pytest.raises(ValueError, match="y must be non-negative for loss='poisson'"):
        est.fit(X[:50], y[:50] - 1.0)
    for a, b in zip(est.coefs_, before, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="y_val must be non-negative"):
        est.set_params(early_stopping=True).fit(X[:50], y[:50], X_val=X[50:60], y_val=-y[50:60])


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_lbfgs_matches(digits, kind):
    X, y = digits
    X, y = X[:400], y[:400]
    if kind == "regressor":
        y = np.column_stack([y, X[:, 30]])  # two outputs
    ours, theirs = fit_both(
        kind, X, y, hidden_layer_sizes=(12,), solver="lbfgs", max_iter=30, random_state=0
    )
    assert_same_model(ours, theirs, rtol=1e-5)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-7)
    assert not hasattr(ours, "loss_curve_")
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        MLPRegressor(solver="lbfgs", max_iter=2, hidden_layer_sizes=(5,)).fit(X, y)


def test_regression_with_early_stopping_on_generated_data():
    X, y = make_regression(n_samples=300, n_features=5, noise=0.1, random_state=0)
    y = y / y.std()
    ours, theirs = fit_both(
        "regressor",
        X,
        y,
        hidden_layer_sizes=(16,),
        max_iter=20,
        random_state=0,
        early_stopping=True,
        learning_rate_init=0.01,
    )
    assert_same_model(ours, theirs, rtol=1e-6)
    assert ours.validation_scores_ == pytest.approx(theirs.validation_scores_)
    assert len(ours.validation_loss_curve_) == len(ours.loss_curve_)
    assert ours.best_loss_ is None


# ---------------------------------------------------------------- beyond scikit-learn


def test_float32_trains_in_float32(digits):
    X, y = digits
    X32 = X.astype(np.float32)
    ours = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0, dtype=np.float32)
    theirs = sk.MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X32, y)
        theirs.fit(X32, y)  # scikit-learn keeps float32 input in float32 too
    assert all(c.dtype == np.float32 for c in ours.coefs_ + ours.intercepts_)
    assert ours.predict_proba(X32).dtype == np.float32
    assert relative_difference(ours.coefs_, theirs.coefs_) < 1e-4
    forced = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, dtype=np.float64).fit(X32, y)
    assert forced.coefs_[0].dtype == np.float64


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_default_dtype_follows_the_first_fit(digits, cls):
    """dtype=None: float32 data trains in float32, other data in float64; partial_fit and
    warm_start keep the first fit's dtype whatever comes later, as in scikit-learn."""
    X, y = digits
    X32, X_int = X[:100].astype(np.float32), (X[:100] * 16).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for data, dtype in ((X32, np.float32), (X_int, np.float64), (X[:100], np.float64)):
            est = cls(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(data, y[:100])
            assert all(a.dtype == dtype for a in est.coefs_ + est.intercepts_)
            assert est.predict(data).dtype == (dtype if cls is MLPRegressor else y.dtype)
        for first, later in ((X32, X[:100]), (X[:100], X32)):
            kept = first.dtype
            est = cls(hidden_layer_sizes=(4,), max_iter=2, random_state=0, warm_start=True)
            est.fit(first, y[:100]).fit(later, y[:100])
            assert all(a.dtype == kept for a in est.coefs_ + est.intercepts_)
            est = cls(hidden_layer_sizes=(4,), random_state=0)
            kwargs = {"classes": np.unique(y)} if cls is MLPClassifier else {}
            est.partial_fit(first, y[:100], **kwargs).partial_fit(later, y[:100])
            assert all(a.dtype == kept for a in est.coefs_ + est.intercepts_)
            assert est.predict(later).shape == (100,)


def test_device_is_passed_to_the_engine(digits):
    X, y = digits
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, device="cpu").fit(X[:50], y[:50])
    assert est._net.device == "cpu"
    with pytest.raises(ValueError, match="device"):
        MLPClassifier(device="tpu").fit(X[:50], y[:50])


# ---------------------------------------------------------------- the fitted network


def fitted(cls, X, y, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cls(hidden_layer_sizes=(8,), max_iter=3, random_state=0, **params).fit(X, y)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_to_network_is_an_independent_copy_of_the_fitted_model(tmp_path, digits, dtype):
    import fastbp

    X, y = digits
    est = fitted(MLPClassifier, X[:200], y[:200], dtype=dtype)
    net = est.to_network()
    assert isinstance(net, fastbp.MLP) and net.dtype == dtype and net.device == "cpu"
    assert (net.layer_sizes, net.activations, net.loss_name) == (
        (64, 8, 10),
        ("relu", "softmax"),
        "cce",
    )
    np.testing.assert_array_equal(net.forward(X[:30]), est.predict_proba(X[:30]))
    assert net.optimizer_state()["optimizer"] is None  # the estimator's is Adam's
    assert est.to_network() is not net
    proba = est.predict_proba(X[:30])
    net.weights[0][...] = 0.0
    net.fit(X[:30], y[:30], epochs=1, lr=0.1)
    np.testing.assert_array_equal(est.predict_proba(X[:30]), proba)
    regressor = fitted(MLPRegressor, X[:200], y[:200].astype(float))
    twin = regressor.to_network()
    assert twin.loss_name == "half_mse" and twin.loss_scale == 0.5
    twin.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(
        fastbp.load(tmp_path / "m.npz").forward(X[:30]).ravel(), regressor.predict(X[:30])
    )


def test_engine_targets_and_optimizer(digits):
    X, y = digits
    multiclass = fitted(MLPClassifier, X[:200], y[:200] + 1)
    np.testing.assert_array_equal(multiclass.engine_targets(y[:5] + 1), y[:5])
    assert multiclass.engine_targets(y[:5] + 1).dtype == np.int64
    binary = fitted(MLPClassifier, X[:200], np.where(y[:200] > 4, "big", "small"), dtype=np.float32)
    targets = binary.engine_targets(["small", "big", "big"])
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(targets, [[1], [0], [0]])
    regressor = fitted(MLPRegressor, X[:200], y[:200])
    np.testing.assert_array_equal(regressor.engine_targets([1, 2]), [[1.0], [2.0]])
    optimizers = [
        MLPClassifier(solver=solver, **params).engine_optimizer()
        for solver, params in (
            ("adam", {}),
            ("sgd", {}),
            ("lbfgs", {}),
            ("sgd", {"momentum": 0}),
            ("sgd", {"nesterovs_momentum": False}),
        )
    ]
    assert optimizers == ["adam", "nesterov", None, "sgd", "momentum"]


def test_validation_loss_is_the_loss_without_the_l2_term(digits):
    from sklearn.metrics import log_loss

    X, y = digits
    weights = np.arange(100) % 3 + 0.5
    est = fitted(MLPClassifier, X[:200], y[:200], alpha=1.0)
    proba = est.predict_proba(X[200:300])
    np.testing.assert_allclose(
        est.validation_loss(X[200:300], y[200:300]),
        log_loss(y[200:300], proba, labels=est.classes_),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        est.validation_loss(X[200:300], y[200:300], sample_weight=weights),
        log_loss(y[200:300], proba, sample_weight=weights, labels=est.classes_),
        rtol=1e-12,
    )
    targets = np.stack([y, -2.0 * y], axis=1)
    regressor = fitted(MLPRegressor, X[:200], targets[:200])
    errors = (regressor.predict(X[200:300]) - targets[200:300]) ** 2
    np.testing.assert_allclose(
        regressor.validation_loss(X[200:300], targets[200:300]), 0.5 * errors.mean(), rtol=1e-12
    )
    with pytest.raises(ValueError, match="y has 99 rows but X has 100"):
        est.validation_loss(X[200:300], y[200:299])


def test_pickle_round_trip_keeps_predictions_and_optimizer(digits):
    X, y = digits
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    copy = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(copy.predict_proba(X), est.predict_proba(X))
    est.partial_fit(X, y)
    copy.partial_fit(X, y)
    np.testing.assert_array_equal(copy.coefs_[0], est.coefs_[0])


def test_feature_names_are_recorded(digits):
    pa = pytest.importorskip("pyarrow")
    X, y = digits
    names = [f"pixel{i}" for i in range(X.shape[1])]
    table = pa.table({name: X[:60, i] for i, name in enumerate(names)})
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(table, y[:60])
    assert list(est.feature_names_in_) == names
    np.testing.assert_array_equal(est.predict(table), est.predict(X[:60]))


# ---------------------------------------------------------------- errors


def test_bad_parameters_name_the_argument_and_leave_the_model_alone(digits):
    X, y = digits
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X[:100], y[:100])
    before = [c.copy() for c in est.coefs_]
    state = dict(est.__dict__)
    for name, value in (
        ("alpha", -1.0),
        ("momentum", 1.0),
        ("batch_size", 0),
        ("activation", "softmax"),
        ("hidden_layer_sizes", (0,)),
        ("learning_rate_init", 0.0),
        ("validation_fraction", 1.0),
        ("dtype", np.int32),
        ("solver", "newton"),
        ("max_iter", 1.5),
    ):
        bad = est.set_params(**{name: value})
        with pytest.raises((ValueError, TypeError), match=name.split("_sizes")[0]):
            bad.fit(X[:100], y[:100])
        est.set_params(**{name: MLPClassifier().get_params()[name]})
    est.set_params(hidden_layer_sizes=(4,), max_iter=2)
    with pytest.raises(ValueError, match="sample_weight"):
        est.fit(X[:100], y[:100], sample_weight=np.r_[np.ones(50), -np.ones(50)])  # sums to 0
    with pytest.raises(ValueError, match="loss"):
        MLPRegressor(loss="absolute_error").fit(X[:10], y[:10])
    assert est.__dict__.keys() == state.keys()
    for a, b in zip(est.coefs_, before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_core_imports_without_scikit_learn():
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import fastbp\n"
        "assert fastbp.MLP and fastbp.load\n"
        "try:\n    fastbp.MLPClassifier\nexcept ImportError:\n    print('lazy')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "lazy"


@pytest.mark.parametrize("interrupt_at", [1, 12])
def test_lbfgs_keyboard_interrupt_keeps_the_last_finished_iteration(
    digits, monkeypatch, interrupt_at
):
    """Ctrl-C during L-BFGS keeps the parameters of the last finished iteration (those a
    fit stopped there by max_iter reaches); before the first one it propagates."""
    from fastbp import network

    X, y = digits
    X, y = X[:300], y[:300]
    calls = []
    gradients = network.MLP.gradients

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return gradients(self, *args, **kwargs)

    monkeypatch.setattr(network.MLP, "gradients", interrupted)
    est = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=500, random_state=0)
    if interrupt_at == 1:
        with pytest.raises(KeyboardInterrupt):
            est.fit(X, y)
        assert not hasattr(est, "coefs_")
        return
    with pytest.warns(UserWarning, match="interrupted"):
        est.fit(X, y)
    monkeypatch.setattr(network.MLP, "gradients", gradients)
    assert 1 <= est.n_iter_ < interrupt_at
    stopped = MLPClassifier(
        hidden_layer_sizes=(8,), solver="lbfgs", max_iter=est.n_iter_, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        stopped.fit(X, y)
    for ours, expected in zip(
        est.coefs_ + est.intercepts_, stopped.coefs_ + stopped.intercepts_, strict=True
    ):
        np.testing.assert_array_equal(ours, expected)
    assert est.loss_ == pytest.approx(stopped.loss_, rel=1e-12)


def test_diverging_fit_with_early_stopping_runs_on_as_scikit_learn():
    """scikit-learn's issue 29504: with early stopping a diverging fit keeps going with
    NaN losses and validation scores until max_iter, then keeps the best weights."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    params = dict(
        hidden_layer_sizes=100,
        activation="identity",
        solver="sgd",
        learning_rate_init=1,
        max_iter=20,
        early_stopping=True,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ours, theirs = fit_both("regressor", X, y, **params)
    assert ours.n_iter_ == theirs.n_iter_ == 20 and ours.t_ == theirs.t_
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-12)
    assert all(isinstance(s, float) for s in ours.validation_scores_)
    assert np.isnan(ours.validation_loss_curve_[-1])
    assert_same_model(ours, theirs, rtol=1e-12)


@pytest.mark.parametrize(
    "params",
    [
        dict(solver="adam"),
        dict(solver="sgd", learning_rate="invscaling", power_t=0.25),
        dict(solver="sgd", learning_rate="adaptive", tol=0.5, max_iter=300),
    ],
    ids=["adam", "invscaling", "adaptive"],
)
def test_learning_rate_is_readable_as_in_scikit_learn(digits, params):
    """learning_rate_ is the schedule's step; _optimizer.learning_rate mirrors scikit-
    learn's private attribute, after fit and after partial_fit."""
    X, y = digits
    X, y = X[:60], y[:60]
    ours, theirs = fit_both("classifier", X, y, hidden_layer_sizes=(4,), random_state=0, **params)
    assert ours._optimizer.learning_rate == pytest.approx(theirs._optimizer.learning_rate, 1e-12)
    if params["solver"] == "sgd":
        assert ours.learning_rate_ == ours._optimizer.learning_rate
    else:
        assert ours.learning_rate_ == ours.learning_rate_init
    ours.partial_fit(X, y)
    theirs.partial_fit(X, y)
    assert ours._optimizer.learning_rate == pytest.approx(theirs._optimizer.learning_rate, 1e-12)
    assert not hasattr(fitted(MLPClassifier, X, y, solver="lbfgs"), "_optimizer")


def test_optimizer_state_continues_on_the_network(digits):
    """optimizer_state() is the estimator's Adam state: to_network() trained on with it
    takes the same step as the estimator's partial_fit."""
    X, y = digits
    X, y = X[:200], y[:200]
    est = fitted(MLPClassifier, X, y, shuffle=False)
    state = est.optimizer_state()
    assert state["optimizer"] == "adam" and state["step"] == 3
    net = est.to_network()
    net.load_optimizer_state(state)
    net.fit(
        X,
        est.engine_targets(y),
        epochs=1,
        lr=est.learning_rate_,
        batch_size=200,
        shuffle=False,
        optimizer="adam",
        l2=est.alpha,
    )
    est.partial_fit(X, y)
    for ours, theirs in zip(net.weights + net.biases, est.coefs_ + est.intercepts_, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert est.optimizer_state()["step"] == 4


def test_explicit_validation_set_replaces_the_split(digits):
    """fit(X_train, y_train, X_val=..., y_val=...) with the rows the validation_fraction
    split would hold out trains as the split does (without shuffling, whose draws the
    split would move), and validation_loss_curve_ comes from X_val."""
    from sklearn.model_selection import train_test_split

    X, y = digits
    X, y = X[:300], y[:300].astype(float)
    params = dict(
        hidden_layer_sizes=(8,), early_stopping=True, shuffle=False, max_iter=30, tol=1e-6
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        split = MLPRegressor(random_state=0, **params).fit(X, y)
        rs = np.random.RandomState(0)
        for fan_in, fan_out in ((64, 8), (8, 1)):  # the initial weights' draws
            rs.uniform(size=(fan_in, fan_out)), rs.uniform(size=fan_out)
        X_tr, X_va, y_tr, y_va = train_test_split(X, y, random_state=rs, test_size=0.1)
        given = MLPRegressor(random_state=0, **params).fit(X_tr, y_tr, X_val=X_va, y_val=y_va)
    assert given.validation_scores_ == split.validation_scores_
    assert given.validation_loss_curve_ == split.validation_loss_curve_
    assert given.n_iter_ == split.n_iter_ and given.t_ == split.t_
    for a, b in zip(given.coefs_, split.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)
    best = int(np.argmax(given.validation_scores_))  # the kept weights' epoch
    assert given.validation_loss_curve_[best] == pytest.approx(
        given.validation_loss(X_va, y_va), rel=1e-12
    )


@pytest.mark.parametrize(
    "cls,kwargs,message",
    [
        ("reg", dict(X_val="X"), "X_val is provided, but y_val"),
        ("reg", dict(y_val="y"), "y_val is provided, but X_val"),
        ("reg", dict(sample_weight_val=np.ones(10)), "sample_weight_val"),
        ("reg-no-es", dict(X_val="X", y_val="y"), "early_stopping=True"),
        ("reg-lbfgs", dict(X_val="X", y_val="y"), "early_stopping=True and solver"),
        ("reg", dict(X_val="X3", y_val="y"), "X_val: X has 3 features"),
        ("reg", dict(X_val="X", y_val="y5"), "y_val has 5 rows but X_val has 10"),
        ("reg", dict(X_val="X", y_val="y2"), "y_val must have 1 target column"),
        ("reg", dict(X_val="X", y_val="ynan"), "y_val contains NaN"),
        ("reg", dict(X_val="X", y_val="y", sample_weight_val=np.ones(3)), "sample_weight_val"),
        ("clf", dict(X_val="X", y_val="unknown"), "y_val has labels not in classes_"),
        ("clf", dict(X_val="X", y_val="y2"), "y_val must hold one label per row"),
    ],
)
def test_explicit_validation_set_errors_name_the_argument(digits, cls, kwargs, message):
    X, y = digits
    data = {
        "X": X[:10],
        "X3": X[:10, :3],
        "y": y[:10],
        "y5": y[:5],
        "y2": np.c_[y[:10], y[:10]],
        "ynan": np.full(10, np.nan),
        "unknown": np.full(10, 99),
    }
    kwargs = {k: data[v] if isinstance(v, str) else v for k, v in kwargs.items()}
    model = {
        "reg": MLPRegressor(early_stopping=True, max_iter=2),
        "reg-no-es": MLPRegressor(max_iter=2),
        "reg-lbfgs": MLPRegressor(early_stopping=True, solver="lbfgs", max_iter=2),
        "clf": MLPClassifier(early_stopping=True, max_iter=2),
    }[cls]
    with pytest.raises(ValueError, match=re.escape(message)):
        model.fit(X[:100], y[:100], **kwargs)
    assert not hasattr(model, "coefs_")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "multiclass"])
def test_explicit_validation_set_scores_the_classifier_on_it(digits, binary):
    X, y = digits
    labels = np.where(y > 4, "big", "small") if binary else y
    X_tr, y_tr, X_va, y_va = X[:300], labels[:300], X[300:400], labels[300:400]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(hidden_layer_sizes=(8,), early_stopping=True, max_iter=20)
        est.fit(X_tr, y_tr, X_val=X_va, y_val=y_va, sample_weight_val=np.ones(100))
    best = int(np.argmax(est.validation_scores_))
    assert est.validation_scores_[best] == est.best_validation_score_ == est.score(X_va, y_va)
    assert est.validation_loss_curve_[best] == pytest.approx(est.validation_loss(X_va, y_va))


def test_pickles_from_before_learning_rate_was_public_continue(digits):
    """An older pickle kept the step size as _learning_rate: partial_fit continues it
    (and the optimizer) instead of starting over."""
    X, y = digits
    est = fitted(MLPClassifier, X[:100], y[:100], solver="sgd", learning_rate="invscaling")
    state = est.__getstate__()
    state["_learning_rate"] = state.pop("learning_rate_")
    old = MLPClassifier.__new__(MLPClassifier)
    old.__setstate__(state)
    assert old.learning_rate_ == est.learning_rate_
    old.partial_fit(X[:100], y[:100])
    est.partial_fit(X[:100], y[:100])
    for a, b in zip(old.coefs_, est.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_negative_sample_weights_train_as_in_scikit_learn(solver, rng):
    X = rng.standard_normal((300, 5))
    weights = rng.uniform(0.2, 2.0, 300)
    weights[:40] *= -0.3
    labels = np.digitize(X[:, 0], [-0.5, 0.5])
    targets = X[:, 1:3] + 0.1 * rng.standard_normal((300, 2))
    for ours, theirs, y in (
        (MLPClassifier, sk.MLPClassifier, labels),
        (MLPRegressor, sk.MLPRegressor, targets),
    ):
        kwargs = dict(hidden_layer_sizes=(7,), max_iter=5, random_state=0, solver=solver)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            a = theirs(**kwargs).fit(X, y, sample_weight=weights)
            b = ours(**kwargs).fit(X, y, sample_weight=weights)
        for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True):
            np.testing.assert_allclose(q, p, rtol=1e-10, atol=1e-12)


def test_sample_weights_that_cancel_out_are_refused():
    X = np.ones((4, 2))
    with pytest.raises(ValueError, match="sample_weight"):
        MLPClassifier(max_iter=2).fit(X, [0, 1, 0, 1], sample_weight=np.zeros(4))
    with pytest.raises(ValueError, match="sample_weight"):
        MLPRegressor(max_iter=2, solver="lbfgs").fit(
            X, [0.0, 1.0, 0.0, 1.0], sample_weight=[1.0, -1.0, 1.0, -1.0]
        )
