"""Plain NumPy backpropagation: the oracle for tests and the baseline for benchmarks.

Written the way people write it by hand: whole-batch matrix products, one activation at
a time, no compiled code. It implements the same networks, losses, reductions,
optimizers, initial weights and mini-batch order as ``fastbp.MLP``, with the same
constructor and methods, so the two can be swapped in any script.
"""

import numpy as np

from . import _validation as check
from ._init import initial_weights

LEAKY_SLOPE = 0.01
_MASK64 = (1 << 64) - 1


def activate(name, z):
    """Activation ``name`` applied to pre-activations ``z`` (n, width)."""
    if name == "sigmoid":
        # exp of a non-positive number never overflows.
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, LEAKY_SLOPE * z)
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if name == "exp":
        return np.exp(z)
    return z


def derivative(name, a):
    """d activation / dz in terms of the activation's output ``a`` (not for softmax)."""
    if name == "sigmoid":
        return a * (1 - a)
    if name == "tanh":
        return 1 - a * a
    if name == "relu":
        return (a > 0).astype(a.dtype)
    if name == "leaky_relu":
        return np.where(a > 0, 1.0, LEAKY_SLOPE).astype(a.dtype)
    if name == "exp":
        return a
    return np.ones_like(a)


def loss_scale(loss, n_out):
    """Per-sample losses average the element losses over the outputs (``half_mse``
    halves that); categorical cross-entropy and the half Poisson deviance sum them."""
    scales = {"mse": 1.0 / n_out, "half_mse": 0.5 / n_out, "bce": 1.0 / n_out}
    return scales.get(loss, 1.0)


def output_loss(activation, loss, Z, Y):
    """Per-sample losses (n,) and dL/dZ (n, n_out) of the output layer, unweighted.

    Sigmoid with BCE, softmax with CCE and exp with Poisson use exact logit forms; every
    other pairing clips probabilities to [eps, 1 - eps] and chains through the activation."""
    scale = loss_scale(loss, Z.shape[1])
    eps = np.finfo(Z.dtype).eps
    A = activate(activation, Z)
    if loss in ("mse", "half_mse"):
        values = ((A - Y) ** 2).sum(axis=1)
        dA = 2 * (A - Y)
    elif loss == "poisson":  # exp output only: log(A) is Z
        values = (Y * np.log(np.where(Y > 0, Y, 1)) - Y * Z - Y + A).sum(axis=1)
        return scale * values, scale * (A - Y)
    elif loss == "bce" and activation == "sigmoid":
        values = (np.maximum(Z, 0) - Z * Y + np.log1p(np.exp(-np.abs(Z)))).sum(axis=1)
        return scale * values, scale * (A - Y)
    elif loss == "bce":
        C = np.clip(A, eps, 1 - eps)
        values = -(Y * np.log(C) + (1 - Y) * np.log(1 - C)).sum(axis=1)
        dA = (C - Y) / (C * (1 - C))
    elif activation == "softmax":
        top = Z.max(axis=1, keepdims=True)
        log_total = np.log(np.exp(Z - top).sum(axis=1, keepdims=True))
        values = (Y * (top + log_total - Z)).sum(axis=1)
        return scale * values, scale * (A * Y.sum(axis=1, keepdims=True) - Y)
    else:
        C = np.maximum(A, eps)
        values = -(Y * np.log(C)).sum(axis=1)
        dA = -Y / C
    if activation == "softmax":
        dZ = A * (dA - (dA * A).sum(axis=1, keepdims=True))
    else:
        dZ = dA * derivative(activation, A)
    return scale * values, scale * dZ


def shuffled_order(n, state):
    """``(order, new_state)``: 0..n-1 Fisher-Yates shuffled by a splitmix64 stream,
    the same permutation the compiled engine draws from the same state."""
    order = list(range(n))
    s = int(state)
    for i in range(n - 1, 0, -1):
        s = (s + 0x9E3779B97F4A7C15) & _MASK64
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        j = z % (i + 1)
        order[i], order[j] = order[j], order[i]
    return np.array(order, dtype=np.int64), s


