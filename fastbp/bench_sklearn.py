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

A "small calls" section (``--small-calls`` runs it alone, in a few seconds) times calls
that do little work, side by side with scikit-learn's nearest call, as the fastest of
``SMALL_REPEATS`` runs of many calls each (``small_calls``).

A "sparse" section (``--sparse`` runs it alone) fits both on a generated text-like
problem in CSR form (``text_like``: 20 topics, Zipf-distributed word frequencies,
L2-normalized log counts; ``--sparse-rows`` x ``--sparse-features`` at
``--sparse-density``, 50,000 x 100,000 at 0.001 is the full size) with scikit-learn's
defaults for ``--sparse-max-iter`` epochs, each fit in a process of its own
(``isolated_compare``), which reports its fit time and its peak memory: the highest
resident set size during the fit above the one before it. The float32 and Poisson
section (``--isolated`` runs it alone) does the same for ``make_classification`` as
float32 and for generated counts with ``MLPRegressor(loss="poisson")`` (``counts``),
``--isolated-max-iter`` epochs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from . import MLP
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


#: Runs of calls per small-call timing (the fastest counts), the seconds each run lasts
#: about, and the pause before each library's runs (``IDLE_S``'s reason, shorter: calls
#: this small barely wake BLAS threads).
SMALL_REPEATS = 5
SMALL_RUN_S = 0.02
SMALL_IDLE_S = 0.1


def _fastest_call(call, repeats):
    """Seconds of one ``call``: the fastest of ``repeats`` runs of as many calls as last
    about ``SMALL_RUN_S`` (the minimum, as ``timeit`` advises: slower runs were
    interrupted)."""
    time.sleep(SMALL_IDLE_S)
    start = time.perf_counter()
    call()
    number = max(1, int(SMALL_RUN_S / max(time.perf_counter() - start, 1e-7)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            call()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def small_calls(stream=print, repeats=SMALL_REPEATS, max_iter=10):
    """Time small calls of fastbp against scikit-learn's nearest ones; returns a list of
    ``{"call", "fastbp", "sklearn", "ratio"}`` (seconds a call, sklearn / fastbp).

    - Construction of ``fastbp.MLP`` (checks every argument and draws the initial
      weights) of [2, 2, 1] and of [64, 128, 10] (9,610 parameters), against
      ``MLPClassifier(hidden_layer_sizes=..., random_state=0)``, which stores its
      arguments only: scikit-learn checks them and draws its weights in ``fit``.
    - ``MLP.set_params(weights, biases)`` of the [64, 128, 10] network (checks shapes and
      values, copies) against the estimator's ``set_params`` of two arguments:
      scikit-learn has no setter of weights (``coefs_`` are assigned unchecked).
    - ``predict`` and ``predict_proba`` of 10 rows of the digits with both estimators'
      ``MLPClassifier``, and ``predict`` with their ``MLPRegressor``, fitted with
      scikit-learn's defaults for ``max_iter`` epochs (a prediction costs the same after
      any number of them).
    """
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SklearnClassifier
    from sklearn.neural_network import MLPRegressor as SklearnRegressor

    from .estimators import MLPClassifier, MLPRegressor

    X, y = load_digits(return_X_y=True)
    rows = X[:10].copy()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        fitted = {
            "fastbp": [
                cls(random_state=0, max_iter=max_iter).fit(X, target)
                for cls, target in ((MLPClassifier, y), (MLPRegressor, y / 9.0))
            ],
            "sklearn": [
                cls(random_state=0, max_iter=max_iter).fit(X, target)
                for cls, target in ((SklearnClassifier, y), (SklearnRegressor, y / 9.0))
            ],
        }
    net = MLP([64, 128, 10], ["relu", "softmax"], "cce", seed=0)
    weights, biases = net.get_params()
    estimator = SklearnClassifier(hidden_layer_sizes=(128,), random_state=0)
    calls = [
        (
            "MLP([2, 2, 1], ...)",
            lambda: MLP([2, 2, 1], ["tanh", "sigmoid"], "bce", seed=0),
            lambda: SklearnClassifier(hidden_layer_sizes=(2,), random_state=0),
        ),
        (
            "MLP([64, 128, 10], ...)",
            lambda: MLP([64, 128, 10], ["relu", "softmax"], "cce", seed=0),
            lambda: SklearnClassifier(hidden_layer_sizes=(128,), random_state=0),
        ),
        (
            "set_params, 9,610 parameters",
            lambda: net.set_params(weights, biases),
            lambda: estimator.set_params(alpha=1e-4, random_state=0),
        ),
    ]
    for name, method, which in (
        ("classifier predict, 10 rows", "predict", 0),
        ("classifier predict_proba, 10 rows", "predict_proba", 0),
        ("regressor predict, 10 rows", "predict", 1),
    ):
        fast, slow = (getattr(fitted[lib][which], method) for lib in ("fastbp", "sklearn"))
        calls.append((name, lambda fast=fast: fast(rows), lambda slow=slow: slow(rows)))
    stream(
        f"\nSmall calls: fastest of {repeats} runs of many calls; scikit-learn's nearest "
        "call beside (see small_calls)\n"
    )
    stream("  call                                  fastbp    sklearn    ratio")
    results = []
    for name, fast, slow in calls:
        row = {
            "call": name,
            "fastbp": _fastest_call(fast, repeats),
            "sklearn": _fastest_call(slow, repeats),
        }
        row["ratio"] = row["sklearn"] / row["fastbp"]
        results.append(row)
        stream(
            f"  {name:34s} {row['fastbp'] * 1e6:7.1f} us {row['sklearn'] * 1e6:7.1f} us "
            f"{row['ratio']:7.2f}x"
        )
    return results


def text_like(rows, features, density, classes=20, seed=0, topical=0.1):
    """A generated text-like classification problem: ``(X, y)``, X a CSR matrix of
    ``rows`` x ``features`` with about ``density`` of its entries stored.

    Each row is a document of one of ``classes`` topics: its words (Poisson many) come
    from a Zipf-like distribution over the vocabulary, a fraction ``topical`` of them from
    its topic's own 2% of the vocabulary (a tenth: scikit-learn's defaults reach about
    90% test accuracy in 5 epochs); entries are ``1 + log(count)``, each row scaled to
    unit length, as ``TfidfVectorizer``'s sublinear, normalized counts (without the idf).
    Frequent words repeat within a document, so the documents are drawn twice: the
    second time longer by the share of repeats the first draw had."""
    words = density * features
    counts, y = _documents(rows, features, words, classes, seed, topical)
    counts, y = _documents(
        rows, features, words * density * rows * features / counts.nnz, classes, seed, topical
    )
    counts.data = 1.0 + np.log(counts.data)
    norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1)).ravel())
    X = counts.multiply(1.0 / np.maximum(norms, 1e-12)[:, None])
    return X.tocsr(), y


