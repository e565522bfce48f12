"""A Reshape of a view (Reshape, Flatten, Squeeze, Unsqueeze, Identity) is one Reshape of the view's input.

Views keep the row-major order of the elements, so ``Reshape(view(x), s) = Reshape(x, s)`` whenever the
target shape ``s`` does not copy a dim of its input (no ``0`` entry, or ``allowzero = 1``): ``-1`` is
inferred from the element count, which the view does not change. Exporters leave such chains where a
model reshapes twice (RepMLP's ``reshape(-1, S, h, w)`` then ``reshape(-1, hp, wp, S, h, w)``, and the
chains ``fold-conv-into-fc`` and ``move-bn-before-reshape`` leave behind).
"""
from __future__ import annotations

import numpy as np

from ..graph import Builder, GraphContext
from ..rule import Pass
from .ops.views import is_view


class MergeReshapes(Pass):
    name = "merge-reshapes"
    priority = 14  # after the rules that leave Reshape chains in a sweep

    def run(self, ctx: GraphContext) -> None:
        for node in ctx.nodes("Reshape"):
            if len(node.inputs) < 2:
                continue
            view = ctx.producer(node.inputs[0])
            if not is_view(view) or not view.inputs or not ctx.is_private(node.inputs[0]):
                continue
            shape = ctx.constant(node.inputs[1])
            if shape is None:
                continue  # a computed shape may hold a 0 (copy the input's dim)
            if np.any(np.asarray(shape) == 0) and not node.attrs.get("allowzero", 0):
                ctx.decline(node, "its target shape copies a dim (0) of the view it reads")
                continue
            b = Builder(ctx, node.name or "reshape")
            b.op("Reshape", [view.inputs[0], node.inputs[1]], outputs=[node.outputs[0]], attrs=dict(node.attrs))
            ctx.replace([view, node], b.nodes, at=node)
