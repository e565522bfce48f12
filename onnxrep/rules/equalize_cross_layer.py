"""Cross-layer equalization for INT8 (opt-in: ``onnxrep optimize --equalize``), exact.

Merged re-parameterized convs often have a few output channels with far larger weights than the rest;
per-tensor INT8 quantization then crushes the small ones. For two layers joined by a positively
homogeneous op ``f`` (``f(x / s) = f(x) / s``, ``s > 0``, per channel), ``layer2(f(layer1(x)))`` is
unchanged when output channel ``i`` of layer 1 (weights and bias) is divided by ``s_i`` and input
channel ``i`` of layer 2 multiplied by it (``algebra/equalize.py``); ``s_i = sqrt(r1_i / r2_i)``
equalizes the two layers' channel ranges. Pairs:

* layer 1: a Conv with constant weights (any groups: dense, depthwise, pointwise);
* between: nothing, or a chain of Relu, LeakyRelu, PRelu (a scalar or per-channel slope: it follows
  its channel), MaxPool, AveragePool, a constant Pad by zero; or, before a fully-connected head,
  GlobalAveragePool / GlobalMaxPool then Flatten (or Reshape to ``(N, C)``);
* layer 2: a Conv with constant weights, or a Gemm / MatMul with a constant 2-D weight after the head.

Every tensor between the two layers must be read by the chain alone (not a graph output; a Shape
may read it too): another reader would see the rescaled values. Clip (ReLU6) is not homogeneous (its upper bound would move):
not a pair. Pairs that share a layer (a chain of convs) are equalized in turn until the scales
converge; each changed layer is written once, with new initializers. The pass runs in every sweep,
after the merges: on layers it has equalized the scales are already 1 and it writes nothing (with
``strength < 1`` it runs once: run it on a merged model). The report lists each pair with
the spread (max / median) of the channel ranges before and after.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..algebra import NotRepresentable, cast_back
from ..algebra.equalize import (equalizing_scales, input_ranges, output_ranges, range_matrix, scale_inputs,
                                scale_outputs, spread)
from ..graph import Builder, GraphContext
from ..rule import Pass
from .ops.linear import gemm_attrs, has_bias

HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "Pad")
MAX_ROUNDS = 500
TOLERANCE = 1e-3  # stop when every scale of a round is within this of 1 (ranges equal to 0.1%)


class _Layer:
    """A Conv, Gemm or MatMul with its weight as ``(O, I/g, k...)`` float64 (an FC as ``(O, I)``)."""

    def __init__(self, ctx: GraphContext, node: gs.Node):
        self.node = node
        w = ctx.constant(node.inputs[1])
        self.dtype = w.dtype
        self.groups = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
        self.transposed = node.op == "MatMul" or (node.op == "Gemm" and not gemm_attrs(node)[3])
        self.weight = np.asarray(w, dtype=np.float64)
        if self.transposed:  # MatMul / Gemm without transB: (I, O)
            self.weight = self.weight.T
        self.bias = None
        if node.op == "Conv" and has_bias(ctx, node):
            self.bias = np.asarray(ctx.constant(node.inputs[2]), dtype=np.float64)
        self.ranges = range_matrix(self.weight)  # rescaled in place of the weight, which is rescaled once
        self.in_scale = np.ones(self.weight.shape[1] * self.groups)
        self.out_scale = np.ones(self.weight.shape[0])
        self.changed = False

    def rescaled(self, strength: float) -> tuple[np.ndarray, np.ndarray | None]:
        """The weight and bias with every input scale multiplied in and every output scale divided out,
        each raised to ``strength``."""
        w, b = scale_outputs(self.weight, self.bias, self.out_scale ** strength)
        return scale_inputs(w, self.in_scale ** strength, self.groups), b

    def rescaled_ranges(self, strength: float) -> np.ndarray:
        return scale_inputs(scale_outputs(range_matrix(self.weight), None, self.out_scale ** strength)[0],
                            self.in_scale ** strength, self.groups)


def _bias_is_constant(ctx: GraphContext, node: gs.Node) -> bool:
    return not has_bias(ctx, node) or ctx.constant(node.inputs[2]) is not None


def _homogeneous(ctx: GraphContext, node: gs.Node) -> bool:
    if node.op == "PRelu":
        slope = ctx.constant(node.inputs[1]) if len(node.inputs) > 1 else None
        return slope is not None and sum(d != 1 for d in np.shape(slope)) <= 1
    if node.op == "Pad":
        mode = node.attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            return False
        value = ctx.constant(node.inputs[2]) if len(node.inputs) > 2 and not ctx.is_absent(node.inputs[2]) else 0
        return value is not None and not np.any(value)
    return node.op in HOMOGENEOUS


def find_pairs(ctx: GraphContext) -> list[tuple[gs.Node, gs.Node]]:
    """``(layer1, layer2)`` for every equalizable pair."""
    pairs = []
    for conv in ctx.nodes("Conv"):
        if len(conv.inputs) < 2 or ctx.constant(conv.inputs[1]) is None or not _bias_is_constant(ctx, conv):
            continue
        t, head = conv.outputs[0], False
        while True:
            readers = [n for n in t.outputs if n.op != "Shape"]  # a Shape reads no values
            if ctx.is_graph_output(t) or len(readers) != 1 or sum(i is t for i in readers[0].inputs) != 1:
                break
            nxt = readers[0]
            if nxt.inputs[0] is not t:
                break
            if nxt.op in ("Gemm", "MatMul") and head:
                w = ctx.constant(nxt.inputs[1]) if len(nxt.inputs) > 1 else None
                if w is not None and w.ndim == 2 and _bias_is_constant(ctx, nxt) and not (
                        nxt.op == "Gemm" and gemm_attrs(nxt)[0].get("transA", 0)):
                    pairs.append((conv, nxt))
                break
            if nxt.op == "Conv" and not head:
                if len(nxt.inputs) > 1 and ctx.constant(nxt.inputs[1]) is not None and _bias_is_constant(ctx, nxt):
                    pairs.append((conv, nxt))
                break
            if nxt.op in ("GlobalAveragePool", "GlobalMaxPool") and not head:
                head = True
            elif nxt.op in ("Flatten", "Reshape") and head:
                shape = nxt.outputs[0].shape  # (N, C): the columns are the channels
                if shape is None or len(shape) != 2 or shape[1] != ctx.constant(conv.inputs[1]).shape[0]:
                    break
            elif head or not _homogeneous(ctx, nxt):
                break
            t = nxt.outputs[0]
    return pairs


class EqualizeCrossLayer(Pass):
    """Rescale conv -> (homogeneous op) -> conv / FC pairs so that their channel ranges are equal (exact).

    ``strength`` ``a`` in (0, 1] applies the converged scales ``s`` as ``s**a`` (still exact: both layers
    of a pair take the same vector): 1 equalizes, less moves part of the way."""
    name = "equalize-cross-layer"
    priority = 90  # after every merge: it equalizes the layers as they will be deployed

    def __init__(self, strength: float = 1.0):
        if not 0 < strength <= 1:
            raise ValueError(f"equalization strength must be in (0, 1], not {strength}")
        self.strength = float(strength)

    def run(self, ctx: GraphContext) -> None:
        if self.strength < 1:  # part of the way is not a fixed point: once per optimize()
            if ctx.memory.get("done"):
                return
            ctx.memory["done"] = True
        pairs = find_pairs(ctx)
        layers: dict[int, _Layer] = {}
        for a, b in pairs:
            for n in (a, b):
                layers.setdefault(id(n), _Layer(ctx, n))
        pairs = [(layers[id(a)], layers[id(b)]) for a, b in pairs
                 if layers[id(a)].weight.shape[0] == layers[id(b)].weight.shape[1] * layers[id(b)].groups]
        before = [(spread(output_ranges(la.ranges)), spread(input_ranges(lb.ranges, lb.groups))) for la, lb in pairs]
        for _ in range(MAX_ROUNDS):
            worst = 0.0
            for la, lb in pairs:
                s = equalizing_scales(output_ranges(la.ranges), input_ranges(lb.ranges, lb.groups))
                worst = max(worst, float(np.max(np.abs(s - 1.0))))
                la.ranges = scale_outputs(la.ranges, None, s)[0]
                lb.ranges = scale_inputs(lb.ranges, s, lb.groups)
                la.out_scale, lb.in_scale = la.out_scale * s, lb.in_scale * s
            if worst <= TOLERANCE:
                break
        for la, lb in pairs:  # a pair already equal is left exactly as it is, on both sides (one vector)
            if np.allclose(la.out_scale ** self.strength, 1.0, rtol=0, atol=TOLERANCE):
                la.out_scale, lb.in_scale = np.ones_like(la.out_scale), np.ones_like(lb.in_scale)
        arrays = {}
        for layer in layers.values():  # all layers or none: a half-written chain would change the function
            if np.all(layer.in_scale == 1.0) and np.all(layer.out_scale == 1.0):
                continue
            w, bias = layer.rescaled(self.strength)
            w = w.T if layer.transposed else w
            try:
                arrays[id(layer)] = cast_back(layer.dtype, w, *([] if bias is None else [bias]))
            except NotRepresentable as exc:
                ctx.decline(layer.node, f"not equalized: {exc}")
                return
            layer.changed = True
        for layer in layers.values():
            if layer.changed:
                self._write(ctx, layer, arrays[id(layer)])
        for (la, lb), (r1, r2) in zip(pairs, before):
            if la.changed or lb.changed:
                a, b = la.node, lb.node
                ra, rb = la.rescaled_ranges(self.strength), lb.rescaled_ranges(self.strength)
                ctx.fired(a, f"with '{b.name or b.op}': channel range max/median {r1:.2f} -> "
                             f"{spread(output_ranges(ra)):.2f} (outputs of '{a.name or a.op}'), {r2:.2f} -> "
                             f"{spread(input_ranges(rb, lb.groups)):.2f} (inputs of '{b.name or b.op}')")

    @staticmethod
    def _write(ctx: GraphContext, layer: _Layer, arrays: list[np.ndarray]) -> None:
        node = layer.node
        b = Builder(ctx, node.name or node.op.lower())
        inputs = [node.inputs[0], b.const("weight", arrays[0])]
        if len(arrays) > 1:
            inputs.append(b.const("bias", arrays[1]))
        elif len(node.inputs) > 2:
            inputs.append(node.inputs[2])
        b.op(node.op, inputs, outputs=list(node.outputs), attrs=dict(node.attrs), name=node.name)
        if ctx.replace([node], b.nodes) is None:
            raise AssertionError(f"equalize-cross-layer could not rewrite '{node.name}' in place")