def _documents(rows, features, words_per_row, classes, seed, topical):
    """``text_like``'s word counts (CSR) and topics, ``words_per_row`` words on average."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    lengths = np.maximum(1, rng.poisson(words_per_row, rows))
    total = int(lengths.sum())
    rank = np.arange(1, features + 1)
    zipf = 1.0 / rank**1.1
    cumulative = np.cumsum(zipf / zipf.sum())
    words = np.minimum(np.searchsorted(cumulative, rng.uniform(size=total)), features - 1)
    words = rng.permutation(features)[words]  # frequent words spread over the columns
    topical = rng.uniform(size=total) < topical
    topic_size = max(1, features * 2 // 100)
    topic_words = rng.permutation(features)[: classes * topic_size].reshape(classes, -1)
    row_of = np.repeat(np.arange(rows), lengths)
    picks = rng.integers(0, topic_size, total)
    words[topical] = topic_words[y[row_of[topical]] % classes, picks[topical]]
    counts = sp.csr_matrix(
        (np.ones(total), (row_of, words)), shape=(rows, features), dtype=np.float64
    )
    counts.sum_duplicates()
    return counts, y


#: The child process of ``isolated_compare``: loads the split (dense arrays, or CSR
#: matrices), warms the library up on a small fit, then fits once and prints its seconds,
#: peak memory and test score (accuracy, or mean Poisson deviance for ``loss="poisson"``).
FIT_CHILD = r"""
import json, sys, time, warnings
import numpy as np
import scipy.sparse as sp

