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
minilm-l6-int8, went from 22.9 MB to 55.2 MB), so it stays.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import GraphContext, is_onnx_op
from ..graph.io import first_line
from ..graph.evaluate import CONTROL_FLOW, RANDOM_OPS, evaluate
from ..rule import Pass

MAX_ELEMENTS = 1 << 20
NEVER = RANDOM_OPS | CONTROL_FLOW | {"Constant", "Identity", "Dropout"}
#: the run-wide balance of parameters added minus parameters freed by folds (``record.memory``)
_BALANCE = "parameters added by folds"
#: the same in bytes: a fold may not store more bytes either (a wider type for as many elements)
_BALANCE_BYTES = "bytes added by folds"


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
        freed_elements, freed_bytes = _freed(ctx, node)
        added = sum(int(np.asarray(r).size) for r in results) - freed_elements
        added_bytes = sum(int(np.asarray(r).nbytes) for r in results) - freed_bytes
        balance = ctx.record.memory.get(_BALANCE, 0)
        balance_bytes = ctx.record.memory.get(_BALANCE_BYTES, 0)
        if balance + added > 0:
            ctx.decline(node, f"would add {added:,} parameters: the constants it reads are read elsewhere too "
                              f"(folds so far freed {-balance:,} more than they added)")
            return
        if balance_bytes + added_bytes > 0:
            ctx.decline(node, f"would add {added_bytes:,} bytes: its result is stored in a wider type than the "
                              f"constants it reads (int8 weights dequantized to float32; folds so far freed "
                              f"{-balance_bytes:,} bytes more than they added)")
            return
        ctx.record.memory[_BALANCE] = balance + added
        ctx.record.memory[_BALANCE_BYTES] = balance_bytes + added_bytes
        for t, r in zip(node.outputs, results):
            ctx.substitute(t, ctx.make_constant(t.name + "_folded", r))
        ctx.replace([node], [])  # nothing reads it now; Constant nodes read only here go too


def _freed(ctx: GraphContext, node: gs.Node) -> tuple[int, int]:
    """Elements and bytes of the stored constants (initializers, Constant nodes) that only ``node`` reads:
    they go with it."""
    freed = freed_bytes = 0
    seen = set()
    for t in node.inputs:
        if ctx.is_absent(t) or id(t) in seen:
            continue
        seen.add(id(t))
        info = ctx.stored_constant_info(t)
        if info is not None and not ctx.is_graph_output(t) and all(c is node for c in t.outputs):
            n = int(np.prod(info[0]))
            freed += n
            freed_bytes += n * np.dtype(info[1]).itemsize
    return freed, freed_bytes
