"""The activations, their derivatives and the logit forms of the sigmoid/binary cross-entropy
and exp/Poisson losses, written once.

Plain Python, which each backend compiles with its own decorator: the CPU kernels as
``@njit(inline="always")`` (``cpu/scalar.py``), the CUDA kernels as device functions
(``cuda/kernels.py``). A new activation is a branch in ``activation_over`` and ``derivative``
(and, if it needs new scalar math, a function for each backend to pass in).

Callers pass the constants 0, 1 and ``LEAKY_SLOPE`` typed as they compute: float64 literals
in the output layer's per-row code, the array's dtype in the per-layer loops, so float32
layers stay in float32. The arithmetic of each branch is fixed here, so every path rounds
the same way. Hot loops call these with the code as a module constant: once inlined, the
branch folds away and the loop vectorizes.
"""

from .codes import EXP, LEAKY_RELU, RELU, SIGMOID, TANH


def activation_over(sigmoid, tanh, exp):
    """``activation(code, z, zero, slope)`` built on the backend's ``sigmoid``, ``tanh``
    and ``exp``: the CPU's branch-free versions, or the device's libdevice-based ones."""

    def activation(code, z, zero, slope):
        """The activation of ``z`` (softmax is applied per row by the loss code)."""
        if code == SIGMOID:
            return sigmoid(z)
        if code == TANH:
            return tanh(z)
        if code == RELU:
            return z if z > 0 else zero * z
        if code == LEAKY_RELU:
            return z if z > 0 else slope * z
        if code == EXP:
            return exp(z)
        return z

    return activation


def derivative(code, a, one, zero, slope):
    """d activation / dz, written in terms of the activation's output ``a``: the caller
    multiplies the incoming gradient by it (``d * 1`` and ``d * 0`` are exact, so ReLU's
    gradient passes through or becomes ``0 * d``)."""
    if code == SIGMOID:
        return a * (one - a)
    if code == TANH:
        return one - a * a
    if code == RELU:
        return one if a > 0 else zero
    if code == LEAKY_RELU:
        return one if a > 0 else slope
    if code == EXP:
        return a
    return one


def sigmoid_bce_loss(z, y, softplus):
    """Binary cross-entropy of ``sigmoid(z)`` against ``y``, from the logit:
    ``log(1 + exp(z)) - z y``, given ``softplus = log(1 + exp(z))``; it never overflows."""
    return softplus - z * y


def sigmoid_bce_delta(a, y):
    """dL/dz of ``sigmoid_bce_loss`` from the output ``a = sigmoid(z)``."""
    return a - y


def exp_poisson_loss(z, y, a, y_log_y):
    """Half Poisson deviance of ``a = exp(z)`` against ``y``, from the log ``z``:
    ``y log y - y z - y + a``, given ``y_log_y`` (0 for ``y = 0``)."""
    return y_log_y - y * z - y + a


def exp_poisson_delta(a, y):
    """dL/dz of ``exp_poisson_loss`` from the output ``a = exp(z)``."""
    return a - y
