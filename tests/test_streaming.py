"""Fits block by block (``fastbp.streaming``): rows read by a thread from a row source or a
memory map, or visited by blocks, give the bits of one call on the same rows in the same
order; bad rows met late leave the network as it was."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastbp
from fastbp import streaming


class ArraySource:
    """A row source over an array, as ``fastbp.parquet.ParquetColumns`` reads a file."""

    def __init__(self, array):
        self.array = np.asarray(array)
        self.shape = self.array.shape
        self.dtype = self.array.dtype
        self.reads = []

    def read(self, start, stop):
        self.reads.append((start, stop))
        return self.array[start:stop].copy()


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few batches, so that every fit below spans many."""
    monkeypatch.setattr(streaming, "BLOCK_BYTES", 3000)


def _problem(rng, n=500, dtype=np.float64):
    X = rng.normal(size=(n, 6)).astype(dtype)
    Y = np.tanh(X[:, :2] * 2).astype(dtype)
    return X, Y


def _net(dtype=np.float64, sizes=(6, 20, 2), loss="mse", activations=("tanh", "identity")):
    return fastbp.MLP(list(sizes), list(activations), loss, dtype=dtype, seed=4)


def _bits(net):
    return net._params.tobytes(), net._state.m.tobytes(), net._state.v.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "settings",
    [
        dict(batch_size=7, optimizer="sgd"),
        dict(batch_size=32, optimizer="adam", l2=0.01),
        dict(batch_size=50, optimizer="momentum", weighted=True),
        dict(batch_size=None, optimizer="nesterov"),
    ],
    ids=["sgd-7", "adam-32", "momentum-weighted", "full-batch"],
)
def test_block_by_block_gives_the_bits_of_one_call(rng, small_blocks, tmp_path, dtype, settings):
    settings = dict(settings)
    X, Y = _problem(rng, dtype=dtype)
    if settings.pop("weighted", False):
        settings["sample_weight"] = rng.uniform(0, 2, X.shape[0])
    np.save(tmp_path / "X.npy", X)
    X_map = np.load(tmp_path / "X.npy", mmap_mode="r")
    runs = {}
    for name, data in [("memory", (X, Y)), ("source", (ArraySource(X), ArraySource(Y))),
                       ("map", (X_map, Y))]:  # fmt: skip
        net = _net(dtype)
        history = net.fit(*data, epochs=3, lr=0.01, **settings)
        runs[name] = (history.tobytes(), _bits(net))
    assert runs["source"] == runs["memory"]
    assert runs["map"] == runs["memory"]


