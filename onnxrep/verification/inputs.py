"""Verification inputs: the model's real inputs, their shapes, and seeded random values.

Input generation (:func:`make_inputs`)
--------------------------------------
* Only *real* inputs are fed: ``graph.input`` minus names that are initializers.
* Static dims are kept.  A dynamic dim (``dim_param`` or no value at all) is
  taken from ``input_shapes[name]`` when given.  Otherwise a symbolic dim that
  the user fixed on another input (same ``dim_param``) reuses that value, and
  the remaining dynamic dims use the defaults: axis 0 -> 1 (batch), any other
  axis -> 32.
* Float inputs (float/double/float16/bfloat16/float8) are standard-normal
  samples from ``numpy.random.default_rng(seed)`` cast to the dtype
  (bfloat16/float8 via ``ml_dtypes``); integer inputs are uniform in [0, 4), or below the size of
  the table they index (``index_bounds``: a Gather of a 2-row embedding);
  bool inputs are uniform random.  Inputs are drawn in graph order, so the
  result is deterministic for a given model, shapes and seed.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence, Union

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graph.dtypes import FLOAT_TYPES, INT_TYPES
from ..graph.io import first_line
from ..graph.walk import all_nodes

ModelLike = Union[onnx.ModelProto, str, "os.PathLike[str]"]

#: Default for a dynamic axis 0 (batch) when the user gives no shape.
DEFAULT_BATCH_DIM = 1
#: Default for any other dynamic axis when the user gives no shape.
DEFAULT_OTHER_DIM = 32


class VerifyError(Exception):
    """A model could not be run (session creation or run failed). The message is always one line."""

    def __init__(self, message: str) -> None:
        super().__init__(first_line(message))


class InputShapeError(ValueError):
    """Given input shapes, samples (``--inputs``) or values (``--input-value``) do not fit the model (an
    unknown name, another rank, a static dim, a dtype): a usage error, whose one-line message lists the
    model's inputs and shapes."""


#: separators between the dims of a shape spec: ``1,3,224,224`` or ``1x3x224x224`` (as reports print it)
_DIM_SEPARATOR = re.compile(r"[,xX]")


