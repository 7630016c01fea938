"""MLP.save / fastbp.load: exact round trips and clear refusals."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

import fastbp
from fastbp import persistence


def trained(sizes, activations, loss, **options):
    net = fastbp.MLP(sizes, activations, loss, seed=1, **options)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, sizes[0]))
    Y = rng.integers(0, sizes[-1], 40) if loss == "cce" else rng.uniform(size=(40, sizes[-1]))
    net.fit(X, Y, epochs=2, lr=0.05, batch_size=16, optimizer="adam")
    return net, X


@pytest.mark.parametrize(
    "sizes, activations, loss, options",
    [
        ([5, 7, 3], ["tanh", "softmax"], "cce", {}),
        ([4, 6, 5, 2], ["relu", "leaky_relu", "sigmoid"], "bce", {"reduction": "sum"}),
        ([3, 2], "identity", "half_mse", {"bias": False, "dtype": np.float32}),
        ([3, 4, 2], ["tanh", "exp"], "poisson", {}),
    ],
)
def test_round_trip_is_exact(tmp_path, sizes, activations, loss, options):
    net, X = trained(sizes, activations, loss, **options)
    net._loss_scale = 0.25  # estimators change it; the file keeps it
    path = tmp_path / "model"  # no suffix: written exactly there
    net.save(path)
    assert sorted(os.listdir(tmp_path)) == ["model"]
    loaded = fastbp.load(path)
    assert repr(loaded) == repr(net)
    assert (
        loaded.layer_sizes,
        loaded.activations,
        loaded.loss_name,
        loaded.bias,
        loaded.reduction,
        loaded.dtype,
    ) == (net.layer_sizes, net.activations, net.loss_name, net.bias, net.reduction, net.dtype)
    assert loaded._loss_scale == 0.25
    for a, b in zip(
        loaded.weights + (loaded.biases or []), net.weights + (net.biases or []), strict=True
    ):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.forward(X), net.forward(X))


def test_file_is_plain_numbers_and_strings(tmp_path):
    net, _ = trained([3, 4, 2], ["relu", "softmax"], "cce")
    net.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        assert str(archive["format"]) == "fastbp.MLP"
        assert int(archive["format_version"]) == persistence.FORMAT_VERSION == 1
        assert archive["W0"].shape == (3, 4) and archive["b1"].shape == (2,)
        assert list(archive["activations"]) == ["relu", "softmax"]


def test_metadata_round_trip(tmp_path):
    net, _ = trained([3, 2], "sigmoid", "bce")
    persistence.save(
        net, tmp_path / "m.npz", metadata={"classes": np.array([3.0, 7.0]), "task": "classify"}
    )
    meta = persistence.read_metadata(tmp_path / "m.npz")
    np.testing.assert_array_equal(meta["classes"], [3.0, 7.0])
    assert str(meta["task"]) == "classify"
    assert fastbp.load(tmp_path / "m.npz").layer_sizes == (3, 2)
    with pytest.raises(TypeError, match="metadata"):
        persistence.save(net, tmp_path / "x.npz", metadata={"bad": np.array([object()])})


def rewrite(path, **changes):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays.update(changes)
    for name, value in changes.items():
        if value is None:
            del arrays[name]
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": np.array(2)}, "version 2"),
        ({"format": np.array("something else")}, "not a fastbp model"),
        ({"W0": None}, "'W0' is missing"),
        ({"W0": np.zeros((2, 2))}, "shape"),
        ({"W0": np.full((3, 4), np.nan)}, "NaN"),
        ({"activations": np.array(["relu", "cosine"])}, "activations"),
        ({"dtype": np.array("int8")}, "dtype"),
    ],
)
def test_refuses_inconsistent_files(tmp_path, change, message):
    net, _ = trained([3, 4, 2], ["relu", "softmax"], "cce")
    path = tmp_path / "m.npz"
    net.save(path)
    rewrite(path, **change)
    with pytest.raises(ValueError, match=message):
        fastbp.load(path)


def test_refuses_files_that_are_not_models(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("just some text\n")
    with pytest.raises(ValueError, match="not a fastbp model file"):
        fastbp.load(text)
    single = tmp_path / "array.npz"
    with open(single, "wb") as file:
        np.save(file, np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        fastbp.load(single)
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, format=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a fastbp model file"):
        fastbp.load(pickled)
    with pytest.raises(FileNotFoundError):
        fastbp.load(tmp_path / "missing.npz")


def test_a_model_saved_by_fastbp_0_1_0_before_the_engine_request_loads_and_predicts():
    """``tests/data/model-before-engine-request.npz`` was written by fastbp 0.1.0 at
    d939e3f: a 3-5-2 tanh/softmax float32 network after 5 epochs of Adam. It loads with
    its architecture and predicts the outputs that fastbp computed then, bit for bit."""
    path = Path(__file__).parent / "data" / "model-before-engine-request.npz"
    net = fastbp.load(path)
    assert (net.layer_sizes, net.activations, net.loss_name, net.dtype) == (
        (3, 5, 2),
        ("tanh", "softmax"),
        "cce",
        np.float32,
    )
    X = np.random.default_rng(1).standard_normal((20, 3))
    expected = np.array(
        [
            [0.40471160411834717, 0.5952883958816528],
            [0.43828272819519043, 0.5617172718048096],
            [0.4711252748966217, 0.5288747549057007],
        ],
        np.float32,
    )
    np.testing.assert_array_equal(net.forward(X[:3]), expected)


@pytest.mark.parametrize(
    "loss_scale", [np.array(-1.0), np.array(np.nan), np.array(0.0), np.array([0.5, 0.5])]
)
def test_bad_loss_scale_is_an_invalid_model_naming_the_file(tmp_path, loss_scale):
    net, _ = trained([3, 4, 2], ["relu", "softmax"], "cce")
    path = tmp_path / "m.npz"
    net.save(path)
    rewrite(path, loss_scale=loss_scale)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: invalid fastbp model: "):
        fastbp.load(path)


@pytest.fixture
def umask():
    """Sets the process umask for one test and restores it afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_model_file_gets_the_mode_the_umask_gives(tmp_path, umask, mask, expected):
    net, _ = trained([3, 2], "sigmoid", "bce")
    umask(mask)
    net.save(tmp_path / "m.npz")
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == expected


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_overwriting_a_model_keeps_the_file_mode(tmp_path, umask, mode):
    net, _ = trained([3, 2], "sigmoid", "bce")
    path = tmp_path / "m.npz"
    net.save(path)
    os.chmod(path, mode)
    umask(0o077)
    net.save(path)
    assert path.stat().st_mode & 0o777 == mode
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_a_failed_save_names_the_path_and_leaves_the_old_model(tmp_path):
    net, X = trained([3, 4, 2], ["relu", "softmax"], "cce")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nodir" / "m.npz"))):
        net.save(tmp_path / "nodir" / "m.npz")
    path = tmp_path / "m.npz"
    net.save(path)
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt), persistence.replacing(path) as file:
        file.write(b"half a model")
        raise KeyboardInterrupt
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.npz"]
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(OSError, match=re.escape(str(tmp_path / "folder.npz"))):
        net.save(tmp_path / "folder.npz")
    assert sorted(os.listdir(tmp_path)) == ["folder.npz", "m.npz"]


@pytest.mark.slow
def test_kill_9_while_saving_never_leaves_a_broken_model(tmp_path):
    """A process that saves an 8 MB model over and over is killed at several moments; the
    file in place is always a complete model."""
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parent.parent
    path = tmp_path / "m.npz"
    script = (
        "import sys, fastbp\n"
        "net = fastbp.MLP([1000, 1000], 'identity', 'mse', seed=0)\n"
        f"net.save({str(path)!r}); print('saved', flush=True)\n"
        f"while True: net.save({str(path)!r})\n"
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    for delay in (0.0, 0.021, 0.05):
        process = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert process.stdout.readline() == "saved\n"
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            process.kill()
            process.stdout.close()
        assert fastbp.load(path).layer_sizes == (1000, 1000)
