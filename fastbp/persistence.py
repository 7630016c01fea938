"""Saving and loading networks: ``MLP.save(path)`` and ``fastbp.load(path)``.

A model file is an ``.npz`` archive (a zip of ``.npy`` arrays) holding only numbers and
strings, so it is read with ``allow_pickle=False`` and loading never runs code. Format
version 1 has these entries:

================  =========  ===============================================================
name              dtype      content
================  =========  ===============================================================
format            str        ``"fastbp.MLP"``
format_version    int64      ``1``
layer_sizes       int64      ``(n_layers + 1,)``: ``[n_in, h1, ..., n_out]``
activations       str        ``(n_layers,)``: one activation name per weight layer
loss              str        loss name (``mse``, ``half_mse``, ``bce``, ``cce`` or
                             ``poisson``)
loss_scale        float64    per-sample scale of the loss (``fastbp._engine.layout.loss_code``
                             gives the default; the scikit-learn estimators change it)
bias              bool       whether the layers have biases
reduction         str        ``"mean"`` or ``"sum"``
dtype             str        ``"float32"`` or ``"float64"``
W0 ... W{L-1}     dtype      weights ``(fan_in, fan_out)``
b0 ... b{L-1}     dtype      biases ``(fan_out,)``, only when ``bias``
meta.NAME         any        optional numbers or strings stored by the caller
================  =========  ===============================================================

A reader refuses files without these entries, of another format, or of a newer version.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._files import replacing
from .network import MLP

FORMAT = "fastbp.MLP"
FORMAT_VERSION = 1
_META = "meta."


def save(
    net: MLP, path: str | os.PathLike, *, metadata: dict[str, ArrayLike] | None = None
) -> None:
    """Write ``net`` to ``path`` (no ``.npz`` is appended) in format version 1.

    ``metadata`` maps names to numeric or string arrays stored beside the network (a
    command-line model keeps its class labels there); ``read_metadata`` returns them. The
    file is written as ``replacing`` writes: to a temporary name first, then renamed, so an
    interrupted save never leaves a half-written model behind, with the mode of the file it
    replaces or else the one the umask gives a new file.
    """
    arrays = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "layer_sizes": np.array(net.layer_sizes, dtype=np.int64),
        "activations": np.array(net.activations),
        "loss": np.array(net.loss_name),
        "loss_scale": np.array(float(net.loss_scale)),
        "bias": np.array(net.bias),
        "reduction": np.array(net.reduction),
        "dtype": np.array(net.dtype.name),
    }
    weights, biases = net.get_params()
    for i, w in enumerate(weights):
        arrays[f"W{i}"] = w
    for i, b in enumerate(biases or []):
        arrays[f"b{i}"] = b
    for name, value in (metadata or {}).items():
        value = np.asarray(value)
        if value.dtype.kind not in "biufU":
            raise TypeError(
                f"metadata[{name!r}] must hold numbers or strings; got dtype {value.dtype}"
            )
        arrays[_META + name] = value
    with replacing(path) as file:
        np.savez(file, **arrays)


def _open(path):
    """The archive's arrays as a dict, or a ValueError saying why the file is not one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path}")
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise ValueError("it holds a single array, not an .npz archive")
        with archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, ValueError) and str(error).startswith("it holds"):
            reason = str(error)
        elif "pickle" in str(error):
            reason = "it is neither an .npz archive nor a NumPy array file"
        else:
            reason = f"it cannot be read as an .npz archive ({error})"
        raise ValueError(f"{path} is not a fastbp model file: {reason}") from None


def _field(arrays, name, path, kind):
    if name not in arrays:
        raise ValueError(f"{path} is not a fastbp model file: entry {name!r} is missing")
    value = arrays[name]
    if value.dtype.kind not in kind:
        raise ValueError(
            f"{path}: entry {name!r} has dtype {value.dtype}, which a fastbp "
            "model file never holds there"
        )
    return value


def load(path: str | os.PathLike, *, device: str = "cpu") -> MLP:
    """Read a network written by ``MLP.save`` (or ``save``) and return a ``fastbp.MLP``
    with the same architecture, activations, loss, bias, reduction, dtype and parameters,
    placed on ``device``; its optimizer state starts fresh.

    Raises FileNotFoundError for a missing file and ValueError, naming the file and the
    reason, for a file that is not a fastbp model or comes from a newer format version.
    """
    arrays = _open(path)
    if (
        "format" not in arrays
        or arrays["format"].dtype.kind != "U"
        or str(arrays["format"]) != FORMAT
    ):
        raise ValueError(f"{path} is not a fastbp model file: no 'format' entry saying {FORMAT!r}")
    version = _field(arrays, "format_version", path, "iu")
    if version.shape != () or int(version) < 1:
        raise ValueError(f"{path}: invalid format_version {version!r}")
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written in model format version {int(version)}; this "
            f"fastbp reads versions up to {FORMAT_VERSION} (upgrade fastbp)"
        )
    sizes = _field(arrays, "layer_sizes", path, "iu")
    activations = _field(arrays, "activations", path, "U")
    n_layers = sizes.shape[0] - 1
    bias = bool(_field(arrays, "bias", path, "b"))
    try:
        net = MLP(
            sizes.tolist(),
            activations.tolist(),
            str(_field(arrays, "loss", path, "U")),
            bias=bias,
            reduction=str(_field(arrays, "reduction", path, "U")),
            dtype=str(_field(arrays, "dtype", path, "U")),
            device=device,
        )
        weights = [_field(arrays, f"W{i}", path, "f") for i in range(n_layers)]
        biases = [_field(arrays, f"b{i}", path, "f") for i in range(n_layers)] if bias else None
        for i, w in enumerate(weights + (biases or [])):
            if w.dtype != net.dtype:
                raise ValueError(f"parameter {i} is {w.dtype}, the file says {net.dtype}")
        net.set_params(weights, biases)
        net.loss_scale = float(_field(arrays, "loss_scale", path, "f"))
    except (TypeError, ValueError) as error:
        if str(error).startswith((str(path), "device")):
            raise
        raise ValueError(f"{path}: invalid fastbp model: {error}") from None
    return net


def read_metadata(path: str | os.PathLike) -> dict[str, NDArray]:
    """The ``metadata`` stored with ``save``, as a dict of arrays (empty if none)."""
    arrays = _open(path)
    return {name[len(_META) :]: value for name, value in arrays.items() if name.startswith(_META)}
