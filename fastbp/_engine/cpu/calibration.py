"""Which mid-sized layers multiply through BLAS: measured once on this machine, then kept.

Whether BLAS or fastbp's own register-blocked products are faster for a layer of a few
thousand weights depends on the CPU (its vector width, caches, the BLAS build), so no one
threshold suits every machine. A layer between ``BLAS_TRY_ENTRIES`` and
``BLAS_MIN_ENTRIES`` weights is timed both ways the first time it is met, at the chunk
size it will run at, and the faster way is kept in a file per CPU: the two ways sum in
different orders, so keeping the choice keeps a machine's results the same from run to
run (and from process to process).
"""

import hashlib
import json
import os
import platform
import tempfile
import threading
from pathlib import Path

#: Own products must beat BLAS by this factor to be kept: BLAS's advantage grows with the
#: chunk, its own is within the noise of a busy machine.
OWN_MARGIN = 1.05

_lock = threading.Lock()
_choices = None  # key -> bool (True: BLAS), loaded from the file on first use
#: Counts ``forget`` calls: plans made before one are made again.
generation = 0


def _cpu_identity():
    """The CPU and BLAS this process computes with: choices measured on one machine are
    never read on another."""
    import llvmlite.binding as llvm
    import numba
    import scipy

    features = llvm.get_host_cpu_features().flatten()
    parts = (platform.machine(), llvm.get_host_cpu_name(), features, numba.__version__)
    return hashlib.sha256(("|".join(parts) + scipy.__version__).encode()).hexdigest()[:16]


def store_path():
    """The file that keeps this machine's choices: in ``FASTBP_CALIBRATION_DIR``, or in
    the user's cache folder (``XDG_CACHE_HOME`` or ``~/.cache``) under ``fastbp``."""
    folder = os.environ.get("FASTBP_CALIBRATION_DIR")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(base) / "fastbp"
    return Path(folder) / f"blas-layers-{_cpu_identity()}.json"


def _load():
    global _choices
    if _choices is None:
        try:
            _choices = dict(json.loads(store_path().read_text()))
        except (OSError, ValueError, TypeError):
            _choices = {}
    return _choices


def _save(choices):
    """Write ``choices`` atomically; where no folder is writable they stay in memory."""
    path = store_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        on_disk = {}
        try:
            on_disk = dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            pass
        # Another process's choices win: its runs already used them.
        choices.update(on_disk)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".blas-layers-")
        with os.fdopen(handle, "w") as file:
            json.dump(choices, file, indent=0, sort_keys=True)
        os.replace(temporary, path)
    except OSError:
        pass


def through_blas(fan_in, fan_out, dtype, chunk, first, time_layer):
    """Whether a layer of ``fan_in`` x ``fan_out`` weights (the network's first layer, which
    computes no input delta, when ``first``) runs its products through BLAS for chunks of
    ``chunk`` rows of ``dtype``. Measured once with ``time_layer(through_blas) -> seconds``
    and kept."""
    key = f"{dtype.name} {fan_in}x{fan_out} chunk {chunk}{' first' if first else ''}"
    with _lock:
        choices = _load()
        if key not in choices:
            blas = own = float("inf")
            for _ in range(5):  # interleaved, so that a busy moment hits both ways alike
                blas = min(blas, time_layer(True))
                own = min(own, time_layer(False))
            choices[key] = not own * OWN_MARGIN < blas
            _save(choices)
        return choices[key]


def forget():
    """Drop the choices held in memory (the file stays), and with them the plans that
    followed them: tests use it."""
    global _choices, generation
    with _lock:
        _choices = None
        generation += 1
