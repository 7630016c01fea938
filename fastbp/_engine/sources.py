"""A digest of the engine's sources, so numba's cache never runs stale machine code.

numba invalidates a cached function only when its own file changes, but a kernel's machine
code also holds the helpers and constants it uses from other files. So every engine file
that caches compiled code carries ``SOURCES_DIGEST``, a digest of all the engine's sources
(the digest lines left out): editing any of them and refreshing the digests rewrites every
such file, which invalidates every cached entry. Until the digests are refreshed the
sources and their digests disagree, and the engine compiles without the cache.

Refresh after editing the engine: ``python -m fastbp._engine.sources --write``.
"""

import atexit
import contextlib
import hashlib
import inspect
import re
import shutil
import sys
import tempfile
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

_said = set()
_private_root = None


def _say_once(message):
    if message not in _said:
        _said.add(message)
        print(message, file=sys.stderr)


def _writable_cache(py_func):
    """Whether numba finds a writable folder to cache ``py_func`` in: ``NUMBA_CACHE_DIR``,
    its file's ``__pycache__`` or the user's cache folder (numba raises at decoration
    where none is, as in a read-only container image)."""
    from numba.core.caching import FunctionCache

    try:
        FunctionCache(py_func)
    except RuntimeError:
        return False
    return True


def _read_only_cache(py_func):
    """``(folder, subpath)`` of the read-only cache that numba would read ``py_func``'s
    file's kernels from if it could write there: ``NUMBA_CACHE_DIR``'s folder for that
    file, or the file's own ``__pycache__``; the folder may hold none of them yet. None
    where there is no such cache."""
    from numba.core.caching import UserProvidedCacheLocator

    source = Path(inspect.getfile(py_func))
    subpath = UserProvidedCacheLocator.get_suitable_cache_subpath(str(source))
    if numba.config.CACHE_DIR and Path(numba.config.CACHE_DIR).is_dir():
        return Path(numba.config.CACHE_DIR) / subpath, subpath
    if (source.parent / "__pycache__").is_dir():
        return source.parent / "__pycache__", subpath
    return None


def _private_copy(folder, subpath):
    """A writable copy of a read-only cache folder, laid out as ``NUMBA_CACHE_DIR`` would
    hold it, in a temporary folder of this process (removed at exit): numba reads from
    it, and what it compiles anew is kept there for this process only."""
    global _private_root
    if _private_root is None:
        _private_root = tempfile.mkdtemp(prefix="fastbp-numba-cache-")
        atexit.register(shutil.rmtree, _private_root, True)
    target = Path(_private_root) / subpath
    if not target.exists():
        if folder.is_dir():
            shutil.copytree(folder, target)
        else:
            target.mkdir(parents=True)
    return _private_root


def cache_shared():
    """Whether kernels compiled in one process are cached where the next finds them:
    caching is on and no kernel reads a private copy of a read-only cache."""
    return CACHE and _private_root is None


@contextlib.contextmanager
def _numba_cache_dir(path):
    """numba's cache folder set to ``path`` while one of fastbp's kernels is decorated:
    its cache locator reads the setting then, and nothing else in the process sees it."""
    previous = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = path
    try:
        yield
    finally:
        numba.config.CACHE_DIR = previous


def njit(*args, **kwargs):
    """``numba.njit``, with ``cache=True`` honoured only while ``CACHE`` holds. Where no
    cache folder is writable, a filled read-only cache (a container image's) is read
    through a private copy, and without one the kernels compile uncached; either way one
    line says so, instead of numba's error at import."""
    if not kwargs.get("cache"):
        return numba.njit(*args, **kwargs)

    def decorate(py_func):
        if CACHE and _writable_cache(py_func):
            return numba.njit(**kwargs)(py_func)
        found = _read_only_cache(py_func) if CACHE else None
        if found is not None:
            _say_once(
                "fastbp: numba's cache is read-only here; reading fastbp's compiled kernels "
                "from it through a private copy"
            )
            with _numba_cache_dir(_private_copy(*found)):
                return numba.njit(**kwargs)(py_func)
        if CACHE:
            _say_once(
                "fastbp: no writable folder for numba's cache (set NUMBA_CACHE_DIR to "
                "one); compiling without it, so each new process compiles again"
            )
        return numba.njit(**dict(kwargs, cache=False))(py_func)

    return decorate(args[0]) if args else decorate


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    elif sys.argv[1:] == ["--check"]:
        sys.exit(1 if stale_files() else 0)
    else:
        sys.exit(f"usage: {REFRESH} | --check")
