"""The fastbp command line: training and prediction from files, and its error messages."""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402

import fastbp  # noqa: E402
from fastbp import persistence  # noqa: E402
from fastbp.cli import main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--epochs", "3", "--hidden", "16", "--lr", "0.02", "--no-progress"]


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory):
    """The first 600 digits as a CSV table with a header and a 'digit' target column."""
    X, y = load_digits(return_X_y=True)
    path = tmp_path_factory.mktemp("data") / "digits.csv"
    header = ",".join([f"p{i}" for i in range(64)] + ["digit"])
    np.savetxt(
        path,
        np.column_stack([X[:600], y[:600]]),
        delimiter=",",
        header=header,
        comments="",
        fmt="%g",
    )
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code == 1
    assert err.startswith("fastbp: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


def test_train_and_predict_csv(tmp_path, capsys, digits_csv):
    model = tmp_path / "model.npz"
    plot = []
    try:
        import matplotlib  # noqa: F401

        plot = ["--plot", tmp_path / "curve.png"]
    except ImportError:
        pass
    code, out, _ = run(
        capsys, "train", digits_csv, "--target", "digit", *QUICK, "--out", model, *plot
    )
    assert code == 0, out
    assert "train accuracy" in out and "validation accuracy" in out
    assert "speedup" not in out  # a timing that varies from run to run: on request only
    if plot:
        assert (tmp_path / "curve.png").stat().st_size > 0
    net = fastbp.load(model)
    assert net.layer_sizes == (64, 16, 10)
    meta = persistence.read_metadata(model)
    assert int(meta["epochs"]) == 3 and list(meta["classes"]) == list(range(10))

    code, out, _ = run(capsys, "predict", model, digits_csv)  # target column is ignored
    lines = out.splitlines()
    assert code == 0 and lines[0] == "digit" and len(lines) == 601
    labels = np.loadtxt(digits_csv, delimiter=",", skiprows=1)[:, -1]
    assert np.mean(np.array(lines[1:], dtype=float) == labels) > 0.8

    code, _, _ = run(capsys, "predict", model, digits_csv, "--proba", "--out", tmp_path / "p.npy")
    proba = np.load(tmp_path / "p.npy")
    assert code == 0 and proba.shape == (600, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_numpy_inputs_and_regression(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = X @ [1.0, -2.0, 0.5, 0.0] + 0.1 * rng.normal(size=300)
    np.save(tmp_path / "table.npy", np.column_stack([y, X]))
    code, out, _ = run(
        capsys,
        "train",
        tmp_path / "table.npy",
        "--target",
        "0",
        *QUICK,
        "--out",
        tmp_path / "r.npz",
    )
    assert code == 0 and "R^2" in out
    np.savez(tmp_path / "xy.npz", X=X, y=(y > 0).astype(int))
    code, out, _ = run(capsys, "train", tmp_path / "xy.npz", *QUICK, "--solver", "sgd")
    assert code == 0 and "accuracy" in out
    code, out, _ = run(
        capsys,
        "train",
        tmp_path / "xy.npz",
        "--epochs",
        "5",
        "--solver",
        "lbfgs",
        "--hidden",
        "8",
        "--dtype",
        "float32",
    )
    assert code == 0 and "lbfgs iterations" in out
    np.save(tmp_path / "features.npy", X[:7])
    code, out, _ = run(capsys, "predict", tmp_path / "r.npz", tmp_path / "features.npy")
    assert code == 0 and len(out.splitlines()) == 8


def test_poisson_regression_of_counts(tmp_path, capsys):
    """``--loss poisson`` regresses integer counts (no classification, no standardized
    target): the model has an exponential output, and predicts what it was trained to."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    counts = rng.poisson(np.exp(0.5 * X[:, 0] - 0.3 * X[:, 1]))
    np.save(tmp_path / "counts.npy", np.column_stack([X, counts]))
    model = tmp_path / "p.npz"
    code, out, _ = run(
        capsys, "train", tmp_path / "counts.npy", *QUICK, "--loss", "poisson", "--out", model
    )
    assert code == 0 and "regression" in out and "R^2" in out, out
    assert fastbp.load(model).activations[-1] == "exp"
    assert "target_mean" not in persistence.read_metadata(model)
    np.save(tmp_path / "features.npy", X[:5])
    code, out, _ = run(capsys, "predict", model, tmp_path / "features.npy")
    predicted = np.array([float(v) for v in out.splitlines()[1:]])
    assert code == 0 and predicted.shape == (5,) and (predicted > 0).all()
    np.save(tmp_path / "negative.npy", np.column_stack([X, counts - 1]))
    code, _, err = run(capsys, "train", tmp_path / "negative.npy", "--loss", "poisson")
    assert code == 1 and "--loss poisson needs non-negative targets" in err
    code, _, err = run(
        capsys, "train", tmp_path / "counts.npy", "--loss", "poisson", "--task", "classify"
    )
    assert code == 1 and "--loss poisson is a regression loss" in err


def test_parquet(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    X, y = load_digits(return_X_y=True)
    table = pa.table({**{f"p{i}": X[:300, i] for i in range(64)}, "label": y[:300]})
    pq.write_table(table, tmp_path / "digits.parquet")
    code, out, _ = run(
        capsys,
        "train",
        tmp_path / "digits.parquet",
        "--target",
        "label",
        *QUICK,
        "--out",
        tmp_path / "m.npz",
    )
    assert code == 0, out
    code, out, _ = run(capsys, "predict", tmp_path / "m.npz", tmp_path / "digits.parquet")
    assert code == 0 and len(out.splitlines()) == 301


def test_digits_without_data(capsys):
    code, out, _ = run(capsys, "train", "--epochs", "2", "--no-progress")
    assert code == 0 and "scikit-learn's digits" in out and "validation accuracy" in out


def test_bad_data_gets_one_line_errors(tmp_path, capsys, digits_csv):
    def write(name, text):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    cases = [
        (tmp_path / "missing.csv", [], "no such file"),
        (digits_csv, ["--target", "label"], "no column 'label'"),
        (write("words.csv", "a,b,y\n1,2,cat\n3,4,dog\n"), ["--target", "y"], "non-numeric"),
        (write("nan.csv", "a,b,y\n1,nan,0\n3,4,1\n"), [], "nan"),
        (write("empty.csv", "a,b,y\n1,,0\n3,4,1\n"), [], "empty field"),
        (write("fake.npy", "this is text\n"), [], "not a NumPy .npy file"),
        (write("fake.npz", "this is text\n"), [], "not an .npz archive"),
        (write("fake.parquet", "this is text\n"), [], "parquet"),
        (write("data.xlsx", "x"), [], "unknown data format"),
        (write("floats.csv", "a,y\n1,0.5\n2,1.5\n"), ["--task", "classify"], "non-integer"),
    ]
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    cases.append((tmp_path / "binary.csv", [], "not a text CSV"))
    for path, extra, words in cases:
        code, _, err = run(capsys, "train", path, *extra, *QUICK)
        assert_one_line_error(code, err.lower(), words.lower())
    code, _, err = run(capsys, "predict", tmp_path / "nowhere.npz", digits_csv)
    assert_one_line_error(code, err, "no model file")
    code, _, err = run(capsys, "predict", digits_csv, digits_csv)
    assert_one_line_error(code, err, "not a fastbp model file")


def test_ctrl_c_keeps_the_last_finished_epoch(tmp_path, capsys, digits_csv, monkeypatch):
    """The first Ctrl-C lets the running epoch finish, then the model is saved."""
    from fastbp import estimators

    calls = []
    original = estimators.MLPClassifier.partial_fit

    def partial_fit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(estimators.MLPClassifier, "partial_fit", partial_fit)
    code, out, err = run(
        capsys,
        "train",
        digits_csv,
        "--epochs",
        "50",
        "--hidden",
        "8",
        "--no-progress",
        "--out",
        tmp_path / "m.npz",
    )
    assert code == 130 and "stopping after this epoch" in err
    assert int(persistence.read_metadata(tmp_path / "m.npz")["epochs"]) == 3


def _env():
    """The environment of a child Python that imports this checkout's fastbp."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))


@pytest.mark.slow
def test_python_dash_m_fastbp_is_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "fastbp", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: fastbp")
    assert "train" in done.stdout and "predict" in done.stdout


@pytest.mark.slow
def test_command_in_a_subprocess_stops_cleanly_on_sigint(tmp_path, digits_csv):
    env = _env()
    model = tmp_path / "m.npz"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastbp",
            "train",
            str(digits_csv),
            "--epochs",
            "100000",
            "--hidden",
            "8",
            "--no-progress",
            "--out",
            str(model),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        first = process.stdout.readline()  # printed once training has begun
        assert first.startswith("fastbp: training"), first + process.stderr.read()
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert "train accuracy" in out
    assert int(persistence.read_metadata(model)["epochs"]) >= 1
    assert fastbp.load(model).layer_sizes == (64, 8, 10)


@pytest.fixture
def small_csv(tmp_path):
    """A 40-row, two-feature classification table in its own folder."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 2))
    path = tmp_path / "v.csv"
    np.savetxt(
        path,
        np.column_stack([X, X[:, 0] > 0]),
        delimiter=",",
        header="a,b,y",
        comments="",
        fmt="%g",
    )
    return path


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "{data}", "--out", "nodir/m.npz"], "--out nodir/m.npz: the folder nodir does"),
        (["train", "{data}", "--out", "afile/m.npz"], "--out afile/m.npz: the folder afile is a"),
        (["train", "{data}", "--out", "adir"], "--out adir is a folder"),
        (["train", "{data}", "--out", "m.pkl"], "--out m.pkl: a model is saved as .npz"),
        (["train", "{data}", "--out", "m"], "--out m: a model is saved as .npz"),
        (["train", "{data}", "--plot", "nodir/c.png"], "--plot nodir/c.png: the folder nodir"),
        (["train", "{data}", "--plot", "adir"], "--plot adir is a folder"),
        (["train", "{data}", "--plot", "curve.xyz"], "--plot curve.xyz: matplotlib cannot write"),
        (["train", "{data}", "--plot", "curve"], "--plot curve: name the image format"),
        (["train", "{data}", "--out", "{data}"], "--out {data} is the training data"),
        (
            ["train", "{data}", "--out", "same.npz", "--plot", "./same.npz"],
            "--plot ./same.npz is the same file as --out same.npz",
        ),
        (["train", "missing.csv", "--out", "nodir/m.npz"], "--out nodir/m.npz"),
        (["predict", "m.npz", "{data}", "--out", "{data}"], "--out {data} is the data file"),
        (
            ["predict", "m.npz", "{data}", "--out", "adir/../m.npz"],
            "--out adir/../m.npz is the model file",
        ),
        (["predict", "m.npz", "{data}", "--out", "x.npz"], "--out x.npz: predictions are written"),
        (["predict", "m.npz", "{data}", "--out", "nodir/p.csv"], "--out nodir/p.csv: the folder"),
        (["predict", "m.npz", "{data}", "--out", "afile/p.csv"], "--out afile/p.csv: the folder"),
    ],
)
def test_outputs_are_checked_before_any_work(tmp_path, capsys, monkeypatch, small_csv, argv, words):
    """A bad output path stops the command at once with one line naming it as typed, and
    nothing is read, trained or written."""
    if "--plot" in argv:
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("a file\n")
    code, out, _ = run(capsys, "train", "v.csv", "--epochs", "1", "--no-progress", "--out", "m.npz")
    assert code == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    def fail(*args, **kwargs):
        raise AssertionError("read or trained despite a bad output path")

    monkeypatch.setattr("fastbp.cli.read_table", fail)
    monkeypatch.setattr("fastbp.persistence.load", fail)
    code, out, err = run(
        capsys,
        *[a.format(data="v.csv") for a in argv],
        "--no-progress" if argv[0] == "train" else "--proba",
    )
    assert_one_line_error(code, err, words.format(data="v.csv"))
    assert out == ""
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before and sorted(p.name for p in (tmp_path / "adir").iterdir()) == []


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="permission bits do not stop root"
)
def test_a_read_only_folder_is_refused_before_training(tmp_path, capsys, small_csv):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = run(capsys, "train", small_csv, "--out", folder / "m.npz")
    finally:
        folder.chmod(0o755)
    assert_one_line_error(
        code, err, f"--out {folder / 'm.npz'}: the folder {folder} is not writable"
    )


def test_outputs_are_written_in_the_format_their_extension_names(
    tmp_path, capsys, small_csv, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    plot = []
    if importlib.util.find_spec("matplotlib"):
        plot = ["--plot", "curve.svg"]
    code, _, _ = run(
        capsys, "train", "v.csv", "--epochs", "2", "--no-progress", "--out", "m.npz", *plot
    )
    assert code == 0
    if plot:
        assert (tmp_path / "curve.svg").read_text().lstrip().startswith("<?xml")
    for name in ("p.csv", "p.txt", "p"):
        assert run(capsys, "predict", "m.npz", "v.csv", "--out", name)[0] == 0
        assert (tmp_path / name).read_text().splitlines()[0] == "y"
    assert run(capsys, "predict", "m.npz", "v.csv", "--out", "P.NPY")[0] == 0
    assert np.load(tmp_path / "P.NPY").shape == (40,)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def _signals_at(calls, at, signals):
    """A counter that sends ``signals`` to this process at its ``at``-th call."""
    calls.append(1)
    if len(calls) != at:
        return
    stop = None
    for signum in signals:  # all of them, even when one's handler raises
        try:
            signal.raise_signal(signum)
        except KeyboardInterrupt as error:
            stop = error
    if stop is not None:
        raise stop


def _kept_epochs(path):
    assert fastbp.load(path).layer_sizes[0] == 64
    return int(persistence.read_metadata(path)["epochs"])


@pytest.mark.parametrize("where", ["engine", "estimator"])
@pytest.mark.parametrize(
    "signals, code, kept",
    [
        ((signal.SIGINT,), 130, 3),  # the running epoch finishes
        ((signal.SIGINT, signal.SIGINT), 130, 2),  # stops at once: the epoch before
        ((signal.SIGTERM,), 143, 2),
        ((signal.SIGINT, signal.SIGTERM, signal.SIGINT), 130, 2),
    ],
)
def test_interrupting_an_epoch_keeps_the_last_finished_one(
    tmp_path, capsys, digits_csv, monkeypatch, where, signals, code, kept
):
    """Signals inside the third epoch, in the compiled engine's call or around it."""
    from fastbp import estimators, network

    calls = []
    owner, name = (
        (network.MLP, "fit") if where == "engine" else (estimators.MLPClassifier, "partial_fit")
    )
    original = getattr(owner, name)

    def interrupted(self, *args, **kwargs):
        _signals_at(calls, 4 if where == "engine" else 3, signals)  # the engine's first fit
        return original(self, *args, **kwargs)  # is the warm-up's

    monkeypatch.setattr(owner, name, interrupted)
    out_code, out, err = run(
        capsys,
        "train",
        digits_csv,
        "--epochs",
        "50",
        "--hidden",
        "8",
        "--no-progress",
        "--out",
        tmp_path / "m.npz",
    )
    assert out_code == code, err
    assert f"kept the model of epoch {kept} in" in err and "Traceback" not in err
    assert "interrupted by user" not in err
    assert _kept_epochs(tmp_path / "m.npz") == kept
    assert ("train accuracy" in out) == (signals == (signal.SIGINT,))


@pytest.mark.parametrize(
    "before, during, code",
    [
        ((), (signal.SIGINT,), 130),
        ((signal.SIGINT,), (signal.SIGINT,), 130),  # the second Ctrl-C, while scoring
        ((), (signal.SIGTERM,), 143),
    ],
)
def test_interrupting_the_scores_after_training_keeps_the_model(
    tmp_path, capsys, digits_csv, monkeypatch, before, during, code
):
    from fastbp import estimators

    fits, scores = [], []
    partial_fit, score = estimators.MLPClassifier.partial_fit, estimators.MLPClassifier.score

    def fit(self, *args, **kwargs):
        _signals_at(fits, 2, before)
        return partial_fit(self, *args, **kwargs)

    def scored(self, *args, **kwargs):
        _signals_at(scores, 1, during)
        return score(self, *args, **kwargs)

    monkeypatch.setattr(estimators.MLPClassifier, "partial_fit", fit)
    monkeypatch.setattr(estimators.MLPClassifier, "score", scored)
    out_code, out, err = run(
        capsys,
        "train",
        digits_csv,
        "--epochs",
        "3",
        "--hidden",
        "8",
        "--no-progress",
        "--out",
        tmp_path / "m.npz",
        "--plot",
        tmp_path / "c.png",
    )
    assert out_code == code and "Traceback" not in err
    assert _kept_epochs(tmp_path / "m.npz") == (2 if before else 3)
    assert "accuracy" not in out and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    "signals, code",
    [((signal.SIGINT,), 130), ((signal.SIGINT, signal.SIGINT), 130), ((signal.SIGTERM,), 143)],
)
def test_signals_while_saving_wait_until_the_model_is_written(
    tmp_path, capsys, digits_csv, monkeypatch, signals, code
):
    calls = []
    savez = np.savez

    def interrupted(*args, **kwargs):
        _signals_at(calls, 1, signals)
        return savez(*args, **kwargs)

    monkeypatch.setattr(np, "savez", interrupted)
    out_code, out, err = run(
        capsys,
        "train",
        digits_csv,
        "--epochs",
        "3",
        "--hidden",
        "8",
        "--no-progress",
        "--out",
        tmp_path / "m.npz",
    )
    assert calls and out_code == code and "kept the model of epoch 3" in err
    assert _kept_epochs(tmp_path / "m.npz") == 3
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


@pytest.mark.parametrize(
    "signals, code",
    [((signal.SIGINT,), 130), ((signal.SIGTERM,), 143), ((signal.SIGINT, signal.SIGINT), 130)],
)
def test_interrupting_lbfgs_keeps_the_last_finished_iteration(
    tmp_path, capsys, digits_csv, monkeypatch, signals, code
):
    from fastbp import network

    calls = []
    gradients = network.MLP.gradients

    def interrupted(self, *args, **kwargs):
        _signals_at(calls, 15, signals)
        return gradients(self, *args, **kwargs)

    monkeypatch.setattr(network.MLP, "gradients", interrupted)
    out_code, out, err = run(
        capsys,
        "train",
        digits_csv,
        "--solver",
        "lbfgs",
        "--epochs",
        "500",
        "--hidden",
        "8",
        "--out",
        tmp_path / "m.npz",
    )
    assert out_code == code and "Traceback" not in err, err
    iterations = _kept_epochs(tmp_path / "m.npz")
    assert 1 <= iterations < 15 and f"kept the model of iteration {iterations} in" in err
    assert (f"lbfgs iterations {iterations}" in out) == (signals == (signal.SIGINT,))


def test_interrupted_before_the_first_epoch_saves_nothing(
    tmp_path, capsys, digits_csv, monkeypatch
):
    from fastbp import estimators

    def interrupted(self, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(estimators.MLPClassifier, "partial_fit", interrupted)
    code, _, err = run(capsys, "train", digits_csv, "--out", tmp_path / "m.npz")
    assert code == 143 and "nothing saved" in err and os.listdir(tmp_path) == []


def _start_training(*argv):
    """``fastbp train`` in a subprocess, once it has printed that training begins."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "fastbp.cli", "train", *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    first = process.stdout.readline()
    if not first.startswith("fastbp: training"):
        process.kill()
        raise AssertionError(first + process.communicate()[1])
    return process


def _signal_and_wait(process, signals):
    try:
        for signum in signals:
            process.send_signal(signum)
            time.sleep(0.05)
        return process.communicate(timeout=120)
    finally:
        process.kill()


@pytest.mark.slow
@pytest.mark.parametrize(
    "solver, signals, code",
    [
        ("adam", (signal.SIGINT, signal.SIGINT), 130),
        ("sgd", (signal.SIGTERM,), 143),
        ("lbfgs", (signal.SIGINT,), 130),
        ("lbfgs", (signal.SIGINT, signal.SIGINT), 130),
        ("lbfgs", (signal.SIGTERM,), 143),
    ],
)
def test_real_signals_during_training_keep_a_loadable_model(
    tmp_path, digits_csv, solver, signals, code
):
    model = tmp_path / "m.npz"
    # lbfgs fits one pixel from the others on its raw scale: it takes seconds to converge
    # (the digits' labels take 14 iterations)
    task = ["--target", "p30", "--task", "regress", "--no-scale"] if solver == "lbfgs" else []
    process = _start_training(
        digits_csv,
        *task,
        "--solver",
        solver,
        "--epochs",
        "100000",
        "--hidden",
        "512,512" if solver == "lbfgs" else "8",
        "--no-progress",
        "--out",
        model,
    )
    # some epochs (iterations) finish; lbfgs's first one may still compile its loss
    time.sleep(4.0 if solver == "lbfgs" else 2.0)
    out, err = _signal_and_wait(process, signals)
    # A later signal may find Python already shutting down, its handlers reset: it ends
    # the process by that signal, which a shell reports as the same status (128 + n).
    assert process.returncode in (code, -signals[-1] if len(signals) > 1 else code), out + err
    assert signals[0] == signal.SIGTERM or "fastbp: stopping" in err  # while training
    assert "Traceback" not in err and "kept the model of" in err
    assert _kept_epochs(model) >= 1
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_compare_numpy_prints_the_median_speedup(capsys, digits_csv):
    code, out, _ = run(capsys, "train", digits_csv, *QUICK, "--compare-numpy")
    assert code == 0 and "speedup over plain NumPy" in out and "median of 5" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "signals, code",
    [((signal.SIGINT,), 130), ((signal.SIGINT, signal.SIGINT), 130), ((signal.SIGTERM,), 143)],
)
def test_real_signals_after_training_keep_the_model(tmp_path, digits_csv, signals, code):
    """Signals while the speedup is timed, after the last epoch."""
    model = tmp_path / "m.npz"
    process = _start_training(
        digits_csv,
        "--epochs",
        "2",
        "--hidden",
        "256,256",
        "--compare-numpy",
        "--no-progress",
        "--out",
        model,
    )
    while "train accuracy" not in (line := process.stdout.readline()):
        assert line, process.communicate()[1]
    out, err = _signal_and_wait(process, signals)
    assert process.returncode in (code, -signals[-1] if len(signals) > 1 else code), out + err
    assert "speedup" not in out and "Traceback" not in err
    assert "kept the model of epoch 2 in" in err and _kept_epochs(model) == 2


@pytest.mark.parametrize("value", ["-1", "4294967296", "x"])
def test_a_bad_seed_is_a_usage_error_naming_seed(capsys, small_csv, value):
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(small_csv), "--seed", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --seed: expected an integer from 0 to" in err
    assert "random_state" not in err


def test_hidden_too_large_for_memory_is_refused_before_allocating(capsys, small_csv, monkeypatch):
    from fastbp import estimators

    def fail(*args, **kwargs):
        raise AssertionError("the network was allocated")

    monkeypatch.setattr(estimators.MLPClassifier, "partial_fit", fail)
    code, _, err = run(capsys, "train", small_csv, "--hidden", "1000000000")
    assert_one_line_error(
        code, err, "--hidden 1000000000 is too large for memory", "4,000,000,001 parameters"
    )


def test_options_that_do_not_apply_are_refused(tmp_path, capsys, small_csv):
    code, _, err = run(capsys, "train", "--target", "y", "--epochs", "1")
    assert_one_line_error(code, err, "--target needs a data file")
    code, _, _ = run(
        capsys,
        "train",
        small_csv,
        "--task",
        "regress",
        "--epochs",
        "1",
        "--out",
        tmp_path / "r.npz",
    )
    assert code == 0
    code, out, err = run(capsys, "predict", tmp_path / "r.npz", small_csv, "--proba")
    assert_one_line_error(code, err, "--proba needs a classification model", "r.npz")
    assert out == ""


def test_a_batch_larger_than_the_data_is_clipped_in_the_options_terms(capsys, small_csv):
    """The estimator's warning named its own batch_size, even for the default 64 on a small
    table; the command clips the default quietly and warns about --batch-size only."""
    code, _, err = run(capsys, "train", small_csv, "--epochs", "1")
    assert code == 0 and "warning" not in err
    code, _, err = run(capsys, "train", small_csv, "--epochs", "1", "--batch-size", "1000")
    assert code == 0 and "batch_size" not in err
    assert "fastbp: warning: --batch-size 1000 is larger than the 36 training rows" in err


def test_regression_standardizes_the_target_and_predict_undoes_it(tmp_path, capsys):
    """With the defaults the diabetes data reached a validation R^2 of -0.04 on the raw
    target; standardized, the model learns, and predict answers on the target's scale."""
    from sklearn.datasets import load_diabetes
    from sklearn.metrics import r2_score

    X, y = load_diabetes(return_X_y=True)
    data = tmp_path / "diabetes.csv"
    np.savetxt(
        data,
        np.column_stack([X, y]),
        delimiter=",",
        comments="",
        fmt="%.10g",
        header=",".join([f"f{i}" for i in range(10)] + ["y"]),
    )
    model = tmp_path / "d.npz"
    code, out, _ = run(capsys, "train", data, "--no-progress", "--out", model)
    assert code == 0
    assert float(out.split("validation R^2 ")[1].split()[0]) > 0.2, out
    meta = persistence.read_metadata(model)
    assert float(meta["target_mean"]) == pytest.approx(y.mean(), rel=0.05)
    assert float(meta["target_scale"]) == pytest.approx(y.std(), rel=0.05)
    code, out, _ = run(capsys, "predict", model, data)
    predicted = np.array(out.splitlines()[1:], dtype=float)
    assert code == 0 and r2_score(y, predicted) > 0.4

    # A model saved without the target's scaling predicts the network's output as is.
    with np.load(model) as archive:
        arrays = {k: archive[k] for k in archive.files if "target_" not in k}
    np.savez(tmp_path / "old.npz", **arrays)
    code, out, _ = run(capsys, "predict", tmp_path / "old.npz", data)
    X = np.loadtxt(data, delimiter=",", skiprows=1)[:, :10]  # as the CSV holds them
    expected = fastbp.load(model).forward((X - meta["mean"]) / meta["scale"])[:, 0]
    np.testing.assert_allclose(np.array(out.splitlines()[1:], dtype=float), expected, rtol=1e-12)


def test_help_lists_the_exit_statuses(capsys):
    for argv in (["--help"], ["train", "--help"], ["predict", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "exit status:\n  0    done\n  1    bad input" in out
        assert "\n  2    usage" in out and "\n  130  interrupted" in out


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    """A small four-feature CSV, the model trained on it, and a folder for more files."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    folder = tmp_path_factory.mktemp("iris")
    header = "sepal_len,sepal_wid,petal_len,petal_wid,label"
    np.savetxt(
        folder / "iris.csv",
        np.column_stack([X, y]),
        delimiter=",",
        header=header,
        comments="",
        fmt="%g",
    )
    code = main(
        [
            "train",
            str(folder / "iris.csv"),
            "--target",
            "label",
            "--hidden",
            "8",
            "--epochs",
            "20",
            "--lr",
            "0.02",
            "--no-progress",
            "--out",
            str(folder / "m.npz"),
        ]
    )
    assert code == 0
    return folder


def test_predict_matches_columns_by_name(iris, capsys):
    model = iris / "m.npz"
    (iris / "misnamed.csv").write_text("pw,pl,sw,sepal_len\n0.2,1.4,3.5,5.1\n")
    code, out, err = run(capsys, "predict", model, iris / "misnamed.csv", "--proba")
    assert_one_line_error(
        code,
        err,
        "misnamed.csv",
        "missing 'sepal_wid', 'petal_len', 'petal_wid'",
        "not in the model 'pw', 'pl', 'sw'",
        "--by-position",
    )
    assert out == ""
    code, by_position, _ = run(
        capsys, "predict", model, iris / "misnamed.csv", "--proba", "--by-position"
    )
    assert code == 0 and len(by_position.splitlines()) == 2

    (iris / "ordered.csv").write_text(
        "sepal_len,sepal_wid,petal_len,petal_wid\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
    )
    (iris / "shuffled.csv").write_text(
        "petal_wid,extra,sepal_len,petal_len,sepal_wid\n0.2,9,5.1,1.4,3.5\n2.3,9,6.7,5.2,3.0\n"
    )
    code, ordered, _ = run(capsys, "predict", model, iris / "ordered.csv", "--proba")
    assert code == 0
    code, shuffled, _ = run(capsys, "predict", model, iris / "shuffled.csv", "--proba")
    assert code == 0 and shuffled == ordered


def test_predict_without_names_on_one_side_needs_by_position(iris, capsys):
    np.save(iris / "rows.npy", np.array([[5.1, 3.5, 1.4, 0.2]]))
    code, _, err = run(capsys, "predict", iris / "m.npz", iris / "rows.npy")
    assert_one_line_error(code, err, "rows.npy has no column names", "--by-position")
    code, out, _ = run(capsys, "predict", iris / "m.npz", iris / "rows.npy", "--by-position")
    assert code == 0 and out.splitlines()[0] == "label"

    X = np.loadtxt(iris / "iris.csv", delimiter=",", skiprows=1)
    np.save(iris / "iris.npy", X)
    code, _, _ = run(
        capsys,
        "train",
        iris / "iris.npy",
        "--epochs",
        "2",
        "--hidden",
        "4",
        "--no-progress",
        "--out",
        iris / "unnamed.npz",
    )
    assert code == 0 and persistence.read_metadata(iris / "unnamed.npz")["features"].size == 0
    code, out, _ = run(capsys, "predict", iris / "unnamed.npz", iris / "rows.npy")
    assert code == 0 and len(out.splitlines()) == 2
    code, _, err = run(capsys, "predict", iris / "unnamed.npz", iris / "iris.csv")
    assert_one_line_error(code, err, "trained without column names", "--by-position")


def test_byte_order_mark(iris, capsys):
    """A CSV saved as Excel's "CSV UTF-8": the mark is not part of the first name."""
    plain = "label,a,b\n" + "".join(f"{i % 2},{i},{(i * 7) % 5}\n" for i in range(40))
    (iris / "plain.csv").write_text(plain)
    (iris / "excel.csv").write_bytes(b"\xef\xbb\xbf" + plain.encode())
    code, out, err = run(
        capsys,
        "train",
        iris / "excel.csv",
        "--target",
        "label",
        *QUICK,
        "--out",
        iris / "excel.npz",
    )
    assert code == 0, err
    assert list(persistence.read_metadata(iris / "excel.npz")["features"]) == ["a", "b"]
    code, from_plain, _ = run(capsys, "predict", iris / "excel.npz", iris / "plain.csv")
    assert code == 0
    code, from_excel, _ = run(capsys, "predict", iris / "excel.npz", iris / "excel.csv")
    assert code == 0 and from_excel == from_plain and len(from_plain.splitlines()) == 41


def test_duplicate_names_refused_at_train_and_predict(iris, capsys):
    (iris / "dup.csv").write_text(
        "sepal_len,sepal_wid,petal_len,petal_wid,petal_wid,label\n"
        "5.1,3.5,1.4,0.2,0.2,0\n6.7,3.0,5.2,2.3,2.3,2\n"
    )
    code, _, err = run(capsys, "train", iris / "dup.csv", *QUICK)
    assert_one_line_error(code, err, "dup.csv", "duplicate column names 'petal_wid'")
    code, _, err = run(capsys, "predict", iris / "m.npz", iris / "dup.csv")
    assert_one_line_error(code, err, "dup.csv", "duplicate column names 'petal_wid'")


def test_csv_quirks_read_or_refused_in_one_line(iris, capsys):
    rows = "".join(f'"{i / 10}","{(i * 3) % 7}","{i % 2}"\n' for i in range(40))
    (iris / "quoted.csv").write_text(rows)
    code, out, err = run(capsys, "train", iris / "quoted.csv", *QUICK)
    assert code == 0 and "accuracy" in out, err

    (iris / "header.csv").write_text("a,b,y\n")
    code, _, err = run(capsys, "train", iris / "header.csv", *QUICK)
    assert_one_line_error(code, err, "header.csv has a header but no rows")
    (iris / "ragged.csv").write_text("a,b,y\n1,2,0\n3,4,1\n5,6\n7,8,1\n")
    code, _, err = run(capsys, "train", iris / "ragged.csv", *QUICK)
    assert_one_line_error(code, err, "ragged.csv: line 4 has 2 fields but the header has 3")
    assert "usecols" not in err


def test_warnings_print_as_one_line_each(iris, capsys):
    code, _, err = run(
        capsys,
        "train",
        iris / "iris.csv",
        "--epochs",
        "3",
        "--hidden",
        "4",
        "--batch-size",
        "100000",
        "--no-progress",
    )
    assert code == 0
    lines = err.splitlines()
    warned = [line for line in lines if line.startswith("fastbp: warning: ")]
    assert len(warned) == 1 and "--batch-size 100000 is larger than" in warned[0], err
    assert not [line for line in lines if "Warning" in line or line.startswith(" ")], err


@pytest.mark.slow
def test_kill_9_at_any_moment_never_leaves_a_partial_model(tmp_path, digits_csv):
    """``kill -9`` cannot be caught, so nothing is saved then; but the model file is
    replaced in one rename, so at any moment it is the earlier complete model or the new
    complete one, never a partial zip. Kills at several moments of a short run, from the
    first epochs through the final save and scoring."""
    model = tmp_path / "m.npz"
    first = _start_training(digits_csv, "--epochs", "2", "--hidden", "8", "--out", model)
    assert first.communicate(timeout=300)[0] is not None and first.returncode == 0
    earlier = model.read_bytes()
    for delay in (0.0, 0.2, 0.5, 1.0, 2.0, 4.0):
        process = _start_training(
            digits_csv, "--epochs", "20", "--hidden", "8", "--no-progress", "--out", model
        )
        time.sleep(delay)
        process.kill()
        process.communicate(timeout=120)
        net = fastbp.load(model)  # a complete model file, whichever it is
        assert net.layer_sizes[0] == 64
        assert model.read_bytes() == earlier or persistence.read_metadata(model)["epochs"] >= 1
        earlier = model.read_bytes()


def _model_bits(path):
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files if k[0] in "Wb" and k[1:].isdigit()}


def _same_models(a, b):
    first, second = _model_bits(a), _model_bits(b)
    return first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)


def test_checkpoint_resumes_to_the_bits_of_an_uninterrupted_run(tmp_path, capsys, digits_csv):
    ckpt, whole, resumed = tmp_path / "run.ckpt", tmp_path / "whole.npz", tmp_path / "res.npz"
    options = ["--hidden", "16", "--lr", "0.02", "--no-progress", "--batch-size", "50"]
    code, _, _ = run(capsys, "train", digits_csv, "--epochs", "7", *options, "--out", whole)
    assert code == 0
    code, out, _ = run(
        capsys, "train", digits_csv, "--epochs", "3", *options, "--checkpoint", ckpt,
        "--checkpoint-every", "2",
    )  # fmt: skip
    assert code == 0 and "resumed" not in out
    code, out, _ = run(
        capsys, "train", digits_csv, "--epochs", "7", *options, "--checkpoint", ckpt,
        "--out", resumed,
    )  # fmt: skip
    assert code == 0 and "resumed from" in out and "after epoch 3" in out
    assert "for the last 4" in out
    assert _same_models(whole, resumed)


@pytest.mark.parametrize(
    "change, words",
    [
        (["--lr", "0.05"], "lr: checkpoint 0.02, this run 0.05"),
        (["--seed", "1"], "seed"),
        (["--hidden", "17"], "hidden"),
        (["--validation", "0.2"], "X_train"),
    ],
)
def test_checkpoint_of_another_run_is_refused_and_kept(tmp_path, capsys, digits_csv, change, words):
    ckpt = tmp_path / "run.ckpt"
    options = ["--epochs", "2", "--hidden", "16", "--lr", "0.02", "--no-progress"]
    assert run(capsys, "train", digits_csv, *options, "--checkpoint", ckpt)[0] == 0
    before = ckpt.read_bytes()
    code, out, err = run(capsys, "train", digits_csv, *options, *change, "--checkpoint", ckpt)
    assert_one_line_error(code, err, "--checkpoint", "another run", words)
    assert ckpt.read_bytes() == before


def test_checkpoint_options_that_cannot_work_are_refused(tmp_path, capsys, digits_csv):
    model = tmp_path / "m.npz"
    quick = [*QUICK, "--checkpoint"]
    code, _, err = run(capsys, "train", digits_csv, *quick, model, "--out", model)
    assert_one_line_error(code, err, "is the same file as --out")
    code, _, err = run(capsys, "train", digits_csv, *quick, tmp_path / "c", "--solver", "lbfgs")
    assert_one_line_error(code, err, "--checkpoint needs an epoch-based solver")
    assert run(capsys, "train", digits_csv, *quick, tmp_path / "c")[0] == 0
    code, _, err = run(capsys, "train", digits_csv, *QUICK[2:], "--epochs", "2", *quick[-1:],
                       tmp_path / "c")  # fmt: skip
    assert_one_line_error(code, err, "holds 3 epochs of this run")
    model.write_text("not a checkpoint")
    code, _, err = run(capsys, "train", digits_csv, *quick, model)
    assert_one_line_error(code, err, "not a fastbp checkpoint")
    assert model.read_text() == "not a checkpoint"


def test_checkpointed_command_killed_at_random_moments_ends_with_the_same_model(
    tmp_path, digits_csv
):
    options = ["--epochs", "40", "--hidden", "32", "--batch-size", "20", "--no-progress"]
    whole, out, ckpt = tmp_path / "whole.npz", tmp_path / "out.npz", tmp_path / "run.ckpt"
    assert _start_training(digits_csv, *options, "--out", whole).wait(timeout=300) == 0
    rng = np.random.default_rng(7)
    kills = []
    for attempt in range(10):
        written = ckpt.stat().st_mtime_ns if ckpt.exists() else None
        process = _start_training(digits_csv, *options, "--checkpoint", ckpt, "--out", out)
        if attempt < 3:
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline:
                if ckpt.exists() and ckpt.stat().st_mtime_ns != written:
                    break
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=60)
                with np.load(ckpt) as archive:
                    kills.append(int(archive["epochs_done"]))
                continue
        process.communicate(timeout=300)
        if process.returncode == 0:
            break
    assert kills and 0 < kills[0] < 40, kills
    assert _same_models(whole, out)
