"""The fastbp command line: training and prediction from files, and its error messages."""

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
    np.savetxt(path, np.column_stack([X[:600], y[:600]]), delimiter=",", header=header,
               comments="", fmt="%g")
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
    code, out, _ = run(capsys, "train", digits_csv, "--target", "digit", *QUICK, "--out", model,
                       *plot)
    assert code == 0, out
    assert "train accuracy" in out and "validation accuracy" in out
    assert "speedup over plain NumPy" in out
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
    code, out, _ = run(capsys, "train", tmp_path / "table.npy", "--target", "0", *QUICK,
                       "--out", tmp_path / "r.npz")
    assert code == 0 and "R^2" in out
    np.savez(tmp_path / "xy.npz", X=X, y=(y > 0).astype(int))
    code, out, _ = run(capsys, "train", tmp_path / "xy.npz", *QUICK, "--solver", "sgd")
    assert code == 0 and "accuracy" in out
    code, out, _ = run(capsys, "train", tmp_path / "xy.npz", "--epochs", "5", "--solver",
                       "lbfgs", "--hidden", "8", "--dtype", "float32")
    assert code == 0 and "lbfgs iterations" in out
    np.save(tmp_path / "features.npy", X[:7])
    code, out, _ = run(capsys, "predict", tmp_path / "r.npz", tmp_path / "features.npy")
    assert code == 0 and len(out.splitlines()) == 8


def test_parquet(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    X, y = load_digits(return_X_y=True)
    table = pa.table({**{f"p{i}": X[:300, i] for i in range(64)}, "label": y[:300]})
    pq.write_table(table, tmp_path / "digits.parquet")
    code, out, _ = run(capsys, "train", tmp_path / "digits.parquet", "--target", "label",
                       *QUICK, "--out", tmp_path / "m.npz")
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
    code, out, err = run(capsys, "train", digits_csv, "--epochs", "50", "--hidden", "8",
                         "--no-progress", "--out", tmp_path / "m.npz")
    assert code == 130 and "stopping after this epoch" in err
    assert int(persistence.read_metadata(tmp_path / "m.npz")["epochs"]) == 3


def _env():
    """The environment of a child Python that imports this checkout's fastbp."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))


@pytest.mark.slow
def test_python_dash_m_fastbp_is_the_command_line():
    done = subprocess.run([sys.executable, "-m", "fastbp", "--help"], capture_output=True,
                          text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: fastbp")
    assert "train" in done.stdout and "predict" in done.stdout


@pytest.mark.slow
def test_command_in_a_subprocess_stops_cleanly_on_sigint(tmp_path, digits_csv):
    env = _env()
    model = tmp_path / "m.npz"
    process = subprocess.Popen(
        [sys.executable, "-m", "fastbp", "train", str(digits_csv), "--epochs", "100000",
         "--hidden", "8", "--no-progress", "--out", str(model)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    """A small four-feature CSV, the model trained on it, and a folder for more files."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    folder = tmp_path_factory.mktemp("iris")
    header = "sepal_len,sepal_wid,petal_len,petal_wid,label"
    np.savetxt(folder / "iris.csv", np.column_stack([X, y]), delimiter=",", header=header,
               comments="", fmt="%g")
    code = main(["train", str(folder / "iris.csv"), "--target", "label", "--hidden", "8",
                 "--epochs", "20", "--lr", "0.02", "--no-progress",
                 "--out", str(folder / "m.npz")])
    assert code == 0
    return folder


def test_predict_matches_columns_by_name(iris, capsys):
    model = iris / "m.npz"
    (iris / "misnamed.csv").write_text("pw,pl,sw,sepal_len\n0.2,1.4,3.5,5.1\n")
    code, out, err = run(capsys, "predict", model, iris / "misnamed.csv", "--proba")
    assert_one_line_error(code, err, "misnamed.csv", "missing 'sepal_wid', 'petal_len', "
                          "'petal_wid'", "not in the model 'pw', 'pl', 'sw'", "--by-position")
    assert out == ""
    code, by_position, _ = run(capsys, "predict", model, iris / "misnamed.csv", "--proba",
                               "--by-position")
    assert code == 0 and len(by_position.splitlines()) == 2

    (iris / "ordered.csv").write_text("sepal_len,sepal_wid,petal_len,petal_wid\n"
                                      "5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n")
    (iris / "shuffled.csv").write_text("petal_wid,extra,sepal_len,petal_len,sepal_wid\n"
                                       "0.2,9,5.1,1.4,3.5\n2.3,9,6.7,5.2,3.0\n")
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
    code, _, _ = run(capsys, "train", iris / "iris.npy", "--epochs", "2", "--hidden", "4",
                     "--no-progress", "--out", iris / "unnamed.npz")
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
    code, out, err = run(capsys, "train", iris / "excel.csv", "--target", "label", *QUICK,
                         "--out", iris / "excel.npz")
    assert code == 0, err
    assert list(persistence.read_metadata(iris / "excel.npz")["features"]) == ["a", "b"]
    code, from_plain, _ = run(capsys, "predict", iris / "excel.npz", iris / "plain.csv")
    assert code == 0
    code, from_excel, _ = run(capsys, "predict", iris / "excel.npz", iris / "excel.csv")
    assert code == 0 and from_excel == from_plain and len(from_plain.splitlines()) == 41


def test_duplicate_names_refused_at_train_and_predict(iris, capsys):
    (iris / "dup.csv").write_text("sepal_len,sepal_wid,petal_len,petal_wid,petal_wid,label\n"
                                  "5.1,3.5,1.4,0.2,0.2,0\n6.7,3.0,5.2,2.3,2.3,2\n")
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
    code, _, err = run(capsys, "train", iris / "iris.csv", "--epochs", "3", "--hidden", "4",
                       "--batch-size", "100000", "--no-progress")
    assert code == 0
    lines = err.splitlines()
    warned = [line for line in lines if line.startswith("fastbp: warning: ")]
    assert len(warned) == 1 and "batch_size" in warned[0], err
    assert not [line for line in lines if "Warning" in line or line.startswith(" ")], err
