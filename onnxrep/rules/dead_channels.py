"""Dead channels removed: output channels that carry a constant, and their reads downstream.

A Conv / Gemm output channel whose weights are all zero carries its bias (``algebra.channels``); a
ResRep compactor merged into its conv leaves exactly such channels. The channel is followed as a
*slot* ``(tensor, index)`` through every op that keeps channels apart: elementwise activations, BN,
per-channel Mul / Add / Sub / Div, pooling and spatial Reduce*, Identity / Dropout, a sum or product of
two tensors (the channel must be dead in both), Concat, Split and constant Slice on channels (offsets
and bounds move), Flatten or a Reshape to ``(N, C*H*W)`` (a channel becomes ``H*W`` columns), and a
depthwise conv (one filter per channel: the channel goes on, with a new constant).
Where it ends, a consumer takes its constant into its bias: a groups-1 Conv (``v == 0`` or no
padding) or a Gemm / MatMul.

The slots joined this way form a component, removed as a whole or not at all: every slot must carry
a known constant, start at a zero row (or pass a depthwise conv), and end in a consumer that can take
it. A slot that is a graph output, is read inside an If / Loop / Scan body, or meets any other op
(a custom op, a grouped conv, a Conv weight input, a padded conv with a nonzero constant) keeps its
component, and so does a tensor whose every channel is dead. The removal is one
edit: the weights of every node on the way lose the channel, tensor shapes shrink, names stay.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from ..algebra import NotRepresentable, cast_back
from ..algebra import channels as ch
from ..graph import Builder, GraphContext
from ..report import ChannelCut
from ..rule import Pass
from .channels.slots import channels, is_depthwise, pads, slice_channels, width
from .channels.values import Component, DeadChannels
from .ops.linear import constant_affine, gemm_attrs


class EliminateDeadChannels(Pass):
    """Remove output channels that carry a constant (zero weights), and their reads downstream."""
    name = "eliminate-dead-channels"
    priority = 30  # after the merges of a sweep: a merged compactor leaves the zero rows

    def run(self, ctx: GraphContext) -> None:
        graph = DeadChannels(ctx)
        if not graph.dead:
            return
        components = []
        seen: set = set()
        kept: dict = {}  # (id(source node), tensor, problem) -> (node, channels kept)
        for node, t, rows in graph.sources:
            for c in rows:
                if (id(t), c) in seen:
                    continue
                comp = graph.component(t, c)
                seen.update(comp.slots)
                if comp.problem is None:
                    components.append(comp)
                else:
                    kept.setdefault((id(node), t.name, comp.problem), (node, []))[1].append(c)
        for (_, name, problem), (node, cs) in kept.items():
            ctx.decline(node, f"{len(cs)} dead channel(s) of '{name}' kept: {problem}")
        if components:
            try:
                _remove(ctx, graph, components)
            except NotRepresentable as exc:  # e.g. a folded bias that float16 cannot hold
                ctx.decline(graph.sources[0][0], f"dead channels kept: {exc}")



# ---------------------------------------------------------------------------------- removal
def _remove(ctx: GraphContext, graph: DeadChannels, components: list[Component]) -> None:
    """Remove every component's channels in one edit."""
    removed: dict[int, set[int]] = defaultdict(set)
    for comp in components:
        for tid, c in comp.slots:
            removed[tid].add(c)
    tensors = graph.tensors
    emptied = [tensors[tid].name for tid, cs in removed.items() if channels(tensors[tid]) == len(cs)]
    if emptied:
        ctx.decline(emptied[0], f"every channel of '{emptied[0]}' is dead: left as it is (no tensor of 0 channels)")
        return
    b = Builder(ctx, "pruned")
    region, cuts = [], []
    for node in list(ctx.graph.nodes):
        if not node.outputs:
            continue
        out_cut = removed.get(id(node.outputs[0]), set())
        in_cut = removed.get(id(node.inputs[0]), set()) if node.inputs else set()
        if node.op == "Split" and (in_cut or any(id(o) in removed for o in node.outputs)):
            _rewrite_split(ctx, node, [len(removed.get(id(o), ())) for o in node.outputs], b)
            region.append(node)
            continue
        if not out_cut and not in_cut:
            continue
        new = _rewritten(ctx, graph, node, in_cut, out_cut, b)
        if new is not None:
            region.extend(new if isinstance(new, list) else [node])
            if node.op in ("Conv", "Gemm", "MatMul") and out_cut:
                n = channels(node.outputs[0])
                cuts.append(ChannelCut(node.name or node.op, n, n - len(out_cut)) if n else None)
    made = ctx.replace(region, b.nodes, at=region[0] if region else None) if region else None
    if made is None and region:
        return
    for tid, cs in removed.items():
        t = tensors[tid]
        if t.shape is not None and len(t.shape) >= 2 and isinstance(t.shape[1], int):
            t.shape = [t.shape[0], t.shape[1] - len(cs)] + list(t.shape[2:])
    ctx.record.channels.extend(c for c in cuts if c is not None)


