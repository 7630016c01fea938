"""Training over MPI: ``mpiexec -n 1..4`` processes end with the bits of one process, and a
bad input or a dead process stops them all instead of leaving them waiting."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("mpi4py")
pytest.importorskip("numba_mpi")

import fastbp  # noqa: E402
from fastbp._engine.cpu.plan import work_plan  # noqa: E402
from fastbp._engine.layout import build_layout  # noqa: E402

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")

PROBLEM = textwrap.dedent(
    """
    import numpy as np
    import fastbp

    def train(dtype, comm):
        rng = np.random.default_rng(0)
        X = rng.normal(size=(3100, 20)).astype(dtype)  # five batches of 600 and one of 100
        y = rng.integers(0, 3, 3100)
        weights = rng.uniform(0.5, 1.5, 3100)
        net = fastbp.MLP([20, 48, 3], ["tanh", "softmax"], "cce", dtype=dtype, seed=4)
        history = net.fit(X, y, epochs=3, lr=0.01, batch_size=600, shuffle=True,
                          optimizer="adam", sample_weight=weights, l2=1e-3, comm=comm)
        loss, dWs, dbs = net.gradients(X[:1000], y[:1000], comm=comm)
        arrays = [history, [loss], *net.weights, *net.biases, *dWs, *dbs]
        return np.concatenate([np.ravel(a).astype(np.float64) for a in arrays])
    """
)

CHILD = PROBLEM + textwrap.dedent(
    """
    import sys
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    result = np.concatenate([train(np.float32, comm), train(np.float64, comm)])
    everyone = comm.gather(result, root=0)
    if comm.Get_rank() == 0:
        assert all(np.array_equal(other, result) for other in everyone), "processes differ"
        np.save(sys.argv[1], result)
    """
)


def _mpiexec(n, script, *args, timeout=300):
    return subprocess.run(
        [MPIEXEC, "-n", str(n), sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_batches_are_split_between_processes():
    layout, _ = build_layout([20, 48, 3], ["tanh", "softmax"], True)
    for dtype in (np.float32, np.float64):
        plan = work_plan(layout, np.dtype(dtype), 600, None)
        assert -(-600 // plan.chunk) >= 4  # every process of four gets a chunk group


def test_one_to_four_processes_give_the_bits_of_one(tmp_path):
    namespace = {}
    exec(PROBLEM, namespace)
    expected = np.concatenate([namespace["train"](t, None) for t in (np.float32, np.float64)])
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    for n in (1, 2, 3, 4):
        out = tmp_path / f"result{n}.npy"
        done = _mpiexec(n, script, out)
        assert done.returncode == 0, done.stderr[-3000:]
        np.testing.assert_array_equal(np.load(out), expected, err_msg=f"{n} processes")


BAD_INPUT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mpi4py import MPI
    import fastbp

    comm = MPI.COMM_WORLD
    X = np.random.default_rng(0).normal(size=(500, 4))
    if comm.Get_rank() == 1:
        X[7, 2] = np.nan
    net = fastbp.MLP([4, 8, 1], "tanh", "mse", seed=0)
    try:
        net.fit(X, X[:, :1], epochs=2, lr=0.1, batch_size=100, comm=comm)
    except ValueError as error:
        with open(f"{sys.argv[1]}/rank{comm.Get_rank()}.txt", "w") as file:
            file.write(str(error))
    """
)


