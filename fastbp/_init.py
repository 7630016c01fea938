"""Initial weights, shared by the compiled engine and ``fastbp.reference``."""

import numpy as np

# He initialisation keeps the variance of ReLU-like layers; Glorot that of the others.
_HE = ("relu", "leaky_relu")


def initial_weights(sizes, activations, rng):
    """Uniform Glorot (He for ReLU-like layers) weights, float64, drawn from ``rng`` in
    layer order, so one seed gives the same network in every dtype and backend."""
    weights = []
    for i, name in enumerate(activations):
        fan_in, fan_out = sizes[i], sizes[i + 1]
        if name in _HE:
            limit = np.sqrt(6.0 / fan_in)
        else:
            limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights.append(rng.uniform(-limit, limit, size=(fan_in, fan_out)))
    return weights
