"""Shared fixtures: seeded random data that a failing test names, so it can be rerun.

Every randomized test draws from the ``rng`` fixture. Its seed is derived from the test's
id, so runs are reproducible by default; ``FASTBP_TEST_SEED=<int>`` forces a seed and
``FASTBP_TEST_SEED=random`` draws a fresh one per test. A failing test's report carries a
"fastbp seed" section with the command line that reproduces it.
"""

import os
import secrets
import tempfile
import zlib

import numpy as np
import pytest

_SEED_KEY = pytest.StashKey[int]()

# The tests' own choices of BLAS layers (``fastbp._engine.cpu.calibration``), shared with
# the processes they start, never the user's.
os.environ.setdefault("FASTBP_CALIBRATION_DIR", tempfile.mkdtemp(prefix="fastbp-calibration-"))


def _seed_for(nodeid):
    forced = os.environ.get("FASTBP_TEST_SEED", "")
    if forced == "random":
        return secrets.randbelow(2**32)
    if forced:
        return int(forced)
    return zlib.crc32(nodeid.encode())


@pytest.fixture
def seed(request):
    """The seed of this test's random data (reported when the test fails)."""
    value = _seed_for(request.node.nodeid)
    request.node.stash[_SEED_KEY] = value
    return value


@pytest.fixture
def rng(seed):
    """A NumPy generator seeded by ``seed``."""
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = item.stash.get(_SEED_KEY, None)
    if seed is not None and report.failed:
        report.sections.append(
            (
                "fastbp seed",
                f"random data drawn with seed {seed}; reproduce with\n"
                f"FASTBP_TEST_SEED={seed} python -m pytest '{item.nodeid}'",
            )
        )
