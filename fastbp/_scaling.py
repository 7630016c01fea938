"""Standardizing the command line's features a block at a time, for tables in memory and
tables read from disk alike: the statistics in one pass, the scaled rows in a second.

Blocks hold ``BLOCK_VALUES`` values whatever the source, so a table gives the same
statistics, to the bit, from a CSV file, a ``.npy`` file or Parquet.
"""

import contextlib
import os
import shutil
import tempfile

import numpy as np

#: Values in a block of rows: 2 MB of float64 (``block_rows`` turns it into rows).
BLOCK_VALUES = 2**18


def block_rows(n_columns):
    """Rows in a block of a table of ``n_columns`` columns."""
    return max(1, BLOCK_VALUES // max(1, n_columns))


def blocks(table):
    """``(first_row, rows)`` of consecutive blocks of ``table``: an array, or a table read
    on request such as ``fastbp.parquet.ParquetColumns``."""
    size = block_rows(table.shape[1])
    if isinstance(table, np.ndarray):
        return ((first, table[first : first + size]) for first in range(0, len(table), size))
    return table.blocks(size)


def mean_and_std(table, selected):
    """Each column's mean and standard deviation over the rows where the boolean mask
    ``selected`` is true: one pass, block statistics merged in row order (Chan, Golub and
    LeVeque's pairwise update), so the result depends on the values alone."""
    count, mean, m2 = 0, np.zeros(table.shape[1]), np.zeros(table.shape[1])
    for first, rows in blocks(table):
        rows = np.asarray(rows, dtype=np.float64)[selected[first : first + len(rows)]]
        if len(rows) == 0:
            continue
        rows_mean = rows.mean(axis=0)
        rows_m2 = np.square(rows - rows_mean).sum(axis=0)
        total = count + len(rows)
        delta = rows_mean - mean
        mean = mean + delta * (len(rows) / total)
        m2 = m2 + rows_m2 + np.square(delta) * (count * len(rows) / total)
        count = total
    return mean, np.sqrt(m2 / count)


@contextlib.contextmanager
def scratch_folder(near=None):
    """A new folder for scratch files, beside the file ``near`` if given (the output is
    on a disk with room), else in the system's temporary folder; removed on leaving."""
    parent = os.path.dirname(os.path.abspath(near)) if near else None
    folder = tempfile.mkdtemp(prefix=".fastbp-scratch-", dir=parent)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_standardized(table, path, order, mean, scale, dtype):
    """Write ``(table - mean) / scale`` to the new ``.npy`` file ``path`` in ``dtype``,
    row ``order[i]`` of ``table`` as row ``i``, reading ``table`` once in row order; return
    the file mapped read-only. Where the system allows it the file is unlinked at once, so
    it leaves nothing behind however the process ends."""
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    scratch = np.lib.format.open_memmap(path, "w+", dtype, (len(order), table.shape[1]))
    try:
        for first, rows in blocks(table):
            scratch[position[first : first + len(rows)]] = (rows - mean) / scale
        scratch.flush()
    finally:
        del scratch
    standardized = np.load(path, mmap_mode="r")
    with contextlib.suppress(OSError):  # a mapped file cannot be unlinked on Windows
        os.unlink(path)
    return standardized
