"""What the graph states about a tensor, for the rules that prove an op changes nothing
(``rules/simplify/``): its element type, its dims, its axes arguments, and whether a body would read it.

Dims come from the model's declarations and ONNX shape inference at import (``graph.convert``); a dim
is an int when static, a string or ``None`` when dynamic, and the whole shape ``None`` when the rank is
unknown.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ...graph import GraphContext, is_onnx_op


#: ops whose (first) output is bool / int64 whatever their inputs
BOOL_OPS = frozenset({"Not", "And", "Or", "Xor", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
                      "IsNaN", "IsInf"})
INT64_OPS = frozenset({"Shape", "Size", "ArgMax", "ArgMin", "NonZero"})
#: ops whose first output has the element type of input 0 (Where: of input 1), by their ONNX schemas
SAME_TYPE_OPS = frozenset({
    "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Slice", "Expand", "Concat", "Gather",
    "GatherElements", "GatherND", "Tile", "Pad", "Split", "Dropout", "Neg", "Abs", "Relu", "LeakyRelu", "Sigmoid",
    "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Add",
    "Sub", "Mul", "Div", "Pow", "Mod", "Min", "Max", "Clip", "MatMul", "Softmax", "LogSoftmax", "ReduceMax",
    "ReduceMin", "ReduceSum", "ReduceMean", "ReduceProd", "CumSum", "Where"})
#: producers followed up at most
TYPE_DEPTH = 16


def elem_type(t: gs.Tensor, ctx: GraphContext | None = None, depth: int = 0) -> int | None:
    """The ONNX element type of ``t``: as declared or inferred at import (gs keeps a numpy dtype, or the ONNX
    enum for types numpy lacks); else, with ``ctx``, from its producer (a Cast's ``to``, a Constant's value,
    the bool / int64 results of comparisons and Shape, the input's type through the ops whose schema
    keeps it). If / Loop bodies have no inferred types: their tensors are typed this way."""
    dtype = t.dtype
    if dtype is not None:
        if isinstance(dtype, int):
            return dtype
        try:
            return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        except (TypeError, KeyError, ValueError):
            return None
    node = ctx.producer(t) if ctx is not None and depth < TYPE_DEPTH else None
    if node is None or not is_onnx_op(node) or not node.inputs:
        if node is not None and node.op == "Constant" and is_onnx_op(node):
            value = ctx.constant(t)
            return None if value is None else elem_type(gs.Constant("", np.asarray(value)))
        return None
    first = t is node.outputs[0]
    if node.op == "Cast" and first:
        return node.attrs.get("to")
    if node.op == "CastLike" and first and len(node.inputs) > 1:
        return elem_type(node.inputs[1], ctx, depth + 1)
    if node.op in BOOL_OPS and first:
        return onnx.TensorProto.BOOL
    if node.op in INT64_OPS and first:
        return onnx.TensorProto.INT64
    if node.op in SAME_TYPE_OPS and (first or node.op == "Split"):
        source = node.inputs[1] if node.op == "Where" and len(node.inputs) > 1 else node.inputs[0]
        return None if ctx.is_absent(source) else elem_type(source, ctx, depth + 1)
    return None


def type_name(code: int) -> str:
    """``float32``, ``int64``, ``bfloat16``, ... (numpy's names)."""
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code)).name
    except (TypeError, KeyError, ValueError):
        return onnx.TensorProto.DataType.Name(code).lower()


def dims_of(t: gs.Tensor) -> list | None:
    """``t``'s dims (ints, or strings / ``None`` for dynamic ones), or ``None`` when its rank is unknown."""
    return None if t.shape is None else list(t.shape)


def is_static(d) -> bool:
    return isinstance(d, (int, np.integer)) and d >= 0


def axes_of(ctx: GraphContext, node: gs.Node) -> tuple[bool, list[int] | None]:
    """A Squeeze's / Unsqueeze's axes (an attribute before opset 13, input 1 from it): ``(True, axes)``,
    ``(True, None)`` when it gives none, ``(False, None)`` when they are computed."""
    if "axes" in node.attrs:
        return True, [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) < 2 or ctx.is_absent(node.inputs[1]):
        return True, None
    value = ctx.constant(node.inputs[1])
    if value is None:
        return False, None
    return True, [int(a) for a in np.asarray(value).reshape(-1)]


def normalized(axes: list[int], rank: int | None) -> list[int] | None:
    """Sorted axes with negative ones counted from ``rank``; ``None`` when that needs an unknown rank."""
    if any(a < 0 for a in axes):
        if rank is None:
            return None
        axes = [a + rank if a < 0 else a for a in axes]
    return sorted(axes)


def own_nodes(ctx: GraphContext) -> set[int]:
    """The ids of the nodes of the graph under rewrite (not of its bodies)."""
    return {id(n) for n in ctx.graph.nodes}


def body_would_copy(own: set[int], x: gs.Tensor, y: gs.Tensor) -> str | None:
    """Why the readers of ``y`` may not read ``x`` instead, or ``None``: ``x`` is an initializer and a node
    of an If / Loop / Scan body reads ``y`` (a node not in ``own``, ``own_nodes(ctx)``). onnx-graphsurgeon's
    export writes every initializer a body's nodes read into that body, so the body would store a copy of
    it (the model's parameters would grow)."""
    if isinstance(x, gs.Constant) and any(id(c) not in own for c in y.outputs):
        return (f"a body reads its output: it would read the initializer '{x.name}' directly, and the export "
                f"would copy it into the body")
    return None