library, path, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if library == "fastbp":
    import fastbp as source
else:
    import sklearn.neural_network as source
Estimator = getattr(source, spec["estimator"])


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


data = np.load(path)
if "train_data" in data:
    X_train, X_test = (
        sp.csr_matrix((data[p + "_data"], data[p + "_indices"], data[p + "_indptr"]),
                      shape=tuple(data[p + "_shape"]))
        for p in ("train", "test")
    )
else:
    X_train, X_test = data["X_train"], data["X_test"]
y_train, y_test = data["y_train"], data["y_test"]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    # Enough rows for every path a full fit takes (threads included), loaded before.
    Estimator(**dict(spec["params"], max_iter=2)).fit(X_train[:5000], y_train[:5000])
    before = status("VmRSS")
    try:  # reset the peak resident set size (Linux 4.0 on)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    time.sleep(0.5)
    start = time.perf_counter()
    model = Estimator(**spec["params"]).fit(X_train, y_train)
    seconds = time.perf_counter() - start
peak = status("VmHWM")
if spec["params"].get("loss") == "poisson":
    from sklearn.metrics import mean_poisson_deviance

    score = float(mean_poisson_deviance(y_test, model.predict(X_test)))
else:
    score = float(model.score(X_test, y_test))
print(json.dumps({"seconds": seconds, "peak": peak - before if reset else None,
                  "rss_before": before, "epochs": model.n_iter_, "score": score,
                  "dtype": str(model.coefs_[0].dtype)}))
"""


def isolated_compare(title, split, spec, repeats, stream=print):
    """Fit time, peak memory and test score of both libraries' ``spec["estimator"]``
    with ``spec["params"]`` on ``split`` (``X_train, X_test, y_train, y_test``; X dense or
    CSR), each fit in a fresh process (``FIT_CHILD``), the libraries alternating; returns
    a result dict of medians (seconds, bytes) and the last fits' scores."""
    X_train, X_test, y_train, y_test = split
    metric = "mean Poisson deviance" if spec["params"].get("loss") == "poisson" else "accuracy"
    stream(f"\n{title}; each fit in its own process, median of {repeats}\n")
    stream(f"  library     fit time    peak memory during fit    epochs   dtype    {metric}")
    results = {"fastbp": [], "sklearn": []}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "split.npz")
        arrays = {"y_train": y_train, "y_test": y_test}
        for part, matrix in (("train", X_train), ("test", X_test)):
            if hasattr(matrix, "tocsr"):
                matrix = matrix.tocsr()
                arrays.update(
                    {
                        part + "_data": matrix.data,
                        part + "_indices": matrix.indices,
                        part + "_indptr": matrix.indptr,
                        part + "_shape": np.array(matrix.shape),
                    }
                )
            else:
                arrays["X_" + part] = matrix
        np.savez(path, **arrays)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        for _ in range(repeats):
            for library in results:
                done = subprocess.run(
                    [sys.executable, "-c", FIT_CHILD, library, path, json.dumps(spec)],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"the {library} fit failed:\n{done.stderr[-3000:]}")
                results[library].append(json.loads(done.stdout.strip().splitlines()[-1]))
    row = {"problem": title, "rows": X_train.shape[0]}
    for library, runs in results.items():
        peaks = [run["peak"] for run in runs if run["peak"] is not None]
        row[library] = float(np.median([run["seconds"] for run in runs]))
        row[library + "_all"] = [run["seconds"] for run in runs]
        row[library + "_peak"] = float(np.median(peaks)) if peaks else None
        row[library + "_score"] = runs[-1]["score"]
        row[library + "_epochs"] = runs[-1]["epochs"]
        peak = row[library + "_peak"]
        stream(
            f"  {library:8s} {format_seconds(row[library]):>11s} "
            f"{'-' if peak is None else f'{peak / 2**20:,.0f} MiB':>18s}         "
            f"{row[library + '_epochs']:6d}   {runs[-1]['dtype']:8s} "
            f"{row[library + '_score']:.4f}"
        )
    row["ratio"] = row["sklearn"] / row["fastbp"]
    stream(f"  fit time ratio (sklearn / fastbp): {row['ratio']:.1f}x")
    for library in results:
        times = ", ".join(format_seconds(t) for t in row[library + "_all"])
        stream(f"  {library} fits in order: {times}")
    return row


