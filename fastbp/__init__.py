"""fastbp: multilayer perceptrons trained by compiled backpropagation kernels."""

from .network import MLP
from .persistence import load

__all__ = ["MLP", "MLPClassifier", "MLPRegressor", "ParquetColumns", "load"]
__version__ = "0.1.0"

_ESTIMATORS = ("MLPClassifier", "MLPRegressor")


def __getattr__(name):
    # The estimators import scikit-learn, which the core does not need: load them on use.
    if name in _ESTIMATORS:
        from . import estimators

        return getattr(estimators, name)
    if name == "ParquetColumns":  # its module imports pyarrow only when a table is opened
        from .parquet import ParquetColumns

        return ParquetColumns
    raise AttributeError(f"module 'fastbp' has no attribute {name!r}")
