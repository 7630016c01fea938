"""The command line streams Parquet data: the same model, to the bit, as the same table in
memory, without holding the table in memory."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("sklearn")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from fastbp import _scaling  # noqa: E402
from fastbp.cli import main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--epochs", "2", "--hidden", "8", "--lr", "0.02", "--no-progress", "--batch-size", "50"]


def test_block_statistics_are_those_of_the_selected_rows(rng, monkeypatch):
    monkeypatch.setattr(_scaling, "BLOCK_VALUES", 40)  # blocks of 10 rows
    X = rng.normal(3.0, 2.0, size=(1003, 4))
    selected = rng.random(1003) < 0.7
    selected[:10] = False  # a block without selected rows
    mean, std = _scaling.mean_and_std(X, selected)
    np.testing.assert_allclose(mean, X[selected].mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(std, X[selected].std(axis=0), rtol=1e-13)


@pytest.fixture
def tables(tmp_path, rng):
    """One table of 900 rows as a Parquet file, a folder of 3 Parquet files, a CSV file
    and an .npy file; ``c`` holds 3 classes, ``r`` real values."""
    X = rng.normal(size=(900, 5)) * [1, 10, 0.1, 1, 5] + [0, 3, -1, 100, 0]
    c = (X[:, 0] + rng.normal(size=900) > 0).astype(int) + (X[:, 1] > 3)
    r = X @ [1.0, -0.2, 3.0, 0.0, 0.5] + rng.normal(size=900)
    names = [f"x{i}" for i in range(5)] + ["c", "r"]
    values = np.column_stack([X, c, r])
    table = pa.table({name: values[:, i] for i, name in enumerate(names)})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=128)
    (tmp_path / "parts").mkdir()
    for part, start in enumerate((0, 250, 600)):
        stop = (250, 600, 900)[part]
        pq.write_table(table.slice(start, stop - start), tmp_path / "parts" / f"{part}.pq", 100)
    np.savetxt(tmp_path / "t.csv", values, delimiter=",", header=",".join(names), comments="",
               fmt="%.17g")  # fmt: skip
    np.save(tmp_path / "t.npy", values)
    return tmp_path


def model(path):
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


@pytest.mark.parametrize(
    "target, options",
    [
        ("c", []),
        ("r", []),
        ("c", ["--no-scale"]),
        ("r", ["--no-scale", "--dtype", "float32"]),
        ("c", ["--dtype", "float32", "--validation", "0"]),
    ],
)
def test_parquet_trains_to_the_bits_of_the_table_in_memory(tables, target, options, monkeypatch):
    monkeypatch.setattr(_scaling, "BLOCK_VALUES", 600)  # blocks of 100 rows
    out = tables / "out"
    out.mkdir()
    runs = {}
    for source in ("t.parquet", "parts", "t.csv", "t.npy"):
        given = tables / source
        spec = target if source != "t.npy" else str(["c", "r"].index(target) + 5)
        extra = ["--target", spec] + (["--task", "classify"] if target == "c" else [])
        assert (
            main(["train", str(given), *extra, *QUICK, *options, "--out", str(out / "m.npz")]) == 0
        )
        assert os.listdir(out) == ["m.npz"]  # no scratch file left beside it
        runs[source] = model(out / "m.npz")
        os.remove(out / "m.npz")
    assert runs["t.parquet"].keys() == runs["t.csv"].keys()
    for source in ("parts", "t.csv", "t.npy"):
        for name, value in runs["t.parquet"].items():
            if source == "t.npy" and name in ("meta.features", "meta.target"):
                continue  # an .npy file has no column names
            np.testing.assert_array_equal(value, runs[source][name], err_msg=f"{source} {name}")


def test_parquet_predictions_are_those_of_the_table_in_memory(tables, monkeypatch, capsys):
    monkeypatch.setattr(_scaling, "BLOCK_VALUES", 600)
    saved = str(tables / "m.npz")
    assert main(["train", str(tables / "t.csv"), "--target", "c", *QUICK, "--out", saved]) == 0
    for options in ([], ["--proba"]):
        for suffix in ("csv", "npy"):
            outputs = []
            for source in ("t.csv", "t.parquet", "parts"):
                path = tables / f"p_{source}.{suffix}"
                args = ["predict", saved, str(tables / source), *options, "--out", str(path)]
                assert main(args) == 0
                outputs.append(path.read_bytes())
            assert outputs[1] == outputs[0] and outputs[2] == outputs[0]
    capsys.readouterr()
    assert main(["predict", saved, str(tables / "parts")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "c" and len(lines) == 901


def test_bad_parquet_data_writes_nothing(tables, capsys):
    broken = tables / "broken"
    broken.mkdir()
    pq.write_table(pa.table({"x0": [1.0, 2.0], "c": [0, 1]}), broken / "a.parquet")
    pq.write_table(pa.table({"x0": [1.0, np.nan], "c": [0, 1]}), broken / "b.parquet")
    out = tables / "out"
    out.mkdir()
    code = main(["train", str(broken), "--target", "c", *QUICK, "--out", str(out / "m.npz")])
    err = capsys.readouterr().err
    assert code == 1 and "b.parquet: column 'x0' holds nan in row 2" in err, err
    assert os.listdir(out) == []


@pytest.mark.parametrize(
    "where, message",
    [((5, 1), "column '1' holds nan in row 6"), ((3, 2), "column '2' holds inf in row 4")],
)
def test_bad_npy_data_read_by_blocks_writes_nothing(tmp_path, capsys, where, message):
    values = np.random.default_rng(0).normal(size=(40, 3))
    values[:, 2] = np.arange(40) % 2
    values[where] = np.nan if where[1] == 1 else np.inf
    np.save(tmp_path / "t.npy", values)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["train", str(tmp_path / "t.npy"), *QUICK, "--out", str(out / "m.npz")])
    err = capsys.readouterr().err
    assert code == 1 and message in err, err
    assert os.listdir(out) == []


MEMORY = textwrap.dedent(
    """
    import sys
    import tracemalloc

    from fastbp import estimators
    from fastbp.cli import main

    def anonymous_mb():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon"):
                    return int(line.split()[1]) / 1024

    data, small, out = sys.argv[1:]
    options = ["--epochs", "1", "--hidden", "8", "--no-progress"]
    assert main(["train", small, *options, "--out", out]) == 0  # compiled, imports done
    while_training = []
    partial_fit = estimators.MLPClassifier.partial_fit

    def measured(self, *args, **kwargs):
        while_training.append(anonymous_mb())
        return partial_fit(self, *args, **kwargs)

    estimators.MLPClassifier.partial_fit = measured
    before = anonymous_mb()
    tracemalloc.start()  # NumPy reports its allocations: the peak, not only what stays
    assert main(["train", data, *options, "--out", out]) == 0
    print(max(while_training) - before, tracemalloc.get_traced_memory()[1] / 2**20)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's RssAnon")
