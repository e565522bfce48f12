"""Costs of the region collapse's plans, and the choice of a region's plan (``onnxrep.cost`` convention).

Costs are ``(MACs, parameters, nodes)``. MACs and nodes add up along a plan; parameters are
counted over the whole region a plan covers, since a constant stays in the model while any of
its readers stays. Spatial sizes are static ints, or ``a n + b`` in the unknown input size ``n``
derived op by op (``note_sizes``).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...algebra import ConvForm, NotRepresentable
from ...cost import ZERO, Cost, Poly, SpatialSize, conv_cost
from ...graph import GraphContext, is_onnx_op
from ..ops.linear import spatial_crop, spatial_pads
from .plans import ADD_NODE, Plan, Region, as_conv, channels_of, writable


#: ops whose output has the size of their first input (elementwise on it); ``Where`` of its one
#: non-constant input (a border fill ``Where(inside, Pad(y), v)``)
ELEMENTWISE = {"BatchNormalization", "Mul", "Add", "Sub", "Div", "Neg", "Identity", "Dropout", "Relu", "LeakyRelu",
               "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Clip", "Tanh", "Elu", "Selu", "Softplus", "Gelu", "Erf",
               "Abs", "Sqrt", "Exp", "Log", "Cast", "Where"}


class RegionCosts:
    def __init__(self, ctx: GraphContext):
        self.ctx = ctx
        #: spatial sizes ``a n + b`` of tensors whose spatial dims are dynamic
        self.sizes: dict[str, tuple[SpatialSize, ...]] = {}

    def pixels(self, t: gs.Tensor):
        """Output pixels of ``t`` per image: an int when its shape is static, else a ``Poly`` in ``n``.

        A tensor of unknown rank (after a custom op shape inference cannot see through) takes the
        size of a neighbour it is elementwise with, so that a conv and the BN after it are counted
        at one size; ``Poly([1])`` when none is known.
        """
        for u in self._same_size(t):
            px = self._known_pixels(u)
            if px is not None:
                return px
        return Poly([1])

    def _known_pixels(self, t: gs.Tensor):
        shape = t.shape
        if shape is not None and len(shape) >= 2 and all(isinstance(d, int) for d in shape[2:]):
            return int(np.prod(shape[2:], dtype=np.int64))
        axes = self.spatial(t)
        if axes is None:
            return None
        px = Poly([1])
        for ax in axes:
            px = px * ax.poly()
        return px

    def _same_size(self, t: gs.Tensor, limit: int = 16):
        """``t``, then the tensors it is elementwise with: up through producers, down through readers."""
        yield t
        u = t
        for _ in range(limit):
            p = u.inputs[0] if len(u.inputs) == 1 else None
            data = [] if p is None or p.op not in ELEMENTWISE else [
                i for i in p.inputs if i.name and self.ctx.constant_info(i) is None]
            if len(data) != 1:
                break
            u = data[0]
            yield u
        u = t
        for _ in range(limit):
            if len(u.outputs) != 1 or u.outputs[0].op not in ELEMENTWISE or not u.outputs[0].outputs:
                break
            u = u.outputs[0].outputs[0]
            yield u

    def spatial(self, t: gs.Tensor) -> tuple[SpatialSize, ...] | None:
        if t.name in self.sizes:
            return self.sizes[t.name]
        shape = t.shape
        return None if shape is None or len(shape) < 3 else tuple(SpatialSize.of(d) for d in shape[2:])

    def note_sizes(self, node: gs.Node) -> None:
        """Sizes ``a n + b`` of outputs whose spatial dims are dynamic: from the input's, op by op."""
        if not node.inputs or not is_onnx_op(node):
            return
        out = node.outputs[0] if node.outputs else None
        if out is None or (out.shape is not None and len(out.shape) >= 2
                           and all(isinstance(d, int) for d in out.shape[2:])):
            return
        data = [t for t in node.inputs if t.name and self.ctx.constant_info(t) is None]
        axes = self.spatial(data[0]) if data else None  # Mul(c, x): the tensor, not the constant
        if axes is None:
            return
        n = len(axes)
        try:
            if node.op in ("Conv", "AveragePool", "MaxPool"):
                a = node.attrs
                kernel = a.get("kernel_shape") or self.ctx.constant_info(node.inputs[1])[0][2:]
                strides = a.get("strides", [1] * n)
                dil = a.get("dilations", [1] * n)
                auto = a.get("auto_pad", "NOTSET")
                auto = auto.decode() if isinstance(auto, bytes) else auto
                if auto in ("SAME_UPPER", "SAME_LOWER"):
                    axes = tuple(SpatialSize(x.scale / s_, x.offset / s_) for x, s_ in zip(axes, strides))
                else:
                    pads = a.get("pads", [0] * 2 * n) if auto in ("NOTSET", "") else [0] * 2 * n
                    axes = tuple(x.window(k, s_, pads[i] + pads[n + i], d)
                                 for i, (x, k, s_, d) in enumerate(zip(axes, kernel, strides, dil)))
            elif node.op == "Pad":
                pads = spatial_pads(self.ctx, node)[0]
                axes = tuple(SpatialSize(x.scale, x.offset + pads[i] + pads[n + i]) for i, x in enumerate(axes))
            elif node.op == "Slice":
                pads = spatial_crop(self.ctx, node)
                axes = tuple(SpatialSize(x.scale, x.offset + pads[i] + pads[n + i]) for i, x in enumerate(axes))
        except (NotRepresentable, TypeError, IndexError, KeyError):
            return
        self.sizes[out.name] = axes

    def node_cost(self, node: gs.Node) -> Cost:
        """A node left as it is: its MACs and one node (parameters are counted per plan: ``plan_cost``)."""
        out = node.outputs[0]
        macs = 0
        if node.op == "Conv":
            shape = self.ctx.constant_info(node.inputs[1])
            macs = self.pixels(out) * int(np.prod(shape[0], dtype=np.int64)) if shape else 0
        elif node.op == "AveragePool":
            channels = out.shape[1] if out.shape is not None and len(out.shape) > 1 else None
            if isinstance(channels, int):
                macs = self.pixels(out) * channels * int(np.prod(node.attrs.get("kernel_shape", [1])))
        return Cost(macs, 0, 1)

    def term_conv(self, term, sink: gs.Tensor, like: tuple = ()) -> ConvForm:
        """A term as the Conv that would write it (an affine term: a 1x1 depthwise conv)."""
        if isinstance(term, ConvForm):
            return term
        n = next((t.n_spatial for t in like if isinstance(t, ConvForm)), None)
        if n is None:
            n = len(sink.shape) - 2 if sink.shape is not None and len(sink.shape) > 2 else 2
        return as_conv(term, channels_of(term, sink), n)

    def term_cost(self, term, sink: gs.Tensor, like: tuple = ()) -> Cost:
        conv = self.term_conv(term, sink, like)
        return conv_cost(conv.weight_shape, self.pixels(sink), bias=bool(np.any(conv.bias)))

    def segment_cost(self, plan: Plan, sink: gs.Tensor) -> Cost:
        """MACs, new parameters and nodes of the open segment (its nodes' own parameters: ``plan_cost``)."""
        if plan.writes:
            cost = ZERO
            for i, term in enumerate(plan.terms):
                cost = cost + self.term_cost(term, sink, plan.terms) + (ADD_NODE if i else ZERO)
            return cost
        cost = ZERO
        for n in plan.nodes:
            cost = cost + self.node_cost(n)
        return cost

    def plan_cost(self, plan: Plan, sink: gs.Tensor) -> Cost:
        """MACs and nodes of the plan's subgraph, and the parameters the model has with it.

        Parameters are counted over the whole region, not node by node: a constant stays in the
        model if any of its readers stays (a node left as it is, or one outside the region), so a
        merge that copies a weight shared with a node outside costs that copy.
        """
        if plan.cost is None:
            covered, kept, new = self.footprint(plan, sink)
            params, seen = new, set()
            for node in covered.values():
                for t in node.inputs:
                    if id(t) in seen:
                        continue
                    seen.add(id(t))
                    info = self.ctx.stored_constant_info(t)
                    if info is not None and (self.ctx.is_graph_output(t) or any(
                            id(r) not in covered or id(r) in kept for r in t.outputs)):
                        params += int(np.prod(info[0], dtype=np.int64))
            mn = plan.closed + self.segment_cost(plan, sink)
            plan.cost = Cost(mn.macs, params, mn.nodes)
        return plan.cost

    def footprint(self, plan: Plan, sink: gs.Tensor) -> tuple[dict, set, int]:
        """``(nodes the plan covers by id, ids of those left as they are, parameters it writes)``."""
        covered, kept, new = {}, set(), 0
        for region in plan.below:
            if region.footprint is None:
                region.footprint = self.footprint(region.choice, region.sink)
            c, k, n = region.footprint
            covered.update(c)
            kept |= k
            new += n
        for node in plan.kept + tuple(plan.nodes):
            covered[id(node)] = node
        if plan.writes:
            new += self.segment_cost(plan, sink).params
        else:
            kept.update(id(n) for n in plan.nodes)
        kept.update(id(n) for n in plan.kept)
        return covered, kept, new

    def total(self, region: Region | None) -> Cost:
        if region is None:
            return ZERO
        if region.choice is None:
            self.decide(region)
        return region.cost

    def decide(self, region: Region) -> None:
        """Choose the cheapest plan that can be written; forget the others."""
        sink = region.sink
        limit = None if region.baseline is None else self.plan_cost(region.baseline, sink)
        ranked = sorted(region.plans, key=lambda p: self.plan_cost(p, sink))
        merged = next((p for p in region.plans if p.merged and p.writes), None)
        for plan in ranked:
            if limit is not None and plan is not region.baseline and not self.plan_cost(plan, sink).no_worse(limit):
                continue  # fewer MACs but more parameters (or the reverse) than not merging
            reason = None
            if plan.writes:
                reason = next(filter(None, (writable(self.term_conv(t, sink, plan.terms), plan.dtype)
                                            for t in plan.terms)), None)
            if reason is None:
                region.choice, region.cost = plan, self.plan_cost(plan, sink)
                break
            if plan is merged:
                region.why_apart = reason
        else:  # unreachable: prune keeps a plan that writes nothing
            raise AssertionError("no plan can be written")
        if merged is not None and merged is not region.choice and region.why_apart is None:
            one = self.plan_cost(merged, sink)
            region.why_apart = f"kept apart: one conv would cost {one.describe()}; apart {region.cost.describe()}"
        region.plans = [region.choice]
