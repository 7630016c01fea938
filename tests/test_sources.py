"""numba's cache never runs stale machine code (``fastbp._engine.sources``).

numba invalidates a cached kernel only when its own file changes; a helper or constant in
another file is part of its machine code all the same. Every engine file that caches
compiled code carries a digest of all the engine's sources, refreshed by
``python -m fastbp._engine.sources --write``."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastbp._engine import sources

ROOT = Path(__file__).resolve().parents[1]


def test_every_cached_kernel_file_carries_the_current_digest():
    """Fails after an engine edit until the digests are refreshed (see the docstring)."""
    assert [path.name for path in sources.stale_files()] == [], (
        f"refresh the digests: {sources.REFRESH}"
    )
    assert sources.CACHE


# A leaky ReLU of -1 with the slope of fastbp._engine.codes, computed by a kernel in
# elementwise.py (bias_activation) that caches the slope as a constant.
CHILD = """
import warnings
import numpy as np
import fastbp
from fastbp._engine import sources
net = fastbp.MLP([1, 1, 1], ["leaky_relu", "identity"], "mse", seed=0)
net.set_params([np.ones((1, 1)), np.ones((1, 1))], [np.zeros(1), np.zeros(1)])
print(sources.CACHE, float(net.forward(np.array([[-1.0]]))[0, 0]))
"""


def _child(package_root, cache_dir):
    env = dict(os.environ, PYTHONPATH=str(package_root), NUMBA_CACHE_DIR=str(cache_dir))
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", CHILD],
        env=env,
        cwd=package_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    cached, value = done.stdout.split()
    return cached == "True", float(value)


@pytest.mark.slow
def test_editing_a_helper_in_another_file_never_leaves_old_machine_code_running(tmp_path):
    """A copy of fastbp fills an empty cache; then the leaky slope changes in codes.py,
    a file without kernels: the next process must compute with the new slope, first
    without the cache (digests stale), then from a refreshed cache."""
    shutil.copytree(
        ROOT / "fastbp", tmp_path / "fastbp", ignore=shutil.ignore_patterns("__pycache__")
    )
    cache = tmp_path / "cache"
    assert _child(tmp_path, cache) == (True, -0.01)
    codes = tmp_path / "fastbp" / "_engine" / "codes.py"
    codes.write_text(codes.read_text().replace("LEAKY_SLOPE = 0.01", "LEAKY_SLOPE = 0.25"))
    assert _child(tmp_path, cache) == (False, -0.25)
    subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "fastbp._engine.sources", "--write"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
        check=True,
    )
    assert _child(tmp_path, cache) == (True, -0.25)


@pytest.mark.slow
def test_with_no_writable_cache_folder_fastbp_compiles_uncached_and_says_so_once(tmp_path):
    """Where neither the package's ``__pycache__``, ``NUMBA_CACHE_DIR`` nor the user's cache
    folder can be written (a read-only install), numba refuses ``cache=True`` at import;
    fastbp trains all the same, caching nothing, and says so in one line. Root writes
    through permission bits, so the folders are made unusable as files in their way."""
    shutil.copytree(
        ROOT / "fastbp", tmp_path / "fastbp", ignore=shutil.ignore_patterns("__pycache__")
    )
    for folder in (tmp_path / "fastbp").rglob("*"):
        if folder.is_dir():
            (folder / "__pycache__").write_text("not a folder")
    (tmp_path / "fastbp" / "__pycache__").write_text("not a folder")
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    env = {name: value for name, value in os.environ.items() if name != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(tmp_path), HOME=str(blocked), XDG_CACHE_HOME=str(blocked / "x"))
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "-0.01"]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        "fastbp: no writable folder for numba's cache (set NUMBA_CACHE_DIR to one); "
        "compiling without it, so each new process compiles again"
    ]


# The leaky ReLU child, also saying whether compiled_run came from the cache.
CACHE_HITS_CHILD = (
    CHILD
    + """
from fastbp._engine.cpu import entry
stats = entry.compiled_run.stats
print(len(stats.cache_hits), len(stats.cache_misses))
"""
)


@pytest.mark.slow
def test_a_filled_read_only_cache_is_read_where_nothing_is_writable(tmp_path):
    """A container image may ship a filled numba cache on a read-only file system, where
    numba reads no cache it cannot write to. fastbp reads its kernels from it through a
    private copy: cache hits, no compilation, and one line saying so. The read-only file
    system is a read-only bind mount (skipped where mounting is not allowed)."""
    shutil.copytree(
        ROOT / "fastbp", tmp_path / "fastbp", ignore=shutil.ignore_patterns("__pycache__")
    )
    filled = tmp_path / "filled"
    assert _child(tmp_path, filled) == (True, -0.01)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(filled), str(read_only)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        remounted = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(read_only)], capture_output=True
        )
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remounted.stderr.decode().strip()}")
        for folder in [tmp_path / "fastbp", *(tmp_path / "fastbp").rglob("*")]:
            if folder.is_dir():
                (folder / "__pycache__").write_text("not a folder")
        blocked = tmp_path / "blocked"
        blocked.write_text("not a folder")
        env = dict(os.environ, PYTHONPATH=str(tmp_path), NUMBA_CACHE_DIR=str(read_only))
        env.update(HOME=str(blocked), XDG_CACHE_HOME=str(blocked / "x"))
        done = subprocess.run(
            [sys.executable, "-c", CACHE_HITS_CHILD],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        subprocess.run(["umount", str(read_only)], capture_output=True)
    assert done.returncode == 0, done.stderr
    cached, value, hits, misses = done.stdout.split()
    assert (cached, value) == ("True", "-0.01")
    assert int(hits) >= 1 and int(misses) == 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        "fastbp: numba's cache is read-only here; reading fastbp's compiled kernels from it "
        "through a private copy"
    ]
