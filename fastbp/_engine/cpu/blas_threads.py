"""BLAS held to one thread while the kernels run.

Its own threading changes the bits with the thread count, the kernels spread their chunk
groups over threads themselves, and BLAS threads left waiting for work beside them make
them wait for a core.
"""

import contextlib

_controller = None

#: The context of runs that call no BLAS.
NO_LIMIT = contextlib.nullcontext()


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
    return _controller.limit(limits=1, user_api="blas")
