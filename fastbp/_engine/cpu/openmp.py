"""numba's OpenMP threads sleep while they wait for work, unless the user says otherwise.

GNU OpenMP's threads spin for a while after each parallel region before they sleep. A fit
opens one region per batch, so its threads spin between batches; that is harmless on an
idle machine and ruinous on a busy one, where the spinning thread holds a core that the
thread with work needs: with another process busy on one of two cores, the narrow and
digits-like rows took 10-20 times as long as with passive waiting (1.7-2.2 s against
0.12-0.16 s), and with one core held by a busy loop active waiting took 1.5-2 times as
long per batch. On an idle machine the two were within the noise, passive up to 15% slower
on the smallest batches (the handover to a sleeping thread). GNU OpenMP reads the setting when
numba first starts its threads, so it is set when the engine is imported, before any fit;
a value the user set (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``) is kept.
"""

import os

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
