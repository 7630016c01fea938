"""Data read block by block while the engine trains: rows that stay on disk (memory-mapped
``.npy`` files, ``fastbp.parquet.ParquetColumns``) or visits by blocks (``shuffle="blocks"``).

An epoch is cut into blocks of whole batches; a reader thread reads, checks and orders the
next block while the engine trains on this one (its compiled calls release the GIL), and
the engine carries the epoch's sums from block to block, so a fit block by block gives the
bits of one call on the same rows in the same order.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import os
import queue
import tempfile
import threading
from typing import NamedTuple

import numpy as np

#: Bytes of input rows (features and targets) in one block: a few times the last-level
#: cache, small beside memory. Blocks hold whole batches, so this is a target.
BLOCK_BYTES = 16 << 20


def is_row_source(X) -> bool:
    """Whether ``X`` is read by blocks through ``read(start, stop)`` rather than indexed
    (``fastbp.parquet.ParquetColumns`` and anything shaped like it)."""
    return hasattr(X, "read") and hasattr(X, "shape") and not isinstance(X, np.ndarray)


def blockwise(X, Y, shuffle) -> bool:
    """Whether a fit goes block by block: row sources, ``shuffle="blocks"``, and memory
    maps visited in order (whose visiting order would otherwise be 8 bytes a row in
    memory)."""
    if is_row_source(X) or is_row_source(Y) or shuffle == "blocks":
        return True
    return shuffle is False and isinstance(X, np.memmap)


class Plan(NamedTuple):
    """How an epoch of ``n`` rows is cut: blocks of ``block_rows`` (whole batches), the
    last one shorter."""

    n: int
    block_rows: int

    @classmethod
    def of(cls, n, batch_size, row_bytes):
        batches = max(1, BLOCK_BYTES // max(1, batch_size * row_bytes))
        return cls(n, min(n, batches * batch_size))

    @property
    def n_blocks(self) -> int:
        return -(-self.n // self.block_rows)

    def bounds(self, block):
        """Rows ``[start, stop)`` of block ``block``."""
        start = block * self.block_rows
        return start, min(self.n, start + self.block_rows)

    def visits(self, shuffled, state):
        """The epoch's blocks in visiting order, each with its rows' order inside it (None:
        as stored). Shuffled, the whole blocks come in a random order and the rows of every
        block in a random order, drawn from ``state`` (uint64[1], advanced); a shorter last
        block stays last, so that every batch but the epoch's last is whole."""
        from ._engine.shuffle import shuffle_order  # numba loads with the first draw

        whole = self.n // self.block_rows
        blocks = np.arange(self.n_blocks)
        if shuffled and whole > 1:
            shuffle_order(blocks[:whole], state)
        for block in blocks:
            rows = None
            if shuffled:
                start, stop = self.bounds(block)
                rows = np.empty(stop - start, np.int64)
                shuffle_order(rows, state)
            yield block, rows


class Block(NamedTuple):
    """One block's arrays, rows in visiting order."""

    X: np.ndarray
    Y: np.ndarray
    sample_weight: np.ndarray | None


def _rows(data, start, stop, order):
    """Rows ``[start, stop)`` of ``data`` (array or row source), in ``order`` if given."""
    if data is None:
        return None
    if is_row_source(data):
        block = data.read(start, stop)
    else:
        block = data[start:stop]
        if isinstance(data, np.memmap) and order is None:
            _will_need(block)
    return block if order is None else block[order]


def _will_need(block):
    """Ask the kernel to read a memory-mapped block ahead (``madvise(MADV_WILLNEED)``)."""
    if not hasattr(mmap, "MADV_WILLNEED") or block.nbytes == 0:
        return
    page = mmap.PAGESIZE
    first = block.ctypes.data // page * page
    length = block.ctypes.data + block.nbytes - first
    _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(length), mmap.MADV_WILLNEED)


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def read_blocks(X, Y, sample_weight, plan, visits, check):
    """The epoch's blocks (``Block``), each read, ordered and passed through ``check`` by a
    thread while the caller trains on the one before. An error in the thread is raised
    here, at the block it concerns; closing the generator early stops the thread."""

    def read(block, rows):
        start, stop = plan.bounds(block)
        return check(
            Block(
                _rows(X, start, stop, rows),
                _rows(Y, start, stop, rows),
                _rows(sample_weight, start, stop, rows),
            )
        )

    return read_ahead((read(block, rows) for block, rows in visits), "reader")


#: What ``read_ahead``'s thread hands over after the last item.
_DONE = object()


def read_ahead(items, name):
    """The items of the generator ``items``, each made by a thread (``fastbp-{name}``)
    while the caller works on the one before (a queue of one). The thread's errors are
    raised here; closing this generator, or dropping it, stops and joins the thread."""
    handoff = queue.Queue(maxsize=1)
    stopped = threading.Event()

    def hand(entry):
        while not stopped.is_set():
            try:
                handoff.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not hand((item, None)):
                    return
            hand((_DONE, None))
        except BaseException as error:  # raised again in the caller's thread
            hand((None, error))
        finally:
            items.close()

    thread = threading.Thread(target=produce, name=f"fastbp-{name}", daemon=True)
    thread.start()
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stopped.set()
        while thread.is_alive():
            try:
                handoff.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def mapped(source, dtype=None):
    """``source`` (a row source) copied in row order, block by block, to a scratch ``.npy``
    file in the temporary folder (``TMPDIR``) and memory-mapped read-only: random access
    for a global shuffle, whole-batch gradients or the estimators, at the price of the
    data's size on disk. The file is unlinked once mapped, so nothing is left behind
    however the process ends; other input is returned as it is."""
    if not is_row_source(source):
        return source
    dtype = np.dtype(source.dtype if dtype is None else dtype)
    n, width = (int(v) for v in source.shape)
    handle, path = tempfile.mkstemp(prefix="fastbp-rows-", suffix=".npy")
    os.close(handle)
    try:
        copy = np.lib.format.open_memmap(path, "w+", dtype, (n, width))
        plan = Plan(n, max(1, min(n, BLOCK_BYTES // max(1, dtype.itemsize * width))))
        blocks = read_blocks(source, None, None, plan, plan.visits(False, None), lambda b: b)
        for block, rows in enumerate(blocks):
            start, stop = plan.bounds(block)
            copy[start:stop] = rows.X.reshape(stop - start, width)
        copy.flush()
        del copy
        return np.load(path, mmap_mode="r")
    finally:
        with contextlib.suppress(OSError):  # a mapped file stays mapped once unlinked
            os.unlink(path)
