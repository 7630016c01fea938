"""Compile options shared by the CPU kernels."""

#: Division without a raise-on-zero branch (``error_model="numpy"``) vectorizes.
NUMPY_ERRORS = "numpy"

# Vectorized reductions need reassociation; no flag here assumes finite values.
FASTMATH = {"reassoc", "contract"}

# Parallelize explicit prange loops only: every automatically parallelized array
# expression would cost a compiled function of its own.
PRANGE_ONLY = {
    "prange": True,
    "comprehension": False,
    "reduction": False,
    "inplace_binop": False,
    "setitem": False,
    "numpy": False,
    "stencil": False,
    "fusion": False,
}
