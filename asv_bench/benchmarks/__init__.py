"""asv benchmarks of fastbp.

With ``-E existing`` asv runs them against the fastbp that the current interpreter
imports. When fastbp is not installed there, the checkout that holds this suite is put on
``sys.path`` (and ``PYTHONPATH``, for the fresh interpreters of the ``timeraw_``
benchmarks), so the working tree is what gets measured.
"""

import os
import sys
from importlib.util import find_spec

if find_spec("fastbp") is None:
    _ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, _ROOT)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p
    )
