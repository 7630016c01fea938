"""Picks the kernel module for a device. Each one offers ``run`` with the same arguments;
the CUDA one (and numba.cuda with it) is imported only when asked for."""

CUDA_INSTALL = 'pip install "fastbp[cuda]"'


def kernels(device):
    if device == "cpu":
        from . import _cpu_kernels

        return _cpu_kernels
    return _cuda_kernels()


def _cuda_kernels():
    """``fastbp._cuda_kernels``, or a RuntimeError saying what is missing."""
    try:
        from numba import cuda
    except ImportError as error:
        raise ImportError(
            f"device='cuda' needs numba-cuda with the CUDA 13 libraries: {CUDA_INSTALL} "
            f"(installs numba-cuda[cu13]); importing numba.cuda failed: {error}") from None
    if not cuda.is_available():
        raise RuntimeError(
            f"device='cuda' found no usable NVIDIA GPU: {_why_no_gpu(cuda)}. Check the "
            f"driver (nvidia-smi) and the CUDA libraries ({CUDA_INSTALL}), or use "
            "device='cpu'.")
    from . import _cuda_kernels

    return _cuda_kernels


def _why_no_gpu(cuda):
    """numba.cuda's own account of why it sees no device, on one line."""
    try:
        cuda.get_current_device()
    except Exception as error:  # numba raises several types here, all worth showing
        lines = [line.strip(" :") for line in str(error).splitlines()]
        return " ".join(line for line in lines if line).rstrip(".") or type(error).__name__
    return "numba.cuda reports no CUDA device"
