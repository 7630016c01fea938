"""fastbp.parquet: Parquet files and folders read by row groups, a block at a time."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

import fastbp  # noqa: E402
from fastbp._tables import DataError  # noqa: E402
from fastbp.parquet import ParquetColumns  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def table(rng):
    """1,000 rows of every numeric kind."""
    return pa.table(
        {
            "f64": rng.normal(size=1000),
            "f32": rng.normal(size=1000).astype(np.float32),
            "i8": rng.integers(-100, 100, 1000).astype(np.int8),
            "u32": rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32),
            "flag": rng.random(1000) > 0.5,
        }
    )


def as_array(table, names=None, dtype=np.float64):
    names = table.column_names if names is None else names
    return np.column_stack([table.column(n).to_numpy().astype(dtype) for n in names])


def test_rows_of_a_file_are_read_by_range_and_by_block(tmp_path, table):
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=128)
    columns = ParquetColumns(tmp_path / "t.parquet")
    expected = as_array(table)
    assert columns.shape == (1000, 5) and len(columns) == 1000 and columns.ndim == 2
    assert columns.names == ["f64", "f32", "i8", "u32", "flag"]
    whole = columns.read(0, 1000)
    np.testing.assert_array_equal(whole, expected)
    assert whole.flags.c_contiguous and whole.dtype == np.float64
    for start, stop in [(0, 0), (0, 1), (127, 129), (128, 256), (300, 999), (999, 1000)]:
        np.testing.assert_array_equal(columns.read(start, stop), expected[start:stop])
    blocks = list(columns.blocks(300))
    assert [first for first, _ in blocks] == [0, 300, 600, 900]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), expected)
    blocks = list(columns.blocks(7, start=10, stop=40))
    assert [first for first, _ in blocks] == [10, 17, 24, 31, 38]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), expected[10:40])


def test_a_folder_reads_as_one_table_in_name_order(tmp_path, table):
    folder = tmp_path / "parts"
    folder.mkdir()
    for name, (start, stop) in zip("bac", [(300, 600), (0, 300), (600, 1000)], strict=True):
        pq.write_table(table.slice(start, stop - start), folder / f"{name}.parquet", 77)
    (folder / "_SUCCESS").write_text("")  # what Spark leaves beside its files
    chosen = ["flag", "f64"]
    columns = ParquetColumns(folder, chosen, dtype=np.float32)
    expected = as_array(table, chosen, np.float32)
    assert columns.shape == (1000, 2) and columns.dtype == np.float32
    np.testing.assert_array_equal(columns.read(250, 700), expected[250:700])
    blocks = list(columns.blocks(111, start=5))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), expected[5:])


def test_bad_tables_are_refused_naming_the_file_and_column(tmp_path, table):
    def written(name, data):
        pq.write_table(data, tmp_path / name)
        return tmp_path / name

    nulls = pa.table({"a": [1.0, None, 3.0], "b": [1, 2, 3]})
    text = pa.table({"a": [1.0, 2.0], "s": ["x", "y"]})
    cases = [
        (written("nulls.parquet", nulls), None, "nulls.parquet: column 'a' has a missing value"),
        (written("text.parquet", text), None, "text.parquet: column 's' is not numeric"),
        (written("nan.parquet", pa.table({"a": [1.0, np.inf]})), None, "'a' holds inf in row 2"),
        (tmp_path / "t.parquet", ["f64", "nope"], "no column 'nope'"),
        (tmp_path / "none.parquet", None, "no such file"),
    ]
    pq.write_table(table, tmp_path / "t.parquet")
    (tmp_path / "fake.parquet").write_text("this is text")
    cases.append((tmp_path / "fake.parquet", None, "fake.parquet is not a Parquet file"))
    for path, chosen, words in cases:
        with pytest.raises(DataError, match=words):
            ParquetColumns(path, chosen).read(0, 2)
    # only the columns asked for need to be numeric and whole
    np.testing.assert_array_equal(
        ParquetColumns(tmp_path / "text.parquet", ["a"]).read(0, 2), [[1], [2]]
    )


def test_a_folder_of_differing_files_is_refused_naming_the_file(tmp_path, table):
    for name, data in [
        ("names", table.rename_columns(["f64", "f32", "i8", "u32", "other"])),
        ("types", table.set_column(2, "i8", table.column("i8").cast(pa.int64()))),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        pq.write_table(table, folder / "1.parquet")
        pq.write_table(data, folder / "2.parquet")
        with pytest.raises(DataError, match=f"{name}/2.parquet: .*must hold the same column"):
            ParquetColumns(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no Parquet files"):
        ParquetColumns(tmp_path / "empty")


def test_an_error_in_the_reader_thread_is_raised_in_the_caller(tmp_path):
    values = np.arange(1000.0)
    values[777] = np.nan
    pq.write_table(pa.table({"a": values}), tmp_path / "t.parquet", row_group_size=100)
    blocks = ParquetColumns(tmp_path / "t.parquet").blocks(100)
    firsts = []
    with pytest.raises(DataError, match="column 'a' holds nan in row 778"):
        for first, _ in blocks:
            firsts.append(first)
    assert firsts == [0, 100, 200, 300, 400, 500, 600]


def test_closing_the_blocks_early_stops_the_reader_thread(tmp_path, table):
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=100)
    columns = ParquetColumns(tmp_path / "t.parquet")
    before = threading.active_count()
    blocks = columns.blocks(10)
    next(blocks)
    assert threading.active_count() == before + 1
    blocks.close()
    assert threading.active_count() == before
    blocks = columns.blocks(10)
    next(blocks)
    del blocks  # dropped: the generator closes, the thread is joined
    assert threading.active_count() == before


def test_import_fastbp_does_not_import_pyarrow_and_its_absence_is_explained():
    assert fastbp.ParquetColumns is ParquetColumns
    env = dict(os.environ, PYTHONPATH=ROOT)
    code = "import sys, fastbp; fastbp.ParquetColumns; print('pyarrow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "False", done.stderr
    code = (
        "import sys; sys.modules['pyarrow'] = sys.modules['pyarrow.parquet'] = None\n"
        "from fastbp.parquet import ParquetColumns\n"
        "try:\n    ParquetColumns('x.parquet')\n"
        "except ValueError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert 'pip install "fastbp[parquet]"' in done.stdout, done.stderr
