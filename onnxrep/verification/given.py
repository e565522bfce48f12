"""What the user gives for the inputs: samples in an ``.npz`` file and values for single inputs.

Samples (:func:`npz_samples`)
-----------------------------
One array per real graph input, named like the input, of shape ``(S, *input_shape)`` where
``input_shape`` is the whole shape fed to the model (batch included): sample ``i`` feeds ``array[i]``
(``--inputs`` for verification, ``--calibration`` for INT8). All arrays have the same ``S >= 1``, the
static dims of the model (and the given input shapes) must match, and an array must be of the
input's kind (float for a float input, integer for an integer one, bool for bool); it is cast to the
input's dtype. Calibration needs an array for every input; verification takes a file that leaves
some out (``complete=False``): those are made as usual (``--input-value``, else seeded random).

Values (:func:`parse_input_values`, :func:`value_array`)
--------------------------------------------------------
``--input-value NAME=V`` gives every element of input ``NAME`` the value ``V``: a 0-d value for a
scalar input (a sample rate, a mode), broadcast to the input's shape otherwise. ``V`` is read as the
input's dtype requires: an integer (in the dtype's range), a float, or a bool (``true`` / ``false`` /
``1`` / ``0``).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from ..graph.dtypes import FLOAT_TYPES, INT_TYPES
from ..graph.io import InputError, first_line
from .inputs import (InputShapeError, VerifyError, describe_inputs, load_graph_only, real_inputs, type_name,
                     user_shapes)


def input_kind(elem_type: int) -> str:
    """``"f"`` (float), ``"i"`` (integer), ``"b"`` (bool) or ``"?"`` (anything else)."""
    if elem_type in FLOAT_TYPES:
        return "f"
    if elem_type in INT_TYPES:
        return "i"
    return "b" if elem_type == onnx.TensorProto.BOOL else "?"


def _declared(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    """The input's declared dims (None: dynamic), or None when it declares no shape."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]


# ------------------------------------------------------------------ samples
def _load_npz(path: str, error: type[Exception]) -> dict[str, np.ndarray]:
    try:
        data = np.load(os.fspath(path), allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise error(f"{path}: not an .npz file (one array per input name expected)")
        with data:
            return {k: data[k] for k in data.files}
    except error:
        raise
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - bad zip, pickled arrays, ...
        raise error(f"{path}: cannot read the arrays ({first_line(exc)})") from None


def _check_array(path: str, vi: onnx.ValueInfoProto, arr: np.ndarray, given: tuple[int, ...] | None,
                 error: type[Exception]) -> np.ndarray:
    """``arr`` (samples of input ``vi``) checked against the model and cast to the input's dtype."""
    name, et = vi.name, vi.type.tensor_type.elem_type
    dims = _declared(vi)
    want = f"(S, {', '.join('?' if d is None else str(d) for d in dims)})" if dims is not None else "(S, ...)"
    if dims is not None and arr.ndim != len(dims) + 1:
        raise error(f"{path}: input {name!r}: array of shape {arr.shape} has rank {arr.ndim}, "
                    f"expected {want} (first axis = samples)")
    if arr.shape[0] < 1:
        raise error(f"{path}: input {name!r}: no samples (first axis is 0)")
    for axis, d in enumerate(dims or []):
        if d is not None and arr.shape[axis + 1] != d:
            raise error(f"{path}: input {name!r}: array of shape {arr.shape} does not match "
                        f"the model's {want} at axis {axis + 1}")
    if given is not None and tuple(arr.shape[1:]) != tuple(given):
        raise error(f"{path}: input {name!r}: samples of shape {tuple(arr.shape[1:])} differ "
                    f"from the given input shape {tuple(given)}")
    kind = input_kind(et)
    ok = {"f": arr.dtype.kind in "fV", "i": arr.dtype.kind in "iu", "b": arr.dtype.kind == "b"}.get(kind, False)
    if not ok:
        raise error(f"{path}: input {name!r}: array of dtype {arr.dtype} for a "
                    f"{onnx.TensorProto.DataType.Name(et)} input")
    return arr.astype(onnx.helper.tensor_dtype_to_np_dtype(et), copy=False)


def npz_samples(model: onnx.ModelProto, path: str, input_shapes: Mapping[str, Sequence[int]] | None = None, *,
                complete: bool = True, error: type[Exception] = InputError) -> list[dict[str, np.ndarray]]:
    """Samples read from ``path`` (module doc), ``{input name: array}`` each; ``complete``: every input
    needs an array. Every problem is a one-line ``error`` naming the model's inputs."""
    path = os.fspath(path)
    arrays = _load_npz(path, error)
    inputs = real_inputs(model.graph)
    names = [vi.name for vi in inputs]
    known = f"the model's inputs: {describe_inputs(inputs, types=True)}"
    missing = [n for n in names if n not in arrays]
    if complete and missing:
        raise error(f"{path}: no array for input(s) {', '.join(map(repr, missing))} ({known})")
    extra = [k for k in arrays if k not in names]
    if extra:
        raise error(f"{path}: array(s) {', '.join(map(repr, extra))} name no model input ({known})")
    if not arrays:
        raise error(f"{path}: no arrays ({known})")
    shapes = dict(input_shapes or {})
    if "" in shapes and len(names) == 1:
        shapes[names[0]] = shapes.pop("")
    checked = {vi.name: _check_array(path, vi, arrays[vi.name], shapes.get(vi.name), error)
               for vi in inputs if vi.name in arrays}
    counts = {n: a.shape[0] for n, a in checked.items()}
    if len(set(counts.values())) > 1:
        raise error(f"{path}: inputs have different sample counts: "
                    f"{', '.join(f'{n!r}: {c}' for n, c in counts.items())}")
    count = next(iter(counts.values()))
    # np.array, not np.ascontiguousarray: that makes a 0-d sample (a scalar input) 1-d
    return [{n: np.array(a[i]) for n, a in checked.items()} for i in range(count)]


# ------------------------------------------------------------------ values
def parse_input_values(specs: Sequence[str]) -> dict[str, str]:
    """``["sr=16000", "mode=2"]`` -> ``{"sr": "16000", "mode": "2"}`` (split at the last ``=``).
    ValueError with a one-line message on bad syntax or a name given twice."""
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, value = str(spec).rpartition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(f"bad input value {spec!r}: expected NAME=V (e.g. sr=16000)")
        if name in out:
            raise ValueError(f"bad input values: input {name!r} given more than once")
        out[name] = value
    return out


def _parse_text(text: str, kind: str, dtype: np.dtype) -> np.ndarray:
    if kind == "b":
        word = text.lower()
        if word not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not a bool (true, false, 1 or 0)")
        return np.asarray(word in ("true", "1"))
    if kind == "i":
        try:
            return np.asarray(int(text))
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    try:
        return np.asarray(float(text))
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def value_array(vi: onnx.ValueInfoProto, value: Any, shape: Sequence[int] | None = None) -> np.ndarray:
    """``value`` (text as given on the command line, a number, a bool or an array) as the input's dtype,
    broadcast to ``shape`` when given. ValueError (one line, without the model's inputs) when it does
    not fit: another kind, out of the dtype's range, not broadcastable."""
    et = vi.type.tensor_type.elem_type
    kind = input_kind(et)
    if kind == "?":
        raise ValueError(f"values of type {type_name(vi)} cannot be given")
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(et))
    what = f"a {type_name(vi)} input"
    if isinstance(value, str):
        arr = _parse_text(value.strip(), kind, dtype)
    else:
        arr = np.asarray(value)
        fits = {"f": "iuf", "i": "iu", "b": "b"}[kind]
        if arr.dtype.kind == "f" and kind == "i" and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        if arr.dtype.kind not in fits and not (kind == "f" and arr.dtype.kind == "V"):
            raise ValueError(f"a value of dtype {arr.dtype} for {what}")
    if kind == "i":
        info = np.iinfo(dtype)
        if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
            raise ValueError(f"{value!r} is out of {type_name(vi)}'s range ({info.min} to {info.max})")
    arr = arr.astype(dtype)
    if shape is not None:
        try:
            arr = np.broadcast_to(arr, tuple(shape))
        except ValueError:
            raise ValueError(f"a value of shape {arr.shape} does not broadcast to the input's shape "
                             f"{tuple(shape)}") from None
    return np.array(arr)


