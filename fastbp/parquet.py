"""Numeric columns of a Parquet file, or of a folder of them, read a block of rows at a time.

``ParquetColumns`` reads only the row groups that hold the rows asked for, a few pages at
a time, so a table much larger than memory can be read whole in blocks. pyarrow (the
``parquet`` extra) is imported when a table is opened, never with ``import fastbp``.
"""

import os
from collections import Counter

import numpy as np

from ._tables import PARQUET_SUFFIXES, DataError
from .streaming import read_ahead

#: Values decoded per pyarrow batch: 2 MB of float64, however many columns.
BATCH_VALUES = 2**18

#: Bytes pyarrow reads from a file at a time (it would otherwise read a column chunk whole).
READ_BUFFER = 2**20


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError('reading Parquet needs pyarrow: pip install "fastbp[parquet]"') from None
    return pq


def _open(pq, path):
    """``path`` as a ``pq.ParquetFile`` that reads page by page, not row group by row group."""
    try:
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)
    except Exception as error:  # pyarrow raises its own hierarchy for corrupt files
        raise DataError(f"{path} is not a Parquet file ({error})") from None


def parquet_files(path):
    """The Parquet file ``path``, or the Parquet files in the folder ``path`` sorted by
    name (hidden ones and ``_metadata``-style files left out)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    if not os.path.isdir(path):
        return [path]
    files = sorted(
        os.path.join(path, name)
        for name in os.listdir(path)
        if name.lower().endswith(PARQUET_SUFFIXES) and not name.startswith((".", "_"))
    )
    if not files:
        raise DataError(f"{path} holds no Parquet files (names ending in .parquet or .pq)")
    return files


def column_names(path):
    """The column names of the Parquet file or folder ``path`` (of its first file)."""
    pq = _pyarrow_parquet()
    file = parquet_files(path)[0]
    with _open(pq, file) as parquet:
        return [str(name) for name in parquet.schema_arrow.names]


def _is_numeric(pa, kind):
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


class ParquetColumns:
    """The numeric ``columns`` (names; None: all) of the Parquet file or folder of Parquet
    files ``path``, as a 2-D table of ``dtype`` that is read on request: ``read(start,
    stop)`` for a range of rows, ``blocks(block_rows)`` for all of them in order."""

    ndim = 2

    def __init__(self, path, columns=None, dtype=np.float64):
        pq = _pyarrow_parquet()
        import pyarrow as pa

        self.path = os.fspath(path)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a floating-point type; got {self.dtype}")
        self.files = parquet_files(self.path)
        schema = None
        self._row_groups = []  # per file: the row count of each of its row groups
        for file in self.files:
            with _open(pq, file) as parquet:
                if schema is None:
                    schema = parquet.schema_arrow
                    self.names = self._chosen(pa, file, schema, columns)
                elif not parquet.schema_arrow.equals(schema):
                    raise DataError(self._difference(file, schema, parquet.schema_arrow))
                metadata = parquet.metadata
                self._row_groups.append(
                    [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
                )
        self._file_rows = [sum(groups) for groups in self._row_groups]
        self._file_starts = np.concatenate([[0], np.cumsum(self._file_rows)]).tolist()
        self.shape = (self._file_starts[-1], len(self.names))
        if self.shape[0] == 0:
            raise DataError(f"{self.path} holds no rows")

    def _chosen(self, pa, file, schema, columns):
        """The names of ``columns`` (all when None), checked to be there and numeric."""
        names = [str(name) for name in schema.names]
        repeated = [name for name, count in Counter(names).items() if count > 1]
        if repeated:
            raise DataError(
                f"{file}: duplicate column names {', '.join(map(repr, repeated))}; each "
                "column needs its own name"
            )
        chosen = names if columns is None else [str(name) for name in columns]
        if not chosen:
            raise DataError(f"{file} has no columns" if columns is None else "no columns chosen")
        for name in chosen:
            if name not in names:
                shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                raise DataError(f"{file}: no column {name!r} (columns: {shown})")
            kind = schema.field(name).type
            if not _is_numeric(pa, kind):
                raise DataError(f"{file}: column {name!r} is not numeric ({kind})")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"columns must not repeat a name; got {chosen}")
        return chosen

    def _difference(self, file, expected, found):
        """Why the schema ``found`` of ``file`` is not the first file's, ``expected``."""
        if expected.names != found.names:
            return (
                f"{file}: its columns ({', '.join(found.names[:8])}) differ from those of "
                f"{self.files[0]} ({', '.join(expected.names[:8])}); the files of a folder "
                "must hold the same columns"
            )
        for field, other in zip(expected, found, strict=True):
            if not field.type.equals(other.type):
                return (
                    f"{file}: column {field.name!r} is {other.type}, but {field.type} in "
                    f"{self.files[0]}; the files of a folder must hold the same column types"
                )
        return f"{file}: its schema differs from that of {self.files[0]}"

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"ParquetColumns({self.path!r}, shape={self.shape}, dtype={self.dtype.name})"

    def read(self, start, stop):
        """Rows ``[start, stop)`` as a new C-contiguous ``(stop - start, k)`` array."""
        start, stop = self._range(start, stop)
        out = np.empty((stop - start, self.shape[1]), self.dtype)
        for first, values in self._pieces(start, stop):
            out[first - start : first - start + len(values)] = values
        return out

    def blocks(self, block_rows, start=0, stop=None):
        """``(first_row, rows)`` for consecutive blocks of ``block_rows`` rows (the last
        one shorter) from ``start`` to ``stop``, each a new array. A thread decodes the
        next block while the caller works on this one."""
        if not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
            raise ValueError(f"block_rows must be a positive integer; got {block_rows!r}")
        start, stop = self._range(start, stop)
        return read_ahead(self._filled_blocks(int(block_rows), start, stop), "parquet-reader")

    def _range(self, start, stop):
        n = self.shape[0]
        stop = n if stop is None else stop
        if not (
            isinstance(start, (int, np.integer))
            and isinstance(stop, (int, np.integer))
            and 0 <= start <= stop <= n
        ):
            raise ValueError(f"rows [{start}, {stop}) are not within the table's {n} rows")
        return int(start), int(stop)

    def _filled_blocks(self, block_rows, start, stop):
        for first in range(start, stop, block_rows):
            yield first, self.read(first, min(first + block_rows, stop))

    def _pieces(self, start, stop):
        """``(first_row, values)`` of consecutive checked pieces covering ``[start, stop)``."""
        pq = _pyarrow_parquet()
        for index, file in enumerate(self.files):
            file_start = self._file_starts[index]
            low, high = start - file_start, stop - file_start
            if high <= 0 or low >= self._file_rows[index]:
                continue
            group_starts = np.concatenate([[0], np.cumsum(self._row_groups[index])])
            groups = [
                g
                for g in range(len(self._row_groups[index]))
                if group_starts[g] < high and group_starts[g + 1] > low
            ]
            row = int(group_starts[groups[0]])  # within the file
            with _open(pq, file) as parquet:
                batches = parquet.iter_batches(
                    batch_size=max(1, BATCH_VALUES // self.shape[1]),
                    row_groups=groups,
                    columns=self.names,
                )
                for batch in batches:
                    skip, end = max(low - row, 0), min(high - row, batch.num_rows)
                    if skip < end:
                        values = self._values(file, row + skip, batch.slice(skip, end - skip))
                        yield file_start + row + skip, values
                    row += batch.num_rows
                    if row >= high:
                        break

    def _values(self, file, row, batch):
        """The columns of ``batch`` (its first row is row ``row`` of ``file``) as one array
        of ``dtype``, refusing missing and non-finite values."""
        values = np.empty((batch.num_rows, self.shape[1]), self.dtype)
        for j, (name, column) in enumerate(zip(self.names, batch.columns, strict=True)):
            if column.null_count:
                first = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
                raise DataError(
                    f"{file}: column {name!r} has a missing value in row {row + first + 1}; "
                    "remove or fill missing values first"
                )
            values[:, j] = column.to_numpy(zero_copy_only=False)
        if not np.isfinite(values).all():
            bad, col = np.argwhere(~np.isfinite(values))[0]
            raise DataError(
                f"{file}: column {self.names[col]!r} holds {values[bad, col]} in row "
                f"{row + bad + 1}; remove or fill missing values first"
            )
        return values
