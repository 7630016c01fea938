"""Checkpoints: ``MLP.fit(..., checkpoint=path)`` writes its state every few epochs and
resumes from it, so a run killed at any moment finishes with an uninterrupted run's bits.

Training in blocks of epochs gives the same bits as one call (the optimizer state and the
shuffle stream carry over), so a checkpoint needs only what a block leaves behind. A
checkpoint is an ``.npz`` archive, written whole or not at all (``fastbp._files``):

===================  ========  ============================================================
name                 dtype     content
===================  ========  ============================================================
format               str       ``"fastbp.checkpoint"``
format_version       int64     ``1``
epochs_done          int64     epochs trained; the data position is the start of the next
history              float64   ``(epochs_done,)``: each epoch's loss, as ``fit`` returns it
W0 ... / b0 ...      dtype     the parameters after ``epochs_done`` epochs
optimizer            str       the optimizer's name, ``""`` before the first step
m, v, step           ...       its state (``MLP.optimizer_state``)
shuffle_state        uint64    the shuffle stream (``MLP.shuffle_state``)
run.NAME             str       the run's identity: the network, its state at the start, a
                               digest of each data array, each setting
===================  ========  ============================================================

The identity holds everything but ``epochs``: a finished run asked for more epochs goes on
from its checkpoint, to the bits of a longer uninterrupted run. Digests read every byte of
the data once per ``fit`` (BLAKE2b, about 1 GB/s).
"""

from __future__ import annotations

import hashlib
import os
import time
import zipfile

import numpy as np

from . import _validation as check
from ._files import replacing

FORMAT = "fastbp.checkpoint"
FORMAT_VERSION = 1
_RUN = "run."
#: Bytes hashed at a time: a memory-mapped array is read in pieces, never copied whole.
_PIECE = 1 << 24