def parse_input_shapes(specs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse CLI shape specs ``"name:1,3,224,224"`` or ``"name:1x3x224x224"`` (repeatable).

    A spec without a name (``"1,3,224,224"``, ``"1x3x224x224"``) means "the only input" and is
    returned under the key ``""``; it must then be the only spec.  The name is
    split at the *last* colon, so names containing colons (``"x:0:1,3"``) work.
    Raises ValueError with a one-line message on bad syntax.
    """
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        s = str(spec).strip()
        if ":" in s:
            name, dims_text = s.rsplit(":", 1)
            name = name.strip()
            if not name:
                raise ValueError(f"bad input shape {spec!r}: empty input name before ':'")
        else:
            name, dims_text = "", s
        dims_text = dims_text.strip()
        if not dims_text:
            raise ValueError(f"bad input shape {spec!r}: expected NAME:D1,D2,... or NAME:D1xD2x... "
                             f"(or, for a model with one input, D1,D2,...)")
        dims = []
        for part in _DIM_SEPARATOR.split(dims_text):
            part = part.strip()
            try:
                d = int(part)
            except ValueError:
                raise ValueError(
                    f"bad input shape {spec!r}: dimension {part!r} is not an integer"
                ) from None
            if d < 1:
                raise ValueError(f"bad input shape {spec!r}: dimension {d} must be >= 1")
            dims.append(d)
        if name in out:
            what = f"input {name!r}" if name else "the unnamed input"
            raise ValueError(f"bad input shapes: {what} given more than once")
        out[name] = tuple(dims)
    if "" in out and len(out) > 1:
        raise ValueError("bad input shapes: an unnamed shape is only allowed as the single shape spec")
    return out


def load_graph_only(model: ModelLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(os.fspath(model), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any load failure is user-facing
        raise VerifyError(f"cannot load model {os.fspath(model)!r}: {first_line(e)}") from e


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    return [vi for vi in graph.input if vi.name not in inits]


def _fmt_model_shape(dims: list[Any]) -> str:
    return "(" + ",".join("?" if d is None else str(d) for d in dims) + ")"


def _model_dims(inputs: list[onnx.ValueInfoProto]) -> dict[str, list[Any] | None]:
    """Declared dims per input: int (static) | str (dim_param) | None (unknown); None: no shape."""
    model_dims: dict[str, list[Any] | None] = {}
    for vi in inputs:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            model_dims[vi.name] = None
            continue
        dims: list[Any] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(int(d.dim_value))
            elif d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        model_dims[vi.name] = dims
    return model_dims


def type_name(vi: onnx.ValueInfoProto) -> str:
    """``"float"``, ``"int64"``, ``"bool"``: the input's element type as ONNX names it, in lower case."""
    et = vi.type.tensor_type.elem_type
    return TensorProto.DataType.Name(et).lower() if et in TensorProto.DataType.values() else str(et)


def describe_inputs(inputs: list[onnx.ValueInfoProto], types: bool = False) -> str:
    """``"input (N,3,224,224), sr ()"``: the real inputs with their declared shapes (``?``: unknown);
    with ``types``, each followed by its element type (``sr () int64``)."""
    dims = _model_dims(inputs)
    kinds = {vi.name: f" {type_name(vi)}" if types else "" for vi in inputs}
    return ", ".join(f"{n} {'(unknown shape)' if d is None else _fmt_model_shape(d)}{kinds[n]}"
                     for n, d in dims.items()) or "(none)"


def _resolve_shapes(
    inputs: list[onnx.ValueInfoProto], input_shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    user = user_shapes(inputs, input_shapes)
    model_dims = _model_dims(inputs)
    bindings: dict[str, int] = {}  # a dim_param the user fixed on one input keeps its size on the others
    for name, shape in user.items():
        for u, m in zip(shape, model_dims[name] or []):
            if isinstance(m, str):
                bindings.setdefault(m, u)
    resolved: dict[str, tuple[int, ...]] = {}
    for vi in inputs:
        name = vi.name
        if name in user:
            resolved[name] = user[name]
            continue
        dims = model_dims[name]
        if dims is None:
            raise ValueError(f"input {name!r} has no shape information; give its shape explicitly")
        out = []
        for axis, m in enumerate(dims):
            if isinstance(m, int):
                out.append(m)
            elif isinstance(m, str) and m in bindings:
                out.append(bindings[m])
            else:
                out.append(DEFAULT_BATCH_DIM if axis == 0 else DEFAULT_OTHER_DIM)
        resolved[name] = tuple(out)
    return resolved


def user_shapes(
    inputs: list[onnx.ValueInfoProto], input_shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """The given shapes by input name (the unnamed ``""`` one given to the only input), checked against
    the model's inputs: :class:`InputShapeError` for an unknown name, another rank, another static dim."""
    names = [vi.name for vi in inputs]
    user = {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}
    model_dims = _model_dims(inputs)
    known = f"the model's inputs: {describe_inputs(inputs)}"
    if "" in user:
        if len(names) != 1:
            raise InputShapeError(
                f"an unnamed input shape needs a model with exactly one input, "
                f"but it has {len(names)}; give NAME:SHAPE for each ({known})"
            )
        if names[0] in user:
            raise InputShapeError(f"input {names[0]!r} given both with and without a name")
        user[names[0]] = user.pop("")
    unknown = [k for k in user if k not in names]
    if unknown:
        raise InputShapeError(
            f"input shape given for unknown input(s) {', '.join(map(repr, unknown))}; {known}"
        )

    for name, shape in user.items():
        dims = model_dims[name]
        if dims is None:
            continue
        if len(shape) != len(dims):
            raise InputShapeError(
                f"input {name!r}: given shape {_fmt_model_shape(list(shape))} has rank {len(shape)} "
                f"but the model declares rank {len(dims)} {_fmt_model_shape(dims)} ({known})"
            )
        for axis, (u, m) in enumerate(zip(shape, dims)):
            if isinstance(m, int) and u != m:
                raise InputShapeError(
                    f"input {name!r}: given shape {_fmt_model_shape(list(shape))} conflicts with "
                    f"model shape {_fmt_model_shape(dims)} at axis {axis} (fixed to {m}) ({known})"
                )
    return user


def check_input_shapes(model: ModelLike, input_shapes: Mapping[str, Sequence[int]]) -> None:
    """Raise :class:`InputShapeError` when ``input_shapes`` does not fit ``model``'s real inputs (an
    unknown name, another rank, a static dim given another value); a model that cannot be loaded is
    left to the caller's own load (nothing raised here)."""
    if not input_shapes:
        return
    try:
        m = load_graph_only(model)
    except VerifyError:
        return
    try:
        _resolve_shapes(real_inputs(m.graph), input_shapes)
    except InputShapeError:
        raise
    except ValueError:  # an input without a shape: only verification needs it, and says so
        pass


def _np_dtype(elem_type: int) -> np.dtype:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"unsupported input dtype {TensorProto.DataType.Name(elem_type)} "
            f"(ml_dtypes may be required): {first_line(e)}"
        ) from e


#: integer inputs are drawn in ``[0, INT_HIGH)``, or below the size of the table they index
INT_HIGH = 4
#: ops an index passes through unchanged on its way to a Gather
_INDEX_KEEPING = {"Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Expand"}


def index_bounds(graph: onnx.GraphProto, names: Sequence[str]) -> dict[str, int]:
    """For integer inputs that index a Gather / GatherElements table of static size (directly or through
    ops that keep the values), the smallest such size: ``token_type_ids`` into a 2-row embedding must
    stay below 2. Tables are initializers or Constant nodes (read by their dims, never loaded)."""
    dims = {t.name: list(t.dims) for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in all_nodes(graph):
        for i in node.input:
            readers.setdefault(i, []).append(node)
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    dims[node.output[0]] = list(a.t.dims)
    bounds = {}
    for name in names:
        todo, seen = [name], set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            for node in readers.get(t, []):
                if node.op_type in _INDEX_KEEPING and node.input and node.input[0] == t:
                    todo.extend(node.output)
                elif node.op_type in ("Gather", "GatherElements") and len(node.input) > 1 and node.input[1] == t:
                    table = dims.get(node.input[0])
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if table and -len(table) <= axis < len(table) and table[axis] > 0:
                        bounds[name] = min(bounds.get(name, table[axis]), table[axis])
    return bounds


def make_inputs(
    model: ModelLike,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded random inputs for every real input of ``model`` (see module doc).

    ``input_shapes`` maps input name -> shape (key ``""`` = the only input, as
    produced by :func:`parse_input_shapes`).  Dynamic dims not given default
    to 1 on axis 0 and 32 elsewhere.  Raises ValueError when a given shape
    disagrees with the model's static dims/rank or names an unknown input.
    """
    m = load_graph_only(model)
    inputs = real_inputs(m.graph)
    for vi in inputs:
        if vi.type.WhichOneof("value") != "tensor_type":
            raise ValueError(f"input {vi.name!r} is not a tensor; only tensor inputs are supported")
    shapes = _resolve_shapes(inputs, input_shapes or {})
    bounds = index_bounds(m.graph, [vi.name for vi in inputs if vi.type.tensor_type.elem_type in INT_TYPES])
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in inputs:
        et = vi.type.tensor_type.elem_type
        shape = shapes[vi.name]
        if et in FLOAT_TYPES:
            dtype = _np_dtype(et)
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif et in INT_TYPES:
            high = min(INT_HIGH, bounds.get(vi.name, INT_HIGH))
            feeds[vi.name] = rng.integers(0, high, size=shape).astype(_np_dtype(et))
        elif et == TensorProto.BOOL:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            name = TensorProto.DataType.Name(et) if et in TensorProto.DataType.values() else str(et)
            raise ValueError(f"input {vi.name!r}: unsupported dtype {name} for random inputs")
    return feeds
