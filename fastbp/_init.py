"""Initial weights, shared by the compiled engine and ``fastbp.reference``."""

import math

# He initialisation keeps the variance of ReLU-like layers; Glorot that of the others.
_HE = ("relu", "leaky_relu")


def limits(sizes, activations):
    """Each layer's bound of its uniform initial weights: Glorot's ``sqrt(6 / (fan_in +
    fan_out))``, He's ``sqrt(6 / fan_in)`` for ReLU-like layers."""
    return [
        math.sqrt(6.0 / sizes[i]) if name in _HE else math.sqrt(6.0 / (sizes[i] + sizes[i + 1]))
        for i, name in enumerate(activations)
    ]


def initial_weights(sizes, activations, rng):
    """Uniform Glorot (He for ReLU-like layers) weights, float64, drawn from ``rng`` in
    layer order, so one seed gives the same network in every dtype and backend.
    ``fastbp.MLP`` draws the same bits in compiled code (``fastbp._engine.pcg64``)."""
    return [
        rng.uniform(-limit, limit, size=(sizes[i], sizes[i + 1]))
        for i, limit in enumerate(limits(sizes, activations))
    ]
