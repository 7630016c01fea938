"""Checkpointed training: resumed runs end with the bits of uninterrupted ones, even after
``kill -9``, and a checkpoint of another run is refused, never used or overwritten."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastbp
from fastbp import checkpoint as checkpoints


def _data(n=200, n_in=6, n_out=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), rng.normal(size=(n, n_out))


def _net(sizes=(6, 12, 2), dtype=np.float64, seed=3):
    return fastbp.MLP(list(sizes), "tanh", "mse", seed=seed, dtype=dtype)


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights, strict=True)) and all(
        np.array_equal(x, y) for x, y in zip(a.biases, b.biases, strict=True)
    )


def _epochs_done(path):
    with np.load(path) as archive:
        return int(archive["epochs_done"])


SETTINGS = dict(lr=0.02, batch_size=32)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resumed_run_has_the_bits_of_an_uninterrupted_one(tmp_path, optimizer, shuffle, dtype):
    X, Y = _data()
    settings = dict(SETTINGS, optimizer=optimizer, shuffle=shuffle)
    whole = _net(dtype=dtype)
    expected = whole.fit(X, Y, epochs=9, **settings)
    path = tmp_path / "run.ckpt"
    _net(dtype=dtype).fit(X, Y, epochs=4, checkpoint=path, checkpoint_every=3, **settings)
    assert _epochs_done(path) == 4  # the end of a run is always written
    resumed = _net(dtype=dtype)
    history = resumed.fit(X, Y, epochs=9, checkpoint=path, checkpoint_every=2, **settings)
    np.testing.assert_array_equal(history, expected)
    assert _same(resumed, whole)
    assert resumed.optimizer_state()["step"] == whole.optimizer_state()["step"]
    assert resumed.shuffle_state == whole.shuffle_state


def test_notebook_sized_network_and_orders_per_epoch_resume_exactly(tmp_path):
    rng = np.random.default_rng(1)
    X, Y = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float), np.array([[0], [1], [1], [0]], float)
    orders = np.array([rng.permutation(4) for _ in range(300)])
    whole = fastbp.MLP([2, 2, 1], "sigmoid", "mse", seed=0)
    expected = whole.fit(X, Y, epochs=300, lr=0.5, order=orders)
    path = tmp_path / "xor.ckpt"
    first = fastbp.MLP([2, 2, 1], "sigmoid", "mse", seed=0)
    first.fit(X, Y, epochs=300, lr=0.5, order=orders, checkpoint=path, checkpoint_every=70)
    os.replace(path, tmp_path / "finished.ckpt")
    # A run stopped after 140 epochs: rebuild its checkpoint, then resume it.
    partial = fastbp.MLP([2, 2, 1], "sigmoid", "mse", seed=0)
    identity = checkpoints.identity(
        partial,
        {"X": X, "Y": Y, "labels": None, "sample_weight": None, "order": orders.reshape(-1)},
        {"batch_size": 4, "shuffle": False, "optimizer": "sgd", "lr": 0.5, "momentum": 0.9,
         "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "l2": 0.0},
    )  # fmt: skip
    head = partial.fit(X, Y, epochs=140, lr=0.5, order=orders[:140])
    checkpoints.write(path, partial, head, identity)
    resumed = fastbp.MLP([2, 2, 1], "sigmoid", "mse", seed=0)
    history = resumed.fit(X, Y, epochs=300, lr=0.5, order=orders, checkpoint=path)
    np.testing.assert_array_equal(history, expected)
    assert _same(resumed, whole)


def test_seconds_and_longer_runs_keep_the_bits(tmp_path):
    X, Y = _data()
    settings = dict(SETTINGS, optimizer="adam", shuffle=True)
    whole = _net()
    expected = whole.fit(X, Y, epochs=12, **settings)
    path = tmp_path / "run.ckpt"
    _net().fit(X, Y, epochs=5, checkpoint=path, checkpoint_seconds=1e-4, **settings)
    longer = _net()
    history = longer.fit(X, Y, epochs=12, checkpoint=path, checkpoint_seconds=60.0, **settings)
    np.testing.assert_array_equal(history, expected)
    assert _same(longer, whole)
    again = _net()  # a finished run returns its result without training
    np.testing.assert_array_equal(again.fit(X, Y, epochs=12, checkpoint=path, **settings), expected)
    assert _same(again, whole)


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(lr=0.05), "lr"),
        (dict(batch_size=16), "batch_size"),
        (dict(optimizer="adam"), "optimizer"),
        (dict(shuffle=True), "shuffle"),
        (dict(X_scale=2.0), "X:"),
        (dict(Y_scale=2.0), "Y:"),
        (dict(sample_weight=np.ones(200)), "sample_weight"),
        (dict(seed=4), "state at the start"),
        (dict(sizes=(6, 13, 2)), "network"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused_saying_what_differs(tmp_path, change, named):
    X, Y = _data()
    path = tmp_path / "run.ckpt"
    _net().fit(X, Y, epochs=3, checkpoint=path, **SETTINGS)
    before = path.read_bytes()
    settings = dict(SETTINGS, epochs=6)
    X = X * change.pop("X_scale", 1.0)
    Y = Y * change.pop("Y_scale", 1.0)
    net = _net(sizes=change.pop("sizes", (6, 12, 2)), seed=change.pop("seed", 3))
    untouched = [w.copy() for w in net.weights]
    settings.update(change)
    with pytest.raises(ValueError, match="another run") as error:
        net.fit(X, Y, checkpoint=path, **settings)
    assert named in str(error.value)
    assert path.read_bytes() == before
    assert all(np.array_equal(a, b) for a, b in zip(net.weights, untouched, strict=True))


def test_other_files_and_shorter_runs_are_refused_and_kept(tmp_path):
    X, Y = _data()
    model = tmp_path / "model.npz"
    _net().save(model)
    before = model.read_bytes()
    with pytest.raises(ValueError, match="not a fastbp checkpoint"):
        _net().fit(X, Y, epochs=2, checkpoint=model, **SETTINGS)
    assert model.read_bytes() == before
    text = tmp_path / "notes.txt"
    text.write_text("mine")
    with pytest.raises(ValueError, match="not a fastbp checkpoint"):
        _net().fit(X, Y, epochs=2, checkpoint=text, **SETTINGS)
    assert text.read_text() == "mine"
    path = tmp_path / "run.ckpt"
    _net().fit(X, Y, epochs=5, checkpoint=path, **SETTINGS)
    with pytest.raises(ValueError, match="holds 5 epochs"):
        _net().fit(X, Y, epochs=3, checkpoint=path, **SETTINGS)


@pytest.mark.parametrize(
    "arguments, error, named",
    [
        (dict(checkpoint_every=0), ValueError, "checkpoint_every"),
        (dict(checkpoint_every=1.5), TypeError, "checkpoint_every"),
        (dict(checkpoint_seconds=-1.0), ValueError, "checkpoint_seconds"),
        (dict(checkpoint=3), TypeError, "checkpoint"),
        (dict(checkpoint="."), ValueError, "checkpoint"),
    ],
)
def test_bad_checkpoint_arguments_name_the_argument_and_change_nothing(
    tmp_path, arguments, error, named
):
    X, Y = _data()
    net = _net()
    untouched = [w.copy() for w in net.weights]
    arguments = {"checkpoint": tmp_path / "run.ckpt", **arguments}
    with pytest.raises(error, match=named):
        net.fit(X, Y, epochs=2, **SETTINGS, **arguments)
    assert all(np.array_equal(a, b) for a, b in zip(net.weights, untouched, strict=True))
    assert not (tmp_path / "run.ckpt").exists()


def test_divergence_names_the_epoch_of_the_whole_run(tmp_path):
    X, Y = _data()
    net, plain = (fastbp.MLP([6, 12, 2], "identity", "mse", seed=3) for _ in range(2))
    with pytest.raises(FloatingPointError, match="epoch 7 of 40") as error:
        net.fit(X, Y, epochs=40, lr=2.0, checkpoint=tmp_path / "run.ckpt", checkpoint_every=2)
    with pytest.raises(FloatingPointError) as expected:
        plain.fit(X, Y, epochs=40, lr=2.0)
    assert str(error.value) == str(expected.value)
    assert _same(net, plain)
    assert _epochs_done(tmp_path / "run.ckpt") == 6


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import fastbp

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(400, 10)), rng.normal(size=(400, 3))
    net = fastbp.MLP([10, 24, 3], "tanh", "mse", seed=5)
    history = net.fit(X, Y, epochs=EPOCHS, lr=0.01, batch_size=16, shuffle=True,
                      optimizer="adam", checkpoint=sys.argv[1])
    np.save(sys.argv[2], np.concatenate([history] + [w.ravel() for w in net.weights]))
    """
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_run_killed_at_random_moments_finishes_with_the_uninterrupted_bits(tmp_path, seed):
    epochs = 400
    script = tmp_path / "child.py"
    script.write_text(CHILD.replace("EPOCHS", str(epochs)))
    path, result = tmp_path / "run.ckpt", tmp_path / "result.npy"
    command = [sys.executable, str(script), str(path), str(result)]
    rng = np.random.default_rng(seed)
    kills = []
    for attempt in range(12):
        written = path.stat().st_mtime_ns if path.exists() else None
        child = subprocess.Popen(command)
        if attempt < 3:
            # Once the child trains (it has written a checkpoint), at a random moment:
            # between epochs, inside the kernels or inside a write.
            deadline = time.monotonic() + 60
            while child.poll() is None and time.monotonic() < deadline:
                if path.exists() and path.stat().st_mtime_ns != written:
                    break
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.6))
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                child.wait()
                kills.append(_epochs_done(path))
        if child.wait(timeout=120) == 0:
            break
    assert result.exists(), "the run never finished"
    net = fastbp.MLP([10, 24, 3], "tanh", "mse", seed=5)
    data = np.random.default_rng(0)
    X, Y = data.normal(size=(400, 10)), data.normal(size=(400, 3))
    history = net.fit(X, Y, epochs=epochs, lr=0.01, batch_size=16, shuffle=True, optimizer="adam")
    expected = np.concatenate([history] + [w.ravel() for w in net.weights])
    np.testing.assert_array_equal(np.load(result), expected)
    assert len(kills) >= 2 and 0 < kills[0] < epochs, kills  # killed mid-run


def test_shuffle_state_is_read_and_set_by_value():
    net = _net()
    state = net.shuffle_state
    assert isinstance(state, int) and 0 <= state < 2**64
    with pytest.raises(ValueError, match="shuffle_state"):
        net.shuffle_state = 2**64
    with pytest.raises(TypeError, match="shuffle_state"):
        net.shuffle_state = 1.0
    assert net.shuffle_state == state
    net.shuffle_state = 2**64 - 1
    assert net.shuffle_state == 2**64 - 1
