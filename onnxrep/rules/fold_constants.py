"""Evaluate nodes whose inputs are all constants.

Exporters run without constant folding (``do_constant_folding=False``, dynamo with
``optimize=False``, other frameworks) leave shape arithmetic on constants in the graph:
``Unsqueeze(Constant)`` as a Slice's starts, ``Expand(CastLike(0))`` as a zero conv bias. Such a
node computes the same tensor on every run, so it is replaced by that tensor (evaluated once
with ``onnx.reference``), and the linear rules then see constant weights, pads and slices.

Never folded: graph outputs, random ops, ops with subgraphs, custom domains, initializers that
are graph inputs (the caller may override them), and anything larger than ``MAX_ELEMENTS``.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.reference import ReferenceEvaluator

from ..graph import GraphContext
from ..pattern import Rule

MAX_ELEMENTS = 1 << 20
NEVER = {"Constant", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
         "Bernoulli", "If", "Loop", "Scan", "Identity", "Dropout"}


def evaluate(node: gs.Node, values: list, opset: int) -> list[np.ndarray]:
    """Run one node on constant inputs with the ONNX reference implementation."""
    inputs = [gs.Variable(f"in{i}", dtype=v.dtype, shape=v.shape) if v is not None else gs.Variable.empty()
              for i, v in enumerate(values)]
    outputs = [gs.Variable(f"out{i}") for i in range(len(node.outputs))]
    single = gs.Graph(nodes=[gs.Node(node.op, attrs=dict(node.attrs), inputs=inputs, outputs=outputs)],
                      inputs=[t for t in inputs if t.name], outputs=outputs, opset=opset)
    model = gs.export_onnx(single, do_type_check=False)
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    feeds = {t.name: v for t, v in zip(inputs, values) if v is not None}
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]


class FoldConstants(Rule):
    name = "fold-constants"
    priority = 0

    def run(self, ctx: GraphContext) -> None:
        for node in ctx.nodes():
            if node.op in NEVER or node.domain not in ("", "ai.onnx", None) or not node.inputs:
                continue
            if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
                continue
            if any(ctx.is_graph_output(t) for t in node.outputs):
                continue
            if node.op == "CastLike" and len(node.inputs) == 2:
                # only the dtype of the second input matters
                value, like = ctx.constant(node.inputs[0]), node.inputs[1]
                dtype = like.dtype if ctx.constant(like) is None else ctx.constant(like).dtype
                if value is not None and dtype is not None and value.size <= MAX_ELEMENTS:
                    try:
                        cast = np.asarray(value).astype(np.dtype(dtype))
                    except TypeError:
                        continue
                    self._replace(ctx, node, [cast])
                continue
            if node.op == "Shape" and ctx.constant(node.inputs[0]) is not None:
                # only the shape of the (possibly large) constant matters
                dims = np.asarray(ctx.constant(node.inputs[0]).shape, dtype=np.int64)
                start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
                self._replace(ctx, node, [dims[start:end]])
                continue
            values = []
            for t in node.inputs:
                v = None if ctx.is_absent(t) else ctx.constant(t)
                if v is None and not ctx.is_absent(t):
                    break
                values.append(v)
            else:
                if sum(v.size for v in values if v is not None) > MAX_ELEMENTS:
                    continue
                try:
                    results = evaluate(node, values, ctx.opset)
                except Exception as exc:  # an op the reference cannot run: leave it
                    ctx.decline(self.name, node, f"cannot evaluate: {str(exc).splitlines()[0][:120]}")
                    continue
                if sum(r.size for r in results) > MAX_ELEMENTS:
                    continue
                self._replace(ctx, node, results)

    def _replace(self, ctx: GraphContext, node: gs.Node, results: list[np.ndarray]) -> None:
        for t, r in zip(node.outputs, results):
            ctx.substitute(self.name, t, ctx.make_constant(t.name + "_folded", r))
        dead = ctx.drop_dead_constants(ctx.disconnect([node]))  # Constant nodes read only here die too
        ctx.stats[self.name].rewrites += 1
        ctx.stats[self.name].nodes_removed += 1 + dead
