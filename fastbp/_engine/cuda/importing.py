"""``numba.cuda``, imported without leaving NumPy changed."""

import numpy as np


def numba_cuda():
    """The ``numba.cuda`` module (ImportError where numba-cuda is missing).

    numba-cuda 0.30 registers an overload for ``np.row_stack``, which NumPy 2.5 removed: it
    is lent ``np.vstack`` under that name while it imports, and the name is taken back, so
    no other user of NumPy in the process sees it."""
    lent = not hasattr(np, "row_stack")
    if lent:
        np.row_stack = np.vstack  # noqa: NPY201 (lent on purpose, see above)
    try:
        from numba import cuda
    finally:
        if lent:
            del np.row_stack  # noqa: NPY201
    return cuda
