"""The fastest plain-NumPy training loop we can write for the benchmark grid: the baseline
that fastbp must not be slower than.

It trains what ``fastbp.reference`` trains on the grid (plain SGD, mini-batches in row
order, mean reduction, sigmoid with ``bce`` or softmax with ``cce`` on the output) and gives
its numbers up to rounding, but is written for speed rather than clarity: every buffer is
allocated once per fit, products are ``np.dot`` into those buffers (transposes are views),
activations and derivatives are in-place ufuncs, the learning rate and the batch mean are
folded into the output delta, all parameters live in one flat array updated by one
subtraction per batch, batches longer than ``CHUNK_ROWS`` run in chunks whose buffers stay
in cache, and the loss history is taken from the stored logits once an epoch. BLAS runs
with its default threads. It never imports the engine.
"""

import numpy as np

#: Hidden activations, each applied in place to pre-activations ``z``.
HIDDEN = ("relu", "tanh", "sigmoid", "identity")
#: The output activation each loss is paired with (the exact logit forms).
OUTPUT = {"bce": "sigmoid", "cce": "softmax"}
#: Rows of the longest chunk: a batch of more rows sums the gradients of its chunks. Of 256
#: to 16,384, 1,024 trained the big-batch row fastest on a 2-core AMD EPYC.
CHUNK_ROWS = 1024


def activate(name, z):
    """Activation ``name`` of ``z``, in place."""
    if name == "relu":
        np.maximum(z, 0, out=z)
    elif name == "tanh":  # 1 - 2 / (exp(2 z) + 1): exp runs twice as fast as np.tanh
        np.add(z, z, out=z)
        np.exp(z, out=z)
        z += 1
        np.divide(-2, z, out=z)
        z += 1
    elif name == "sigmoid":  # exp overflows to inf (1 / inf is 0) where z < -709
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1
        np.reciprocal(z, out=z)


def backprop_derivative(name, a, d, scratch):
    """``d *= `` the derivative of activation ``name`` at output ``a``, via ``scratch``."""
    if name == "relu":
        np.greater(a, 0, out=scratch)
    elif name == "tanh":
        np.multiply(a, a, out=scratch)
        np.subtract(1, scratch, out=scratch)
    elif name == "sigmoid":
        np.subtract(1, a, out=scratch)
        scratch *= a
    else:
        return
    d *= scratch


def product(a, b, out):
    """``a @ b`` into ``out``; an outer product (one inner column) as a broadcast multiply,
    which OpenBLAS's gemm ran up to ten times slower."""
    if a.shape[1] == 1:
        np.multiply(a, b, out=out)
    else:
        np.dot(a, b, out=out)


def output_delta(loss, z, y, d, top, sums, scale):
    """The output layer's delta times ``scale`` into ``d``, from logits ``z`` and targets
    ``y``: for ``cce`` softmax less the one-hot labels (``z`` is left less its row maxima,
    ``sums`` holds the sums of their exponentials; ``top`` is scratch), for ``bce`` the
    sigmoid less the labels, averaged over the outputs."""
    if loss == "cce":
        np.max(z, axis=1, keepdims=True, out=top)
        z -= top
        np.exp(z, out=d)
        np.sum(d, axis=1, out=sums)
        d /= sums[:, None]
        d -= y
        d *= scale
    else:
        np.negative(z, out=d)
        np.exp(d, out=d)
        d += 1
        np.reciprocal(d, out=d)
        d -= y
        d *= scale / d.shape[1]


def targets(Y, loss, n, n_out, dtype):
    """``Y`` as an ``(n, n_out)`` array of ``dtype``: integer labels of ``cce`` one-hot."""
    Y = np.asarray(Y)
    if loss == "cce" and Y.ndim == 1:
        Y = np.eye(n_out, dtype=dtype)[Y]
    return np.ascontiguousarray(Y, dtype).reshape(n, n_out)


def layer_views(flat, shapes):
    """Per-layer ``(weights, biases)`` views of one flat array, layer after layer."""
    weights, biases, start = [], [], 0
    for fan_in, fan_out in shapes:
        end = start + fan_in * fan_out
        weights.append(flat[start:end].reshape(fan_in, fan_out))
        biases.append(flat[end : end + fan_out])
        start = end + fan_out
    return weights, biases


def chunk_buffers(widths, rows, dtype):
    """``(hidden, deltas, scratch, top, ones)`` for chunks of ``rows`` rows through layers
    of ``widths`` outputs: each hidden layer's outputs, each layer's deltas, each hidden
    layer's scratch, a column for row maxima, and ones (sums over rows as products with
    them run 4x faster than ``np.sum``)."""
    return (
        [np.empty((rows, w), dtype) for w in widths[:-1]],
        [np.empty((rows, w), dtype) for w in widths],
        [np.empty((rows, w), dtype) for w in widths[:-1]],
        np.empty((rows, 1), dtype),
        np.ones(rows, dtype),
    )


