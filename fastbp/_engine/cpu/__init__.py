"""The CPU backend: compiled numba kernels behind ``backend.run``."""
