"""Evaluate nodes whose inputs are all constants.

Exporters run without constant folding (``do_constant_folding=False``, dynamo with
``optimize=False``, other frameworks) leave shape arithmetic on constants in the graph:
``Unsqueeze(Constant)`` as a Slice's starts, ``Expand(CastLike(0))`` as a zero conv bias. Such a
node computes the same tensor on every run, so it is replaced by that tensor (evaluated once
with ``onnx.reference``), and the linear rules then see constant weights, pads and slices.

Never folded: graph outputs, random ops, ops with subgraphs, custom domains, initializers that
are graph inputs (the caller may override them), anything larger than ``MAX_ELEMENTS``, and
results larger than their inputs (``Expand(CastLike(0), [C])`` would turn one scalar into C
parameters: the rules read such a tensor where it is, ``GraphContext.computed``, and it goes
when nothing reads it any more).

**Never more parameters.** A fold adds its results and frees the constants only it reads; a
constant read elsewhere too stays. Over the whole run (every graph: If / Loop bodies read their
outer graph's constants) the folds may not add more than they have freed so far:
``sum(results) - sum(freed) <= 0`` after each fold, else it is declined with the elements it would
add (and tried again next sweep, when other folds may have freed more). So ``Slice(W)`` of LSTM
weights that both branches of an If read is left as it is: folding it in each branch would store
the weights twice (silero-vad: +264,022 parameters, +48%). The same holds for bytes: ``Cast(W_int8)
* scale`` is as many float32 elements as int8 ones, four times the bytes (a weight-only int8 model,
minilm-l6-int8, went from 22.9 MB to 55.2 MB), so it stays
(the budget: ``rules/ops/budget.py``, shared with ``fold-static-dims``).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import GraphContext, is_onnx_op
from ..graph.io import first_line
from ..graph.evaluate import CONTROL_FLOW, RANDOM_OPS, evaluate
from ..rule import Pass
from .ops.budget import charge

MAX_ELEMENTS = 1 << 20
NEVER = RANDOM_OPS | CONTROL_FLOW | {"Constant", "Identity", "Dropout"}


class FoldConstants(Pass):
    name = "fold-constants"
    priority = 0

    def run(self, ctx: GraphContext) -> None:
        for node in ctx.nodes():
            if node.op in NEVER or not is_onnx_op(node) or not node.inputs:
                continue
            if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
                continue
            if any(ctx.is_graph_output(t) for t in node.outputs):
                continue
            if node.op == "CastLike" and len(node.inputs) == 2:
                # only the dtype of the second input matters
                info, like = ctx.constant_info(node.inputs[0]), node.inputs[1]
                like_info = ctx.constant_info(like)
                dtype = like.dtype if like_info is None else like_info[1]
                if info is not None and dtype is not None and int(np.prod(info[0])) <= MAX_ELEMENTS:
                    try:
                        cast = np.asarray(ctx.constant(node.inputs[0])).astype(np.dtype(dtype))
                    except TypeError:
                        continue
                    self._replace(ctx, node, [cast])
                continue
            if node.op == "Shape" and ctx.constant_info(node.inputs[0]) is not None:
                # only the shape of the (possibly large) constant matters
                dims = np.asarray(ctx.constant_info(node.inputs[0])[0], dtype=np.int64)
                start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
                self._replace(ctx, node, [dims[start:end]])
                continue
            # check sizes before loading anything: weights stay unloaded unless they are folded
            infos = [None if ctx.is_absent(t) else ctx.constant_info(t) for t in node.inputs]
            if any(i is None and not ctx.is_absent(t) for i, t in zip(infos, node.inputs)):
                continue
            if sum(int(np.prod(i[0])) for i in infos if i is not None) > MAX_ELEMENTS:
                continue
            values = [None if i is None else ctx.constant(t) for i, t in zip(infos, node.inputs)]
            try:
                results = evaluate(node, values, ctx.opset)
            except Exception as exc:  # an op the reference cannot run: leave it
                ctx.decline(node, f"cannot evaluate: {first_line(exc)[:120]}")
                continue
            if sum(r.size for r in results) > min(MAX_ELEMENTS, sum(int(np.prod(i[0])) for i in infos if i is not None)):
                continue  # it would add parameters (Expand of a scalar): rules read it in place (ctx.computed)
            self._replace(ctx, node, results)

    def _replace(self, ctx: GraphContext, node: gs.Node, results: list[np.ndarray]) -> None:
        if not charge(ctx, node, results, [node]):
            return
        for t, r in zip(node.outputs, results):
            ctx.substitute(t, ctx.make_constant(t.name + "_folded", r))
        ctx.replace([node], [])  # nothing reads it now; Constant nodes read only here go too
