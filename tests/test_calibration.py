"""Mid-sized layers take BLAS or fastbp's own products by a measurement kept per machine:
the choice is made once, read back from its file in every later process, followed by the
plan, and either way the numbers are those of ``fastbp.reference``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbp
from fastbp import reference
from fastbp._engine import config as _config
from fastbp._engine.cpu import calibration
from fastbp._engine.cpu.backend import time_layer
from fastbp._engine.cpu.plan import work_plan

ROOT = Path(__file__).resolve().parents[1]
SIZES = [24, 48, 3]  # 1,152 weights in the first layer: between the two thresholds


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private calibration file, forgotten from memory before and after."""
    monkeypatch.setenv("FASTBP_CALIBRATION_DIR", str(tmp_path))
    calibration.forget()
    yield tmp_path
    calibration.forget()


def _key(dtype, fan_in, fan_out, chunk, first):
    return f"{np.dtype(dtype).name} {fan_in}x{fan_out} chunk {chunk}{' first' if first else ''}"


def _plan(dtype, batch, timer=time_layer):
    net = fastbp.MLP(SIZES, ["tanh", "softmax"], "cce", seed=0, dtype=dtype)
    return work_plan(net._layout, net.dtype, batch, timer)


def test_a_choice_is_measured_once_and_kept_in_the_file(store):
    calls = []

    def timer(fan_in, fan_out, dtype, chunk, first, through_blas):
        calls.append((fan_in, fan_out, chunk, first, through_blas))
        return 1.0 if through_blas else 2.0  # BLAS faster

    plan = _plan(np.float64, 128, timer)
    assert list(plan.blas) == [True, False] and plan.uses_blas
    assert {c[:4] for c in calls} == {(24, 48, 64, True)} and len(calls) == 10
    saved = json.loads(calibration.store_path().read_text())
    assert saved == {_key(np.float64, 24, 48, 64, True): True}
    calibration.forget()
    calls.clear()
    assert list(_plan(np.float32, 128, timer).blas) == [True, False]  # another dtype: measured
    assert len(calls) == 10


def test_own_products_are_kept_only_when_clearly_faster(store):
    dtype = np.dtype("f8")
    assert not calibration.through_blas(24, 48, dtype, 64, True, lambda blas: 1.2 if blas else 1.0)
    assert calibration.through_blas(48, 24, dtype, 64, True, lambda blas: 1.01 if blas else 1.0)


def test_small_batches_and_the_thresholds_are_not_measured(store, monkeypatch):
    def timer(*args):
        raise AssertionError("nothing to measure")

    assert not _plan(np.float64, 8, timer).uses_blas  # sample-by-sample batches
    monkeypatch.setattr(_config, "BLAS_TRY_ENTRIES", 1 << 16)
    assert not _plan(np.float64, 128, timer).uses_blas


def test_a_choice_on_disk_is_followed_by_a_new_process(store):
    key = _key(np.float64, 24, 48, 64, True)
    for through_blas in (True, False):
        calibration.store_path().write_text(json.dumps({key: through_blas}))
        code = (
            "import fastbp, numpy as np\n"
            "from fastbp._engine.cpu.plan import work_plan\n"
            "from fastbp._engine.cpu.backend import time_layer\n"
            f"net = fastbp.MLP({SIZES}, ['tanh', 'softmax'], 'cce', seed=0)\n"
            "print(work_plan(net._layout, net.dtype, 128, time_layer).uses_blas)\n"
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == str(through_blas)


def test_an_unwritable_folder_keeps_choices_in_memory(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("FASTBP_CALIBRATION_DIR", str(blocked / "inside"))
    calibration.forget()
    try:
        faster_blas = lambda blas: 1.0 if blas else 2.0  # noqa: E731
        assert calibration.through_blas(24, 48, np.dtype("f4"), 64, True, faster_blas)
        assert calibration.through_blas(24, 48, np.dtype("f4"), 64, True, None)  # kept
    finally:
        calibration.forget()


def test_a_damaged_file_is_measured_again(store):
    calibration.store_path().write_text("{not json")
    assert calibration.through_blas(24, 48, np.dtype("f4"), 64, True, lambda b: 1.0 if b else 2.0)
    assert json.loads(calibration.store_path().read_text())


@pytest.mark.parametrize("through_blas", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_either_choice_trains_the_reference_numbers(store, rng, through_blas, dtype):
    key = _key(dtype, 24, 48, 64, True)
    calibration.store_path().write_text(json.dumps({key: through_blas}))
    assert _plan(dtype, 128).uses_blas == through_blas
    X = rng.standard_normal((300, 24)).astype(dtype)
    labels = rng.integers(0, 3, 300)
    net = fastbp.MLP(SIZES, ["tanh", "softmax"], "cce", seed=3, dtype=dtype)
    ref = reference.MLP(SIZES, ["tanh", "softmax"], "cce", seed=3)
    history = net.fit(X, labels, epochs=3, lr=0.1, batch_size=128)
    expected = ref.fit(X.astype(np.float64), labels, epochs=3, lr=0.1, batch_size=128)
    tolerance = 1e-10 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(history, expected, rtol=tolerance)
    for got, want in zip(net.weights, ref.weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


def test_time_layer_measures_both_ways():
    for through_blas in (True, False):
        seconds = time_layer(24, 48, np.dtype("f8"), 64, False, through_blas)
        assert np.isfinite(seconds) and seconds > 0