def test_a_row_source_is_read_ahead_in_blocks_of_whole_batches(rng, small_blocks):
    X, Y = _problem(rng)
    source = ArraySource(X)
    _net().fit(source, Y, epochs=2, lr=0.01, batch_size=16)
    starts = [start for start, _ in source.reads]
    sizes = [stop - start for start, stop in source.reads]
    assert len(starts) > 4 and starts[: len(starts) // 2] == starts[len(starts) // 2 :]
    per_epoch = len(sizes) // 2
    assert all(size % 16 == 0 for size in sizes[: per_epoch - 1])
    assert sum(sizes) == 2 * X.shape[0]


def test_class_labels_from_a_column_of_a_row_source(rng, small_blocks):
    X = rng.normal(size=(300, 6))
    labels = rng.integers(0, 3, 300)
    settings = dict(epochs=2, lr=0.05, batch_size=20, optimizer="adam")
    a = _net(sizes=(6, 10, 3), loss="cce", activations=("tanh", "softmax"))
    b = _net(sizes=(6, 10, 3), loss="cce", activations=("tanh", "softmax"))
    ha = a.fit(X, labels, **settings)
    hb = b.fit(ArraySource(X), ArraySource(labels.reshape(-1, 1).astype(float)), **settings)
    assert ha.tobytes() == hb.tobytes() and _bits(a) == _bits(b)


def test_block_shuffle_is_the_same_wherever_the_rows_come_from(rng, small_blocks):
    X, Y = _problem(rng)
    settings = dict(epochs=3, lr=0.01, batch_size=16, shuffle="blocks", optimizer="adam")
    runs = []
    for data in [(X, Y), (ArraySource(X), ArraySource(Y))]:
        net = _net()
        runs.append((net.fit(*data, **settings).tobytes(), _bits(net), net.shuffle_state))
    assert runs[0] == runs[1]
    in_order = _net()
    in_order.fit(X, Y, epochs=3, lr=0.01, batch_size=16, optimizer="adam")
    assert _bits(in_order) != runs[0][1]


@pytest.mark.parametrize("n, block_rows", [(100, 30), (90, 30), (10, 30), (1, 1)])
def test_block_shuffle_visits_every_row_once_and_keeps_batches_whole(n, block_rows):
    plan = streaming.Plan(n, min(n, block_rows))
    state = np.array([7], np.uint64)
    seen = []
    blocks = []
    for block, rows in plan.visits(True, state):
        start, stop = plan.bounds(block)
        assert sorted(rows) == list(range(stop - start))
        seen.extend(start + rows)
        blocks.append(block)
    assert sorted(seen) == list(range(n))
    if n % plan.block_rows:
        assert blocks[-1] == plan.n_blocks - 1  # the short block last
    again = [(b, list(r)) for b, r in plan.visits(True, np.array([7], np.uint64))]
    assert again == [(b, list(r)) for b, r in plan.visits(True, np.array([7], np.uint64))]


def test_bad_rows_met_late_leave_the_network_as_it_was(rng, small_blocks):
    X, Y = _problem(rng)
    X[-3, 2] = np.nan  # in the last block
    net = _net()
    net.fit(X[:100], Y[:100], epochs=1, lr=0.01, batch_size=10, optimizer="adam")
    before = (_bits(net), net.shuffle_state, net._state.step.tobytes())
    source = ArraySource(X)
    with pytest.raises(ValueError, match="X contains NaN"):
        net.fit(source, Y, epochs=2, lr=0.01, batch_size=10, optimizer="adam", shuffle="blocks")
    assert len(source.reads) > 2  # the error came after blocks had trained
    assert (_bits(net), net.shuffle_state, net._state.step.tobytes()) == before


def test_divergence_block_by_block_restores_the_last_finite_epoch(rng, small_blocks):
    X, Y = _problem(rng)
    settings = dict(epochs=50, lr=0.5, batch_size=10, optimizer="momentum")
    errors, nets = [], []
    for data in [(X * 30, Y), (ArraySource(X * 30), Y)]:
        net = _net()
        with pytest.raises(FloatingPointError) as info:
            net.fit(*data, **settings)
        errors.append(info.value)
        nets.append(net)
    assert str(errors[0]) == str(errors[1])
    np.testing.assert_array_equal(errors[0].history, errors[1].history)
    assert _bits(nets[0]) == _bits(nets[1])


def test_forward_of_a_row_source(rng, small_blocks):
    X, _ = _problem(rng)
    net = _net()
    np.testing.assert_array_equal(net.forward(ArraySource(X)), net.forward(X))


def test_closing_the_blocks_early_stops_the_reader(rng):
    X, Y = _problem(rng)
    plan = streaming.Plan(X.shape[0], 10)
    before = threading.active_count()
    blocks = streaming.read_blocks(X, Y, None, plan, plan.visits(False, None), lambda b: b)
    next(blocks)
    blocks.close()
    assert threading.active_count() == before


def test_an_error_in_the_reader_reaches_the_caller(rng):
    X, Y = _problem(rng)
    plan = streaming.Plan(X.shape[0], 10)

    def check(block):
        if block.X.shape[0] and block.X[0, 0] == X[20, 0]:
            raise ValueError("block 3 refused")
        return block

    blocks = streaming.read_blocks(X, Y, None, plan, plan.visits(False, None), check)
    assert len([next(blocks), next(blocks)]) == 2
    with pytest.raises(ValueError, match="block 3 refused"):
        next(blocks)


def test_row_sources_refuse_checkpoints_and_mismatched_rows(rng, tmp_path):
    X, Y = _problem(rng)
    net = _net()
    with pytest.raises(ValueError, match="checkpoint"):
        net.fit(ArraySource(X), Y, epochs=1, lr=0.1, checkpoint=tmp_path / "run.ckpt")
    with pytest.raises(ValueError, match="Y has 499 rows but X has 500"):
        net.fit(ArraySource(X), Y[:-1], epochs=1, lr=0.1)
    with pytest.raises(ValueError, match=r"X must have shape \(n_samples, 6\)"):
        net.fit(ArraySource(X[:, :5]), Y, epochs=1, lr=0.1)
    assert not os.path.exists(tmp_path / "run.ckpt")


@pytest.mark.slow
def test_a_memory_map_in_order_holds_no_visiting_order_in_memory(tmp_path):
    """4 million rows visited in order: the one-call path held an int64 order of 32 MB
    during the fit; block by block, anonymous memory grows by a few blocks at its peak."""
    script = textwrap.dedent(
        f"""
        import numpy as np, fastbp
        rows = 4_000_000
        X = np.lib.format.open_memmap({str(tmp_path / "X.npy")!r}, "w+", np.float32, (rows, 4))
        Y = np.lib.format.open_memmap({str(tmp_path / "Y.npy")!r}, "w+", np.float32, (rows, 1))
        for lo in range(0, rows, 500_000):
            part = np.random.default_rng(lo).normal(size=(500_000, 4)).astype(np.float32)
            X[lo:lo + 500_000] = part
            Y[lo:lo + 500_000, 0] = part[:, 0] * part[:, 1]
        X.flush(), Y.flush()
        del X, Y
        X = np.load({str(tmp_path / "X.npy")!r}, mmap_mode="r")
        Y = np.load({str(tmp_path / "Y.npy")!r}, mmap_mode="r")
        net = fastbp.MLP([4, 8, 1], "tanh", "mse", dtype=np.float32, seed=0)
        net.fit(X[:2048], Y[:2048], epochs=1, lr=0.01, batch_size=1024)  # compiled
        def anon():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
        import threading, time
        before, peak, done = anon(), [0.0], threading.Event()
        def sample():  # the engine releases the GIL: this thread sees the peak
            while not done.is_set():
                peak[0] = max(peak[0], anon())
                time.sleep(0.002)
        sampler = threading.Thread(target=sample)
        sampler.start()
        net.fit(X, Y, epochs=1, lr=0.01, batch_size=1024)
        done.set(), sampler.join()
        print(peak[0] - before)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    growth = float(done.stdout.split()[-1])
    assert growth < 16, f"anonymous memory grew by {growth:.1f} MB"


def test_parquet_columns_train_as_a_row_source(rng, small_blocks, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    X, Y = _problem(rng, n=700)
    table = pa.table({**{f"x{i}": X[:, i] for i in range(6)}, "y0": Y[:, 0], "y1": Y[:, 1]})
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=150)
    features = fastbp.ParquetColumns(tmp_path / "data.parquet", [f"x{i}" for i in range(6)])
    targets = fastbp.ParquetColumns(tmp_path / "data.parquet", ["y0", "y1"])
    settings = dict(epochs=2, lr=0.01, batch_size=32, optimizer="adam")
    for shuffle in (False, "blocks"):
        a, b = _net(), _net()
        ha = a.fit(X, Y, shuffle=shuffle, **settings)
        hb = b.fit(features, targets, shuffle=shuffle, **settings)
        assert ha.tobytes() == hb.tobytes() and _bits(a) == _bits(b)
    np.testing.assert_array_equal(b.forward(features), b.forward(X))


def test_row_sources_read_in_any_order_go_through_a_scratch_file(rng, monkeypatch, tmp_path):
    """A global shuffle, an order and whole-data gradients copy a row source to an
    unlinked memory-mapped file: the bits of the data in memory, nothing left behind."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(streaming.tempfile, "tempdir", None)  # TMPDIR read again
    X, Y = _problem(rng)
    order = rng.permutation(X.shape[0])
    for settings in (dict(shuffle=True), dict(order=order)):
        a, b = _net(), _net()
        ha = a.fit(X, Y, epochs=2, lr=0.01, batch_size=16, **settings)
        hb = b.fit(ArraySource(X), ArraySource(Y), epochs=2, lr=0.01, batch_size=16, **settings)
        assert ha.tobytes() == hb.tobytes() and _bits(a) == _bits(b)
    loss, dW, db = a.gradients(X, Y)
    loss_s, dW_s, db_s = a.gradients(ArraySource(X), ArraySource(Y))
    assert loss == loss_s and all(np.array_equal(p, q) for p, q in zip(dW, dW_s, strict=True))
    assert a.loss(ArraySource(X), Y) == a.loss(X, Y)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
def test_the_estimators_take_parquet_columns(rng, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    X = rng.normal(size=(400, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    table = pa.table({**{f"x{i}": X[:, i] for i in range(5)}, "y": y})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=100)
    features = fastbp.ParquetColumns(tmp_path / "t.parquet", [f"x{i}" for i in range(5)])
    labels = fastbp.ParquetColumns(tmp_path / "t.parquet", ["y"])
    kwargs = dict(hidden_layer_sizes=(12,), max_iter=5, random_state=0)
    in_memory = fastbp.MLPClassifier(**kwargs).fit(X, y.astype(float))
    streamed = fastbp.MLPClassifier(**kwargs).fit(features, labels)
    for a, b in zip(in_memory.coefs_, streamed.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(in_memory.predict_proba(X), streamed.predict_proba(features))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_block_shuffle_is_the_fit_in_its_visiting_order(rng, small_blocks, sparse):
    """``shuffle="blocks"`` trains as one call given the blocks' visiting order would:
    the same bits, dense or sparse rows, with sample weights and summed losses."""
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X, Y = _problem(rng, n=450)
    X[rng.random(X.shape) < 0.5] = 0.0
    weights = rng.uniform(0.1, 2, X.shape[0])
    data = scipy_sparse.csr_matrix(X) if sparse else X
    settings = dict(lr=0.01, batch_size=16, optimizer="adam", sample_weight=weights)
    make = lambda: fastbp.MLP([6, 20, 2], ["tanh", "identity"], "mse", seed=4, reduction="sum")  # noqa: E731
    blocked = make()
    state = blocked._shuffle_state.copy()
    history = blocked.fit(data, Y, epochs=2, shuffle="blocks", **settings)
    row_bytes = 8 * (6 + 2)
    plan = streaming.Plan.of(X.shape[0], 16, row_bytes)
    orders = []
    for _ in range(2):
        order = []
        for block, rows in plan.visits(True, state):
            order.extend(plan.bounds(block)[0] + rows)
        orders.append(order)
    in_order = make()
    expected = in_order.fit(data, Y, epochs=2, order=np.array(orders), **settings)
    assert history.tobytes() == expected.tobytes()
    assert _bits(blocked) == _bits(in_order)