class MLP:
    """The network of ``fastbp.MLP`` in plain NumPy; same arguments, same results."""

    def __init__(
        self,
        layer_sizes,
        activations,
        loss,
        *,
        bias=True,
        reduction="mean",
        dtype=np.float64,
        seed=None,
        device="cpu",
    ):
        self.layer_sizes = check.layer_sizes(layer_sizes)
        self.activations = check.activations(activations, len(self.layer_sizes) - 1)
        self.loss_name = check.choice(loss, "loss", check.LOSSES)
        check.poisson_output(self.loss_name, self.activations[-1])
        check.bce_outputs(self.loss_name, self.activations[-1])
        self.bias = check.flag(bias, "bias")
        self.reduction = check.choice(reduction, "reduction", check.REDUCTIONS)
        self.dtype = check.dtype(dtype)
        self.seed = check.seed(seed)
        rng = np.random.default_rng(seed)
        self.weights = [
            w.astype(self.dtype) for w in initial_weights(self.layer_sizes, self.activations, rng)
        ]
        self.biases = [np.zeros(n, self.dtype) for n in self.layer_sizes[1:]] if self.bias else None
        self._shuffle_state = int(rng.integers(0, 2**63))
        self.reset_optimizer()

    def set_params(self, weights, biases=None):
        new_w, new_b = check.parameters(weights, biases, self.layer_sizes, self.bias, self.dtype)
        self.weights = [w.copy() for w in new_w]
        if new_b is not None:
            self.biases = [b.copy() for b in new_b]
        self.reset_optimizer()
        return self

    def get_params(self):
        return (
            [w.copy() for w in self.weights],
            None if self.biases is None else [b.copy() for b in self.biases],
        )

    def reset_optimizer(self):
        self._optimizer = None
        self._state = None
        self._step = 0

    def _layers(self, X):
        """Hidden activations of every layer (input included) and the output pre-activations."""
        A = [X]
        for i, (W, name) in enumerate(zip(self.weights, self.activations, strict=True)):
            Z = A[-1] @ W
            if self.biases is not None:
                Z = Z + self.biases[i]
            if i == len(self.weights) - 1:
                return A, Z
            A.append(activate(name, Z))

    def forward(self, X):
        X = check.features(X, self.layer_sizes[0], self.dtype)
        return activate(self.activations[-1], self._layers(X)[1])

    predict = forward

    def _targets(self, X, Y, sample_weight):
        X = check.features(X, self.layer_sizes[0], self.dtype)
        Y, labels = check.targets(Y, X.shape[0], self.layer_sizes[-1], self.loss_name, self.dtype)
        if labels.shape[0]:
            Y = np.eye(self.layer_sizes[-1], dtype=self.dtype)[labels]
        weights = check.sample_weights(sample_weight, X.shape[0])
        return X, Y, (weights if weights.shape[0] else None)

    def _batch(self, X, Y, weights, l2):
        """Loss and gradients of one batch, reduced as ``reduction`` says."""
        A, Z = self._layers(X)
        values, delta = output_loss(self.activations[-1], self.loss_name, Z, Y)
        if weights is not None:
            values = values * weights
            delta = delta * weights[:, None]
        norm = (
            1.0 if self.reduction == "sum" else (X.shape[0] if weights is None else weights.sum())
        )
        loss = values.sum() / norm
        if l2 > 0:
            loss += 0.5 * l2 * sum((W.astype(np.float64) ** 2).sum() for W in self.weights) / norm
        dWs, dbs = [None] * len(self.weights), [None] * len(self.weights)
        for i in range(len(self.weights) - 1, -1, -1):
            dWs[i] = (A[i].T @ delta + l2 * self.weights[i]) / norm
            dbs[i] = delta.sum(axis=0) / norm
            if i > 0:
                delta = (delta @ self.weights[i].T) * derivative(self.activations[i - 1], A[i])
        return float(loss), dWs, (dbs if self.biases is not None else None)

    def loss(self, X, Y, *, sample_weight=None, l2=0.0):
        return self._batch(*self._targets(X, Y, sample_weight), l2)[0]

    def gradients(self, X, Y, *, sample_weight=None, l2=0.0):
        return self._batch(*self._targets(X, Y, sample_weight), l2)

    def _step_params(self, params, grads, optimizer, lr, momentum, beta1, beta2, epsilon):
        """Apply one optimizer step to ``params`` in place (scikit-learn's formulas)."""
        if optimizer == "sgd":
            for p, g in zip(params, grads, strict=True):
                p -= lr * g
            return
        if optimizer in ("momentum", "nesterov"):
            for p, g, v in zip(params, grads, self._state[0], strict=True):
                v *= momentum
                v -= lr * g
                p += momentum * v - lr * g if optimizer == "nesterov" else v
            return
        t = self._step
        lr_t = lr * np.sqrt(1 - beta2**t) / (1 - beta1**t)
        for p, g, m, v in zip(params, grads, *self._state, strict=True):
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            p -= lr_t * m / (np.sqrt(v) + epsilon)

    def fit(
        self,
        X,
        Y,
        *,
        epochs,
        lr,
        batch_size=None,
        shuffle=False,
        optimizer="sgd",
        momentum=0.9,
        beta1=0.9,
        beta2=0.999,
        epsilon=1e-8,
        l2=0.0,
        sample_weight=None,
    ):
        X, Y, weights = self._targets(X, Y, sample_weight)
        optimizer = check.choice(optimizer, "optimizer", check.OPTIMIZERS)
        n = X.shape[0]
        batch_size = n if batch_size is None else min(batch_size, n)
        params = self.weights + (self.biases or [])
        if optimizer != self._optimizer:
            self.reset_optimizer()
            self._optimizer = optimizer
            self._state = [[np.zeros_like(p) for p in params] for _ in range(2)]
        history = np.zeros(epochs)
        order = np.arange(n)
        for epoch in range(epochs):
            if shuffle:
                order, self._shuffle_state = shuffled_order(n, self._shuffle_state)
            epoch_loss = epoch_weight = 0.0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                w = None if weights is None else weights[idx]
                if w is not None and self.reduction == "mean" and w.sum() == 0:
                    continue  # a batch of zero total weight carries nothing to learn
                loss, dWs, dbs = self._batch(X[idx], Y[idx], w, l2)
                norm = 1.0 if self.reduction == "sum" else (len(idx) if w is None else w.sum())
                epoch_loss += loss * norm
                epoch_weight += norm
                self._step += 1
                self._step_params(
                    params, dWs + (dbs or []), optimizer, lr, momentum, beta1, beta2, epsilon
                )
            history[epoch] = epoch_loss if self.reduction == "sum" else epoch_loss / epoch_weight
        return history
