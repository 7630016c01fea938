"""The ``fastbp`` command: train a network on a data file, or predict with a saved one.

``fastbp train [DATA]`` reads a CSV, ``.npy``, ``.npz`` or Parquet table (without DATA,
the digits shipped with scikit-learn; Parquet, a file or a folder, is streamed through a
scratch file, never held in memory), holds out a validation share, standardizes the
features, trains ``fastbp.MLPClassifier`` or ``fastbp.MLPRegressor`` one epoch at a time
with a progress bar, and prints the train and validation scores and the time (with
``--compare-numpy``, also the speedup over plain NumPy, ``fastbp.reference``, measured on
a slice of the data). ``--out`` saves the model (``fastbp.persistence`` format, with the
labels and the scaling of features and regression target as metadata). Output paths are
checked before any work starts. Ctrl-C stops after the running epoch; a second Ctrl-C or
SIGTERM stops at once; either way the last finished epoch's model is saved.
``--checkpoint`` writes the trainer's state every few epochs and resumes a run that was
stopped or killed, to the bits of an uninterrupted one.

``fastbp predict MODEL DATA`` writes one prediction per row, to stdout or ``--out``.

Exit status: 0 done, 1 bad input (a one-line error), 2 usage, 130 interrupted (143 by
SIGTERM); ``EXIT_STATUS`` below is what ``--help`` shows.
"""

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import warnings

import numpy as np

from . import _files, _scaling, persistence
from ._tables import (
    PARQUET_SUFFIXES,
    DataError,
    MappedColumns,
    Table,
    mapped_npy,
    read_table,
    refuse_non_finite,
)

EXIT_STATUS = """exit status:
  0    done
  1    bad input: a data or model file, an output path, an option that does not apply
  2    usage: an unknown option or a malformed value
  130  interrupted by Ctrl-C (143: by SIGTERM); a model of a finished epoch is kept"""

EPILOG = "Without DATA, train trains on the digits shipped with scikit-learn.\n\n" + EXIT_STATUS


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


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {2**32 - 1}; got {text!r}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1); got {text!r}")
    return value


