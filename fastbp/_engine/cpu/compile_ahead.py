"""A second process that compiles ``group_pass`` while this one compiles ``compiled_run``.

With an empty numba cache, a first fit spends most of its time compiling, and numba
compiles on one core. ``group_pass`` and ``compiled_run`` (with their callees) are the
two largest pieces, and neither needs the other compiled (``run`` calls ``group_pass`` by
address), so on a machine with two or more cores a second Python process compiles
``group_pass`` into numba's cache while this one compiles the rest, then this one loads
it from there. The second process is only a head start: if it fails, this one compiles
as before, and the code, loaded or compiled, is the same.
"""

import importlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

from .. import config, sources

#: The command that runs ``main`` in a new process (tests replace it).
COMMAND = (sys.executable, "-m", __name__)

#: Seconds to wait for the other process before compiling here instead.
WAIT_SECONDS = 600


class Helper:
    """A running process compiling one kernel into numba's cache."""

    def __init__(self, process):
        self.process = process

    def wait(self):
        """Wait for the process to finish; stop it if it runs past ``WAIT_SECONDS`` or
        the wait is interrupted."""
        try:
            self.process.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        except BaseException:
            self.process.kill()
            raise


def start(dispatcher, argtypes):
    """A ``Helper`` compiling ``dispatcher`` for ``argtypes`` into numba's cache, or None
    where this process had better compile it itself: it is loaded or cached already,
    the cache is not shared with other processes, only one core is available or
    ``FASTBP_COMPILE_PROCESSES`` is 1."""
    if (
        config.COMPILE_PROCESSES < 2
        or _cores() < 2
        or not sources.cache_shared()
        or argtypes in dispatcher.overloads
        or _cached(dispatcher, argtypes)
    ):
        return None
    job = pickle.dumps((dispatcher.py_func.__module__, dispatcher.py_func.__name__, argtypes))
    try:
        process = subprocess.Popen(
            COMMAND, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    except OSError:
        return None
    try:
        process.stdin.write(job)
        process.stdin.close()
    except OSError:
        process.kill()
        process.wait()
        return None
    return Helper(process)


def _cores():
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cached(dispatcher, argtypes):
    """Whether numba's cache holds ``dispatcher`` compiled for ``argtypes``: read from its
    index files, whose layout numba does not promise, so True wherever that cannot be
    told (then this process compiles, as it would without a helper)."""
    folder = dispatcher.stats.cache_path
    if folder is None:
        return True
    func = dispatcher.py_func
    name = f"{func.__module__.rpartition('.')[2]}.{func.__qualname__}-*.nbi"
    try:
        for index in Path(folder).glob(name):
            with open(index, "rb") as file:
                pickle.load(file)  # numba's version
                _, overloads = pickle.loads(file.read())
            if any(key[0] == argtypes for key in overloads):
                return True
    except Exception:  # a layout this code does not know
        return True
    return False


def main():
    """Compile the kernel named by the pickled ``(module, name, argtypes)`` on stdin."""
    module, name, argtypes = pickle.load(sys.stdin.buffer)
    getattr(importlib.import_module(module), name).compile(argtypes)


if __name__ == "__main__":
    main()
