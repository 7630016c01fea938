"""``python -m fastbp.bench_sklearn``: fit time of ``fastbp.MLPClassifier`` against
scikit-learn's ``MLPClassifier``, both with scikit-learn's default hyperparameters.

Four problems: two small tables shipped with scikit-learn, standardized as its user guide
advises for MLPs (iris, 150 rows, and breast_cancer, 569), where a fit is mostly fixed
costs per epoch; the digits (1,797 images of 8x8 pixels); and a generated binary problem
(``make_classification``, 100,000 rows by default). Both
estimators get the same ``random_state``, so they train the same network along the same
trajectory and reach the same accuracy; the script prints the median fit time of each,
their ratio and both test accuracies. Each fit starts after a pause, as in
``fastbp.bench``: scikit-learn's BLAS threads keep waiting for work after its fits, and
beside them the engine's threads wait for a core (digits took 270 ms instead of 196).
``--solver`` times sgd or lbfgs instead of adam, ``--early-stopping`` stops on a
held-out score.
"""

import argparse
import time
import warnings

import numpy as np

from .bench import IDLE_S, format_seconds


def _fit(make, X, y):
    from sklearn.exceptions import ConvergenceWarning

    estimator = make()
    time.sleep(IDLE_S)  # the other library's threads stop spinning first (bench.py)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        estimator.fit(X, y)
    return time.perf_counter() - start, estimator


def compare(name, X, y, repeats, max_iter=200, stream=print, solver="adam", early_stopping=False):
    """Time both estimators on a 75/25 split of ``X``, ``y``; returns a result dict.

    Fits alternate between the two libraries, so load from other processes on a shared
    machine falls on both alike; the medians are compared."""
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier as SklearnMLP

    from .estimators import MLPClassifier

    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    row = {"problem": name, "rows": len(X_train)}
    times = {"fastbp": [], "sklearn": []}
    for _ in range(repeats):
        for label, cls in (("fastbp", MLPClassifier), ("sklearn", SklearnMLP)):
            seconds, fitted = _fit(
                lambda cls=cls: cls(
                    random_state=0, max_iter=max_iter, solver=solver, early_stopping=early_stopping
                ),
                X_train,
                y_train,
            )
            times[label].append(seconds)
            row[label + "_accuracy"] = float(fitted.score(X_test, y_test))
            row[label + "_epochs"] = fitted.n_iter_
    for label, values in times.items():
        row[label] = float(np.median(values))
    row["ratio"] = row["sklearn"] / row["fastbp"]
    stream(
        f"  {name:28s} {row['rows']:7d} {row['fastbp_epochs']:6d} "
        f"{format_seconds(row['fastbp']):>11s} {format_seconds(row['sklearn']):>10s} "
        f"{row['ratio']:7.1f}x   "
        f"{row['fastbp_accuracy']:.4f} / {row['sklearn_accuracy']:.4f}"
    )
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastbp.bench_sklearn", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--rows", type=int, default=100_000, help="rows of the generated problem (default 100000)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per estimator")
    parser.add_argument(
        "--max-iter", type=int, default=200, help="epoch limit (scikit-learn's default 200)"
    )
    parser.add_argument(
        "--solver",
        choices=("adam", "sgd", "lbfgs"),
        default="adam",
        help="both estimators' solver (scikit-learn's default adam)",
    )
    parser.add_argument(
        "--early-stopping",
        action="store_true",
        help="hold out 10%% of the training rows and stop on their score",
    )
    args = parser.parse_args(argv)
    options = {"solver": args.solver, "early_stopping": args.early_stopping}

    import numba
    from sklearn.datasets import load_breast_cancer, load_digits, load_iris, make_classification

    from .estimators import MLPClassifier

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Batches of 200 rows through 100 hidden units spread over threads, as the timed
        # fits' do: the engine's parallel region compiles here too.
        MLPClassifier(max_iter=1).fit(np.eye(400, 4), np.arange(400) % 2)
    print(f"Engine ready in {time.perf_counter() - start:.1f} s (compiled once, then cached)")
    print(f"CPU threads: fastbp (numba) {numba.get_num_threads()}")
    stopping = ", early stopping" if args.early_stopping else ""
    print(
        f"MLPClassifier, scikit-learn's defaults: (100,) relu, {args.solver}, batch 200, "
        f"max_iter {args.max_iter}, tol 1e-4{stopping}; median of {args.repeats} fits\n"
    )
    print(
        "  problem                         rows epochs    fastbp    sklearn   ratio"
        "   accuracy fastbp / sklearn"
    )
    rows = []
    for name, load in (("iris", load_iris), ("breast_cancer", load_breast_cancer)):
        X, y = load(return_X_y=True)
        X = (X - X.mean(axis=0)) / X.std(axis=0)
        rows.append(compare(f"{name} (standardized)", X, y, args.repeats, args.max_iter, **options))
    X, y = load_digits(return_X_y=True)
    rows.append(compare("digits", X, y, args.repeats, args.max_iter, **options))
    X, y = make_classification(n_samples=args.rows, random_state=0)
    rows.append(
        compare(f"make_classification {args.rows}", X, y, args.repeats, args.max_iter, **options)
    )
    return rows


if __name__ == "__main__":
    main()