def _parser():
    parser = argparse.ArgumentParser(
        prog="fastbp",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train a network on a data file",
        description="Train a network; prints its scores and time.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument(
        "data", nargs="?", help="CSV, .npy, .npz or .parquet table, or a folder of .parquet files"
    )
    train.add_argument(
        "--target",
        help="target column: a name or an index (default: the "
        "last column; a .npz with X and y uses y)",
    )
    train.add_argument(
        "--task",
        choices=("auto", "classify", "regress"),
        default="auto",
        help="auto: classify integer targets with at most 50 values",
    )
    train.add_argument(
        "--hidden",
        type=_hidden_sizes,
        default=(64, 64),
        help="hidden layer widths, comma separated (default 64,64)",
    )
    train.add_argument(
        "--activation", choices=("relu", "tanh", "logistic", "identity"), default="relu"
    )
    train.add_argument(
        "--loss",
        choices=("squared_error", "poisson"),
        default="squared_error",
        help="regression loss; poisson: counts, with a log link (the target is not "
        "standardized, and --task auto regresses)",
    )
    train.add_argument("--solver", choices=("adam", "sgd", "lbfgs"), default="adam")
    train.add_argument(
        "--epochs", type=_positive(int), default=30, help="epochs (lbfgs: iterations); default 30"
    )
    train.add_argument(
        "--batch-size", type=_positive(int), default=None, help="mini-batch size (default 64)"
    )
    train.add_argument(
        "--lr", type=_positive(float), default=1e-3, help="learning rate (default 0.001)"
    )
    train.add_argument("--alpha", type=float, default=1e-4, help="L2 penalty (default 0.0001)")
    train.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the weights, split and batch order (default 0)",
    )
    train.add_argument(
        "--validation",
        type=_fraction,
        default=0.1,
        help="share of rows held out for validation (default 0.1)",
    )
    train.add_argument(
        "--no-scale",
        action="store_true",
        help="do not standardize the features (nor a regression target)",
    )
    train.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    train.add_argument("--out", help="save the model to this .npz file")
    train.add_argument(
        "--plot",
        help="save the loss curves to this image, its format named "
        "by the extension: .png, .pdf, .svg, ... (needs "
        "matplotlib)",
    )
    train.add_argument(
        "--checkpoint",
        help="write the training state to this file every --checkpoint-every epochs; if it "
        "holds this run's state, resume from it (a checkpoint holds a pickle of the "
        "estimator: resume only your own)",
    )
    train.add_argument(
        "--checkpoint-every",
        type=_positive(int),
        default=1,
        help="epochs between checkpoints (default 1)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--compare-numpy",
        action="store_true",
        help="also time the network against plain NumPy (fastbp.reference) and print the speedup",
    )
    train.set_defaults(run=train_command)

    predict = commands.add_parser(
        "predict",
        help="predict with a saved model",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("model", help="model file written by fastbp train --out")
    predict.add_argument("data", help="CSV, .npy, .npz or .parquet table of features")
    predict.add_argument(
        "--out",
        help="write here instead of stdout: .npy, or CSV to .csv, "
        ".txt or a name without an extension",
    )
    predict.add_argument(
        "--proba", action="store_true", help="class probabilities instead of labels"
    )
    predict.add_argument(
        "--by-position",
        action="store_true",
        help="take DATA's columns in order, ignoring their names (by default "
        "they are matched to the model's by name)",
    )
    predict.set_defaults(run=predict_command)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status (``EXIT_STATUS``)."""
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings()
            return args.run(args)
    except (CommandError, DataError) as error:
        return _fail(str(error))
    except ImportError as error:
        return _fail(f"{error.name or error} is needed for this command: pip install 'fastbp[cli]'")
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


# ---------------------------------------------------------------- outputs

#: What ``fastbp predict --out`` writes, by extension: NumPy's format, or CSV text.
PREDICTION_FORMATS = {".npy": "npy", ".csv": "csv", ".txt": "csv", "": "csv"}


def _same_file(a, b):
    """Whether paths ``a`` and ``b`` name one file (links and ``..`` resolved)."""
    if os.path.exists(a) and os.path.exists(b):
        try:
            return os.path.samefile(a, b)
        except OSError:
            pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _plot_formats():
    from matplotlib.backend_bases import FigureCanvasBase

    return FigureCanvasBase.get_supported_filetypes()


def _format_error(option, path, kind):
    """Why ``path`` cannot hold ``kind`` (``model``, ``plot`` or ``predictions``), or None."""
    extension = os.path.splitext(path)[1].lower()
    if kind == "model" and extension != ".npz":
        return f"{option} {path}: a model is saved as .npz; name a file ending in .npz"
    if kind == "plot":
        formats = _plot_formats()
        if extension.lstrip(".") not in formats:
            known = ", ".join("." + name for name in sorted(formats))
            what = (
                f"matplotlib cannot write {extension} images"
                if extension
                else "name the image format with an extension"
            )
            return f"{option} {path}: {what} (it writes {known})"
    if kind == "predictions" and extension not in PREDICTION_FORMATS:
        return (
            f"{option} {path}: predictions are written as .npy, or as CSV to .csv, .txt "
            "or a name without an extension"
        )
    return None


def _check_outputs(outputs, inputs):
    """Refuse, before any work starts, an output that could not be written or would
    overwrite an input or another output: ``outputs`` holds ``(option, path, kind)`` and
    ``inputs`` ``(description, path)``, paths as the user typed them; None is skipped."""
    outputs = [(option, path, kind) for option, path, kind in outputs if path is not None]
    inputs = [(what, path) for what, path in inputs if path is not None]
    for i, (option, path, kind) in enumerate(outputs):
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            reason = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
            raise CommandError(f"{option} {path}: the folder {folder} {reason}")
        if os.path.isdir(path):
            raise CommandError(f"{option} {path} is a folder; name a file in it")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CommandError(f"{option} {path}: the folder {folder} is not writable")
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise CommandError(f"{option} {path}: the file is read-only")
        for what, source in inputs:
            if _same_file(path, source):
                raise CommandError(
                    f"{option} {path} is {what}; writing there would replace "
                    "it (choose another path)"
                )
        for other_option, other, _ in outputs[:i]:
            if _same_file(path, other):
                raise CommandError(
                    f"{option} {path} is the same file as {other_option} "
                    f"{other}; give them different paths"
                )
        error = _format_error(option, path, kind)
        if error:
            raise CommandError(error)


# ---------------------------------------------------------------- train


def _load_training_data(args):
    """Features ``(n, d)``, targets ``(n,)``, feature names and the target name."""
    if args.data is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        names = [f"pixel_{i}" for i in range(digits.data.shape[1])]
        return digits.data.astype(np.float64), digits.target.astype(np.float64), names, "digit"
    if _is_parquet(args.data):
        return _parquet_training_data(args.data, args.target)
    if args.data.lower().endswith(".npy"):
        return _npy_training_data(args.data, args.target)
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


def _is_parquet(path):
    """Whether ``path`` names a Parquet file or a folder (of Parquet files)."""
    return os.path.isdir(path) or os.path.splitext(path)[1].lower() in PARQUET_SUFFIXES


def _parquet_training_data(path, target):
    """As ``_load_training_data``, for Parquet: the target column is read whole, the
    features stay on disk as ``ParquetColumns``, read a block at a time."""
    from .parquet import ParquetColumns

    table = ParquetColumns(path)  # every column must be numeric, as in a table in memory
    names = table.names
    index = Table(names, np.empty((0, len(names)))).column("-1" if target is None else target)
    if len(names) < 2:
        raise DataError(f"{path} has only the target column; no features to train on")
    features = [name for i, name in enumerate(names) if i != index]
    y = ParquetColumns(path, [names[index]]).read(0, len(table))[:, 0]
    return ParquetColumns(path, features), y, features, names[index]


def _npy_training_data(path, target):
    """As ``_load_training_data``, for a ``.npy`` table: memory-mapped, the target column
    read whole, the features read a block at a time (``MappedColumns``)."""
    array = mapped_npy(path)
    names = [str(i) for i in range(array.shape[1])]
    index = Table(names, np.empty((0, len(names)))).column("-1" if target is None else target)
    if len(names) < 2:
        raise DataError(f"{path} has only the target column; no features to train on")
    y = np.asarray(array[:, index], dtype=np.float64)
    refuse_non_finite(path, [names[index]], y.reshape(-1, 1))
    features = [i for i in range(len(names)) if i != index]
    return MappedColumns(array, features, path), y, [], names[index]


def _batch_size(requested, rows):
    """The mini-batch size: ``--batch-size`` (default 64) clipped to the training rows,
    with a warning in the option's terms where the user asked for more."""
    if requested is not None and requested > rows:
        warnings.warn(
            f"--batch-size {requested} is larger than the {rows} training rows; "
            f"each batch takes all {rows}",
            stacklevel=2,
        )
    return min(64 if requested is None else requested, rows)


def _choose_task(task, y):
    integral = bool(np.all(y == np.round(y)))
    if task == "auto":
        task = "classify" if integral and np.unique(y).size <= 50 else "regress"
    if task == "classify":
        if not integral:
            raise DataError(
                "the target column holds non-integer values; classification "
                "needs class labels (use --task regress)"
            )
        if np.unique(y).size < 2:
            raise DataError("the target column holds a single value; nothing to classify")
    return task


class _StopOnInterrupt:
    """Ctrl-C and SIGTERM while training, so that finished work is never lost.

    ``phase`` says what runs: ``"epochs"`` (the first Ctrl-C asks to stop after the running
    epoch), ``"iterations"`` (lbfgs: it stops at once, keeping the last finished
    iteration), ``"saving"`` (signals are only recorded, so the model is written whole) or
    ``"after"`` (scores and plots, already saved: a signal stops at once). A second Ctrl-C
    or a SIGTERM stops at once in any phase but saving. "At once" raises KeyboardInterrupt,
    at most once per phase, so the code that handles it is not interrupted in turn.
    Active in the main thread only (where signals arrive).
    """

    def __init__(self, phase):
        self.phase = phase  # one assignment switches phase, so no signal sees half of it
        self.requested = False  # stop after the running epoch
        self.forced = False  # stop now
        self.signum = None  # the first signal that asked to stop
        self._raised_in = None
        self._previous = {}

    @property
    def exit_status(self):
        """128 plus the signal's number, as shells report it: 130 for Ctrl-C."""
        return 128 + (self.signum or signal.SIGINT)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _say(self, text):
        """Print from the handler: straight to the file descriptor, as the interrupted code
        may be amid a write to sys.stderr (the progress bar) that a buffered write would
        re-enter."""
        text = "\nfastbp: " + text + "\n"
        try:
            os.write(sys.stderr.fileno(), text.encode())
        except (AttributeError, OSError, ValueError):  # no descriptor (captured stderr)
            try:
                sys.stderr.write(text)
            except RuntimeError:
                pass

    def _handle(self, signum, frame):
        if self.forced:
            return  # already stopping at once
        self.signum = self.signum or signum
        if signum == signal.SIGINT and not self.requested and self.phase == "epochs":
            self.requested = True
            self._say("stopping after this epoch (Ctrl-C again to stop now)")
            return
        if signum == signal.SIGINT and not self.requested and self.phase == "iterations":
            self.requested = True
            self._say("stopping; keeping the last finished iteration")
        else:
            self.requested = self.forced = True
        if self.phase != "saving" and self._raised_in != self.phase:
            self._raised_in = self.phase
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        return False


class _Finished:
    """The last finished epoch (or lbfgs iteration): ``(count, coefs, intercepts)``, set in
    one assignment so that an interruption sees the old one or the new one, never half."""

    state = None


def _available_memory():
    """Bytes of memory available to a new allocation, or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _bytes(count):
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1024 or unit == "TB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024


def _check_memory(hidden, sizes, rows, batch_size, itemsize):
    """Refuse ``--hidden`` widths whose training would not fit in memory, before anything is
    allocated: the weights are held about eight times (the estimator's and the engine's
    copies, gradients, two Adam moments, the best and the last finished epoch's), the
    activations of every row once forward and twice backward (scores on all rows)."""
    params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    needed = 8 * params * max(itemsize, 8) + 3 * max(rows, batch_size) * sum(sizes[1:]) * itemsize
    available = _available_memory()
    if available is not None and needed > available:
        raise CommandError(
            f"--hidden {','.join(map(str, hidden))} is too large for memory: "
            f"a network of {params:,} parameters needs about {_bytes(needed)} "
            f"to train, and {_bytes(available)} is available"
        )


def _warm_up(dtype):
    """Compile (or load from numba's cache) the engine before any timing, saying so when
    it takes long, so the first epoch neither looks hung nor skews the times."""
    from ._engine import config
    from .network import MLP

    notice = threading.Timer(
        2.0,
        lambda: print(
            "fastbp: compiling the engine (first run only; later runs load it from the cache)",
            file=sys.stderr,
            flush=True,
        ),
    )
    notice.start()
    try:
        net = MLP([2, 2, 2], ["relu", "softmax"], "cce", dtype=dtype)
        # One batch large enough to spread over threads, so that the parallel region
        # compiles here too (the engine compiles it only for runs that may use it).
        rows = max(4096, -(-config.PARALLEL_MIN_MACS // (3 * net.n_params)))
        net.fit(
            np.zeros((rows, 2)),
            np.arange(rows) % 2,
            epochs=1,
            lr=0.1,
            order=np.arange(rows),
            optimizer="adam",
        )
    finally:
        notice.cancel()


def _progress(args, epochs):
    if args.no_progress or epochs < 2:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(
        total=epochs,
        unit="epoch",
        delay=1.0,
        file=sys.stderr,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
    )


def _speedup(est, X, y, args, repeats=5):
    """Time two epochs of the same network with ``fastbp.reference`` and with fastbp on
    the first 2,000 training rows: one untimed run of each first (compilation, caches),
    then ``repeats`` runs of each taken in turns; returns (rows, ratio of the medians)."""
    from . import reference
    from .network import MLP

    n = min(len(X), 2000)
    X_slice = np.ascontiguousarray(X[:n], dtype=est.coefs_[0].dtype)
    net = est.to_network()
    targets = est.engine_targets(y[:n])
    settings = dict(
        epochs=2,
        lr=args.lr,
        batch_size=est.batch_size,
        optimizer=est.engine_optimizer() if args.solver != "lbfgs" else "adam",
    )

    def timed(cls):
        model = cls(net.layer_sizes, net.activations, net.loss_name, dtype=net.dtype, seed=0)
        start = time.perf_counter()
        model.fit(X_slice, targets, **settings)
        return time.perf_counter() - start

    timed(reference.MLP), timed(MLP)
    times = np.array([(timed(reference.MLP), timed(MLP)) for _ in range(repeats)])
    return n, float(np.median(times[:, 0]) / np.median(times[:, 1]))


#: Variables that MPI launchers (MPICH's and Open MPI's mpiexec, Slurm's srun) set to
#: the number of processes.
_MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")


def _mpi_world():
    """MPI's world communicator when ``mpiexec`` started several processes, else None."""
    sizes = [os.environ.get(name, "") for name in _MPI_SIZE_VARIABLES]
    if not any(size.isdigit() and int(size) > 1 for size in sizes):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise CommandError(
            'started by mpiexec, but mpi4py is missing: pip install "fastbp[mpi]"'
        ) from None
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def train_command(args):
    args.comm = _mpi_world()
    args.checkpoint_writer = args.comm is None or args.comm.Get_rank() == 0
    if not args.checkpoint_writer:
        # Every process trains alike; process 0 alone prints and writes files.
        args.out = args.plot = None
        args.no_progress, args.compare_numpy = True, False
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            return _train(args)
    return _train(args)


def _train(args):
    with contextlib.ExitStack() as scratch:  # scratch files of data read from disk
        return _train_with(args, scratch)


def _standardized_on_disk(X, args, split, mean, scale, scratch):
    """``X`` standardized in a scratch file of the training dtype, removed when ``scratch``
    closes: read-only views of the training rows and of the validation rows, ``split`` =
    ``(train_rows, val_rows)`` in their order. Each MPI process writes a file of its own."""
    folder = scratch.enter_context(_scaling.scratch_folder(near=args.out))
    order = np.concatenate(split)
    standardized = _scaling.write_standardized(
        X, os.path.join(folder, "features.npy"), order, mean, scale, args.dtype
    )
    return standardized[: len(split[0])], standardized[len(split[0]) :]


def _train_with(args, scratch):
    if args.plot:
        import matplotlib  # noqa: F401  (fail before training, not after)
    _check_outputs(
        [
            ("--out", args.out, "model"),
            ("--plot", args.plot, "plot"),
            ("--checkpoint", args.checkpoint, "checkpoint"),
        ],
        [("the training data", args.data)],
    )
    if args.alpha < 0:
        raise CommandError(f"--alpha must be non-negative; got {args.alpha}")
    if args.checkpoint and args.solver == "lbfgs":
        raise CommandError("--checkpoint needs an epoch-based solver (adam or sgd), not lbfgs")
    from sklearn.model_selection import train_test_split

    from .estimators import MLPClassifier, MLPRegressor

    if args.target is not None and args.data is None:
        raise CommandError(
            "--target needs a data file: without DATA, train trains on the digits and their label"
        )
    X, y, feature_names, target_name = _load_training_data(args)
    if args.loss == "poisson":
        if args.task == "classify":
            raise CommandError("--loss poisson is a regression loss; drop --task classify")
        if y.min() < 0:
            raise DataError(
                f"--loss poisson needs non-negative targets; {target_name!r} holds {y.min()}"
            )
    task = _choose_task("regress" if args.loss == "poisson" else args.task, y)
    source = args.data or "scikit-learn's digits"
    stratify = None
    if task == "classify":
        counts = np.unique(y, return_counts=True)[1]
        stratify = y if counts.min() >= 2 else None
    n_val = int(np.ceil(args.validation * len(y))) if args.validation > 0 else 0
    if n_val and (n_val >= len(y) or (stratify is not None and n_val < counts.size)):
        n_val, stratify = 0, None
    rows = np.arange(len(y))
    if n_val:  # split row numbers: the permutation train_test_split(X, y, ...) takes
        train_rows, val_rows, y_train, y_val = train_test_split(
            rows, y, test_size=n_val, random_state=args.seed, stratify=stratify
        )
    else:
        train_rows, val_rows, y_train, y_val = rows, rows[:0], y, None
    in_training = np.zeros(len(y), bool)
    in_training[train_rows] = True
    if args.no_scale:
        mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
    else:
        mean, scale = _scaling.mean_and_std(X, in_training)
    scale[scale == 0] = 1.0
    if isinstance(X, np.ndarray):
        X_train = (X[train_rows] - mean) / scale
        X_val = (X[val_rows] - mean) / scale if n_val else None
    else:
        X_train, X_val = _standardized_on_disk(
            X, args, (train_rows, val_rows), mean, scale, scratch
        )
        X_val = X_val if n_val else None
    target_scaling = None  # regression targets are standardized too; predict undoes it
    if task == "regress" and not args.no_scale and args.loss != "poisson":
        target_scaling = (float(y_train.mean()), float(y_train.std()) or 1.0)
        y_train = (y_train - target_scaling[0]) / target_scaling[1]
        y_val = None if y_val is None else (y_val - target_scaling[0]) / target_scaling[1]

    cls = MLPClassifier if task == "classify" else MLPRegressor
    loss = {} if task == "classify" else {"loss": args.loss}
    est = cls(
        **loss,
        hidden_layer_sizes=args.hidden,
        activation=args.activation,
        solver=args.solver,
        alpha=args.alpha,
        batch_size=_batch_size(args.batch_size, len(y_train)),
        learning_rate_init=args.lr,
        max_iter=args.epochs,
        random_state=np.random.RandomState(args.seed),
        dtype=args.dtype,
    )
    classes = np.unique(y) if task == "classify" else None
    n_out = 1 if task == "regress" or classes.size == 2 else classes.size
    _check_memory(
        args.hidden,
        (X.shape[1], *args.hidden, n_out),
        len(y) if isinstance(X, np.ndarray) else est.batch_size,  # else on disk, never whole
        est.batch_size,
        np.dtype(args.dtype).itemsize,
    )
    data = (X_train, y_train, X_val, y_val)
    curves = {"train": [], "validation": []}
    finished = _Finished()
    if args.checkpoint:
        est = _resume(est, args, data, curves, finished)
    _warm_up(np.dtype(args.dtype))
    sizes = "-".join(str(s) for s in (X.shape[1], *args.hidden, n_out))
    print(
        f"fastbp: training a {sizes} {args.activation} network ({args.solver}, "
        f"{'classification' if task == 'classify' else 'regression'} of {target_name!r}) "
        f"on {len(y_train)} rows of {source}" + (f", validating on {len(y_val)}" if n_val else ""),
        flush=True,
    )
    resumed = finished.state[0] if finished.state is not None else 0
    if resumed:
        print(f"  resumed from {args.checkpoint} after epoch {resumed}", flush=True)
    stopper = _StopOnInterrupt("iterations" if args.solver == "lbfgs" else "epochs")
    start = time.perf_counter()
    with stopper, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="lbfgs failed to converge")
        warnings.filterwarnings("ignore", message="Training interrupted by user")
        try:
            if args.solver == "lbfgs":
                est.fit(X_train, y_train, comm=args.comm)
            else:
                _run_epochs(
                    est,
                    args,
                    task,
                    classes,
                    data,
                    curves,
                    finished,
                    stopper,
                    start,
                )
            stopper.phase = "saving"
        except KeyboardInterrupt:
            stopper.phase = "saving"
        if args.solver == "lbfgs" and hasattr(est, "coefs_"):
            finished.state = (est.n_iter_, est.coefs_, est.intercepts_)
            curves["train"].append(est.loss_)
        if finished.state is None:
            print(
                "fastbp: interrupted before the first "
                f"{'iteration' if args.solver == 'lbfgs' else 'epoch'} finished; nothing "
                "saved",
                file=sys.stderr,
            )
            return stopper.exit_status
        epochs_done, est.coefs_, est.intercepts_ = finished.state
        seconds = time.perf_counter() - start
        if args.out:
            _save_model(
                est,
                args.out,
                task,
                feature_names,
                target_name,
                mean,
                scale,
                epochs_done,
                target_scaling,
            )
        unit = "iteration" if args.solver == "lbfgs" else "epoch"
        kept = (
            f"kept the model of {unit} {epochs_done} in {args.out}"
            if args.out
            else "no --out, so no model saved"
        )
        stopper.phase = "after"
        try:
            if stopper.forced:
                raise KeyboardInterrupt
            trained = (epochs_done, epochs_done - resumed)
            _report(est, args, task, trained, seconds, X_train, y_train, X_val, y_val)
            if args.out:
                print(f"  model saved to {args.out}")
            if args.plot:
                _plot(curves, args.plot, est.loss_curve_ if args.solver != "lbfgs" else None)
                print(f"  loss curves saved to {args.plot}")
        except KeyboardInterrupt:
            print(f"fastbp: interrupted; {kept}", file=sys.stderr)
            return stopper.exit_status
    if stopper.requested:
        print(f"fastbp: interrupted; {kept}", file=sys.stderr)
        return stopper.exit_status
    return 0


def _run_epochs(est, args, task, classes, data, curves, finished, stopper, start):
    """Train one epoch at a time until ``args.epochs`` or a stop request, keeping each
    finished epoch's parameters in ``finished``."""
    X_train, y_train, X_val, y_val = data
    done = finished.state[0] if finished.state else 0
    bar = _progress(args, args.epochs)
    if bar is not None:
        bar.update(done)
    written = done
    try:
        for _ in range(args.epochs - done):
            if stopper.requested:
                break
            if task == "classify":
                est.partial_fit(X_train, y_train, classes=classes, comm=args.comm)
            else:
                est.partial_fit(X_train, y_train, comm=args.comm)
            if stopper.forced:
                break  # interrupted within the epoch: it did not finish
            epochs_done = (finished.state[0] if finished.state else 0) + 1
            finished.state = (
                epochs_done,
                [c.copy() for c in est.coefs_],
                [b.copy() for b in est.intercepts_],
            )
            curves["train"].append(est.loss_)
            if X_val is not None:
                curves["validation"].append(est.validation_loss(X_val, y_val))
            if (
                args.checkpoint
                and args.checkpoint_writer
                and (epochs_done % args.checkpoint_every == 0 or epochs_done == args.epochs)
            ):
                _write_checkpoint(est, args, data, curves, epochs_done)
                written = epochs_done
            if bar is not None:
                elapsed = time.perf_counter() - start
                postfix = {"loss": f"{est.loss_:.4f}"}
                if curves["validation"]:
                    postfix["val"] = f"{curves['validation'][-1]:.4f}"
                postfix["samples/s"] = f"{(epochs_done - done) * len(y_train) / elapsed:,.0f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
        if (
            args.checkpoint
            and args.checkpoint_writer
            and finished.state
            and written < finished.state[0]
        ):
            _write_checkpoint(est, args, data, curves, finished.state[0])  # stopped early
    finally:
        if bar is not None:
            bar.close()


def _checkpoint_identity(args, data):
    """What makes a command-line run this run: the data after the split and scaling, and
    every option that changes the bits (not ``--epochs``: a longer run goes on)."""
    from . import checkpoint

    identity = {"kind": "fastbp train"}
    for name, array in zip(("X_train", "y_train", "X_val", "y_val"), data, strict=True):
        identity[name] = "none" if array is None else checkpoint.digest(np.asarray(array))
    for option in ("task", "hidden", "activation", "solver", "alpha", "batch_size", "lr"):
        identity[option] = repr(getattr(args, option))
    for option in ("seed", "dtype"):
        identity[option] = repr(getattr(args, option))
    return identity


def _write_checkpoint(est, args, data, curves, epochs_done):
    """Write the estimator (its parameters, optimizer, random state and counters), the
    curves and the epoch count, whole or not at all."""
    import pickle

    from . import checkpoint

    arrays = {
        "epochs_done": np.array(epochs_done, np.int64),
        "estimator": np.frombuffer(pickle.dumps(est, protocol=5), np.uint8),
        "train_curve": np.array(curves["train"], np.float64),
        "validation_curve": np.array(curves["validation"], np.float64),
    }
    checkpoint.save_archive(args.checkpoint, arrays, _checkpoint_identity(args, data))


def _resume(est, args, data, curves, finished):
    """The estimator saved in ``--checkpoint`` if it holds this run (its curves and epoch
    count put in place), or ``est`` when there is no checkpoint yet."""
    import pickle

    from . import checkpoint

    try:
        arrays = checkpoint.load_archive(args.checkpoint, _checkpoint_identity(args, data))
    except ValueError as error:
        raise CommandError(f"--checkpoint: {error}") from None
    if arrays is None:
        return est
    done = int(arrays["epochs_done"])
    if done > args.epochs:
        raise CommandError(
            f"--checkpoint {args.checkpoint} holds {done} epochs of this run; --epochs "
            f"asks for {args.epochs} (ask for at least {done})"
        )
    est = pickle.loads(arrays["estimator"].tobytes())
    curves["train"].extend(arrays["train_curve"].tolist())
    curves["validation"].extend(arrays["validation_curve"].tolist())
    finished.state = (done, [c.copy() for c in est.coefs_], [b.copy() for b in est.intercepts_])
    return est


def _report(est, args, task, trained, seconds, X_train, y_train, X_val, y_val):
    """Print the time, the scores and (with ``--compare-numpy``) the speedup; ``trained``
    is ``(epochs done, of them trained by this process)``."""
    metric = "accuracy" if task == "classify" else "R^2"
    epochs_done, here = trained
    print(
        f"  epochs {epochs_done}, time {seconds:.2f} s "
        + (f"for the last {here} " if here != epochs_done else "")
        + f"({here * len(y_train) / max(seconds, 1e-9):,.0f} samples/s)"
        if args.solver != "lbfgs"
        else f"  lbfgs iterations {epochs_done}, time {seconds:.2f} s",
        flush=True,
    )
    line = f"  train {metric} {est.score(X_train, y_train):.4f}"
    if X_val is not None:
        line += f", validation {metric} {est.score(X_val, y_val):.4f}"
    print(line, flush=True)
    if args.compare_numpy:
        rows, ratio = _speedup(est, X_train, y_train, args)
        print(
            f"  speedup over plain NumPy (fastbp.reference, 2 epochs on {rows} rows, median "
            f"of 5): {ratio:.1f}x",
            flush=True,
        )


def _save_model(
    est, path, task, feature_names, target_name, mean, scale, epochs, target_scaling=None
):
    """Write the model with what predict needs beside it: the task, feature names and
    scaling, class labels, and a regression target's mean and scale when standardized."""
    metadata = {
        "task": task,
        "features": np.array(feature_names),
        "target": target_name,
        "mean": mean,
        "scale": scale,
        "epochs": epochs,
    }
    if target_scaling is not None:
        metadata["target_mean"], metadata["target_scale"] = target_scaling
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
        axes.plot(
            np.arange(1, len(curves["validation"]) + 1),
            curves["validation"],
            label="validation loss",
        )
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.legend()
    figure.tight_layout()
    with _files.replacing(path) as file:
        figure.savefig(file, format=os.path.splitext(path)[1][1:].lower())
    plt.close(figure)


# ---------------------------------------------------------------- predict


def predict_command(args):
    _check_outputs(
        [("--out", args.out, "predictions")],
        [("the model file", args.model), ("the data file", args.data)],
    )
    try:
        net = persistence.load(args.model)
        metadata = persistence.read_metadata(args.model)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from None
    if args.proba and str(metadata.get("task", "")) != "classify":
        raise CommandError(
            f"--proba needs a classification model; {args.model} predicts values (regression)"
        )
    names = [str(n) for n in metadata.get("features", [])]
    blocks, rows = _feature_blocks(args.data, names, net.layer_sizes[0], args.by_position)
    with _prediction_writer(args.out, rows) as write:
        for _, X in blocks:
            if "mean" in metadata:
                X = (X - metadata["mean"]) / metadata["scale"]
            write(*_predictions(net.forward(X), metadata, args.proba))
    return 0


def _feature_blocks(path, names, n_in, by_position):
    """``(blocks, rows)``: the model's columns of the table ``path`` (see
    ``Table.select``) as ``(first_row, values)`` blocks, and the table's row count. A
    Parquet or ``.npy`` table is read a block at a time; another one is read whole, one
    block."""
    if path.lower().endswith(".npy"):
        array = mapped_npy(path)
        columns = [str(i) for i in range(array.shape[1])]
        table = Table(columns, np.empty((0, len(columns))), named=False, path=path)
        features = MappedColumns(array, table.model_columns(names, n_in, by_position), path)
        return _scaling.blocks(features), len(features)
    if not _is_parquet(path):
        X = read_table(path).select(names, n_in, by_position=by_position)
        return [(0, X)], len(X)
    from .parquet import ParquetColumns, column_names

    columns = column_names(path)
    table = Table(columns, np.empty((0, len(columns))), path=path)
    chosen = [columns[i] for i in table.model_columns(names, n_in, by_position)]
    features = ParquetColumns(path, chosen)
    return _scaling.blocks(features), len(features)


def _predictions(out, metadata, proba):
    """``(values, header)``: what predict writes for the network outputs ``out``."""
    target = str(metadata.get("target", "prediction"))
    task = str(metadata.get("task", ""))
    if task == "classify" and not proba:
        classes = metadata["classes"]
        index = out.argmax(axis=1) if out.shape[1] > 1 else (out[:, 0] > 0.5).astype(int)
        return classes[index].reshape(-1, 1), [target]
    if task == "classify":
        classes = metadata["classes"]
        values = np.column_stack([1 - out[:, 0], out[:, 0]]) if out.shape[1] == 1 else out
        return values, [f"P({_format(c)})" for c in classes]
    # Models that standardized the target store its scaling; older ones predict as is.
    values = out * metadata.get("target_scale", 1.0) + metadata.get("target_mean", 0.0)
    return values, [target] if out.shape[1] == 1 else [f"{target}{i}" for i in range(out.shape[1])]


def _format(value):
    value = float(value)
    return str(int(value)) if value == int(value) else repr(value)


@contextlib.contextmanager
def _prediction_writer(path, rows):
    """``write(values, header)`` for one block of predictions after another, ``rows`` in
    all: to stdout as CSV, or to ``path`` in the format its extension names
    (``PREDICTION_FORMATS``), which is replaced at once when all are written."""
    npy = path and PREDICTION_FORMATS[os.path.splitext(path)[1].lower()] == "npy"
    started = False
    with _files.replacing(path) if path else contextlib.nullcontext() as file:

        def write(values, header):
            nonlocal started
            if npy:
                values = np.ascontiguousarray(values if values.shape[1] > 1 else values.ravel())
                if not started:
                    shape = (rows, *values.shape[1:])
                    described = np.lib.format.dtype_to_descr(values.dtype)
                    np.lib.format.write_array_header_1_0(
                        file, {"descr": described, "fortran_order": False, "shape": shape}
                    )
                file.write(values.tobytes())
            else:
                lines = [] if started else [",".join(header)]
                lines += [",".join(_format(v) for v in row) for row in values]
                text = "\n".join(lines) + "\n"
                if file:
                    file.write(text.encode("utf-8"))
                else:
                    sys.stdout.write(text)
            started = True

        yield write


if __name__ == "__main__":
    sys.exit(main())
