"""The CUDA backend: numba.cuda kernels behind ``backend.run``."""
