"""The ``fastbp`` command: train a network on a data file, or predict with a saved one.

``fastbp train [DATA]`` reads a CSV, ``.npy``, ``.npz`` or Parquet table (without DATA,
the digits shipped with scikit-learn), holds out a validation share, standardizes the
features, trains ``fastbp.MLPClassifier`` or ``fastbp.MLPRegressor`` one epoch at a time
with a progress bar, and prints the train and validation scores, the time and the speedup
over plain NumPy (``fastbp.reference``) measured on a slice of the data. ``--out`` saves
the model (``fastbp.persistence`` format, with the labels and scaling as metadata);
Ctrl-C stops after the running epoch and still saves it.

``fastbp predict MODEL DATA`` writes one prediction per row, to stdout or ``--out``.

Bad input gets a one-line error and exit status 1; an interrupted training exits 130.
"""

import argparse
import signal
import sys
import threading
import time
import warnings

import numpy as np

from . import persistence
from ._tables import DataError, read_table

EPILOG = "Without DATA, train trains on the digits shipped with scikit-learn."


class CommandError(Exception):
    """A problem with the command's arguments, reported as one line."""


# ---------------------------------------------------------------- arguments


def _hidden_sizes(text):
    if text.strip() in ("", "0", "none"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 64,64; got {text!r}") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be positive; got {text!r}")
    return sizes


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
        return value

    return parse


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1); got {text!r}")
    return value


