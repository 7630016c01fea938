"""The benchmark grid of fastbp: every workload that ``python -m fastbp.bench`` and the asv
suite in ``asv_bench/`` time, defined once here so the two never drift apart.

Each row is a network, a data set size and a training schedule (plain SGD, mini-batches in
row order), with the speed it is expected to reach written out as ``target``: clauses
joined by "; ", such as ">= 3x NumPy" (the speedup over ``fastbp.reference``) and
">= 50% peak" (the share of the machine's ``np.dot`` peak, counted by ``train_flops``).
The "middle" rows (digits-like to hidden-256x2) each do 4-8 GFLOP in their one epoch.
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
    def flops_per_sample(self):
        """Floating-point operations of one sample's training step: 2 per weight for the
        forward pass and 2 for the weight gradient in every layer, and 2 for the input delta
        in every layer but the first (whose input delta is never computed):
        4 * sum(fan_in * fan_out) + 2 * sum(fan_in * fan_out over layers after the first)."""
        macs = [a * b for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True)]
        return 4 * sum(macs) + 2 * sum(macs[1:])

    def train_flops(self, n_rows=None, epochs=None):
        """Floating-point operations of a training run: rows * epochs * flops_per_sample."""
        n_rows = self.n_rows if n_rows is None else n_rows
        epochs = self.epochs if epochs is None else epochs
        return n_rows * epochs * self.flops_per_sample

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
        ">= 3x NumPy; >= 50% peak",
    ),
    Row(
        "mnist-like",
        (784, 128, 10),
        ("relu", "softmax"),
        "cce",
        60_000,
        128,
        1,
        ">= 1.0x NumPy; >= 50% peak",
    ),
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
    # The middle of the grid: networks and batches as people train them on tabular data.
    # scikit-learn's MLPClassifier defaults (100 hidden, batch 200) on digits-shaped data.
    Row("digits-like", (64, 100, 10), ("relu", "softmax"), "cce", 150_000, 200, 1, ">= 50% peak"),
    # The same defaults on make_classification's default shape (20 features, two classes).
    Row("sklearn-binary", (20, 100, 1), ("relu", "sigmoid"), "bce", 500_000, 200, 1, ">= 50% peak"),
    Row("tabular", (300, 64, 1), ("relu", "sigmoid"), "bce", 100_000, 256, 1, ">= 50% peak"),
    Row(
        "hidden-256x2",
        (100, 256, 256, 1),
        ("relu", "relu", "sigmoid"),
        "bce",
        10_000,
        128,
        1,
        ">= 50% peak",
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
