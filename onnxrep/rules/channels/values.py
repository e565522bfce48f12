"""Dead channels found: the constant each channel slot carries, and the components slots form.

A slot is ``(tensor, channel)``. :class:`DeadChannels` computes, in one pass in graph order, the
constant of every slot that carries one (``algebra.channels``); :meth:`DeadChannels.component`
collects the slots joined to one (the same channel through an op that keeps channels apart, in
either direction) and says why the component cannot go, if it cannot.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...algebra import NotRepresentable
from ...algebra import channels as ch
from ...graph import GraphContext, is_onnx_op
from ...graph.convert import subgraphs
from .slots import (ACTIVATIONS, BINARY, POOLS, REDUCES, channels, clip_bounds, concat_offsets, flatten_block,
                    is_depthwise, pads, same_shape, slice_channels, spatial_reduce, split_offsets)
from ..ops.linear import avgpool_params, bn_form, constant_affine, gemm_attrs


class Component:
    def __init__(self):
        self.slots: set = set()
        self.problem: str | None = None
        self.node: gs.Node | None = None


class DeadChannels:
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
            b = self.bias(node)
            rows = ch.row_constants(w, b)
            if rows:
                self.sources.append((node, out, sorted(rows)))
            if d and is_depthwise(node, w, x):
                rows = {**ch.depthwise_constants(w, b, {c: v for c, v in d.items() if c not in rows},
                                                 pads(self.ctx, node)), **rows}
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
            bounds = clip_bounds(self.ctx, node) if op == "Clip" else None
            vals = {c: ch.activation(op, node.attrs, v, bounds) for c, v in d.items()}
            self._set(out, {c: v for c, v in vals.items() if v is not None})
        elif op == "BatchNormalization":
            aff = bn_form(self.ctx, node)
            s, t = aff.vectors(aff.channels)
            self._set(out, {c: float(s[c] * v + t[c]) for c, v in d.items()})
        elif op in POOLS:
            exact_any = op != "AveragePool" or not (any(avgpool_params(node)[2]) and avgpool_params(node)[3])
            self._set(out, {c: v for c, v in d.items() if exact_any or v == 0})
        elif op in REDUCES and spatial_reduce(self.ctx, node):
            self._set(out, dict(d))  # the mean / max / min of a constant map is the constant
        elif op == "Concat":
            self._set(out, self._concat_values(node))
        elif op == "Split":
            offsets = split_offsets(node)
            for o, off, n in zip(node.outputs, offsets or (), [channels(o) for o in node.outputs]):
                self._set(o, {c - off: v for c, v in d.items() if off <= c < off + n})
        elif op == "Slice":
            span = slice_channels(self.ctx, node)
            if span is not None:
                self._set(out, {c - span[0]: v for c, v in d.items() if span[0] <= c < span[1]})
        elif op in ("Flatten", "Reshape"):
            hw = flatten_block(self.ctx, node, x)
            if hw:
                self._set(out, {c * hw + k: v for c, v in d.items() for k in range(hw)})
        else:
            self._affine_or_binary(node, out)

    def _affine_or_binary(self, node: gs.Node, out: gs.Tensor) -> None:
        found = constant_affine(self.ctx, node)
        if found is not None:
            x, aff = found
            n = channels(x) or aff.channels
            if n is None or id(x) not in self.dead:
                return
            s, t = aff.vectors(n)
            self._set(out, {c: float(s[c] * v + t[c]) for c, v in self.dead[id(x)].items()})
            return
        if node.op in BINARY and len(node.inputs) == 2 and same_shape(*node.inputs):
            a, b = (self.dead.get(id(t), {}) for t in node.inputs)
            f = {"Add": lambda p, q: p + q, "Sub": lambda p, q: p - q, "Mul": lambda p, q: p * q}[node.op]
            self._set(out, {c: f(a[c], b[c]) for c in a.keys() & b.keys()})

    def _concat_values(self, node: gs.Node) -> dict[int, float]:
        offsets = concat_offsets(node)
        if offsets is None:
            return {}
        return {off + c: v for t, off in zip(node.inputs, offsets) for c, v in self.dead.get(id(t), {}).items()}

    def bias(self, node: gs.Node) -> np.ndarray | None:
        if len(node.inputs) > 2 and not self.ctx.is_absent(node.inputs[2]):
            b = self.ctx.constant(node.inputs[2])
            if b is None:
                raise NotRepresentable("bias is not a constant", code="not-constant")
            return b
        return None

    # ----------------------------------------------------------- components
    def component(self, t0: gs.Tensor, c0: int) -> Component:
        comp = Component()
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

    def _links(self, t: gs.Tensor, c: int, stack: list, comp: Component) -> str | None:
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
            if w is not None and is_depthwise(node, w, x):
                stack.append((x, c))  # one filter per channel: the input channel goes with it
                return None
            if w is not None and int(node.attrs.get("group", 1)) != 1:
                return f"'{node.name}' is a grouped conv (its groups would lose channels unevenly)"
            if w is not None and c in ch.row_constants(w, None):
                return None  # a source row
            return f"'{node.name}' channel {c} is not a zero row"
        if op in ("Gemm", "MatMul"):
            return None if c in self.dead.get(id(t), {}) else f"'{node.name}' column {c} is not zero"
        if op in ACTIVATIONS | POOLS | {"BatchNormalization"} or (op in REDUCES and spatial_reduce(self.ctx, node)):
            stack.append((x, c))
            return None
        if op == "Concat":
            offsets = concat_offsets(node)
            for inp, off, n in zip(node.inputs, offsets, [channels(i) for i in node.inputs]):
                if off <= c < off + n:
                    stack.append((inp, c - off))
            return None
        if op in ("Flatten", "Reshape"):
            hw = flatten_block(self.ctx, node, x)
            if not hw:
                return f"{op} '{node.name}' does not flatten channels first"
            stack.append((x, c // hw))
            return None
        if op == "Split":
            offsets = split_offsets(node)
            if offsets is None:
                return f"Split '{node.name}' is not on the channels, or its sizes are unknown"
            stack.append((x, offsets[[o is t for o in node.outputs].index(True)] + c))
            return None
        if op == "Slice":
            span = slice_channels(self.ctx, node)
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
            if is_depthwise(node, w, t):
                stack.append((out, c))
                return None
            if int(node.attrs.get("group", 1)) != 1:
                return f"'{node.name}' is a grouped conv"
            if v != 0 and pads(self.ctx, node):
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
                     or op in REDUCES and spatial_reduce(self.ctx, node)):
            if op in ("Flatten", "Reshape"):
                hw = flatten_block(self.ctx, node, t)
                if not hw:
                    return f"Flatten '{node.name}' does not flatten channels first"
                stack.extend((out, c * hw + k) for k in range(hw))
            else:
                stack.append((out, c))
            return None
        if op == "Concat":
            offsets = concat_offsets(node)
            if offsets is None:
                return f"Concat '{node.name}' is not on the channels, or its input sizes are unknown"
            stack.extend((out, off + c) for i, off in zip(node.inputs, offsets) if i is t)
            return None
        if op == "Split" and data:
            offsets = split_offsets(node)
            if offsets is None:
                return f"Split '{node.name}' is not on the channels, or its sizes are unknown"
            i = max(k for k, off in enumerate(offsets) if off <= c)
            stack.append((node.outputs[i], c - offsets[i]))
            return None
        if op == "Slice" and data:
            span = slice_channels(self.ctx, node)
            if span is None:
                return f"Slice '{node.name}' is not a constant slice of the channels"
            if span[0] <= c < span[1]:
                stack.append((out, c - span[0]))
            return None  # a channel the slice does not take: only its bounds move
        found = constant_affine(self.ctx, node)
        if found is not None and found[0] is t:
            stack.append((out, c))
            return None
        if op in BINARY and len(node.inputs) == 2 and same_shape(*node.inputs):
            stack.append((out, c))
            stack.extend((i, c) for i in node.inputs if i is not t)
            return None
        return f"'{t.name}' is read by {op} '{node.name}', which onnxrep does not follow channels through"