def test_input_refused_in_one_process_is_reported_in_all(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text(BAD_INPUT)
    done = _mpiexec(3, script, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    messages = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(3)]
    assert messages == [
        "process 1 of 3 refused its input: ValueError: X contains NaN or infinity",
        "X contains NaN or infinity",
        "process 1 of 3 refused its input: ValueError: X contains NaN or infinity",
    ]


DYING = textwrap.dedent(
    """
    import os
    import numpy as np
    from mpi4py import MPI
    import fastbp

    comm = MPI.COMM_WORLD
    X = np.random.default_rng(0).normal(size=(20000, 16))
    net = fastbp.MLP([16, 64, 1], "tanh", "mse", seed=0)
    net.fit(X[:1000], X[:1000, :1], epochs=1, lr=0.01, batch_size=500, comm=comm)
    if comm.Get_rank() == 1:
        os._exit(3)  # dies between two fits: the others wait in the next one's exchange
    net.fit(X, X[:, :1], epochs=50, lr=0.01, batch_size=500, comm=comm)
    """
)


def test_a_dying_process_stops_the_others_instead_of_leaving_them_waiting(tmp_path):
    script = tmp_path / "dying.py"
    script.write_text(DYING)
    done = _mpiexec(2, script, timeout=120)  # a hang fails by the timeout
    assert done.returncode != 0


def test_comm_without_mpi4py_or_of_another_kind_is_refused(monkeypatch):
    net = fastbp.MLP([4, 8, 1], "tanh", "mse", seed=0)
    X = np.zeros((10, 4))
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        net.fit(X, X[:, :1], epochs=1, lr=0.1, comm="world")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r'pip install "fastbp\[mpi\]"'):
        net.fit(X, X[:, :1], epochs=1, lr=0.1, comm=object())


ESTIMATOR = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mpi4py import MPI
    from sklearn.datasets import make_classification
    import fastbp

    def fit(comm):
        X, y = make_classification(n_samples=2500, n_features=12, random_state=0)
        results = []
        for solver, stopping in (("adam", True), ("sgd", False), ("lbfgs", False)):
            est = fastbp.MLPClassifier(hidden_layer_sizes=(32,), solver=solver, max_iter=8,
                                       batch_size=400, early_stopping=stopping,
                                       random_state=0, tol=0)
            est.fit(X, y, comm=comm)
            results += [*est.coefs_, *est.intercepts_, est.loss_curve_ if solver != "lbfgs"
                        else [est.loss_]]
        return np.concatenate([np.ravel(r).astype(np.float64) for r in results])

    if __name__ == "__main__":
        comm = MPI.COMM_WORLD
        result = fit(comm)
        everyone = comm.gather(result, root=0)
        if comm.Get_rank() == 0:
            assert all(np.array_equal(other, result) for other in everyone)
            np.save(sys.argv[1], result)
    """
)


def test_estimators_over_mpi_give_the_model_of_one_process(tmp_path):
    pytest.importorskip("sklearn")
    import warnings

    namespace = {}
    exec(ESTIMATOR.replace('if __name__ == "__main__":', "if False:"), namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = namespace["fit"](None)
    script = tmp_path / "estimator.py"
    script.write_text(ESTIMATOR)
    for n in (2, 3):
        out = tmp_path / f"estimator{n}.npy"
        done = _mpiexec(n, script, out)
        assert done.returncode == 0, done.stderr[-3000:]
        np.testing.assert_array_equal(np.load(out), expected, err_msg=f"{n} processes")


def test_the_command_line_under_mpiexec_writes_the_model_of_one_process(tmp_path):
    pytest.importorskip("sklearn")
    from fastbp.cli import main

    options = ["--epochs", "4", "--hidden", "24", "--batch-size", "300", "--no-progress"]
    alone = tmp_path / "alone.npz"
    assert main(["train", *options, "--out", str(alone)]) == 0
    together = tmp_path / "together.npz"
    done = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, "-m", "fastbp", "train", *options,
         "--out", str(together)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("fastbp: training") == 1  # process 0 alone prints
    with np.load(alone) as a, np.load(together) as b:
        for name in a.files:
            if name[0] in "Wb" and name[1:].isdigit():
                np.testing.assert_array_equal(a[name], b[name])


CHECKPOINTED = PROBLEM.replace(
    "l2=1e-3, comm=comm)", "l2=1e-3, comm=comm, checkpoint=CHECKPOINT)"
) + textwrap.dedent(
    """
    import sys
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    result = train(np.float64, comm)
    if comm.Get_rank() == 0:
        np.save(sys.argv[1], result)
    """
)


def test_process_0_writes_the_checkpoint_and_every_process_resumes(tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    namespace = {}
    exec(PROBLEM, namespace)
    expected = namespace["train"](np.float64, None)
    shorter = tmp_path / "shorter.py"
    shorter.write_text(
        CHECKPOINTED.replace("CHECKPOINT", repr(str(checkpoint))).replace("epochs=3", "epochs=1")
    )
    script = tmp_path / "checkpointed.py"
    script.write_text(CHECKPOINTED.replace("CHECKPOINT", repr(str(checkpoint))))
    assert "checkpoint=" in script.read_text()
    done = _mpiexec(2, shorter, tmp_path / "first.npy")
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(checkpoint) as archive:
        assert int(archive["epochs_done"]) == 1
    done = _mpiexec(3, script, tmp_path / "resumed.npy")  # resumed by three processes
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "resumed.npy"), expected)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fastbp")] == []


SPARSE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import scipy.sparse as sp
    import fastbp

    def train(comm):
        rng = np.random.default_rng(0)
        X = sp.random(1500, 300, density=0.02, format="csr", random_state=1)
        y = rng.integers(0, 4, 1500)
        net = fastbp.MLP([300, 32, 4], ["relu", "softmax"], "cce", seed=2)
        history = net.fit(X, y, epochs=3, lr=0.01, batch_size=400, shuffle=True,
                          optimizer="adam", comm=comm)
        return np.concatenate([history, *[w.ravel() for w in net.weights]])

    if __name__ == "__main__":
        from mpi4py import MPI

        result = train(MPI.COMM_WORLD)
        if MPI.COMM_WORLD.Get_rank() == 0:
            np.save(sys.argv[1], result)
    """
)


