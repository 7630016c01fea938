"""Whether a flat array holds only finite values, compiled: one vectorized pass, no
temporary array (``np.isfinite(a).all()`` took 4-7 us for 10,000 parameters, this 1-1.5)."""

from .sources import njit


# Reassociation lets the sum vectorize; no flag here assumes finite values, so NaN and
# infinity survive ``x * 0`` and the sum.
@njit(cache=True, fastmath={"reassoc"}, _nrt=False)
def all_finite(values):
    """Whether every entry of the 1-D ``values`` is finite: ``x * 0`` is 0 for a finite
    ``x`` and NaN otherwise, and the sum of zeros never overflows."""
    total = 0.0
    for i in range(values.shape[0]):
        total += values[i] * 0
    return total == 0


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
