"""The seeded shuffle of a visiting order, shared by every backend and ``fastbp.reference``'s
stream."""

import numpy as np

from .sources import njit


@njit(cache=True, _nrt=False)
def shuffle_order(order, state):
    """Reset ``order`` to 0..n-1 and Fisher-Yates shuffle it with a splitmix64 stream
    whose state lives in ``state[0]`` (``fastbp.reference`` draws the same stream)."""
    n = order.shape[0]
    for i in range(n):
        order[i] = i
    s = state[0]
    for i in range(n - 1, 0, -1):
        s = s + np.uint64(0x9E3779B97F4A7C15)
        z = s
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        j = np.int64(z % np.uint64(i + 1))
        t = order[i]
        order[i] = order[j]
        order[j] = t
    state[0] = s


#: The engine's sources this file's cached code was compiled from (``sources.py``).
SOURCES_DIGEST = "c45615adfb71e79ecbe933b9caf67a2680c824518b02257f8fc3cc04f0a29263"
