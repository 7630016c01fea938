"""The CUDA engine against the CPU engine: same numbers, same errors, same bits every run.

With a GPU these tests run on it. Without one they run under numba's CUDA simulator,
which this module switches on before numba.cuda is first imported (the simulator runs
every GPU thread as a Python thread, hence the small shapes). When numba.cuda was
already imported without the simulator, the module re-runs itself in a subprocess that
has it.
"""

import ctypes
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp


def _gpu_present():
    """Whether the CUDA driver sees a device, asked without importing numba.cuda."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return (
        driver.cuInit(0) == 0
        and driver.cuDeviceGetCount(ctypes.byref(count)) == 0
        and count.value > 0
    )


if importlib.util.find_spec("numba_cuda") is None:
    pytest.skip("numba-cuda is not installed", allow_module_level=True)
if "numba.cuda" not in sys.modules and not _gpu_present():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    if "numba.core.config" in sys.modules:
        # numba.cuda takes the setting from numba's config, read when numba was imported.
        sys.modules["numba.core.config"].reload_config()
from numba import cuda  # noqa: E402

# Every activation meets every loss here, bce on unbounded outputs included.
pytestmark = pytest.mark.filterwarnings("ignore:loss='bce' needs outputs:UserWarning")

IN_PROCESS = cuda.is_available()
if IN_PROCESS:
    from fastbp._engine.cuda import backend as CB
    from fastbp._engine.cuda import kernels as CK

    SIMULATED = CK.SIMULATOR
    # Widths that put a network on each of the two schedules.
    NARROW = max(2, CB.CHUNK_MAX_WIDTH // 4)
    WIDE = CB.CHUNK_MAX_WIDTH + 3
else:
    SIMULATED, NARROW, WIDE = True, 4, 19

needs_device = pytest.mark.skipif(
    not IN_PROCESS,
    reason="numba.cuda was imported without the simulator and there is no "
    "GPU; test_under_simulator runs these cases in a subprocess",
)

ACTIVATIONS = ["identity", "sigmoid", "tanh", "relu", "leaky_relu"]


@pytest.fixture(autouse=True)
def _quick_thread_switches():
    """The simulator's threads spin on the GIL between barriers: switching often makes the
    cases many times faster (and interleaves the simulated threads finely)."""
    if not SIMULATED:
        yield
        return
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))


def _environment(**variables):
    """This process's environment with fastbp importable and ``variables`` set."""
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **variables)


