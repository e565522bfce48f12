"""Row-major views: ops that only relabel a tensor's elements (Reshape, Flatten, Squeeze, Unsqueeze,
Identity) and what the rules that look through them need to know.

Every such op keeps the row-major order of the elements, so two views of one tensor hold the same
numbers in the same order; with equal element counts, ``Reshape(a, s) + Reshape(b, s) = Reshape(a + b, s)``
elementwise whenever ``a`` and ``b`` are laid out alike row by row. A *sample* is a row of axis 0: its
shape is the tensor's shape without axis 0, static or unknown (``None``).
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from ...graph import GraphContext, is_onnx_op

VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def is_view(node: gs.Node | None) -> bool:
    return node is not None and node.op in VIEW_OPS and is_onnx_op(node)


def sample_shape(t: gs.Tensor) -> tuple[int, ...] | None:
    """The static shape of one row of ``t`` (its shape without axis 0), or ``None``."""
    shape = t.shape
    if shape is None or len(shape) < 1 or not all(isinstance(d, int) and d >= 0 for d in shape[1:]):
        return None
    return tuple(int(d) for d in shape[1:])


def view_source(ctx: GraphContext, t: gs.Tensor, also=None) -> tuple[gs.Tensor, list[gs.Node]]:
    """The tensor ``t`` is a view of, following view ops (and nodes ``also(node)`` accepts) up; and those
    ops, the last one producing ``t``."""
    chain = []
    node = ctx.producer(t)
    while node is not None and node.inputs and (is_view(node) or (also is not None and also(node))):
        chain.append(node)
        t = node.inputs[0]
        node = ctx.producer(t)
    chain.reverse()
    return t, chain