def test_sparse_input_over_mpi_gives_the_bits_of_one_process(tmp_path):
    pytest.importorskip("scipy")
    namespace = {}
    exec(SPARSE.replace('if __name__ == "__main__":', "if False:"), namespace)
    expected = namespace["train"](None)
    script = tmp_path / "sparse.py"
    script.write_text(SPARSE)
    done = _mpiexec(3, script, tmp_path / "sparse.npy")
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "sparse.npy"), expected)


BLOCKS = textwrap.dedent(
    """
    import sys
    import numpy as np
    import fastbp
    from fastbp import streaming

    streaming.BLOCK_BYTES = 20000  # many blocks of whole batches

    def train(folder, comm):
        X = np.load(f"{folder}/X.npy", mmap_mode="r")
        Y = np.load(f"{folder}/Y.npy", mmap_mode="r")
        results = []
        for shuffle in (False, "blocks"):
            net = fastbp.MLP([20, 48, 2], "tanh", "mse", seed=4)
            history = net.fit(X, Y, epochs=2, lr=0.01, batch_size=600, shuffle=shuffle,
                              optimizer="adam", comm=comm)
            results += [history, *net.weights, *net.biases]
        return np.concatenate([np.ravel(r) for r in results])

    if __name__ == "__main__":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        result = train(sys.argv[1], comm)
        everyone = comm.gather(result, root=0)
        if comm.Get_rank() == 0:
            assert all(np.array_equal(other, result) for other in everyone)
            np.save(sys.argv[2], result)
    """
)


def test_memory_maps_block_by_block_over_mpi_give_the_bits_of_one_process(tmp_path, monkeypatch):
    from fastbp import streaming

    monkeypatch.setattr(streaming, "BLOCK_BYTES", streaming.BLOCK_BYTES)  # restored after
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3100, 20))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "Y.npy", np.tanh(X[:, :2]))
    namespace = {}
    exec(BLOCKS.replace('if __name__ == "__main__":', "if False:"), namespace)
    expected = namespace["train"](tmp_path, None)
    script = tmp_path / "blocks.py"
    script.write_text(BLOCKS)
    for n in (2, 3):
        out = tmp_path / f"blocks{n}.npy"
        done = _mpiexec(n, script, tmp_path, out)
        assert done.returncode == 0, done.stderr[-3000:]
        np.testing.assert_array_equal(np.load(out), expected, err_msg=f"{n} processes")