def epoch_loss(loss, Z, Y, sums):
    """Mean loss over the rows of the epoch's output logits ``Z``: for ``bce`` the raw
    logits, for ``cce`` the logits less their row maximum, with ``sums`` the sums of
    their exponentials."""
    n, n_out = Z.shape
    if loss == "cce":
        return float((np.log(sums).sum() - np.vdot(Z, Y)) / n)
    # max(z, 0) - z y + log(1 + exp(-|z|)), averaged over the outputs
    softplus = np.log1p(np.exp(-np.abs(Z))).sum()
    return float((np.maximum(Z, 0).sum() - np.vdot(Z, Y) + softplus) / (n * n_out))


def fit_numpy(X, Y, weights, biases, activations, loss, *, epochs, lr, batch_size=None):
    """Train the network of ``weights`` (each ``(fan_in, fan_out)``) and ``biases`` with
    plain SGD on mini-batches of ``batch_size`` rows (None: all) in row order, as
    ``fastbp.reference.MLP.fit`` does. Returns ``(weights, biases, history)``: new arrays
    (the arguments are left as they were) and the mean loss of each epoch."""
    if loss not in OUTPUT or activations[-1] != OUTPUT[loss]:
        raise ValueError(
            f"fit_numpy trains sigmoid with bce or softmax with cce, "
            f"not {activations[-1]!r} with {loss!r}"
        )
    if any(name not in HIDDEN for name in activations[:-1]):
        raise ValueError(f"fit_numpy's hidden activations are {', '.join(HIDDEN)}")
    dtype = np.dtype(weights[0].dtype)
    shapes = [np.shape(w) for w in weights]
    last = len(shapes) - 1
    X = np.ascontiguousarray(X, dtype)
    n, n_out = X.shape[0], shapes[-1][1]
    Y = targets(Y, loss, n, n_out, dtype)
    batch = n if batch_size is None else min(batch_size, n)
    chunk = min(batch, CHUNK_ROWS)

    # The parameters, a batch's step and a chunk's part of it, each one flat array.
    size = sum(a * b + b for a, b in shapes)
    params, steps, part = (np.empty(size, dtype) for _ in range(3))
    Ws, bs = layer_views(params, shapes)
    for W, b, w0, b0 in zip(Ws, bs, weights, biases, strict=True):
        W[...] = w0
        b[...] = b0
    WTs = [W.T for W in Ws]
    into = {True: layer_views(steps, shapes), False: layer_views(part, shapes)}

    # A chunk's buffers; those of shorter chunks are their leading rows.
    full = chunk_buffers([fan_out for _, fan_out in shapes], chunk, dtype)
    cut = {chunk: full}

    def buffers(m):
        if m not in cut:
            cut[m] = tuple([x[:m] for x in b] if isinstance(b, list) else b[:m] for b in full)
        return cut[m]

    # Per epoch: the output logits (less their row maximum for cce) and softmax's sums.
    Z = np.empty((n, n_out), dtype)
    sums = np.empty(n if loss == "cce" else 0, dtype)

    def backprop(lo, hi, scale, grads):
        """Forward and backward through rows lo:hi, their steps (times ``scale``, the
        learning rate over the batch's rows) into ``grads``."""
        hs, ds, ts, top, ones = buffers(hi - lo)
        gWs, gbs = grads
        a = X[lo:hi]
        for l in range(last):
            z = hs[l]
            np.dot(a, Ws[l], out=z)
            z += bs[l]
            activate(activations[l], z)
            a = z
        z, d = Z[lo:hi], ds[-1]
        np.dot(a, Ws[-1], out=z)
        z += bs[-1]
        output_delta(loss, z, Y[lo:hi], d, top, sums[lo:hi], scale)
        for l in range(last, -1, -1):
            a = X[lo:hi] if l == 0 else hs[l - 1]
            np.dot(a.T, d, out=gWs[l])
            np.dot(ones, d, out=gbs[l])
            if l:
                product(d, WTs[l], out=ds[l - 1])
                d = ds[l - 1]
                backprop_derivative(activations[l - 1], a, d, ts[l - 1])

    history = np.empty(epochs)
    with np.errstate(over="ignore"):
        for epoch in range(epochs):
            for lo in range(0, n, batch):
                hi = min(lo + batch, n)
                for c in range(lo, hi, chunk):
                    backprop(c, min(c + chunk, hi), lr / (hi - lo), into[c == lo])
                    if c > lo:
                        steps += part
                params -= steps
            history[epoch] = epoch_loss(loss, Z, Y, sums)
    return [W.copy() for W in Ws], [b.copy() for b in bs], history
