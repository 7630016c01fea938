"""Picks the backend for a device: a module whose ``run`` takes a ``Request``. The CUDA one
(and numba.cuda with it) is imported only when asked for."""

CUDA_INSTALL = 'pip install "fastbp[cuda]"'


#: The CPU backend once imported: every new network asks for one. The CUDA one is looked
#: up each time, as the GPU it needs may come and go.
_cpu = None


def backend(device):
    """The backend module of ``device`` ("cpu" or "cuda")."""
    global _cpu
    if device == "cpu":
        if _cpu is None:
            from .cpu import backend as cpu_backend

            _cpu = cpu_backend
        return _cpu
    return _cuda_backend()


def _cuda_backend():
    """``fastbp._engine.cuda.backend``, or an error saying what is missing."""
    try:
        from .cuda.importing import numba_cuda

        cuda = numba_cuda()
    except ImportError as error:
        raise ImportError(
            f"device='cuda' needs numba-cuda with the CUDA 13 libraries: {CUDA_INSTALL} "
            f"(installs numba-cuda[cu13]); importing numba.cuda failed: {error}"
        ) from None
    if not cuda.is_available():
        raise RuntimeError(
            f"device='cuda' found no usable NVIDIA GPU: {_why_no_gpu(cuda)}. Check the "
            f"driver (nvidia-smi) and the CUDA libraries ({CUDA_INSTALL}), or use "
            "device='cpu'."
        )
    from .cuda import backend as cuda_backend

    return cuda_backend


def _why_no_gpu(cuda):
    """numba.cuda's own account of why it sees no device, on one line."""
    try:
        cuda.get_current_device()
    except Exception as error:  # numba raises several types here, all worth showing
        lines = [line.strip(" :") for line in str(error).splitlines()]
        return " ".join(line for line in lines if line).rstrip(".") or type(error).__name__
    return "numba.cuda reports no CUDA device"
