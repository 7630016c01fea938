"""Numeric tables from files, for the command line: CSV, ``.npy``, ``.npz`` and Parquet.

Every reader returns a ``Table``: column names and a float64 matrix ``(n_rows,
n_columns)``. Anything that is not a finite numeric table raises ``DataError`` with a
one-line message naming the file, and where possible the column and line.

Columns are matched by name wherever the file has names (a CSV header, Parquet, an
``.npz`` ``columns`` array), so names must be unique; tables without names (``.npy``, a
CSV without header) get ``"0"``, ``"1"``, ... and ``named`` false.
"""

import csv
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

CSV_SUFFIXES = (".csv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")


class DataError(ValueError):
    """A data file that cannot be used; the message is meant for the user as is."""


@dataclass
class Table:
    """Column ``names`` (str) and ``values`` ``(n_rows, n_columns)``; a ``.npz`` holding
    ``X`` and ``y`` arrays gives its target separately in ``target`` ``(n_rows,)``.
    ``named`` is false where the names are only positions; ``path`` names the file in
    messages."""

    names: list
    values: np.ndarray
    target: np.ndarray = None
    named: bool = True
    path: str = "the data"

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
            raise DataError(
                f"column index {index} is out of range: the data has {len(self.names)} columns"
            )
        return index % len(self.names)

    def select(self, wanted, n_in, by_position=False):
        """The values of the model's columns ``wanted`` (names, empty if the model has
        none) in the model's order, taken by name; by position only when asked, or when
        neither the table nor the model has names. Any mismatch raises ``DataError``."""
        indices = self.model_columns(wanted, n_in, by_position)
        return self.values if indices == list(range(len(self.names))) else self.values[:, indices]

    def model_columns(self, wanted, n_in, by_position=False):
        """The indices of the columns that ``select`` takes, in the model's order."""
        n_columns = len(self.names)
        if by_position or (not wanted and not self.named):
            if n_columns != n_in:
                raise DataError(
                    f"{self.path} has {n_columns} columns; the model takes {n_in} features"
                )
            return list(range(n_columns))
        hint = "; pass --by-position to take the columns in their order"
        if not wanted:
            raise DataError(
                f"the model was trained without column names, so the columns of "
                f"{self.path} cannot be matched by name{hint}"
            )
        if not self.named:
            raise DataError(
                f"{self.path} has no column names to match the model's ({_shown(wanted)}){hint}"
            )
        if len(wanted) != n_in or len(set(wanted)) != len(wanted):
            raise DataError(
                f"the model's column names ({_shown(wanted)}) do not fit its {n_in} inputs{hint}"
            )
        missing = [name for name in wanted if name not in self.names]
        if missing:
            extra = [name for name in self.names if name not in wanted]
            raise DataError(
                f"the columns of {self.path} do not match the model's: missing "
                f"{_shown(missing)}"
                + (f"; not in the model {_shown(extra)}" if extra else "")
                + hint
            )
        return [self.names.index(name) for name in wanted]


def _shown(names, limit=8):
    """Names quoted and comma separated, the first ``limit`` of them."""
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


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
        raise DataError(
            f"{path}: unknown data format {suffix or '(no suffix)'!r}; use .csv, "
            ".npy, .npz or .parquet"
        )
    table.path = path
    _check_names(path, table)
    _check_finite(path, table)
    return table


def _check_names(path, table):
    """Refuse repeated column names: matching by name could not tell the columns apart."""
    if not table.named:
        return
    repeated = [name for name, count in Counter(table.names).items() if count > 1]
    if repeated:
        raise DataError(
            f"{path}: duplicate column names {_shown(repeated)}; each column needs its own name"
        )


def _check_finite(path, table):
    if table.values.shape[0] == 0:
        raise DataError(f"{path} holds no rows")
    refuse_non_finite(path, table.names, table.values)
    if table.target is not None and not np.isfinite(table.target).all():
        raise DataError(f"{path}: y holds NaN or infinity")


