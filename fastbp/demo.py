"""``python -m fastbp.demo``: train the reference examples and a larger generated problem,
each with fastbp and with plain NumPy (``fastbp.reference``), and print both times.

Everything it needs ships with fastbp: the reference example's data is written below and
the larger problem is generated from a seed.
"""

import argparse
import time

import numpy as np

from . import MLP, reference


def _timed(fit):
    start = time.perf_counter()
    history = fit()
    return history, time.perf_counter() - start


def _median_time(fit, repeats):
    return float(np.median([_timed(fit)[1] for _ in range(repeats)]))


def notebook_example(repeats):
    """The 2-2-1 ReLU/sigmoid network of the reference examples: 1000 epochs of full-batch
    gradient descent on two samples, gradients summed over the batch."""
    X = np.array([[0.5, 0.1], [0.9, 0.8]])
    Y = np.array([[1.0], [0.0]])
    rng = np.random.RandomState(42)
    weights = [rng.randn(2, 2), rng.randn(2, 1)]

    def make(cls):
        net = cls([2, 2, 1], ["relu", "sigmoid"], "bce", reduction="sum")
        return net.set_params(weights, [np.zeros(2), np.zeros(1)])

    fast, slow = make(MLP), make(reference.MLP)
    history, _ = _timed(lambda: fast.fit(X, Y, epochs=1000, lr=0.1))
    expected, _ = _timed(lambda: slow.fit(X, Y, epochs=1000, lr=0.1))
    print("Reference example: 2-2-1 relu/sigmoid, BCE, 1000 epochs, full batch of 2")
    print("  epoch  loss (mean over the batch)")
    for epoch in range(0, 1000, 100):
        print(f"  {epoch:5d}  {history[epoch] / 2:.4f}")
    agree = np.max(np.abs(history - expected) / np.abs(expected))
    t_fast = _median_time(lambda: make(MLP).fit(X, Y, epochs=1000, lr=0.1), repeats)
    t_slow = _median_time(lambda: make(reference.MLP).fit(X, Y, epochs=1000, lr=0.1), repeats)
    return ("notebook 2-2-1, 1000 epochs", t_fast, t_slow, agree)


def spirals(n_samples, n_classes, seed):
    """Interleaved noisy spirals in the plane: a small problem no linear model solves."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_samples)
    radius = rng.uniform(0.05, 1.0, n_samples)
    angle = 4.0 * radius + labels * (2 * np.pi / n_classes) + rng.normal(0, 0.4, n_samples)
    X = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    return X, labels


def generated_problem(n_samples, epochs, repeats, dtype):
    """A 2-64-64-3 tanh/softmax classifier on spirals, mini-batches of 32."""
    X, labels = spirals(n_samples, 3, seed=0)
    X_test, labels_test = spirals(10_000, 3, seed=1)
    sizes, acts = [2, 64, 64, 3], ["tanh", "tanh", "softmax"]
    settings = dict(epochs=epochs, lr=0.05, batch_size=32, shuffle=True, optimizer="momentum")

    def fit(cls):
        net = cls(sizes, acts, "cce", seed=0, dtype=dtype)
        return net, net.fit(X, labels, **settings)

    (net, history), t_fast = _timed(lambda: fit(MLP))
    (ref, expected), t_slow = _timed(lambda: fit(reference.MLP))
    accuracy = np.mean(net.predict(X_test).argmax(axis=1) == labels_test)
    print(
        f"\nGenerated problem: {sizes[0]}-{sizes[1]}-{sizes[2]}-{sizes[3]} tanh/softmax, "
        f"CCE, {n_samples} spiral points, batch 32, {epochs} epochs, momentum SGD, "
        f"{np.dtype(dtype).name}"
    )
    print(
        f"  loss: epoch 1 {history[0]:.4f} -> epoch {epochs} {history[-1]:.4f}; "
        f"test accuracy {accuracy:.3f}"
    )
    agree = np.max(np.abs(history - expected) / np.abs(expected))
    t_fast = _median_time(lambda: fit(MLP), repeats)
    return (f"spirals {n_samples} rows, {epochs} epochs", t_fast, t_slow, agree)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastbp.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--samples", type=int, default=50_000, help="spiral points (default 50000)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs on the spirals (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats for medians")
    parser.add_argument("--float32", action="store_true", help="train the spirals in float32")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    MLP([1, 1], "identity", "mse", dtype=np.float32 if args.float32 else np.float64).fit(
        np.zeros((1, 1)), np.zeros((1, 1)), epochs=1, lr=0.1
    )
    print(
        f"Engine ready in {time.perf_counter() - start:.1f} s "
        "(compiles once per dtype, then loads from numba's cache)\n"
    )
    rows = [
        notebook_example(args.repeats),
        generated_problem(
            args.samples, args.epochs, args.repeats, np.float32 if args.float32 else np.float64
        ),
    ]
    print("\n  run                                 fastbp      NumPy   speedup  max rel. diff")
    for name, t_fast, t_slow, agree in rows:
        print(
            f"  {name:34s} {t_fast * 1e3:8.1f} ms {t_slow * 1e3:8.1f} ms "
            f"{t_slow / t_fast:7.0f}x  {agree:.1e}"
        )
    print(
        "  (fastbp: median of repeats; NumPy: fastbp.reference, the same training in plain NumPy)"
    )


if __name__ == "__main__":
    main()
