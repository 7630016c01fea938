"""Picks the kernel module for a device. Each one offers ``train``, ``gradient`` and
``forward`` with the same arguments; the CUDA one is imported only when asked for."""


def kernels(device):
    if device == "cpu":
        from . import _cpu_kernels

        return _cpu_kernels
    raise ValueError(
        "device='cuda' is not available in this version of fastbp; use device='cpu'")