def digest(array: np.ndarray) -> str:
    """``"shape dtype blake2b"`` of an array's values, read piece by piece."""
    hasher = hashlib.blake2b(digest_size=16)
    flat = np.ascontiguousarray(array).reshape(-1)
    step = max(1, _PIECE // max(1, flat.itemsize))
    for start in range(0, flat.shape[0], step):
        hasher.update(np.ascontiguousarray(flat[start : start + step]).data)
    shape = "x".join(map(str, array.shape))
    return f"{shape} {array.dtype.name} {hasher.hexdigest()}"


def identity(net, data: dict, settings: dict) -> dict[str, str]:
    """What makes a run this run: the network, its state when ``fit`` starts, a digest of
    each data array (None for absent ones) and each setting, as strings."""
    weights, biases = net.get_params()
    state = net.optimizer_state()
    start = hashlib.blake2b(digest_size=16)
    for array in weights + (biases or []) + [state["m"], state["v"]]:
        start.update(np.ascontiguousarray(array).data)
    start.update(f"{state['optimizer']} {state['step']} {net.shuffle_state}".encode())
    entries = {
        "kind": "MLP.fit",
        "network": (
            f"{list(net.layer_sizes)} {list(net.activations)} {net.loss_name} "
            f"loss_scale={net.loss_scale!r} bias={net.bias} reduction={net.reduction} "
            f"dtype={net.dtype.name}"
        ),
        "state at the start": start.hexdigest(),
    }
    for name, array in data.items():
        entries[name] = "none" if array is None or array.size == 0 else digest(array)
    for name, value in settings.items():
        entries[name] = repr(value)
    return entries


def run(
    net, path, epochs, train, *, data, settings, every=None, seconds=None, writer=True, comm=None
):
    """Train ``net`` for ``epochs`` epochs by ``train(first, count)`` (which trains epochs
    ``first .. first + count - 1`` and returns their losses), resuming from the checkpoint
    at ``path`` if it holds this run, and writing one every ``every`` epochs or
    ``seconds`` seconds and at the end. Returns the losses of all ``epochs`` epochs.

    Over MPI (``comm``), every process reads the checkpoint and only the ``writer``
    writes it; a checkpoint refused by one process is refused by all."""

    def checked():
        checked_path = check.file_path(path, "checkpoint")
        checked_every = None if every is None else check.positive_int(every, "checkpoint_every")
        checked_seconds = (
            None if seconds is None else check.positive_float(seconds, "checkpoint_seconds")
        )
        run_identity = identity(net, data, settings)
        saved = read(checked_path, run_identity)
        if saved is not None and saved["epochs_done"] > epochs:
            raise ValueError(
                f"checkpoint {checked_path} holds {saved['epochs_done']} epochs of this run; "
                f"this fit asks for {epochs} (ask for at least {saved['epochs_done']})"
            )
        return checked_path, checked_every, checked_seconds, run_identity, saved

    if comm is None:
        path, every, seconds, run_identity, saved = checked()
    else:  # every process has read it before any writes again
        from .distributed import checked_everywhere

        path, every, seconds, run_identity, saved = checked_everywhere(comm, checked)
    if every is None and seconds is None:
        every = 1
    history = np.zeros(0)
    if saved is not None:
        _restore(net, saved)
        history = saved["history"]
    done = history.shape[0]
    blocks = [history]
    last_write = time.monotonic()
    epoch_seconds = None
    while done < epochs:
        count = epochs - done if every is None else min(every, epochs - done)
        if seconds is not None:
            left = seconds - (time.monotonic() - last_write)
            guess = 1 if epoch_seconds is None else int(left / max(epoch_seconds, 1e-9))
            count = max(1, min(count, guess))
        started = time.monotonic()
        blocks.append(train(done, count))
        epoch_seconds = (time.monotonic() - started) / count
        done += count
        due = every is not None and done % every == 0
        if seconds is not None and time.monotonic() - last_write >= seconds:
            due = True
        if writer and (due or done == epochs):
            write(path, net, np.concatenate(blocks), run_identity)
            last_write = time.monotonic()
    return np.concatenate(blocks)


def write(path, net, history: np.ndarray, run_identity: dict[str, str]) -> None:
    """Write ``net``'s training state after ``len(history)`` epochs to ``path``, atomically."""
    weights, biases = net.get_params()
    state = net.optimizer_state()
    arrays = {
        "epochs_done": np.array(history.shape[0], np.int64),
        "history": np.asarray(history, np.float64),
        "optimizer": np.array(state["optimizer"] or ""),
        "m": state["m"],
        "v": state["v"],
        "step": np.array(state["step"], np.int64),
        "shuffle_state": np.array(net.shuffle_state, np.uint64),
    }
    for i, w in enumerate(weights):
        arrays[f"W{i}"] = w
    for i, b in enumerate(biases or []):
        arrays[f"b{i}"] = b
    save_archive(path, arrays, run_identity)


def read(path, run_identity: dict[str, str]) -> dict | None:
    """The checkpoint of this run at ``path`` as a dict, None if there is no file."""
    arrays = load_archive(path, run_identity)
    if arrays is None:
        return None
    n_layers = sum(1 for name in arrays if name[0] == "W" and name[1:].isdigit())
    return {
        "epochs_done": int(arrays["epochs_done"]),
        "history": arrays["history"],
        "weights": [arrays[f"W{i}"] for i in range(n_layers)],
        "biases": [arrays[f"b{i}"] for i in range(n_layers)] if "b0" in arrays else None,
        "optimizer": {
            "optimizer": str(arrays["optimizer"]) or None,
            "m": arrays["m"],
            "v": arrays["v"],
            "step": int(arrays["step"]),
        },
        "shuffle_state": int(arrays["shuffle_state"]),
    }


def save_archive(path, arrays: dict[str, np.ndarray], run_identity: dict[str, str]) -> None:
    """Write a checkpoint of any kind: ``arrays`` beside the run's identity, atomically."""
    entries = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION, np.int64),
        **arrays,
    }
    for name, value in run_identity.items():
        entries[_RUN + name] = np.array(value)
    with replacing(path) as file:
        np.savez(file, **entries)


def load_archive(path, run_identity: dict[str, str]) -> dict[str, np.ndarray] | None:
    """The arrays of the checkpoint at ``path`` if it belongs to the run ``run_identity``
    says, None if there is no file. Anything else is a ValueError that says what differs,
    and the file is left as it is."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        if str(arrays["format"]) != FORMAT:
            raise ValueError(f"its format is {str(arrays['format'])!r}")
        version = int(arrays["format_version"])
        if version > FORMAT_VERSION:
            raise ValueError(f"it has format version {version}; upgrade fastbp to read it")
    except (KeyError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"checkpoint {path} exists but is not a fastbp checkpoint ({error}); "
            "it is left as it is: name another path or remove it"
        ) from None
    saved = {name[len(_RUN) :]: str(v) for name, v in arrays.items() if name.startswith(_RUN)}
    differences = [
        f"{name}: checkpoint {saved.get(name, 'none')}, this run {value}"
        for name, value in run_identity.items()
        if saved.get(name) != value
    ] + [f"{name}: only in the checkpoint" for name in saved if name not in run_identity]
    if differences:
        raise ValueError(
            f"checkpoint {path} belongs to another run; it is left as it is. What "
            "differs:\n  " + "\n  ".join(differences)
        )
    return arrays


def _restore(net, saved):
    """Set ``net`` to the saved state, the optimizer's after the parameters (setting the
    parameters resets it)."""
    net.set_params(saved["weights"], saved["biases"])
    net.load_optimizer_state(saved["optimizer"])
    net.shuffle_state = saved["shuffle_state"]
