"""BLAS held to one thread while the kernels run.

Its own threading changes the bits with the thread count, the kernels spread their chunk
groups over threads themselves, and BLAS threads left waiting for work beside them make
them wait for a core.
"""

import contextlib
import threading

_controller = None

#: The context of runs that call no BLAS.
NO_LIMIT = contextlib.nullcontext()


class _OneThread:
    """The limit, held while any run in any Python thread needs it: the first run to
    enter sets it, the last to leave restores BLAS's own setting (threadpoolctl's limit
    alone would restore it when the first of two overlapping runs ends).

    threadpoolctl lets only one Python thread at a time set OpenBLAS's process-wide
    thread count, the first that tried, and the others' limits silently do nothing: a
    run in a second thread then ran BLAS on two threads, with other bits. So the setting
    and the restoring each take that control and hand it back."""

    def __init__(self):
        self._lock = threading.Lock()
        self._holders = 0
        self._limit = None

    def __enter__(self):
        with self._lock:
            if self._holders == 0:
                _release_control()
                self._limit = _controller.limit(limits=1, user_api="blas")
            self._holders += 1
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                _release_control()
                self._limit.restore_original_limits()
                self._limit = None
                _release_control()
        return False


def _release_control():
    """Let the next thread that sets OpenBLAS's thread count set it (see ``_OneThread``)."""
    from threadpoolctl import OpenBLASController

    release = getattr(OpenBLASController, "clear_controlling_thread", None)
    if release is not None:  # threadpoolctl before 3.6 had no controlling thread
        release(force=True)


_one_thread = _OneThread()


def one_blas_thread():
    """A context holding every loaded BLAS library to one thread.

    The libraries are looked up once, after scipy's, the one the kernels call, is loaded:
    threadpoolctl's search of the loaded libraries took 0.8 ms, more than a gradient of a
    small network."""
    global _controller
    if _controller is None:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS the kernels call)
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _one_thread
