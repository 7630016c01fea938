"""fastbp: multilayer perceptrons trained by compiled backpropagation kernels."""

from .network import MLP

__all__ = ["MLP"]
__version__ = "0.1.0"