def test_training_from_parquet_holds_blocks_not_the_data(tmp_path):
    rows, columns = 400_000, 50  # 160 MB of float64
    rng = np.random.default_rng(0)
    names = [f"x{i}" for i in range(columns)]
    schema = pa.schema([(n, pa.float64()) for n in names] + [("y", pa.int64())])
    with pq.ParquetWriter(tmp_path / "big.parquet", schema) as writer:
        for _ in range(0, rows, 40_000):
            X = rng.normal(size=(40_000, columns))
            table = {**{n: X[:, i] for i, n in enumerate(names)}, "y": (X[:, 0] > 0) * 1}
            writer.write_table(pa.table(table), row_group_size=20_000)
    small = pq.read_table(tmp_path / "big.parquet").slice(0, 2000)
    pq.write_table(small, tmp_path / "small.parquet")
    script = tmp_path / "memory.py"
    script.write_text(MEMORY)
    # Allocators that give freed memory back at once, so RssAnon shows what is held.
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        ARROW_DEFAULT_MEMORY_POOL="system",
        MALLOC_MMAP_THRESHOLD_="262144",
    )
    results = {}
    whole = pq.read_table(tmp_path / "big.parquet")
    table = np.column_stack([c.to_numpy() for c in whole.columns])
    np.save(tmp_path / "big.npy", table)  # memory-mapped and read a block at a time
    np.savez(tmp_path / "big.npz", table=table)  # the same table, read whole
    del whole, table
    for name in ("big.parquet", "big.npy", "big.npz"):
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / name), str(tmp_path / "small.parquet"),
             str(tmp_path / "m.npz")],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = [float(v) for v in done.stdout.split()[-2:]]
    print(results)
    in_memory = results["big.npz"]
    assert in_memory[0] > 160 and in_memory[1] > 160  # the check can see the data held
    for streamed in (results["big.parquet"], results["big.npy"]):
        assert streamed[0] < 100 and streamed[1] < 60, results
