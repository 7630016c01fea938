"""The benchmark grid of fastbp: every workload that ``python -m fastbp.bench`` and the asv
suite in ``asv_bench/`` time, defined once here so the two never drift apart.

Each row is a network, a data set size and a training schedule (plain SGD, mini-batches in
row order), with the speed it is expected to reach written out as ``target``.
"""

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Row:
    """One workload of the grid."""

    name: str
    sizes: tuple
    activations: tuple
    loss: str
    n_rows: int
    batch_size: int | None  # None: the full data set is one batch
    epochs: int
    target: str
    lr: float = 0.01

    @property
    def macs_per_sample(self):
        """Multiply-adds of one sample's forward pass: the sum of fan_in * fan_out."""
        return sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    def train_flops(self, n_rows=None, epochs=None):
        """Floating-point operations of a training run: forward, and backward through both
        the weights and the deltas, 6 * rows * epochs * sum(fan_in * fan_out)."""
        n_rows = self.n_rows if n_rows is None else n_rows
        epochs = self.epochs if epochs is None else epochs
        return 6 * n_rows * epochs * self.macs_per_sample

    def scaled(self, n_rows=None, epochs=None):
        """The same row with fewer rows and/or epochs (for smoke tests and quick runs)."""
        return replace(
            self,
            n_rows=self.n_rows if n_rows is None else n_rows,
            epochs=self.epochs if epochs is None else epochs,
        )


GRID = (
    Row("notebook", (2, 2, 1), ("relu", "sigmoid"), "bce", 2, None, 1000, ">= 300x NumPy", lr=0.1),
    Row("online", (8, 16, 4), ("tanh", "softmax"), "cce", 1_000, 1, 10, ">= 100x NumPy"),
    Row(
        "narrow",
        (32, 64, 64, 1),
        ("relu", "relu", "sigmoid"),
        "bce",
        200_000,
        128,
        1,
        ">= 3x NumPy",
    ),
    Row("mnist-like", (784, 128, 10), ("relu", "softmax"), "cce", 60_000, 128, 1, ">= 1.0x NumPy"),
    Row(
        "wide",
        (1024, 1024, 1024, 10),
        ("relu", "relu", "softmax"),
        "cce",
        20_000,
        256,
        1,
        ">= 1.0x NumPy",
    ),
    Row(
        "big-batch",
        (16, 16, 1),
        ("tanh", "sigmoid"),
        "bce",
        1_000_000,
        None,
        20,
        ">= 5x NumPy; peak memory <= data + 64 MB",
    ),
)

ROWS = {row.name: row for row in GRID}


def get_row(name):
    """The grid row called ``name``; KeyError lists the valid names."""
    try:
        return ROWS[name]
    except KeyError:
        raise KeyError(f"no grid row {name!r}; rows are {', '.join(ROWS)}") from None


def make_data(row, dtype, n_rows=None, seed=0):
    """Seeded data for ``row``: ``(X, Y)`` with X standard normal of shape
    ``(n_rows, n_in)`` and ``dtype``; Y integer labels ``(n_rows,)`` for ``cce`` or a 0/1
    column ``(n_rows, 1)`` of ``dtype`` for ``bce``. Labels come from a fixed random linear
    teacher, so the problems are learnable. The same seed gives the same data, and a
    smaller ``n_rows`` gives a leading slice of a larger one's rows in the same order."""
    if isinstance(row, str):
        row = get_row(row)
    dtype = np.dtype(dtype)
    n = row.n_rows if n_rows is None else int(n_rows)
    n_in, n_out = row.sizes[0], row.sizes[-1]
    teacher = np.random.default_rng(seed + 1).standard_normal((n_in, n_out)).astype(dtype)
    X = np.random.default_rng(seed).standard_normal((n, n_in), dtype=dtype)
    scores = X @ teacher
    if row.loss == "cce":
        return X, scores.argmax(axis=1).astype(np.int64)
    if row.loss == "bce":
        return X, (scores[:, :1] > 0).astype(dtype)
    raise ValueError(f"make_data supports the losses cce and bce, not {row.loss!r}")
