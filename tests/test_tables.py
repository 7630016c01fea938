"""The command line's table reader: CSV quirks, column names, and matching a model's
columns by name."""

import warnings

import numpy as np
import pytest

from fastbp._tables import DataError, Table, read_table


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark."""
    table = read_table(write(tmp_path, "bom.csv", b"\xef\xbb\xbflabel,a\n1,2\n0,3\n"))
    assert table.names == ["label", "a"] and table.named
    np.testing.assert_array_equal(table.values, [[1, 2], [0, 3]])
    table = read_table(write(tmp_path, "bare.csv", b"\xef\xbb\xbf1,2\n0,3\n"))
    assert not table.named
    np.testing.assert_array_equal(table.values, [[1, 2], [0, 3]])


def test_quoted_numbers_are_numbers(tmp_path):
    table = read_table(write(tmp_path, "q.csv", '"0.12","0.5"\n"3","-1e2"\n'))
    assert not table.named
    np.testing.assert_array_equal(table.values, [[0.12, 0.5], [3, -100]])
    table = read_table(write(tmp_path, "qh.csv", '"a","b"\n"0.12","0.5"\n'))
    assert table.names == ["a", "b"]
    np.testing.assert_array_equal(table.values, [[0.12, 0.5]])


def test_header_without_rows_is_one_clean_error(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for text in ("a,b,y\n", "a,b,y\n\n\n"):
            with pytest.raises(DataError, match=r"h\.csv has a header but no rows$"):
                read_table(write(tmp_path, "h.csv", text))


@pytest.mark.parametrize(
    "text, line, fields, against",
    [
        ("a,b,c\n1,2,3\n4,5,6\n7,8\n", 4, 2, "the header has 3"),
        ("a,b,c\n1,2,3\n\n4,5,6,7\n", 4, 4, "the header has 3"),
        ("a,b,c\n1,2\n3,4\n", 2, 2, "the header has 3"),
        ("1,2,3\n4,5,6\n7,8\n", 3, 2, "line 1 has 3"),
    ],
)
def test_ragged_row_names_its_line(tmp_path, text, line, fields, against):
    with pytest.raises(DataError) as caught:
        read_table(write(tmp_path, "r.csv", text))
    message = str(caught.value)
    assert message == f"{tmp_path / 'r.csv'}: line {line} has {fields} fields but {against}"


def test_non_numeric_field_names_column_and_line(tmp_path):
    with pytest.raises(DataError, match=r"column 'b' holds the non-numeric value 'x' on line 3"):
        read_table(write(tmp_path, "w.csv", "a,b\n1,2\n3,x\n"))


def test_duplicate_names_are_refused(tmp_path):
    path = write(tmp_path, "d.csv", "a,b,a,c,b\n1,2,3,4,5\n")
    with pytest.raises(DataError, match=r"d\.csv: duplicate column names 'a', 'b'"):
        read_table(path)
    path = write(tmp_path, "bom.csv", b"\xef\xbb\xbfa,b,a\n1,2,3\n")
    with pytest.raises(DataError, match="duplicate column names 'a'"):
        read_table(path)
    np.savez(tmp_path / "d.npz", X=np.ones((2, 2)), y=np.zeros(2), columns=np.array(["u", "u"]))
    with pytest.raises(DataError, match="duplicate column names 'u'"):
        read_table(tmp_path / "d.npz")


def test_duplicate_parquet_names_are_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0])], names=["x", "x"])
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(DataError, match="duplicate column names 'x'"):
        read_table(tmp_path / "d.parquet")


def test_which_tables_have_names(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((2, 3)))
    np.savez(tmp_path / "b.npz", X=np.ones((2, 3)), y=np.zeros(2))
    np.savez(tmp_path / "c.npz", X=np.ones((2, 2)), y=np.zeros(2), columns=np.array(["u", "v"]))
    named = {name: read_table(tmp_path / name).named for name in ("a.npy", "b.npz", "c.npz")}
    assert named == {"a.npy": False, "b.npz": False, "c.npz": True}


def table(names, named=True):
    values = np.arange(2 * len(names), dtype=float).reshape(2, len(names))
    return Table(list(names), values, named=named, path="new.csv")


def test_columns_are_taken_by_name_in_the_models_order():
    data = table(["c", "extra", "a", "b"])
    X = data.select(["a", "b", "c"], 3)
    np.testing.assert_array_equal(X, data.values[:, [2, 3, 0]])


@pytest.mark.parametrize(
    "names, words",
    [
        (["pw", "pl", "sw", "a"], ["missing 'b', 'c', 'd'", "not in the model 'pw', 'pl', 'sw'"]),
        (["a", "b", "c"], ["missing 'd'"]),
        (["a", "b", "c", "D"], ["missing 'd'", "not in the model 'D'"]),
    ],
)
def test_names_that_differ_are_listed(names, words):
    with pytest.raises(DataError) as caught:
        table(names).select(["a", "b", "c", "d"], 4)
    message = str(caught.value)
    assert "new.csv" in message and "--by-position" in message
    for word in words:
        assert word in message, message


def test_positional_only_when_asked_or_without_names_on_both_sides():
    named, unnamed = table(["d", "c", "b", "a"]), table("0123", named=False)
    np.testing.assert_array_equal(
        named.select(["a", "b", "c", "x"], 4, by_position=True), named.values
    )
    np.testing.assert_array_equal(unnamed.select([], 4), unnamed.values)
    with pytest.raises(DataError, match="new.csv has no column names"):
        unnamed.select(["a", "b", "c", "d"], 4)
    with pytest.raises(DataError, match="model was trained without column names"):
        named.select([], 4)
    with pytest.raises(DataError, match="new.csv has 4 columns; the model takes 3"):
        named.select([], 3, by_position=True)
    with pytest.raises(DataError, match="model's column names"):
        named.select(["a", "a", "b", "c"], 4)