def _read_csv(path):
    """A CSV table: a header row unless the first row is all numbers; quoted numbers are
    numbers, a UTF-8 byte-order mark is dropped. NumPy parses; on failure a second, plain
    Python pass finds the line at fault."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = csv.reader(file)
            first = next(rows, None)
            has_rows = next((True for row in rows if row), False)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text CSV file") from None
    except csv.Error as error:
        raise DataError(f"{path} is not a readable CSV file ({error})") from None
    if not first:
        raise DataError(f"{path} is empty")
    header = not all(_is_number(field) for field in first)
    if header and not has_rows:
        raise DataError(f"{path} has a header but no rows")
    names = [f.strip() for f in first] if header else [str(i) for i in range(len(first))]
    try:
        values = np.loadtxt(
            path,
            delimiter=",",
            quotechar='"',
            skiprows=int(header),
            ndmin=2,
            dtype=np.float64,
            encoding="utf-8-sig",
            comments=None,
        )
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(_explain_csv_error(path, names, header, error)) from None
    if values.shape[1] != len(names):
        raise DataError(_explain_csv_error(path, names, header, None))
    return Table(names, values, named=header)


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _explain_csv_error(path, names, header, error):
    """One line naming the first line of a CSV file whose field count differs from the
    first row's, or whose field is not a number; NumPy's own message if neither is found."""
    against = "the header has" if header else "line 1 has"
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = csv.reader(file)
            for row in rows:
                if not row or (rows.line_num == 1 and header):
                    continue
                if len(row) != len(names):
                    return (
                        f"{path}: line {rows.line_num} has {len(row)} fields but "
                        f"{against} {len(names)}"
                    )
                for name, text in zip(names, row, strict=True):
                    if not _is_number(text):
                        what = (
                            "an empty field"
                            if text.strip() == ""
                            else f"the non-numeric value {text!r}"
                        )
                        return (
                            f"{path}: column {name!r} holds {what} on line "
                            f"{rows.line_num}; the data must be numeric"
                        )
    except (UnicodeDecodeError, csv.Error):
        pass
    return f"{path} is not a numeric CSV file" + (f" ({error})" if error else "")


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


def _numeric_table(path, array, what):
    """``array`` as a 2-D numeric table (a 1-D one as one column), not converted."""
    if array.dtype.kind not in "fiub":
        raise DataError(f"{path}: {what} has dtype {array.dtype}; it must be numeric")
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise DataError(f"{path}: {what} must be a 2-D table; got shape {array.shape}")
    return array


def _numeric_2d(path, array, what):
    return np.asarray(_numeric_table(path, array, what), dtype=np.float64)


def refuse_non_finite(path, names, values, first_row=0):
    """Raise ``DataError`` naming the column and row (counted from 1) of the first value
    of the 2-D ``values`` that is NaN or infinite; ``values`` start at row ``first_row``."""
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{path}: column {names[col]!r} holds {values[row, col]} in row "
            f"{first_row + row + 1}; remove or fill missing values first"
        )


def _read_npy(path):
    array = _load_numpy(path)
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path} is an .npz archive, not a .npy file")
    values = _numeric_2d(path, array, "the array")
    return Table([str(i) for i in range(values.shape[1])], values, named=False)


def mapped_npy(path):
    """The 2-D numeric array of the ``.npy`` file ``path``, memory-mapped read-only (a 1-D
    one as one column): read on request, never whole."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path} is not a NumPy .npy file ({error})") from None
    array = _numeric_table(path, array, "the array")
    if array.shape[0] == 0:
        raise DataError(f"{path} holds no rows")
    return array


class MappedColumns:
    """Columns ``columns`` (indices) of a memory-mapped table, read as float64 a block of
    rows at a time, as ``fastbp.parquet.ParquetColumns`` reads Parquet; non-finite values
    are refused naming the column and row."""

    def __init__(self, array, columns, path):
        self.array, self.columns, self.path = array, list(columns), path
        self.shape = (array.shape[0], len(self.columns))
        self.dtype = np.dtype(np.float64)

    def __len__(self):
        return self.shape[0]

    def read(self, start, stop):
        values = np.asarray(self.array[start:stop], dtype=np.float64)[:, self.columns]
        refuse_non_finite(self.path, [str(c) for c in self.columns], values, start)
        return values

    def blocks(self, block_rows, start=0, stop=None):
        """``(first_row, values)`` of consecutive blocks of ``block_rows`` rows."""
        stop = len(self) if stop is None else stop
        for first in range(start, stop, block_rows):
            yield first, self.read(first, min(stop, first + block_rows))


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
            raise DataError(
                f"{path}: expected arrays 'X' and 'y' or a single table; found {', '.join(files)}"
            )
        names = [str(i) for i in range(values.shape[1])]
        named = "columns" in files and archive["columns"].shape == (values.shape[1],)
        if named:
            names = [str(n).strip() for n in archive["columns"]]
    if target is not None:
        if target.dtype.kind not in "fiub":
            raise DataError(f"{path}: y has dtype {target.dtype}; it must be numeric")
        if target.shape != (values.shape[0],):
            raise DataError(
                f"{path}: y must have shape ({values.shape[0]},) to match X; got {target.shape}"
            )
        target = np.asarray(target, dtype=np.float64)
    return Table(names, values, target, named=named)


def _read_parquet(path):
    from .parquet import ParquetColumns  # it imports DataError from here: loaded on use

    columns = ParquetColumns(path)
    return Table(list(columns.names), columns.read(0, len(columns)))
