"""Run-time settings of the CPU engine, from ``FASTBP_*`` environment variables.

They are passed to the kernels as arguments (never baked in as globals) so changing one
never leaves a stale compiled kernel in numba's cache.

Each setting is read when first used (module ``__getattr__``), then kept in this module's
globals: a bad value never breaks ``import fastbp``, only the first fit, with a
``ValueError`` that names the variable. Tests set these attributes directly.
"""

import os

#: Setting name -> (environment variable, default); filled by ``_setting`` below.
_SETTINGS = {}


def _setting(name: str, variable: str, default: int) -> None:
    """Declare the setting ``name``, read from ``variable`` on first use."""
    _SETTINGS[name] = (variable, default)


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        parsed = int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
    if parsed <= 0:
        raise ValueError(f"environment variable {name} must be positive, got {parsed}")
    return parsed


def __getattr__(name: str) -> int:
    """Read the setting ``name`` from its variable and keep it, so later reads are plain
    global lookups; raises ``ValueError`` for a bad value (and reads it again next time)."""
    try:
        variable, default = _SETTINGS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = globals()[name] = _int_env(variable, default)
    return value


def __dir__():
    return sorted(set(globals()) | set(_SETTINGS))


#: Most samples per chunk. Chunk boundaries fix the order in which gradients are summed,
#: so results depend on the chunk size but never on the thread count.
_setting("CHUNK_ROWS", "FASTBP_CHUNK_ROWS", 256)

#: Chunks are as long as CHUNK_ROWS allows while one chunk's work buffer fits in this many
#: bytes (about a third of a core's 2 MB L2 cache), but at least FEWEST_CHUNK_ROWS: long
#: chunks spread each product's fixed costs (the sums that end its dot products) over more
#: rows. Batches of 200 (scikit-learn's) train 4-6% faster than with 320 KB.
_setting("WORK_BUFFER_BYTES", "FASTBP_WORK_BUFFER_BYTES", 640 * 1024)
FEWEST_CHUNK_ROWS = 64

#: At most this many chunk groups, each with its own gradient buffer, run in parallel.
_setting("MAX_GROUPS", "FASTBP_MAX_GROUPS", 32)

#: Memory allowed for per-group gradient buffers, in parameter entries.
_setting("GRADIENT_BUFFER_ENTRIES", "FASTBP_GRADIENT_BUFFER_ENTRIES", 1 << 24)

#: A batch needs at least this many multiply-adds before it is spread over threads;
#: below it, starting the thread pool costs more than it saves.
_setting("PARALLEL_MIN_MACS", "FASTBP_PARALLEL_MIN_MACS", 1 << 17)

#: Networks of at least this many parameters update them on several threads, block by
#: block (the same bits as on one): below it, starting the threads costs more than the
#: update.
_setting("PARALLEL_UPDATE_MIN_PARAMS", "FASTBP_PARALLEL_UPDATE_MIN_PARAMS", 1 << 16)

#: Layers with at least this many weights multiply through BLAS (held to one thread
#: while fastbp trains; chunk groups still run in parallel). Read at every run.
_setting("BLAS_MIN_ENTRIES", "FASTBP_BLAS_MIN_ENTRIES", 1 << 16)

#: Layers of at least this many weights (and fewer than BLAS_MIN_ENTRIES) multiply
#: through BLAS where it measured faster on this machine (``cpu/calibration.py``): set it
#: to BLAS_MIN_ENTRIES or more to keep them in fastbp's own products everywhere.
_setting("BLAS_TRY_ENTRIES", "FASTBP_BLAS_TRY_ENTRIES", 1024)

#: Most samples per chunk in networks that use BLAS, which take chunks of about half a
#: batch: long enough for BLAS to reach its peak.
_setting("BLAS_CHUNK_ROWS", "FASTBP_BLAS_CHUNK_ROWS", 256)

#: Processes that compile a first run's kernels when numba's cache lacks them: with 2, a
#: second process compiles ``group_pass`` while this one compiles the rest
#: (``cpu/compile_ahead.py``); 1 compiles everything here.
_setting("COMPILE_PROCESSES", "FASTBP_COMPILE_PROCESSES", 2)
