"""ResRep pruning (opt-in, not exact): compactor rows with a small L2 norm set to zero.

A ResRep compactor is a bias-free 1x1 conv (groups 1, stride 1, no padding) right after a conv, or
after a conv and its BatchNormalization. Training drives some of its rows ``Q[o]`` towards zero;
deployment drops the rows with ``||Q[o]||_2 <= threshold`` (at least one row of each compactor
stays: the largest). This pass writes those rows as exact zeros; the region collapse then merges
the compactor into its conv (``W' = Q W``, ``b' = Q b``: the zero rows become zero output channels)
and ``eliminate-dead-channels`` removes them and the reads downstream.

The model changes: verification then measures the error against the unpruned input, and the
report says so (``onnxrep optimize --prune-threshold T [--prune-tolerance R]``).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Builder, GraphContext
from ..report import ChannelCut
from ..rule import Pass
from .ops.linear import conv_form


def compactor_rows(weight: np.ndarray, threshold: float) -> list[int]:
    """Rows (output channels) of a 1x1 weight with L2 norm <= ``threshold``; never every row (the
    largest stays)."""
    norms = np.sqrt((np.asarray(weight, dtype=np.float64).reshape(len(weight), -1) ** 2).sum(axis=1))
    rows = [int(o) for o in np.flatnonzero(norms <= threshold)]
    if len(rows) == len(norms):
        rows.remove(int(np.argmax(norms)))
    return rows


class PruneCompactorRows(Pass):
    """Zero the rows of ResRep compactors whose L2 norm is at most the threshold (not exact)."""
    name = "prune-compactor-rows"
    priority = 2  # before the collapse merges the compactor into its conv

    def __init__(self, threshold: float):
        self.threshold = float(threshold)

    def run(self, ctx: GraphContext) -> None:
        done = ctx.memory.setdefault("pruned", set())
        for node in ctx.nodes("Conv"):
            if id(node) in done or not self._is_compactor(ctx, node):
                continue
            w = ctx.constant(node.inputs[1])
            rows = [o for o in compactor_rows(w, self.threshold) if np.any(w[o] != 0)]
            if not rows:
                continue
            pruned = np.array(w, copy=True)
            pruned[rows] = 0
            b = Builder(ctx, node.name or "compactor")
            b.op("Conv", [node.inputs[0], b.const("weight", pruned)], outputs=list(node.outputs),
                 attrs=dict(node.attrs), name=node.name)
            made = ctx.replace([node], b.nodes)
            if made:
                done.update(id(n) for n in made)
                ctx.record.channels.append(ChannelCut(node.name or "Conv", len(w), len(w) - len(rows)))

    @staticmethod
    def _is_compactor(ctx: GraphContext, node: gs.Node) -> bool:
        try:
            f = conv_form(ctx, node)
        except Exception:  # noqa: BLE001 - not a constant conv: not a compactor
            return False
        if f.groups != 1 or any(k != 1 for k in f.kernel_shape) or any(f.pads) or any(s != 1 for s in f.strides):
            return False
        if np.any(f.bias):
            return False
        producer = ctx.producer(node.inputs[0])
        if producer is not None and producer.op == "BatchNormalization":
            producer = ctx.producer(producer.inputs[0])
        return producer is not None and producer.op == "Conv"
