"""``python -m fastbp.bench_bits``: a fingerprint of what fastbp computes, to compare before
and after a change that must not change results (a refactor, a new code path).

For every row of the benchmark grid (``fastbp._grid``, on at most 3,000 rows and 3 epochs),
both dtypes, every optimizer, in row order and shuffled with L2, it trains a network and
prints a SHA-256 prefix of its weights, biases and loss history; then of one gradient and
forward pass per row, and of scikit-learn-style estimators on the digits data. Run it on
both versions and ``diff`` the outputs: the same bits give the same lines. Bits may differ
between CPUs (vector widths), so compare runs on one machine.
"""

import hashlib
import warnings

import numpy as np

from . import MLP
from ._grid import GRID, make_data

ROWS = 3000
EPOCHS = 3
NOTEBOOK_EPOCHS = 200
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


def fingerprint(*arrays):
    """The first 16 hex digits of the SHA-256 of the arrays' bytes."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def grid_lines():
    """``(label, fingerprint)`` of every grid row, dtype and optimizer."""
    for row in GRID:
        n = min(row.n_rows, ROWS)
        epochs = min(row.epochs, EPOCHS) if row.name != "notebook" else NOTEBOOK_EPOCHS
        for dtype in (np.float32, np.float64):
            X, Y = make_data(row, dtype, n_rows=n)
            name = np.dtype(dtype).name
            for optimizer in OPTIMIZERS:
                for shuffle in (False, True):
                    net = MLP(row.sizes, row.activations, row.loss, dtype=dtype, seed=3)
                    history = net.fit(
                        X,
                        Y,
                        epochs=epochs,
                        lr=row.lr if optimizer != "adam" else 0.001,
                        batch_size=row.batch_size,
                        optimizer=optimizer,
                        shuffle=shuffle,
                        l2=1e-4 if shuffle else 0.0,
                    )
                    weights, biases = net.get_params()
                    yield (
                        f"{row.name:10s} {name} {optimizer:8s} shuffle={shuffle!s:5s}",
                        fingerprint(*weights, *biases, history),
                    )
            net = MLP(row.sizes, row.activations, row.loss, dtype=dtype, seed=3)
            loss, dWs, dbs = net.gradients(X[:500], Y[:500], l2=1e-3)
            yield (
                f"{row.name:10s} {name} gradients+forward      ",
                fingerprint(np.array([loss]), *dWs, *dbs, net.forward(X[:700])),
            )


def estimator_lines():
    """``(label, fingerprint)`` of the estimators on digits, for each solver and dtype."""
    from sklearn.datasets import load_digits

    from .estimators import MLPClassifier, MLPRegressor

    X, y = load_digits(return_X_y=True)
    X = X / 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for solver in ("adam", "sgd", "lbfgs"):
            for dtype in (np.float64, np.float32):
                clf = MLPClassifier(solver=solver, max_iter=15, random_state=0)
                clf.fit(X.astype(dtype), y)
                curve = [clf.loss_] if solver == "lbfgs" else clf.loss_curve_
                yield (
                    f"MLPClassifier digits {solver} {np.dtype(dtype).name}",
                    fingerprint(*clf.coefs_, *clf.intercepts_, np.array(curve)),
                )
        reg = MLPRegressor(max_iter=20, random_state=0, early_stopping=True)
        reg.fit(X, y.astype(float))
        yield "MLPRegressor digits adam ES", fingerprint(*reg.coefs_, *reg.intercepts_)


def main():
    for label, value in (*grid_lines(), *estimator_lines()):
        print(label, value, flush=True)


if __name__ == "__main__":
    main()