@pytest.mark.slow
def test_under_simulator():
    """Run this module's cases in a subprocess with the CUDA simulator switched on."""
    if IN_PROCESS:
        pytest.skip("the cases run in this process")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=_environment(NUMBA_ENABLE_CUDASIM="1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def data(n, n_in, n_out, loss, seed=0, labels=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    if loss == "cce":
        classes = rng.integers(0, n_out, n)
        Y = classes if labels else np.eye(n_out)[classes]
    elif loss == "bce":
        Y = rng.integers(0, 2, (n, n_out)).astype(float)
    elif loss == "poisson":
        Y = rng.poisson(1.5, (n, n_out)).astype(float)
    else:
        Y = rng.normal(size=(n, n_out))
    return X, Y


def pair(sizes, activations, loss, **options):
    """The same network (same seed) on the CPU and on the GPU."""
    return tuple(
        fastbp.MLP(sizes, activations, loss, seed=7, device=device, **options)
        for device in ("cpu", "cuda")
    )


def assert_close(actual, expected, dtype=np.float64):
    rtol = 1e-10 if np.dtype(dtype) == np.float64 else 2e-4
    atol = 1e-12 if np.dtype(dtype) == np.float64 else 1e-5
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def assert_same_training(cpu, gpu, X, Y, dtype=np.float64, **fit):
    expected = cpu.fit(X, Y, **fit)
    actual = gpu.fit(X, Y, **fit)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert_close(actual, expected, dtype)
    assert_close(gpu._params, cpu._params, dtype)
    assert_close(gpu._state.m, cpu._state.m, dtype)
    assert_close(gpu._state.v, cpu._state.v, dtype)
    np.testing.assert_array_equal(gpu._state.step, cpu._state.step)
    np.testing.assert_array_equal(gpu._shuffle_state, cpu._shuffle_state)


# ---------------------------------------------------------------- agreement with the CPU


@needs_device
@pytest.mark.parametrize("hidden", ACTIVATIONS)
@pytest.mark.parametrize("width", ["narrow", "wide"])
def test_hidden_activations(hidden, width):
    n_hidden = NARROW if width == "narrow" else WIDE
    cpu, gpu = pair([3, n_hidden, 2], [hidden, "identity"], "mse")
    X, Y = data(24, 3, 2, "mse")
    assert_same_training(cpu, gpu, X, Y, epochs=3, lr=0.05, batch_size=10)


@needs_device
@pytest.mark.parametrize(
    ("output", "loss"),
    [
        ("identity", "mse"),
        ("sigmoid", "mse"),
        ("tanh", "half_mse"),
        ("relu", "mse"),
        ("leaky_relu", "half_mse"),
        ("softmax", "mse"),
        ("sigmoid", "bce"),
        ("tanh", "bce"),
        ("softmax", "bce"),
        ("softmax", "cce"),
        ("sigmoid", "cce"),
        ("identity", "cce"),
        ("exp", "poisson"),
        ("exp", "half_mse"),
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_output_and_loss(output, loss, reduction):
    cpu, gpu = pair([3, NARROW, 3], ["tanh", output], loss, reduction=reduction)
    X, Y = data(20, 3, 3, loss)
    assert_same_training(cpu, gpu, X, Y, epochs=2, lr=0.02, batch_size=8)


@needs_device
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("width", ["narrow", "wide"])
def test_optimizers_with_shuffle_l2_and_sample_weights(optimizer, width):
    n_hidden = NARROW if width == "narrow" else WIDE
    cpu, gpu = pair([4, n_hidden, 3], ["relu", "softmax"], "cce")
    X, labels = data(30, 4, 3, "cce", labels=True)
    weights = np.random.default_rng(1).uniform(0.5, 2.0, 30)
    assert_same_training(
        cpu,
        gpu,
        X,
        labels,
        epochs=3,
        lr=0.05,
        batch_size=12,
        shuffle=True,
        optimizer=optimizer,
        l2=0.01,
        sample_weight=weights,
    )


@needs_device
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bias_and_reduction(bias, reduction):
    cpu, gpu = pair(
        [3, NARROW, WIDE, 2],
        ["sigmoid", "leaky_relu", "sigmoid"],
        "bce",
        bias=bias,
        reduction=reduction,
    )
    X, Y = data(26, 3, 2, "bce")
    assert_same_training(cpu, gpu, X, Y, epochs=2, lr=0.1, batch_size=9, optimizer="momentum")


@needs_device
def test_many_chunks_in_a_batch():
    """A full batch larger than the narrow schedule's chunks, with a caller's order."""
    cpu, gpu = pair([2, 3, 1], ["tanh", "sigmoid"], "bce")
    n = 3 * CK.TPB + 5
    X, Y = data(n, 2, 1, "bce")
    order = np.random.default_rng(3).permutation(n)
    assert_same_training(cpu, gpu, X, Y, epochs=2, lr=0.5, order=order)


@needs_device
@pytest.mark.parametrize("width", ["narrow", "wide"])
def test_an_order_per_epoch(width):
    cpu, gpu = pair([3, NARROW if width == "narrow" else WIDE, 2], ["relu", "sigmoid"], "bce")
    X, Y = data(25, 3, 2, "bce")
    rng = np.random.default_rng(4)
    orders = np.stack([rng.permutation(25) for _ in range(3)])
    assert_same_training(cpu, gpu, X, Y, epochs=3, lr=0.1, batch_size=10, order=orders)


@needs_device
def test_wide_batch_split_into_row_slices():
    """A batch the wide schedule splits into several row slices for its weight gradients."""
    cpu, gpu = pair([3, WIDE, 2], ["relu", "sigmoid"], "bce", reduction="sum")
    n = 2 * CK.SPLIT_ROWS + 5
    X, Y = data(n, 3, 2, "bce")
    assert_same_training(cpu, gpu, X, Y, epochs=2, lr=0.01, optimizer="nesterov", l2=0.1)


@needs_device
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_and_float64(dtype):
    cpu, gpu = pair([5, WIDE, NARROW, 4], ["tanh", "relu", "softmax"], "cce", dtype=dtype)
    X, Y = data(25, 5, 4, "cce")
    assert_same_training(cpu, gpu, X, Y, dtype, epochs=3, lr=0.1, batch_size=10, optimizer="adam")


@needs_device
def test_optimizer_state_carries_over_between_fits():
    cpu, gpu = pair([3, NARROW, 2], ["tanh", "identity"], "mse")
    X, Y = data(16, 3, 2, "mse")
    for _ in range(2):
        assert_same_training(cpu, gpu, X, Y, epochs=2, lr=0.05, batch_size=6, optimizer="adam")


@needs_device
@pytest.mark.parametrize("width", ["narrow", "wide"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_loss_and_gradients(width, dtype):
    n_hidden = NARROW if width == "narrow" else WIDE
    cpu, gpu = pair([3, n_hidden, 3], ["leaky_relu", "softmax"], "cce", dtype=dtype)
    X, labels = data(21, 3, 3, "cce", labels=True)
    weights = np.linspace(0.5, 1.5, 21)
    assert_close(gpu.forward(X), cpu.forward(X), dtype)
    assert_close(gpu.loss(X, labels, l2=0.1), cpu.loss(X, labels, l2=0.1), dtype)
    expected = cpu.gradients(X, labels, sample_weight=weights, l2=0.1)
    actual = gpu.gradients(X, labels, sample_weight=weights, l2=0.1)
    assert_close(actual[0], expected[0], dtype)
    for got, want in zip(actual[1] + actual[2], expected[1] + expected[2], strict=True):
        assert got.dtype == want.dtype
        assert_close(got, want, dtype)
    np.testing.assert_array_equal(gpu._params, cpu._params)


@needs_device
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's overflowing scalars
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_divergence_restores_the_last_finite_epoch(optimizer):
    cpu, gpu = pair([2, 4, 1], "identity", "mse")
    X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    Y = np.ones((4, 1))
    errors = []
    for net in (cpu, gpu):
        with pytest.raises(FloatingPointError) as info:
            # Plain SGD overflows in the fourth epoch, Adam in the first.
            net.fit(
                X,
                Y,
                epochs=6,
                lr=0.05 if optimizer == "sgd" else 1e100,
                batch_size=2,
                shuffle=True,
                optimizer=optimizer,
            )
        errors.append(info.value)
    assert str(errors[1]) == str(errors[0])
    assert_close(errors[1].history, errors[0].history)
    assert_close(gpu._params, cpu._params)
    np.testing.assert_array_equal(gpu._state.step, cpu._state.step)
    np.testing.assert_array_equal(gpu._shuffle_state, cpu._shuffle_state)


# ---------------------------------------------------------------- errors


@needs_device
@pytest.mark.parametrize(
    ("X", "Y", "fit"),
    [
        (np.ones((4, 3)), np.ones((4, 1)), {"epochs": 1, "lr": 0.1}),
        (np.full((4, 2), np.nan), np.ones((4, 1)), {"epochs": 1, "lr": 0.1}),
        (np.ones((4, 2)), np.ones((5, 1)), {"epochs": 1, "lr": 0.1}),
        (np.ones((4, 2)), np.ones((4, 1)), {"epochs": 0, "lr": 0.1}),
        (np.ones((4, 2)), np.ones((4, 1)), {"epochs": 1, "lr": -1.0}),
        (np.ones((4, 2)), np.ones((4, 1)), {"epochs": 1, "lr": 0.1, "batch_size": 0}),
        (np.ones((4, 2)), np.ones((4, 1)), {"epochs": 1, "lr": 0.1, "optimizer": "lbfgs"}),
        (np.ones((4, 2)), np.ones((4, 1)), {"epochs": 1, "lr": 0.1, "sample_weight": [1, 2]}),
        (np.ones((4, 2)), np.ones((4, 1)), {"epochs": 1, "lr": 0.1, "order": [0, 0, 1, 2]}),
    ],
)
def test_bad_input_raises_as_on_the_cpu(X, Y, fit):
    raised = []
    for net in pair([2, 3, 1], "sigmoid", "bce"):
        before = net._params.copy()
        with pytest.raises((TypeError, ValueError)) as info:
            net.fit(X, Y, **fit)
        raised.append((type(info.value), str(info.value)))
        np.testing.assert_array_equal(net._params, before)
    assert raised[1] == raised[0]


@needs_device
def test_sparse_input_is_refused_and_changes_nothing():
    import scipy.sparse as sp

    net = fastbp.MLP([3, 4, 1], "sigmoid", "bce", seed=0, device="cuda")
    net.fit(np.eye(4, 3), np.ones((4, 1)), epochs=1, lr=0.1, optimizer="momentum")
    before = net.get_params(), net.optimizer_state()
    X = sp.csr_matrix(np.eye(4, 3))
    with pytest.raises(TypeError, match="^X: sparse input is supported on device='cpu' only"):
        net.fit(X, np.ones((4, 1)), epochs=1, lr=0.1, optimizer="adam")
    with pytest.raises(TypeError, match="^X: sparse input"):
        net.forward(X)
    (weights, biases), state = before
    for kept, now in zip(weights + biases, net.weights + net.biases, strict=True):
        np.testing.assert_array_equal(kept, now)
    assert net.optimizer_state()["optimizer"] == state["optimizer"] == "momentum"
    np.testing.assert_array_equal(net.optimizer_state()["m"], state["m"])


def test_missing_numba_cuda_says_what_to_install(monkeypatch):
    import numba

    monkeypatch.delattr(numba, "cuda")
    monkeypatch.setitem(sys.modules, "numba.cuda", None)
    with pytest.raises(ImportError, match=r"fastbp\[cuda\]"):
        fastbp.MLP([2, 1], "identity", "mse", device="cuda")


def test_no_gpu_says_why(monkeypatch):
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    monkeypatch.setattr(
        cuda,
        "get_current_device",
        lambda: (_ for _ in ()).throw(RuntimeError("CUDA driver library cannot be found.")),
    )
    with pytest.raises(RuntimeError, match="no usable NVIDIA GPU: CUDA driver library cannot"):
        fastbp.MLP([2, 1], "identity", "mse", device="cuda")


@pytest.mark.slow
def test_cpu_use_never_imports_numba_cuda():
    code = (
        "import sys, fastbp; fastbp.MLP([2, 1], 'identity', 'mse'); "
        "assert 'numba.cuda' not in sys.modules, 'numba.cuda was imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env=_environment(NUMBA_ENABLE_CUDASIM="0")
    )


# ---------------------------------------------------------------- determinism


@needs_device
@pytest.mark.parametrize("width", ["narrow", "wide"])
def test_two_runs_give_the_same_bits(width):
    n_hidden = NARROW if width == "narrow" else WIDE
    X, labels = data(40, 3, 3, "cce", labels=True)
    runs = []
    blocks = [None, None] if SIMULATED else [None, 1, 5]
    for grid in blocks:
        CB.GRID_BLOCKS = grid
        try:
            net = fastbp.MLP([3, n_hidden, 3], ["tanh", "softmax"], "cce", seed=2, device="cuda")
            history = net.fit(
                X, labels, epochs=2, lr=0.1, batch_size=32, shuffle=True, optimizer="adam", l2=0.01
            )
        finally:
            CB.GRID_BLOCKS = None
        runs.append((history, net._params.copy(), net.forward(X)))
    for history, params, out in runs[1:]:
        np.testing.assert_array_equal(history, runs[0][0])
        np.testing.assert_array_equal(params, runs[0][1])
        np.testing.assert_array_equal(out, runs[0][2])


@needs_device
def test_gpu_benchmark_runs_its_rows_in_quick_sizes(capsys):
    """``python -m fastbp.bench_gpu --quick`` on a grid row and the large-batch row: every
    measured cell comes back without an error (a GPU session spends its minutes on the
    real sizes, not on a broken script)."""
    import numba

    from fastbp import bench_gpu

    threads = str(numba.get_num_threads())  # the run leaves the thread count as it was
    status = bench_gpu.main(
        [
            "--quick",
            "--no-torch",
            "--dtype",
            "float32",
            "--rows",
            "notebook,large-batch",
            "--cpu-threads",
            threads,
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "notebook 2-2-1, 2 rows" in printed and "large-batch 24-24-24-10" in printed
    assert "error" not in printed