def checked_values(model: onnx.ModelProto, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``values`` (input name -> value) read as each input's dtype (:func:`value_array`, not yet
    broadcast). :class:`InputShapeError` naming the model's inputs and their types when a name is not
    an input or a value does not fit."""
    inputs = {vi.name: vi for vi in real_inputs(model.graph)}
    known = f"the model's inputs: {describe_inputs(list(inputs.values()), types=True)}"
    unknown = [n for n in values if n not in inputs]
    if unknown:
        raise InputShapeError(f"value given for unknown input(s) {', '.join(map(repr, unknown))}; {known}")
    out = {}
    for name, value in values.items():
        try:
            out[name] = value_array(inputs[name], value)
        except ValueError as exc:
            raise InputShapeError(f"input {name!r}: {exc} ({known})") from None
    return out


def check_given(model: Any, input_shapes: Mapping[str, Sequence[int]] | None, inputs: Any,
                values: Mapping[str, Any] | None) -> None:
    """:class:`InputShapeError` (messages naming the flag and the model's inputs) when the given samples
    file ``inputs`` or ``values`` do not fit ``model`` (a ModelProto or a path), each other, or the given
    shapes; a model that cannot be loaded is left to the caller's own load (nothing raised here)."""
    try:
        model = load_graph_only(model)
    except VerifyError:
        return
    real = real_inputs(model.graph)
    shapes = user_shapes(real, input_shapes or {})
    try:
        samples = npz_samples(model, inputs, shapes, complete=False, error=InputShapeError) if inputs else [{}]
    except InputShapeError as exc:
        raise InputShapeError(f"--inputs {exc}") from None
    try:
        read = checked_values(model, values or {})
    except InputShapeError as exc:
        raise InputShapeError(f"--input-value: {exc}") from None
    both = [n for n in read if n in samples[0]]
    if both:
        raise InputShapeError(f"--input-value: input(s) {', '.join(map(repr, both))} also have arrays in "
                              f"{inputs} (give each input one way)")
    for name, arr in read.items():
        if name in shapes:
            try:
                np.broadcast_to(arr, shapes[name])
            except ValueError:
                raise InputShapeError(f"--input-value: input {name!r}: a value of shape {arr.shape} does not "
                                      f"broadcast to the given shape {shapes[name]}") from None
