"""The CPU backend: compiled numba kernels behind ``backend.run``."""

from . import openmp  # noqa: F401  (before numba starts its threads)
