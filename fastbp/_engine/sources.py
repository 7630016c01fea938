"""A digest of the engine's sources, so numba's cache never runs stale machine code.

numba invalidates a cached function only when its own file changes, but a kernel's machine
code also holds the helpers and constants it uses from other files. So every engine file
that caches compiled code carries ``SOURCES_DIGEST``, a digest of all the engine's sources
(the digest lines left out): editing any of them and refreshing the digests rewrites every
such file, which invalidates every cached entry. Until the digests are refreshed the
sources and their digests disagree, and the engine compiles without the cache.

Refresh after editing the engine: ``python -m fastbp._engine.sources --write``.
"""

import hashlib
import re
import sys
import warnings
from pathlib import Path

import numba

ROOT = Path(__file__).resolve().parent
DIGEST_LINE = re.compile(r'^SOURCES_DIGEST = "([0-9a-f]*)"\n', re.MULTILINE)
CACHED = re.compile(r"cache=(True|CACHE)\b")
REFRESH = "python -m fastbp._engine.sources --write"
COMMENT = "#: The engine's sources this file's cached code was compiled from (``sources.py``).\n"


def source_files():
    """The engine's Python files, in a fixed order."""
    return sorted(ROOT.rglob("*.py"))


def digest():
    """SHA-256 of every engine source, each without its digest line."""
    total = hashlib.sha256()
    for path in source_files():
        total.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        total.update(DIGEST_LINE.sub("", path.read_text(encoding="utf-8")).encode() + b"\0")
    return total.hexdigest()


def stale_files():
    """Files that cache compiled code but carry no digest, or not the current one."""
    current = digest()
    stale = []
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        if path.name != "sources.py" and CACHED.search(text):
            found = DIGEST_LINE.search(text)
            if found is None or found.group(1) != current:
                stale.append(path)
    return stale


def write():
    """Write the current digest into every file that caches compiled code."""
    while stale_files():  # twice when a first digest line brings its comment in
        _write_once()


def _write_once():
    current = digest()
    for path in stale_files():
        text = path.read_text(encoding="utf-8")
        line = f'SOURCES_DIGEST = "{current}"\n'
        if DIGEST_LINE.search(text):
            text = DIGEST_LINE.sub(line, text)
        else:
            text = text.rstrip("\n") + "\n\n\n" + COMMENT + line
        path.write_text(text, encoding="utf-8")


def _cache_allowed():
    """Whether compiled code may be cached: the digests match the sources. Checked once
    per process, when the first kernel module is imported (about 1 ms)."""
    stale = stale_files()
    if stale:
        warnings.warn(
            f"fastbp's engine sources changed since their digests were written "
            f"({', '.join(p.name for p in stale)}): compiling without numba's cache. Refresh "
            f"them with: {REFRESH}",
            RuntimeWarning,
            stacklevel=2,
        )
    return not stale


#: Whether the kernels use numba's cache (``cache=CACHE`` in their decorators).
CACHE = _cache_allowed()

_told_no_folder = False


def _cacheable(py_func):
    """Whether numba finds a writable folder to cache ``py_func`` in: its file's
    ``__pycache__``, ``NUMBA_CACHE_DIR`` or the user's cache folder. numba raises at
    decoration where none is (a read-only install in a container, say); fastbp compiles
    uncached there instead, and says so once."""
    global _told_no_folder
    from numba.core.caching import FunctionCache

    try:
        FunctionCache(py_func)
    except RuntimeError:
        if not _told_no_folder:
            _told_no_folder = True
            print(
                "fastbp: no writable folder for numba's cache (set NUMBA_CACHE_DIR to "
                "one); compiling without it, so each new process compiles again",
                file=sys.stderr,
            )
        return False
    return True


def njit(*args, **kwargs):
    """``numba.njit``, with ``cache=True`` honoured only while ``CACHE`` holds and numba
    finds a writable cache folder."""
    if not kwargs.get("cache"):
        return numba.njit(*args, **kwargs)

    def decorate(py_func):
        return numba.njit(**dict(kwargs, cache=CACHE and _cacheable(py_func)))(py_func)

    return decorate(args[0]) if args else decorate


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    elif sys.argv[1:] == ["--check"]:
        sys.exit(1 if stale_files() else 0)
    else:
        sys.exit(f"usage: {REFRESH} | --check")
