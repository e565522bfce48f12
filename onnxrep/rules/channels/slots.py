"""How ONNX ops move channels: which channel of an input becomes which channel of an output.

Shared by the dead-channel analysis (``channels.values``) and its removal (``dead_channels``). Every
function answers from constants and the shapes shape inference gives, and ``None`` (or False) when
it cannot tell: the caller then keeps the channel.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...algebra import NotRepresentable
from ...graph import GraphContext
from ..ops.linear import conv_form

ACTIVATIONS = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Softplus", "Clip",
               "Identity", "Dropout"}
POOLS = {"MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool"}
#: reductions over spatial axes only (the dynamo exporter's global average pool is a ReduceMean)
REDUCES = {"ReduceMean", "ReduceMax", "ReduceMin"}
BINARY = {"Add", "Sub", "Mul"}



def channels(t: gs.Tensor) -> int | None:
    shape = t.shape
    return shape[1] if shape is not None and len(shape) >= 2 and isinstance(shape[1], int) else None


def same_shape(a: gs.Tensor, b: gs.Tensor) -> bool:
    return (a.shape is not None and b.shape is not None and len(a.shape) == len(b.shape) and len(a.shape) >= 2
            and channels(a) is not None and channels(a) == channels(b))


def is_depthwise(node: gs.Node, w: np.ndarray, x: gs.Tensor) -> bool:
    g = int(node.attrs.get("group", 1))
    return g > 1 and w.shape[0] == g and w.shape[1] == 1 and channels(x) in (g, None)


def pads(ctx: GraphContext, node: gs.Node) -> bool:
    try:
        return any(conv_form(ctx, node).pads)
    except NotRepresentable:
        return True


def spatial_reduce(ctx: GraphContext, node: gs.Node) -> bool:
    """A Reduce* over spatial axes only (not the batch, not the channels)."""
    x = node.inputs[0]
    if x.shape is None or len(x.shape) < 3:
        return False
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and not ctx.is_absent(node.inputs[1]):
        axes = ctx.constant(node.inputs[1])
        if axes is None:
            return False
    if axes is None or len(np.atleast_1d(axes)) == 0:
        return False  # all axes (or noop_with_empty_axes): not per channel
    rank = len(x.shape)
    axes = {int(a) % rank for a in np.atleast_1d(axes)}
    keep = int(node.attrs.get("keepdims", 1))
    return not axes & {0, 1} and (keep or max(axes) == rank - 1 and len(axes) == rank - 2)


def clip_bounds(ctx: GraphContext, node: gs.Node) -> tuple[float, float]:
    lo, hi = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
    for i, default in ((1, lo), (2, hi)):
        if len(node.inputs) > i and not ctx.is_absent(node.inputs[i]):
            v = ctx.constant(node.inputs[i])
            if v is None:
                raise NotRepresentable("Clip bounds are not constants", code="not-constant")
            if i == 1:
                lo = float(v)
            else:
                hi = float(v)
    return float(lo), float(hi)


def split_offsets(node: gs.Node) -> list[int] | None:
    """First channel of each output of a Split on the channels (sizes from the outputs' shapes)."""
    x = node.inputs[0]
    rank = len(x.shape) if x.shape is not None else None
    if rank is None or int(node.attrs.get("axis", 0)) % rank != 1:
        return None
    sizes = [channels(o) for o in node.outputs]
    if any(n is None for n in sizes) or sum(sizes) != channels(x):
        return None
    return [int(v) for v in np.cumsum([0] + sizes[:-1])]


def slice_channels(ctx: GraphContext, node: gs.Node) -> tuple[int, int] | None:
    """``(start, end)`` of a Slice of the channels only (constant bounds, step 1), clipped to the input."""
    x = node.inputs[0]
    n = channels(x)
    if n is None or len(node.inputs) < 4 or ctx.opset < 10:
        return None
    starts, ends, axes = (ctx.constant(t) for t in node.inputs[1:4])
    steps = ctx.constant(node.inputs[4]) if len(node.inputs) > 4 and not ctx.is_absent(node.inputs[4]) else None
    if any(v is None or v.shape != (1,) for v in (starts, ends, axes)) or (steps is not None and int(steps[0]) != 1):
        return None
    if int(axes[0]) % len(x.shape) != 1:
        return None
    start, end = int(starts[0]), int(ends[0])
    start, end = (start + n if start < 0 else start), (end + n if end < 0 else end)
    start, end = min(max(start, 0), n), min(max(end, 0), n)
    return (start, end) if start < end else None


def concat_offsets(node: gs.Node) -> list[int] | None:
    rank = len(node.outputs[0].shape) if node.outputs[0].shape is not None else None
    axis = int(node.attrs.get("axis", 0))
    if rank is None or axis % rank != 1:
        return None
    sizes = [channels(t) for t in node.inputs]
    if any(s is None for s in sizes):
        return None
    return [int(v) for v in np.cumsum([0] + sizes[:-1])]


def flatten_block(ctx: GraphContext, node: gs.Node, x: gs.Tensor) -> int | None:
    """Columns per channel when ``node`` flattens an ``(N, C, ...)`` tensor of known size to
    ``(N, C * rest)``: a ``Flatten(axis=1)``, or a Reshape whose output shape inference gives as
    ``(N, C * rest)`` and whose ``C * rest`` is a constant onnxrep can rewrite (:func:`_width`)."""
    if x.shape is None or len(x.shape) < 2 or not all(isinstance(d, int) for d in x.shape[1:]):
        return None
    rest = int(np.prod(x.shape[2:])) if len(x.shape) > 2 else 1
    if node.op == "Flatten":
        return rest if int(node.attrs.get("axis", 1)) == 1 else None
    out = node.outputs[0].shape
    if out is None or len(out) != 2 or out[1] != x.shape[1] * rest or out[0] != x.shape[0]:
        return None
    return rest if width(ctx, node) is not None else None


def width(ctx: GraphContext, node: gs.Node):
    """Where a Reshape's target width is written: ``(array, position, holder)`` with ``holder`` the
    shape tensor itself (a constant ``[n, w]``) or the last input of the Concat that builds it
    (``[batch] ++ [w]``, as the dynamo exporter writes a view); None otherwise (or for ``-1``)."""
    shape_t = node.inputs[1] if len(node.inputs) > 1 else None
    if shape_t is None:
        return None
    value = ctx.constant(shape_t)
    if value is not None:
        return (value, 1, shape_t) if value.ndim == 1 and len(value) == 2 and int(value[1]) > 0 else None
    concat = ctx.producer(shape_t)
    if concat is None or concat.op != "Concat" or len(concat.inputs) != 2 or len(ctx.consumers(shape_t)) != 1:
        return None
    last = ctx.constant(concat.inputs[1])
    if last is None or last.shape != (1,) or int(last[0]) <= 0:
        return None
    return last, 0, concat.inputs[1]