def sparse_compare(rows, features, density, repeats, max_iter, stream=print):
    """``isolated_compare`` of the classifiers on ``text_like`` data (75/25 split) with
    scikit-learn's defaults for ``max_iter`` epochs."""
    from sklearn.model_selection import train_test_split

    X, y = text_like(rows, features, density)
    split = train_test_split(X, y, random_state=0)
    title = (
        f"Sparse: text-like CSR, {rows} x {features} at density {X.nnz / rows / features:.4f} "
        f"({X.nnz} entries), 20 classes; scikit-learn's defaults, max_iter {max_iter}"
    )
    spec = {"estimator": "MLPClassifier", "params": {"random_state": 0, "max_iter": max_iter}}
    row = isolated_compare(title, split, spec, repeats, stream)
    row.update(features=features, nnz=int(X.nnz))
    return row


def counts(rows, features=20, seed=0):
    """A generated count-regression problem: standard normal features and Poisson counts
    whose log-mean is a fixed random nonlinear function of them (a small tanh network)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features))
    hidden = np.tanh(X @ rng.standard_normal((features, 8)) / np.sqrt(features))
    log_mean = hidden @ rng.standard_normal(8) * 0.5 + 0.5
    return X, rng.poisson(np.exp(log_mean)).astype(np.float64)


def dense_compares(rows, repeats, max_iter, stream=print):
    """``isolated_compare`` of the float32 classifier on ``make_classification`` and of the
    Poisson regressor on ``counts``, scikit-learn's defaults otherwise."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    X, y = make_classification(n_samples=rows, random_state=0)
    split = train_test_split(X.astype(np.float32), y, random_state=0)
    params = {"random_state": 0, "max_iter": max_iter}
    results = [
        isolated_compare(
            f"float32: make_classification {rows} as float32, MLPClassifier defaults, "
            f"max_iter {max_iter}",
            split,
            {"estimator": "MLPClassifier", "params": params},
            repeats,
            stream,
        )
    ]
    X, y = counts(rows)
    results.append(
        isolated_compare(
            f"Poisson: generated counts, {rows} x 20, MLPRegressor(loss='poisson') defaults, "
            f"max_iter {max_iter}",
            train_test_split(X, y, random_state=0),
            {"estimator": "MLPRegressor", "params": dict(params, loss="poisson")},
            repeats,
            stream,
        )
    )
    return results


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
    parser.add_argument(
        "--small-calls",
        action="store_true",
        help="time the small calls alone (construction, set_params, predictions)",
    )
    parser.add_argument(
        "--sparse", action="store_true", help="run the sparse (text-like CSR) problem alone"
    )
    parser.add_argument(
        "--isolated",
        action="store_true",
        help="run the float32 and Poisson problems alone (each fit in its own process, "
        "with its peak memory)",
    )
    parser.add_argument(
        "--isolated-max-iter", type=int, default=20, help="epochs of those fits (20)"
    )
    parser.add_argument(
        "--sparse-rows", type=int, default=20_000, help="rows of the sparse problem (20000)"
    )
    parser.add_argument(
        "--sparse-features",
        type=int,
        default=50_000,
        help="columns of the sparse problem (50000; 100000 with 50000 rows is the full size)",
    )
    parser.add_argument(
        "--sparse-density", type=float, default=0.001, help="stored fraction (0.001)"
    )
    parser.add_argument(
        "--sparse-max-iter", type=int, default=5, help="epochs of the sparse fits (5)"
    )
    args = parser.parse_args(argv)
    if args.small_calls:
        return small_calls()
    sparse = (
        args.sparse_rows,
        args.sparse_features,
        args.sparse_density,
        args.repeats,
        args.sparse_max_iter,
    )
    if args.sparse:
        return sparse_compare(*sparse)
    if args.isolated:
        return dense_compares(args.rows, args.repeats, args.isolated_max_iter)
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
    small_calls()
    sparse_compare(*sparse)
    dense_compares(args.rows, args.repeats, args.isolated_max_iter)
    return rows


if __name__ == "__main__":
    main()