def _parser():
    parser = argparse.ArgumentParser(prog="fastbp", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a network on a data file",
                                description="Train a network; prints scores, time and "
                                            "the speedup over plain NumPy.", epilog=EPILOG)
    train.add_argument("data", nargs="?", help="CSV, .npy, .npz or .parquet table")
    train.add_argument("--target", help="target column: a name or an index (default: the "
                                        "last column; a .npz with X and y uses y)")
    train.add_argument("--task", choices=("auto", "classify", "regress"), default="auto",
                       help="auto: classify integer targets with at most 50 values")
    train.add_argument("--hidden", type=_hidden_sizes, default=(64, 64),
                       help="hidden layer widths, comma separated (default 64,64)")
    train.add_argument("--activation", choices=("relu", "tanh", "logistic", "identity"),
                       default="relu")
    train.add_argument("--solver", choices=("adam", "sgd", "lbfgs"), default="adam")
    train.add_argument("--epochs", type=_positive(int), default=30,
                       help="epochs (lbfgs: iterations); default 30")
    train.add_argument("--batch-size", type=_positive(int), default=64,
                       help="mini-batch size (default 64)")
    train.add_argument("--lr", type=_positive(float), default=1e-3,
                       help="learning rate (default 0.001)")
    train.add_argument("--alpha", type=float, default=1e-4, help="L2 penalty (default 0.0001)")
    train.add_argument("--seed", type=int, default=0,
                       help="seed of the weights, split and batch order (default 0)")
    train.add_argument("--validation", type=_fraction, default=0.1,
                       help="share of rows held out for validation (default 0.1)")
    train.add_argument("--no-scale", action="store_true",
                       help="do not standardize the features")
    train.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    train.add_argument("--out", help="save the model to this .npz file")
    train.add_argument("--plot", help="save the loss curves to this image (needs matplotlib)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=train_command)

    predict = commands.add_parser("predict", help="predict with a saved model")
    predict.add_argument("model", help="model file written by fastbp train --out")
    predict.add_argument("data", help="CSV, .npy, .npz or .parquet table of features")
    predict.add_argument("--out", help="write here (.npy or CSV) instead of stdout")
    predict.add_argument("--proba", action="store_true",
                         help="class probabilities instead of labels")
    predict.add_argument("--by-position", action="store_true",
                         help="take DATA's columns in order, ignoring their names (by default "
                              "they are matched to the model's by name)")
    predict.set_defaults(run=predict_command)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status (0, 1 on bad input, 130 on Ctrl-C)."""
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings()
            return args.run(args)
    except (CommandError, DataError) as error:
        return _fail(str(error))
    except ImportError as error:
        return _fail(f"{error.name or error} is needed for this command: "
                     "pip install 'fastbp[cli]'")
    except (ValueError, TypeError, OSError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        print("fastbp: interrupted", file=sys.stderr)
        return 130


def _one_line_warnings():
    """A ``warnings.showwarning`` that prints each distinct warning once, as one
    ``fastbp: warning:`` line without the source line that raised it."""
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text not in shown:
            shown.add(text)
            print("fastbp: warning: " + text, file=sys.stderr)

    return show


def _fail(message):
    print("fastbp: error: " + " ".join(str(message).split()), file=sys.stderr)
    return 1


# ---------------------------------------------------------------- train


def _load_training_data(args):
    """Features ``(n, d)``, targets ``(n,)``, feature names and the target name."""
    if args.data is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        names = [f"pixel_{i}" for i in range(digits.data.shape[1])]
        return digits.data.astype(np.float64), digits.target.astype(np.float64), names, "digit"
    table = read_table(args.data)
    # A table without column names gives a model without them: predict then matches
    # columns by position, as there is nothing to match by name.
    kept = table.names if table.named else []
    if table.target is not None and args.target in (None, "y"):
        return table.values, table.target, kept, "y"
    index = table.column("-1" if args.target is None else args.target)
    if len(table.names) < 2:
        raise DataError(f"{args.data} has only the target column; no features to train on")
    X = np.delete(table.values, index, axis=1)
    names = [n for i, n in enumerate(kept) if i != index]
    return X, table.values[:, index], names, table.names[index]


def _choose_task(task, y):
    integral = bool(np.all(y == np.round(y)))
    if task == "auto":
        task = "classify" if integral and np.unique(y).size <= 50 else "regress"
    if task == "classify":
        if not integral:
            raise DataError("the target column holds non-integer values; classification "
                            "needs class labels (use --task regress)")
        if np.unique(y).size < 2:
            raise DataError("the target column holds a single value; nothing to classify")
    return task


class _StopOnInterrupt:
    """The first Ctrl-C asks training to stop after the running epoch; a second one
    interrupts at once. Active in the main thread only (where signals arrive)."""

    def __init__(self):
        self.requested = False
        self.forced = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True
        print("\nfastbp: stopping after this epoch (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _warm_up(dtype):
    """Compile (or load from numba's cache) the engine before any timing, saying so when
    it takes long, so the first epoch neither looks hung nor skews the times."""
    from ._engine import config
    from .network import MLP

    notice = threading.Timer(2.0, lambda: print(
        "fastbp: compiling the engine (first run only; later runs load it from the cache)",
        file=sys.stderr, flush=True))
    notice.start()
    try:
        net = MLP([2, 2, 2], ["relu", "softmax"], "cce", dtype=dtype)
        # One batch large enough to spread over threads, so that the parallel region
        # compiles here too (the engine compiles it only for runs that may use it).
        rows = max(4096, -(-config.PARALLEL_MIN_MACS // (3 * net.n_params)))
        net.fit(np.zeros((rows, 2)), np.arange(rows) % 2, epochs=1, lr=0.1,
                order=np.arange(rows), optimizer="adam")
    finally:
        notice.cancel()


def _progress(args, epochs):
    if args.no_progress or epochs < 2:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=epochs, unit="epoch", delay=1.0, file=sys.stderr, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")


def _speedup(est, X, y, args):
    """Time two epochs of the same network with ``fastbp.reference`` and with fastbp on
    the first 2,000 training rows (median of three runs each); returns (rows, ratio)."""
    from . import reference
    from .network import MLP

    n = min(len(X), 2000)
    X_slice = np.ascontiguousarray(X[:n], dtype=est.coefs_[0].dtype)
    net = est.to_network()
    targets = est.engine_targets(y[:n])
    settings = dict(epochs=2, lr=args.lr, batch_size=args.batch_size,
                    optimizer=est.engine_optimizer() if args.solver != "lbfgs" else "adam")

    def timed(cls):
        times = []
        for _ in range(3):
            model = cls(net.layer_sizes, net.activations, net.loss_name, dtype=net.dtype, seed=0)
            start = time.perf_counter()
            model.fit(X_slice, targets, **settings)
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    return n, timed(reference.MLP) / timed(MLP)


def train_command(args):
    if args.plot:
        import matplotlib  # noqa: F401  (fail before training, not after)
    if args.alpha < 0:
        raise CommandError(f"--alpha must be non-negative; got {args.alpha}")
    from sklearn.model_selection import train_test_split

    from .estimators import MLPClassifier, MLPRegressor

    X, y, feature_names, target_name = _load_training_data(args)
    task = _choose_task(args.task, y)
    source = args.data or "scikit-learn's digits"
    stratify = None
    if task == "classify":
        counts = np.unique(y, return_counts=True)[1]
        stratify = y if counts.min() >= 2 else None
    n_val = int(np.ceil(args.validation * len(y))) if args.validation > 0 else 0
    if n_val and (n_val >= len(y) or (stratify is not None and n_val < counts.size)):
        n_val, stratify = 0, None
    if n_val:
        X_train, X_val, y_train, y_val = train_test_split(
            X, y, test_size=n_val, random_state=args.seed, stratify=stratify)
    else:
        X_train, y_train, X_val, y_val = X, y, None, None
    mean = np.zeros(X.shape[1]) if args.no_scale else X_train.mean(axis=0)
    scale = np.ones(X.shape[1]) if args.no_scale else X_train.std(axis=0)
    scale[scale == 0] = 1.0
    X_train = (X_train - mean) / scale
    X_val = None if X_val is None else (X_val - mean) / scale

    cls = MLPClassifier if task == "classify" else MLPRegressor
    est = cls(hidden_layer_sizes=args.hidden, activation=args.activation, solver=args.solver,
              alpha=args.alpha, batch_size=args.batch_size, learning_rate_init=args.lr,
              max_iter=args.epochs, random_state=np.random.RandomState(args.seed),
              dtype=args.dtype)
    classes = np.unique(y) if task == "classify" else None
    _warm_up(np.dtype(args.dtype))
    n_out = 1 if task == "regress" or classes.size == 2 else classes.size
    sizes = "-".join(str(s) for s in (X.shape[1], *args.hidden, n_out))
    print(f"fastbp: training a {sizes} {args.activation} network ({args.solver}, "
          f"{'classification' if task == 'classify' else 'regression'} of {target_name!r}) "
          f"on {len(y_train)} rows of {source}"
          + (f", validating on {len(y_val)}" if n_val else ""), flush=True)

    curves = {"train": [], "validation": []}
    stopper = _StopOnInterrupt()
    snapshot = None
    start = time.perf_counter()
    if args.solver == "lbfgs":
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="lbfgs failed to converge")
            est.fit(X_train, y_train)
        epochs_done = est.n_iter_
        curves["train"].append(est.loss_)
    else:
        bar = _progress(args, args.epochs)
        epochs_done = 0
        with stopper:
            try:
                for _ in range(args.epochs):
                    if stopper.requested:
                        break
                    if task == "classify":
                        est.partial_fit(X_train, y_train, classes=classes)
                    else:
                        est.partial_fit(X_train, y_train)
                    if stopper.forced:
                        break
                    epochs_done += 1
                    snapshot = ([c.copy() for c in est.coefs_],
                                [b.copy() for b in est.intercepts_])
                    curves["train"].append(est.loss_)
                    if X_val is not None:
                        curves["validation"].append(est.validation_loss(X_val, y_val))
                    if bar is not None:
                        elapsed = time.perf_counter() - start
                        postfix = {"loss": f"{est.loss_:.4f}"}
                        if curves["validation"]:
                            postfix["val"] = f"{curves['validation'][-1]:.4f}"
                        postfix["samples/s"] = f"{epochs_done * len(y_train) / elapsed:,.0f}"
                        bar.set_postfix(postfix, refresh=False)
                        bar.update(1)
            except KeyboardInterrupt:
                stopper.requested = True
            finally:
                if bar is not None:
                    bar.close()
        if snapshot is None:
            print("fastbp: interrupted before the first epoch finished; nothing saved",
                  file=sys.stderr)
            return 130
        est.coefs_, est.intercepts_ = snapshot
    seconds = time.perf_counter() - start
    interrupted = stopper.requested or stopper.forced

    metric = "accuracy" if task == "classify" else "R^2"
    print(f"  epochs {epochs_done}, time {seconds:.2f} s "
          f"({epochs_done * len(y_train) / max(seconds, 1e-9):,.0f} samples/s)"
          if args.solver != "lbfgs" else f"  lbfgs iterations {epochs_done}, "
                                          f"time {seconds:.2f} s")
    line = f"  train {metric} {est.score(X_train, y_train):.4f}"
    if X_val is not None:
        line += f", validation {metric} {est.score(X_val, y_val):.4f}"
    print(line)
    rows, ratio = _speedup(est, X_train, y_train, args)
    print(f"  speedup over plain NumPy (fastbp.reference, 2 epochs on {rows} rows): {ratio:.1f}x")
    if args.out:
        _save_model(est, args.out, task, feature_names, target_name, mean, scale, epochs_done)
        print(f"  model saved to {args.out}")
    if args.plot:
        _plot(curves, args.plot, est.loss_curve_ if args.solver != "lbfgs" else None)
        print(f"  loss curves saved to {args.plot}")
    if interrupted:
        print(f"fastbp: interrupted; kept the model of epoch {epochs_done}", file=sys.stderr)
        return 130
    return 0


def _save_model(est, path, task, feature_names, target_name, mean, scale, epochs):
    metadata = {"task": task, "features": np.array(feature_names), "target": target_name,
                "mean": mean, "scale": scale, "epochs": epochs}
    if task == "classify":
        metadata["classes"] = np.asarray(est.classes_, dtype=np.float64)
    persistence.save(est.to_network(), path, metadata=metadata)


def _plot(curves, path, loss_curve):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    train = curves["train"] if loss_curve is None else loss_curve
    axes.plot(np.arange(1, len(train) + 1), train, label="training loss")
    if curves["validation"]:
        axes.plot(np.arange(1, len(curves["validation"]) + 1), curves["validation"],
                  label="validation loss")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# ---------------------------------------------------------------- predict


def predict_command(args):
    try:
        net = persistence.load(args.model)
        metadata = persistence.read_metadata(args.model)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from None
    table = read_table(args.data)
    names = [str(n) for n in metadata.get("features", [])]
    X = table.select(names, net.layer_sizes[0], by_position=args.by_position)
    if "mean" in metadata:
        X = (X - metadata["mean"]) / metadata["scale"]
    out = net.forward(X)
    target = str(metadata.get("target", "prediction"))
    task = str(metadata.get("task", ""))
    if task == "classify" and not args.proba:
        classes = metadata["classes"]
        index = out.argmax(axis=1) if out.shape[1] > 1 else (out[:, 0] > 0.5).astype(int)
        values, header = classes[index].reshape(-1, 1), [target]
    elif task == "classify":
        classes = metadata["classes"]
        values = np.column_stack([1 - out[:, 0], out[:, 0]]) if out.shape[1] == 1 else out
        header = [f"P({_format(c)})" for c in classes]
    else:
        values = out
        header = [target] if out.shape[1] == 1 else [f"{target}{i}" for i in range(out.shape[1])]
    _write(values, header, args.out)
    return 0


def _format(value):
    value = float(value)
    return str(int(value)) if value == int(value) else repr(value)


def _write(values, header, path):
    if path and path.lower().endswith(".npy"):
        np.save(path, values if values.shape[1] > 1 else values.ravel())
        return
    lines = [",".join(header)] + [",".join(_format(v) for v in row) for row in values]
    text = "\n".join(lines) + "\n"
    if path:
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    sys.exit(main())