def _rewritten(ctx: GraphContext, graph: DeadChannels, node: gs.Node, in_cut: set, out_cut: set, b: Builder):
    """Describe ``node`` without the channels (``b.op``); None when its parameters do not change."""
    op = node.op
    dtype = None
    if op == "Conv":
        w = ctx.constant(node.inputs[1])
        bias = graph.bias(node)
        dtype = w.dtype
        attrs = dict(node.attrs)
        if is_depthwise(node, w, node.inputs[0]):
            keep = sorted(set(range(len(w))) - (in_cut | out_cut))
            new_w, new_b = w[keep], None if bias is None else bias[keep]
            attrs["group"] = len(keep)
        else:
            new_w, new_b = w, bias
            if in_cut:
                values = {c: graph.dead[id(node.inputs[0])][c] for c in in_cut}
                new_w, new_b = ch.drop_conv_inputs(w, bias, values, bool(pads(ctx, node)))
            if out_cut:
                new_w, new_b = ch.drop_conv_outputs(new_w, new_b, out_cut)
        if new_b is not None and not np.any(new_b):
            new_b = None
        new_w, *rest = cast_back(dtype, new_w, *([] if new_b is None else [new_b]))
        inputs = [node.inputs[0], b.const("weight", new_w)] + ([b.const("bias", rest[0])] if rest else [])
        b.op("Conv", inputs, outputs=list(node.outputs), attrs=attrs, name=node.name)
        return True
    if op in ("Gemm", "MatMul"):
        bm = ctx.constant(node.inputs[1])
        attrs, alpha, beta, trans_b = gemm_attrs(node)
        c = ctx.constant(node.inputs[2]) if len(node.inputs) > 2 and not ctx.is_absent(node.inputs[2]) else None
        new_b, new_c = bm, c
        if in_cut:
            values = {k: graph.dead[id(node.inputs[0])][k] for k in in_cut}
            new_b, new_c = ch.drop_gemm_inputs(bm, c, alpha, beta, trans_b, values)
            beta = 1.0 if new_c is not None else beta
        if out_cut:
            new_b, new_c = ch.drop_gemm_outputs(new_b, new_c, trans_b, out_cut)
        arrays = cast_back(bm.dtype, new_b, *([] if new_c is None else [new_c]))
        if op == "MatMul" and new_c is None:
            b.op("MatMul", [node.inputs[0], b.const("weight", arrays[0])], outputs=list(node.outputs), name=node.name)
        else:
            attrs.update(alpha=alpha, beta=beta)
            inputs = [node.inputs[0], b.const("weight", arrays[0])] + ([b.const("bias", arrays[1])] if new_c is not None else [])
            b.op("Gemm", inputs, outputs=list(node.outputs), attrs=attrs, name=node.name)
        return True
    if op == "BatchNormalization":
        params = [ch.drop_channels(ctx.constant(t), out_cut) for t in node.inputs[1:5]]
        b.op(op, [node.inputs[0]] + [b.const(n, p) for n, p in zip(("scale", "B", "mean", "var"), params)],
             outputs=list(node.outputs), attrs=dict(node.attrs), name=node.name)
        return True
    if op == "Reshape" and out_cut:
        return _rewrite_width(ctx, node, len(out_cut), b)
    if op == "Slice" and in_cut:
        start, end = slice_channels(ctx, node)
        below = lambda i: sum(1 for c in in_cut if c < i)  # noqa: E731
        inputs = list(node.inputs)
        inputs[1] = b.const("starts", np.asarray([start - below(start)], np.int64))
        inputs[2] = b.const("ends", np.asarray([end - below(end)], np.int64))
        b.op("Slice", inputs, outputs=list(node.outputs), attrs=dict(node.attrs), name=node.name)
        return True
    found = constant_affine(ctx, node) if op in ("Mul", "Add", "Sub", "Div") else None
    if found is not None:
        const_i = 0 if node.inputs[1] is found[0] else 1
        value = ctx.constant(node.inputs[const_i])
        if value.size <= 1:
            return None
        inputs = list(node.inputs)
        inputs[const_i] = b.const("value", ch.drop_channels(value, out_cut))
        b.op(op, inputs, outputs=list(node.outputs), attrs=dict(node.attrs), name=node.name)
        return True
    return None


def _rewrite_split(ctx: GraphContext, node: gs.Node, lost: list[int], b: Builder) -> None:
    """The Split with explicit sizes, each output smaller by ``lost[i]`` channels."""
    sizes = np.asarray([channels(o) - k for o, k in zip(node.outputs, lost)], np.int64)
    attrs = {k: v for k, v in node.attrs.items() if k not in ("split", "num_outputs")}
    inputs = [node.inputs[0]]
    if ctx.opset >= 13:
        inputs.append(b.const("split", sizes))
    else:
        attrs["split"] = [int(v) for v in sizes]
    b.op("Split", inputs, outputs=list(node.outputs), attrs=attrs, name=node.name)


def _rewrite_width(ctx: GraphContext, node: gs.Node, removed_columns: int, b: Builder) -> list[gs.Node]:
    """Describe the Reshape (or the Concat that builds its shape) with the width reduced; the nodes
    to replace."""
    value, position, holder = width(ctx, node)
    new = np.array(value, copy=True)
    new[position] -= removed_columns
    if holder is node.inputs[1]:
        b.op("Reshape", [node.inputs[0], b.const("shape", new)], outputs=list(node.outputs), attrs=dict(node.attrs),
             name=node.name)
        return [node]
    concat = ctx.producer(node.inputs[1])
    b.op("Concat", [concat.inputs[0], b.const("width", new)], outputs=list(concat.outputs),
         attrs=dict(concat.attrs), name=concat.name)
    return [concat]
