"""Numeric tables from files, for the command line: CSV, ``.npy``, ``.npz`` and Parquet.

Every reader returns a ``Table``: column names and a float64 matrix ``(n_rows,
n_columns)``. Anything that is not a finite numeric table raises ``DataError`` with a
one-line message naming the file, and where possible the column and row.
"""

import csv
import os
import re
from dataclasses import dataclass

import numpy as np

CSV_SUFFIXES = (".csv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")


class DataError(ValueError):
    """A data file that cannot be used; the message is meant for the user as is."""


@dataclass
class Table:
    """Column ``names`` (str) and ``values`` ``(n_rows, n_columns)``; a ``.npz`` holding
    ``X`` and ``y`` arrays gives its target separately in ``target`` ``(n_rows,)``."""

    names: list
    values: np.ndarray
    target: np.ndarray = None

    def column(self, spec):
        """Index of the column named ``spec``, else ``spec`` read as an integer index
        (negative counts from the end)."""
        if spec in self.names:
            return self.names.index(spec)
        try:
            index = int(spec)
        except ValueError:
            shown = ", ".join(self.names[:8]) + (", ..." if len(self.names) > 8 else "")
            raise DataError(f"no column {spec!r} in the data (columns: {shown})") from None
        if not -len(self.names) <= index < len(self.names):
            raise DataError(f"column index {index} is out of range: the data has "
                            f"{len(self.names)} columns")
        return index % len(self.names)


def read_table(path):
    """The table in ``path``, chosen by its suffix."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not a data file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in CSV_SUFFIXES:
        table = _read_csv(path)
    elif suffix == ".npy":
        table = _read_npy(path)
    elif suffix == ".npz":
        table = _read_npz(path)
    elif suffix in PARQUET_SUFFIXES:
        table = _read_parquet(path)
    else:
        raise DataError(f"{path}: unknown data format {suffix or '(no suffix)'!r}; use .csv, "
                        ".npy, .npz or .parquet")
    _check_finite(path, table)
    return table


def _check_finite(path, table):
    if table.values.shape[0] == 0:
        raise DataError(f"{path} holds no rows")
    bad = ~np.isfinite(table.values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{path}: column {table.names[col]!r} holds "
                        f"{table.values[row, col]} in row {row + 1}; remove or fill "
                        "missing values first")
    if table.target is not None and not np.isfinite(table.target).all():
        raise DataError(f"{path}: y holds NaN or infinity")


def _read_csv(path):
    try:
        with open(path, newline="", encoding="utf-8") as file:
            first = next(csv.reader(file), None)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text CSV file") from None
    if not first:
        raise DataError(f"{path} is empty")
    header = not all(_is_number(field) for field in first)
    names = [f.strip() for f in first] if header else [str(i) for i in range(len(first))]
    try:
        values = np.loadtxt(path, delimiter=",", skiprows=int(header), ndmin=2,
                            dtype=np.float64, encoding="utf-8", comments=None)
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(_explain_csv_error(path, names, header, error)) from None
    if values.shape[1] != len(names):
        raise DataError(f"{path}: rows have {values.shape[1]} fields but the header names "
                        f"{len(names)} columns")
    return Table(names, values)


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _explain_csv_error(path, names, header, error):
    """One line saying which column and row of a CSV file is not a number."""
    message = str(error)
    found = re.search(r"could not convert string '(.*)' to float64 at row (\d+), column (\d+)",
                      message)
    if found:
        text, row, col = found.group(1), int(found.group(2)), int(found.group(3)) - 1
        name = names[col] if 0 <= col < len(names) else str(col)
        line = row + 1 + int(header)
        what = "an empty field" if text.strip() == "" else f"the non-numeric value {text!r}"
        return f"{path}: column {name!r} holds {what} on line {line}; the data must be numeric"
    if "columns" in message or "number of" in message:
        return f"{path}: rows have different numbers of fields ({message})"
    return f"{path} is not a numeric CSV file ({message})"


def _load_numpy(path):
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        kind = "an .npz archive" if path.lower().endswith(".npz") else "a NumPy .npy file"
        reason = str(error)
        if "Object arrays" in reason:
            reason = "it holds Python objects"
        elif "pickle" in reason:
            reason = "it is not in NumPy's format"
        raise DataError(f"{path} is not {kind} ({reason})") from None


def _numeric_2d(path, array, what):
    if array.dtype.kind not in "fiub":
        raise DataError(f"{path}: {what} has dtype {array.dtype}; it must be numeric")
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise DataError(f"{path}: {what} must be a 2-D table; got shape {array.shape}")
    return np.asarray(array, dtype=np.float64)


def _read_npy(path):
    array = _load_numpy(path)
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path} is an .npz archive, not a .npy file")
    values = _numeric_2d(path, array, "the array")
    return Table([str(i) for i in range(values.shape[1])], values)


def _read_npz(path):
    archive = _load_numpy(path)
    if isinstance(archive, np.ndarray):
        raise DataError(f"{path} is a single .npy array, not an .npz archive")
    with archive:
        files = list(archive.files)
        if "X" in files:
            values = _numeric_2d(path, archive["X"], "X")
            target = archive["y"] if "y" in files else None
        elif len(files) == 1:
            values, target = _numeric_2d(path, archive[files[0]], files[0]), None
        else:
            raise DataError(f"{path}: expected arrays 'X' and 'y' or a single table; found "
                            f"{', '.join(files)}")
        names = [str(i) for i in range(values.shape[1])]
        if "columns" in files and archive["columns"].shape == (values.shape[1],):
            names = [str(n) for n in archive["columns"]]
    if target is not None:
        if target.dtype.kind not in "fiub":
            raise DataError(f"{path}: y has dtype {target.dtype}; it must be numeric")
        if target.shape != (values.shape[0],):
            raise DataError(f"{path}: y must have shape ({values.shape[0]},) to match X; got "
                            f"{target.shape}")
        target = np.asarray(target, dtype=np.float64)
    return Table(names, values, target)


def _read_parquet(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'fastbp[parquet]'") from None
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises its own hierarchy for corrupt files
        raise DataError(f"{path} is not a Parquet file ({error})") from None
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if column.null_count:
            raise DataError(f"{path}: column {name!r} has {column.null_count} missing values")
        array = column.to_numpy()
        if array.dtype.kind not in "fiub":
            raise DataError(f"{path}: column {name!r} is not numeric ({column.type})")
        columns.append(np.asarray(array, dtype=np.float64))
    if not columns:
        raise DataError(f"{path} has no columns")
    return Table([str(n) for n in table.column_names], np.column_stack(columns))
