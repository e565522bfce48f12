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
from ..graph import Builder, GraphContext, is_onnx_op
from ..graph.convert import subgraphs
from ..report import ChannelCut
from ..rule import Pass
from .linear_ops import avgpool_params, bn_form, constant_affine, conv_form, gemm_attrs

ACTIVATIONS = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Softplus", "Clip",
               "Identity", "Dropout"}
POOLS = {"MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool"}
#: reductions over spatial axes only (the dynamo exporter's global average pool is a ReduceMean)
REDUCES = {"ReduceMean", "ReduceMax", "ReduceMin"}
BINARY = {"Add", "Sub", "Mul"}


class EliminateDeadChannels(Pass):
    """Remove output channels that carry a constant (zero weights), and their reads downstream."""
    name = "eliminate-dead-channels"
    priority = 30  # after the merges of a sweep: a merged compactor leaves the zero rows

    def run(self, ctx: GraphContext) -> None:
        graph = _Graph(ctx)
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


# ---------------------------------------------------------------------------------- analysis
class _Component:
    def __init__(self):
        self.slots: set = set()
        self.problem: str | None = None
        self.node: gs.Node | None = None


class _Graph:
    """Dead values of every slot (one pass in graph order) and the components they form."""

    def __init__(self, ctx: GraphContext):
        self.ctx = ctx
        self.tensors: dict[int, gs.Tensor] = {}
        self.dead: dict[int, dict[int, float]] = {}
        self.sources: list[tuple[gs.Node, gs.Tensor, list[int]]] = []
        self.inner_reads = {t.name for body in subgraphs(ctx.graph) for n in body.nodes for t in n.inputs}
        for node in ctx.nodes():
            try:
                self._visit(node)
            except NotRepresentable:
                continue

    # ----------------------------------------------------------- dead values, forward
    def _set(self, t: gs.Tensor, values: dict[int, float]) -> None:
        if values:
            self.tensors[id(t)] = t
            self.dead[id(t)] = values

    def _visit(self, node: gs.Node) -> None:
        if not is_onnx_op(node) or not node.outputs:
            return
        op, out = node.op, node.outputs[0]
        x = node.inputs[0] if node.inputs else None
        d = self.dead.get(id(x), {}) if x is not None else {}
        if op == "Conv":
            w = self.ctx.constant(node.inputs[1]) if len(node.inputs) > 1 else None
            if w is None:
                return
            b = self._bias(node)
            rows = ch.row_constants(w, b)
            if rows:
                self.sources.append((node, out, sorted(rows)))
            if d and _is_depthwise(node, w, x):
                rows = {**ch.depthwise_constants(w, b, {c: v for c, v in d.items() if c not in rows},
                                                 _pads(self.ctx, node)), **rows}
            self._set(out, rows)
        elif op in ("Gemm", "MatMul"):
            bm = self.ctx.constant(node.inputs[1]) if len(node.inputs) > 1 else None
            if bm is None or bm.ndim != 2 or x.shape is None or len(x.shape) != 2:
                return
            _, alpha, beta, trans_b = gemm_attrs(node)
            c = self.ctx.constant(node.inputs[2]) if len(node.inputs) > 2 and not self.ctx.is_absent(node.inputs[2]) else None
            cols = ch.gemm_column_constants(bm, c, beta, trans_b)
            if cols:
                self.sources.append((node, out, sorted(cols)))
                self._set(out, cols)
        elif not d:
            return
        elif op in ACTIVATIONS:
            bounds = _clip_bounds(self.ctx, node) if op == "Clip" else None
            vals = {c: ch.activation(op, node.attrs, v, bounds) for c, v in d.items()}
            self._set(out, {c: v for c, v in vals.items() if v is not None})
        elif op == "BatchNormalization":
            aff = bn_form(self.ctx, node)
            s, t = aff.vectors(aff.channels)
            self._set(out, {c: float(s[c] * v + t[c]) for c, v in d.items()})
        elif op in POOLS:
            exact_any = op != "AveragePool" or not (any(avgpool_params(node)[2]) and avgpool_params(node)[3])
            self._set(out, {c: v for c, v in d.items() if exact_any or v == 0})
        elif op in REDUCES and _spatial_reduce(self.ctx, node):
            self._set(out, dict(d))  # the mean / max / min of a constant map is the constant
        elif op == "Concat":
            self._set(out, self._concat_values(node))
        elif op == "Split":
            offsets = _split_offsets(node)
            for o, off, n in zip(node.outputs, offsets or (), [_channels(o) for o in node.outputs]):
                self._set(o, {c - off: v for c, v in d.items() if off <= c < off + n})
        elif op == "Slice":
            span = _slice_channels(self.ctx, node)
            if span is not None:
                self._set(out, {c - span[0]: v for c, v in d.items() if span[0] <= c < span[1]})
        elif op in ("Flatten", "Reshape"):
            hw = _flatten_block(self.ctx, node, x)
            if hw:
                self._set(out, {c * hw + k: v for c, v in d.items() for k in range(hw)})
        else:
            self._affine_or_binary(node, out)

    def _affine_or_binary(self, node: gs.Node, out: gs.Tensor) -> None:
        found = constant_affine(self.ctx, node)
        if found is not None:
            x, aff = found
            n = _channels(x) or aff.channels
            if n is None or id(x) not in self.dead:
                return
            s, t = aff.vectors(n)
            self._set(out, {c: float(s[c] * v + t[c]) for c, v in self.dead[id(x)].items()})
            return
        if node.op in BINARY and len(node.inputs) == 2 and _same_shape(*node.inputs):
            a, b = (self.dead.get(id(t), {}) for t in node.inputs)
            f = {"Add": lambda p, q: p + q, "Sub": lambda p, q: p - q, "Mul": lambda p, q: p * q}[node.op]
            self._set(out, {c: f(a[c], b[c]) for c in a.keys() & b.keys()})

    def _concat_values(self, node: gs.Node) -> dict[int, float]:
        offsets = _concat_offsets(node)
        if offsets is None:
            return {}
        return {off + c: v for t, off in zip(node.inputs, offsets) for c, v in self.dead.get(id(t), {}).items()}

    def _bias(self, node: gs.Node) -> np.ndarray | None:
        if len(node.inputs) > 2 and not self.ctx.is_absent(node.inputs[2]):
            b = self.ctx.constant(node.inputs[2])
            if b is None:
                raise NotRepresentable("bias is not a constant", code="not-constant")
            return b
        return None

    # ----------------------------------------------------------- components
    def component(self, t0: gs.Tensor, c0: int) -> _Component:
        comp = _Component()
        stack = [(t0, c0)]
        while stack:
            t, c = stack.pop()
            if (id(t), c) in comp.slots:
                continue
            comp.slots.add((id(t), c))
            self.tensors[id(t)] = t
            try:
                problem = self._links(t, c, stack, comp)
            except NotRepresentable as exc:  # an op read on the way is not what it seemed
                problem = str(exc)
            if problem is not None and comp.problem is None:
                comp.problem = problem
        return comp

    def _links(self, t: gs.Tensor, c: int, stack: list, comp: _Component) -> str | None:
        """Push the slots joined to ``(t, c)``; the reason it cannot go, or None."""
        if c not in self.dead.get(id(t), {}):
            return f"'{t.name}' channel {c} is not a known constant"
        if self.ctx.is_graph_output(t) or t.name in self.inner_reads:
            return f"'{t.name}' is a graph output or read inside a subgraph"
        producer = self.ctx.producer(t)
        if producer is None:
            return f"'{t.name}' is not computed by a node"
        problem = self._up(producer, t, c, stack)
        if problem is not None:
            comp.node = producer
            return problem
        for reader in self.ctx.consumers(t):
            problem = self._down(reader, t, c, stack)
            if problem is not None:
                comp.node = reader
                return problem
        return None

    def _up(self, node: gs.Node, t: gs.Tensor, c: int, stack: list) -> str | None:
        op, x = node.op, node.inputs[0]
        if op == "Conv":
            w = self.ctx.constant(node.inputs[1])
            if w is not None and _is_depthwise(node, w, x):
                stack.append((x, c))  # one filter per channel: the input channel goes with it
                return None
            if w is not None and int(node.attrs.get("group", 1)) != 1:
                return f"'{node.name}' is a grouped conv (its groups would lose channels unevenly)"
            if w is not None and c in ch.row_constants(w, None):
                return None  # a source row
            return f"'{node.name}' channel {c} is not a zero row"
        if op in ("Gemm", "MatMul"):
            return None if c in self.dead.get(id(t), {}) else f"'{node.name}' column {c} is not zero"
        if op in ACTIVATIONS | POOLS | {"BatchNormalization"} or (op in REDUCES and _spatial_reduce(self.ctx, node)):
            stack.append((x, c))
            return None
        if op == "Concat":
            offsets = _concat_offsets(node)
            for inp, off, n in zip(node.inputs, offsets, [_channels(i) for i in node.inputs]):
                if off <= c < off + n:
                    stack.append((inp, c - off))
            return None
        if op in ("Flatten", "Reshape"):
            hw = _flatten_block(self.ctx, node, x)
            if not hw:
                return f"{op} '{node.name}' does not flatten channels first"
            stack.append((x, c // hw))
            return None
        if op == "Split":
            offsets = _split_offsets(node)
            if offsets is None:
                return f"Split '{node.name}' is not on the channels, or its sizes are unknown"
            stack.append((x, offsets[[o is t for o in node.outputs].index(True)] + c))
            return None
        if op == "Slice":
            span = _slice_channels(self.ctx, node)
            if span is None:
                return f"Slice '{node.name}' is not a constant slice of the channels"
            stack.append((x, span[0] + c))
            return None
        found = constant_affine(self.ctx, node)
        if found is not None:
            stack.append((found[0], c))
            return None
        if op in BINARY:
            stack.extend((i, c) for i in node.inputs)
            return None
        return f"'{t.name}' is computed by {op} '{node.name}', which onnxrep does not follow channels through"

    def _down(self, node: gs.Node, t: gs.Tensor, c: int, stack: list) -> str | None:
        op, out = node.op, node.outputs[0] if node.outputs else None
        if not is_onnx_op(node) or out is None:
            return f"'{t.name}' is read by {node.op} '{node.name}'"
        data = node.inputs[0] is t and sum(i is t for i in node.inputs) == 1
        v = self.dead[id(t)][c]
        if op == "Conv" and data:
            w = self.ctx.constant(node.inputs[1])
            if w is None:
                return f"'{node.name}' has no constant weight"
            if _is_depthwise(node, w, t):
                stack.append((out, c))
                return None
            if int(node.attrs.get("group", 1)) != 1:
                return f"'{node.name}' is a grouped conv"
            if v != 0 and _pads(self.ctx, node):
                return f"'{node.name}' pads its input and the channel's constant is {v:g}, not 0"
            return None  # a sink
        if op in ("Gemm", "MatMul") and data:
            bm = self.ctx.constant(node.inputs[1])
            if bm is None or bm.ndim != 2 or t.shape is None or len(t.shape) != 2:
                return f"'{node.name}' is not a Gemm with a constant 2-D weight on a 2-D input"
            if op == "Gemm" and node.attrs.get("transA", 0):
                return f"'{node.name}' transposes its input"
            return None
        if data and (op in ACTIVATIONS | POOLS | {"BatchNormalization", "Flatten", "Reshape"}
                     or op in REDUCES and _spatial_reduce(self.ctx, node)):
            if op in ("Flatten", "Reshape"):
                hw = _flatten_block(self.ctx, node, t)
                if not hw:
                    return f"Flatten '{node.name}' does not flatten channels first"
                stack.extend((out, c * hw + k) for k in range(hw))
            else:
                stack.append((out, c))
            return None
        if op == "Concat":
            offsets = _concat_offsets(node)
            if offsets is None:
                return f"Concat '{node.name}' is not on the channels, or its input sizes are unknown"
            stack.extend((out, off + c) for i, off in zip(node.inputs, offsets) if i is t)
            return None
        if op == "Split" and data:
            offsets = _split_offsets(node)
            if offsets is None:
                return f"Split '{node.name}' is not on the channels, or its sizes are unknown"
            i = max(k for k, off in enumerate(offsets) if off <= c)
            stack.append((node.outputs[i], c - offsets[i]))
            return None
        if op == "Slice" and data:
            span = _slice_channels(self.ctx, node)
            if span is None:
                return f"Slice '{node.name}' is not a constant slice of the channels"
            if span[0] <= c < span[1]:
                stack.append((out, c - span[0]))
            return None  # a channel the slice does not take: only its bounds move
        found = constant_affine(self.ctx, node)
        if found is not None and found[0] is t:
            stack.append((out, c))
            return None
        if op in BINARY and len(node.inputs) == 2 and _same_shape(*node.inputs):
            stack.append((out, c))
            stack.extend((i, c) for i in node.inputs if i is not t)
            return None
        return f"'{t.name}' is read by {op} '{node.name}', which onnxrep does not follow channels through"


# ---------------------------------------------------------------------------------- removal
def _remove(ctx: GraphContext, graph: _Graph, components: list[_Component]) -> None:
    """Remove every component's channels in one edit."""
    removed: dict[int, set[int]] = defaultdict(set)
    for comp in components:
        for tid, c in comp.slots:
            removed[tid].add(c)
    tensors = graph.tensors
    emptied = [tensors[tid].name for tid, cs in removed.items() if _channels(tensors[tid]) == len(cs)]
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
                n = _channels(node.outputs[0])
                cuts.append(ChannelCut(node.name or node.op, n, n - len(out_cut)) if n else None)
    made = ctx.replace(region, b.nodes, at=region[0] if region else None) if region else None
    if made is None and region:
        return
    for tid, cs in removed.items():
        t = tensors[tid]
        if t.shape is not None and len(t.shape) >= 2 and isinstance(t.shape[1], int):
            t.shape = [t.shape[0], t.shape[1] - len(cs)] + list(t.shape[2:])
    ctx.record.channels.extend(c for c in cuts if c is not None)


def _rewritten(ctx: GraphContext, graph: _Graph, node: gs.Node, in_cut: set, out_cut: set, b: Builder):
    """Describe ``node`` without the channels (``b.op``); None when its parameters do not change."""
    op = node.op
    dtype = None
    if op == "Conv":
        w = ctx.constant(node.inputs[1])
        bias = graph._bias(node)
        dtype = w.dtype
        attrs = dict(node.attrs)
        if _is_depthwise(node, w, node.inputs[0]):
            keep = sorted(set(range(len(w))) - (in_cut | out_cut))
            new_w, new_b = w[keep], None if bias is None else bias[keep]
            attrs["group"] = len(keep)
        else:
            new_w, new_b = w, bias
            if in_cut:
                values = {c: graph.dead[id(node.inputs[0])][c] for c in in_cut}
                new_w, new_b = ch.drop_conv_inputs(w, bias, values, bool(_pads(ctx, node)))
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
        start, end = _slice_channels(ctx, node)
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


# ---------------------------------------------------------------------------------- helpers
def _channels(t: gs.Tensor) -> int | None:
    shape = t.shape
    return shape[1] if shape is not None and len(shape) >= 2 and isinstance(shape[1], int) else None


def _same_shape(a: gs.Tensor, b: gs.Tensor) -> bool:
    return (a.shape is not None and b.shape is not None and len(a.shape) == len(b.shape) and len(a.shape) >= 2
            and _channels(a) is not None and _channels(a) == _channels(b))


def _is_depthwise(node: gs.Node, w: np.ndarray, x: gs.Tensor) -> bool:
    g = int(node.attrs.get("group", 1))
    return g > 1 and w.shape[0] == g and w.shape[1] == 1 and _channels(x) in (g, None)


def _pads(ctx: GraphContext, node: gs.Node) -> bool:
    try:
        return any(conv_form(ctx, node).pads)
    except NotRepresentable:
        return True


def _spatial_reduce(ctx: GraphContext, node: gs.Node) -> bool:
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


def _clip_bounds(ctx: GraphContext, node: gs.Node) -> tuple[float, float]:
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


def _split_offsets(node: gs.Node) -> list[int] | None:
    """First channel of each output of a Split on the channels (sizes from the outputs' shapes)."""
    x = node.inputs[0]
    rank = len(x.shape) if x.shape is not None else None
    if rank is None or int(node.attrs.get("axis", 0)) % rank != 1:
        return None
    sizes = [_channels(o) for o in node.outputs]
    if any(n is None for n in sizes) or sum(sizes) != _channels(x):
        return None
    return [int(v) for v in np.cumsum([0] + sizes[:-1])]


def _rewrite_split(ctx: GraphContext, node: gs.Node, lost: list[int], b: Builder) -> None:
    """The Split with explicit sizes, each output smaller by ``lost[i]`` channels."""
    sizes = np.asarray([_channels(o) - k for o, k in zip(node.outputs, lost)], np.int64)
    attrs = {k: v for k, v in node.attrs.items() if k not in ("split", "num_outputs")}
    inputs = [node.inputs[0]]
    if ctx.opset >= 13:
        inputs.append(b.const("split", sizes))
    else:
        attrs["split"] = [int(v) for v in sizes]
    b.op("Split", inputs, outputs=list(node.outputs), attrs=attrs, name=node.name)


def _slice_channels(ctx: GraphContext, node: gs.Node) -> tuple[int, int] | None:
    """``(start, end)`` of a Slice of the channels only (constant bounds, step 1), clipped to the input."""
    x = node.inputs[0]
    n = _channels(x)
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


def _concat_offsets(node: gs.Node) -> list[int] | None:
    rank = len(node.outputs[0].shape) if node.outputs[0].shape is not None else None
    axis = int(node.attrs.get("axis", 0))
    if rank is None or axis % rank != 1:
        return None
    sizes = [_channels(t) for t in node.inputs]
    if any(s is None for s in sizes):
        return None
    return [int(v) for v in np.cumsum([0] + sizes[:-1])]


def _flatten_block(ctx: GraphContext, node: gs.Node, x: gs.Tensor) -> int | None:
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
    return rest if _width(ctx, node) is not None else None


def _width(ctx: GraphContext, node: gs.Node):
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


def _rewrite_width(ctx: GraphContext, node: gs.Node, removed_columns: int, b: Builder) -> list[gs.Node]:
    """Describe the Reshape (or the Concat that builds its shape) with the width reduced; the nodes
    to replace."""
    value, position, holder = _width(ctx, node)
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
