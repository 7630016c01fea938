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
SOURCES_DIGEST = "d61ca16c9af4938f936ae3e7a2e9bd8f4cf7158b14d67f5a8db2a36e8a5a0efc"
