"""Collapse each linear region of the graph into its cheapest exact form: one Conv where that pays.

Between two non-linear ops, every tensor ``t`` is an affine map of one *root* tensor ``r``:
``t = F(r)`` with ``F`` a ``ConvForm`` (``conv(r, W, b)``) or an ``AffineForm`` (``s r + t``, the
identity being ``s = 1, t = 0``). One forward pass in topological order finds ``F`` for every
tensor from its producer:

* ``Conv(u)``                      ``F = conv ∘ F_u``   (``F_u`` affine: exact when no zero padding or no shift)
* ``BN(u)``, ``u * c``, ``u + c``, ``u - c``, ``c - u``, ``u / c``, ``-u``   ``F = affine ∘ F_u``
* ``u + v``, ``u - v``            ``F = F_u ± F_v`` when both read the same root (parallel branches:
                                  kernels aligned and zero-filled to one, identity as a 1x1 kernel)
* ``Identity(u)``, inference ``Dropout(u)``   ``F = F_u``
* ``AveragePool(u)``                ``F = avgpool ∘ F_u`` (a depthwise conv; ``count_include_pad`` or no pads)
* ``Pad(u, p, v)``, ``Slice(u)``    ``F = F_u`` with wider / narrower pads, when ``F_u`` is pointwise and
                                  ``v = F_u(0)`` (DBB's BN-and-pad border; a zero Pad before a conv)
* ``conv2(conv1(u))``             1x1 -> KxK and KxK -> 1x1 sequences compose into one conv

**Exact is not enough.** A merge can cost more than its parts (a depthwise KxK and a 1x1
expansion are one *dense* KxK conv), and whether a merge pays can depend on what comes later
(DBB's 1x1 -> AvgPool branch is a dense KxK on its own, but free once summed into the KxK
branch). So each tensor keeps several *plans* (``region_plans``): the region merged from its
root, and, at every op, the *cut* (the operand's region written on its own, this op starting
a new segment); at a sum, also the Add kept with both branches written apart. The cost model
(``onnxrep.cost``: MACs, then parameters, then nodes, at the spatial sizes the graph states)
picks the cheapest plan when the region is complete, so a merge is made exactly when it costs
no more than the parts, and the output is never costlier than the input.

``u`` is expanded only when it is *private* (read once, not a graph output); otherwise it is a
root itself, which is why every tensor shared by branches (RepVGG's ``x``) is exactly the root
of each branch. A region is written when it is maximal (every reader of its sink has been
visited and none absorbed it): its chosen plan's cut regions first, then its open segment as
one Conv. A combination that is not exact is declined with the algebra's reason, one that is
exact but costlier with both costs (``--explain``).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..algebra import AffineForm, ConvForm, NotRepresentable, avgpool, cast_back, pad_pointwise
from ..cost import ZERO, Cost, Poly, SpatialSize, conv_cost
from ..graph import Builder, GraphContext, is_onnx_op
from ..pattern import Rule
from .linear_ops import avgpool_params, bn_form, constant_affine, conv_form, spatial_crop, spatial_pads
from .region_plans import (ADD_NODE, Plan, Region, affine_after_terms, as_conv, channels_of, combine, leaf, negated,
                           precision_rtol, prune, then, writable)

#: ops whose output pixel count is the input's divided by their strides
STRIDED = ("Conv", "AveragePool", "MaxPool", "LpPool")


class CollapseLinearRegions(Rule):
    name = "collapse-linear-regions"
    priority = 10

    def run(self, ctx: GraphContext) -> None:
        walk = _Walk(ctx, self.name)
        unvisited = {}  # tensor name -> readers not visited yet
        for node in list(ctx.graph.nodes):
            if not ctx.is_live(node):
                continue
            walk.visit(node)
            # a region is maximal once every reader of its sink has been visited without absorbing it:
            # write it now, so that only the regions still growing hold float64 weights
            for t in node.inputs:
                if t.name in walk.memo:
                    left = unvisited.setdefault(t.name, len(t.outputs)) - 1
                    unvisited[t.name] = left
                    if left == 0:
                        walk.flush(t.name)
        for name in list(walk.memo):
            walk.flush(name)


class _Walk:
    PASS_THROUGH = ("Identity", "Dropout")

    def __init__(self, ctx: GraphContext, rule: str):
        self.ctx = ctx
        self.rule = rule
        self.memo: dict[str, Region] = {}
        #: spatial sizes ``a n + b`` of tensors whose spatial dims are dynamic (``onnxrep.cost``)
        self.sizes: dict[str, tuple[SpatialSize, ...]] = {}

    def flush(self, name: str) -> None:
        """Write the region ending at tensor ``name`` unless a consumer absorbed it; forget it."""
        region = self.memo.pop(name, None)
        if region is not None and not region.absorbed:
            self.write(region)

    # ------------------------------------------------------------------ costs
    def pixels(self, t: gs.Tensor):
        """Output pixels of ``t`` per image: an int when its shape is static, else a ``Poly`` in ``n``."""
        shape = t.shape
        if shape is not None and len(shape) >= 2 and all(isinstance(d, int) for d in shape[2:]):
            return int(np.prod(shape[2:], dtype=np.int64))
        axes = self.spatial(t)
        px = Poly([1])
        for ax in axes or ():
            px = px * ax.poly()
        return px

    def spatial(self, t: gs.Tensor) -> tuple[SpatialSize, ...] | None:
        if t.name in self.sizes:
            return self.sizes[t.name]
        shape = t.shape
        return None if shape is None or len(shape) < 3 else tuple(SpatialSize.of(d) for d in shape[2:])

    def note_sizes(self, node: gs.Node) -> None:
        """Sizes ``a n + b`` of outputs whose spatial dims are dynamic: from the input's, op by op."""
        if not node.inputs or node.inputs[0].name == "" or not is_onnx_op(node):
            return
        out = node.outputs[0] if node.outputs else None
        if out is None or (out.shape is not None and len(out.shape) >= 2
                           and all(isinstance(d, int) for d in out.shape[2:])):
            return
        axes = self.spatial(node.inputs[0])
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

    # ------------------------------------------------------------ analysis
    def operand(self, t: gs.Tensor) -> Region | None:
        """The region computing ``t`` if a consumer may absorb it (``t`` private), else ``None``."""
        region = self.memo.get(t.name)
        if region is not None and self.ctx.is_private(t):
            return region
        return None

    def visit(self, node: gs.Node) -> None:
        self.note_sizes(node)
        if not is_onnx_op(node):
            return
        if len([t for t in node.outputs if t.name]) != 1 or not node.outputs[0].name:
            if node.op == "BatchNormalization":
                self.ctx.decline(self.rule, node, "BatchNormalization in training mode (it outputs running "
                                                  "statistics): exported with model.train()?")
            return
        try:
            region = self.expression(node)
        except NotRepresentable as exc:
            self.ctx.decline(self.rule, node, str(exc))
            return
        if region is None:
            return
        for t in node.inputs:
            inner = self.operand(t)
            if inner is not None:  # its plans live on in this region's
                inner.absorbed = True
                self.memo.pop(t.name, None)
        self.memo[region.sink.name] = region

    def expression(self, node: gs.Node) -> Region | None:
        op = node.op
        if op == "Conv":
            cf = conv_form(self.ctx, node)
            return self.unary(node, lambda f: then(f, cf), own=cf, convs=1, dtype=cf.weight.dtype)
        if op == "BatchNormalization":
            return self.unary(node, affine=bn_form(self.ctx, node))
        if op in self.PASS_THROUGH:
            return self.pass_through(node)
        if op in ("AveragePool", "Pad", "Slice"):
            try:
                if op == "AveragePool":
                    return self.avgpool(node)
                if op == "Pad":
                    return self.reshape_border(node, *spatial_pads(self.ctx, node))
                return self.reshape_border(node, spatial_crop(self.ctx, node), None)
            except NotRepresentable:
                # these ops are linear only in special cases: stay quiet unless a region was cut short
                if self.operand(node.inputs[0]) is None:
                    return None
                raise
        if op in ("Mul", "Add", "Sub", "Div", "Neg"):
            found = constant_affine(self.ctx, node)
            if found is not None:
                x, aff = found
                return self.unary(node, affine=aff, x=x)
            if op in ("Add", "Sub") and len(node.inputs) == 2:
                return self.branch_sum(node, -1.0 if op == "Sub" else 1.0)
        return None

    def extended(self, inner: Region, node: gs.Node, step, affine, convs: int, dtype) -> tuple[list[Plan], Exception]:
        """Every plan of ``inner`` followed by ``node``: ``step`` on a one-term plan; an ``affine`` also
        distributes over the terms of a sum kept apart."""
        plans, error = [], None
        for p in inner.plans:
            try:
                if len(p.terms) == 1:
                    terms = (step(p.terms[0]),)
                elif affine is not None:
                    terms = affine_after_terms(p.terms, affine)
                else:
                    raise NotRepresentable("branches kept apart do not compose with what follows")
            except NotRepresentable as exc:
                error = error or exc
                continue
            plans.append(Plan(p.root, terms, p.nodes + [node], p.below, p.closed, p.convs + convs,
                              p.dtype if p.dtype is not None else dtype, p.kept, p.why))
        return plans, error

    def unary(self, node: gs.Node, step=None, own=None, convs: int = 0, dtype=None, x: gs.Tensor | None = None,
              affine: AffineForm | None = None) -> Region:
        """Plans for ``node`` applied to ``x``: every plan of ``x`` extended by ``step`` (or ``affine``),
        and the cut (``x``'s region written on its own, ``node`` starting a segment with form ``own``)."""
        x = node.inputs[0] if x is None else x
        if affine is not None:
            step, own = (lambda f: then(f, affine)), affine
        if own is None:
            own = step(AffineForm.identity())
        out = node.outputs[0]
        inner = self.operand(x)
        if inner is None:
            return Region(out, [Plan(x, (own,), [node], convs=convs, dtype=dtype)])
        plans, error = self.extended(inner, node, step, affine, convs, dtype)
        if not plans:
            self.ctx.decline(self.rule, node, f"not merged with its input region: {error}")
        cut = Plan(x, (own,), [node], (inner,), self.total(inner), convs, dtype)
        return Region(out, prune(plans + [cut], lambda p: self.plan_cost(p, out), cut), cut)

    def kept(self, node: gs.Node, *operands: Region | None) -> Plan:
        """``node`` left as it is, its operands' regions written on their own: a plan rooted at its output."""
        below = tuple(r for r in operands if r is not None)
        closed = self.node_cost(node)
        for r in below:
            closed = closed + self.total(r)
        return Plan(node.outputs[0], (AffineForm.identity(),), [], below, closed, 0, None, (node,))

    def avgpool(self, node: gs.Node) -> Region:
        kernel, strides, pads, include_pad = avgpool_params(node)
        x = node.inputs[0]
        inner = self.operand(x)
        forms = [t for p in inner.plans for t in p.terms] if inner is not None else [AffineForm.identity()]
        channels = next((c for c in (channels_of(f, x) for f in forms) if c is not None), None)
        if channels is None:
            raise NotRepresentable("AveragePool channel count unknown (no shape information)")
        pool = avgpool(channels, kernel, strides, pads, include_pad)
        return self.unary(node, lambda f: then(f, pool), own=pool)

    def reshape_border(self, node: gs.Node, pads, value) -> Region:
        """Pad (``value`` given) or crop (``value`` None) of a pointwise form's output."""
        x = node.inputs[0]
        rtol = precision_rtol(x.dtype)

        def step(form):
            form = as_conv(form, channels_of(form, x), len(pads) // 2)
            border = form.bias if value is None or all(p <= 0 for p in pads) else value
            return pad_pointwise(form, pads, border, rtol=rtol)

        inner = self.operand(x)
        if inner is None:
            return self.unary(node, step)
        try:
            own = step(AffineForm.identity())
        except NotRepresentable:  # a Pad by a non-zero value: only a merge makes it linear
            plans, error = self.extended(inner, node, step, None, 0, None)
            if not plans:
                raise error
            out = node.outputs[0]
            kept = self.kept(node, inner)
            return Region(out, prune(plans + [kept], lambda p: self.plan_cost(p, out), kept), kept)
        return self.unary(node, step, own=own)

    def pass_through(self, node: gs.Node) -> Region | None:
        if node.op == "Dropout" and len(node.inputs) > 2 and not self.ctx.is_absent(node.inputs[2]):
            mode = self.ctx.constant(node.inputs[2])
            if mode is None or bool(np.any(mode)):
                self.ctx.decline(self.rule, node, "Dropout in training mode (random): exported with model.train()?")
                return None
        return self.unary(node, affine=AffineForm.identity())

    def branch_sum(self, node: gs.Node, sign: float) -> Region | None:
        a, b = node.inputs
        ra, rb = self.operand(a), self.operand(b)
        plans_a = ra.plans if ra is not None else [leaf(a)]
        plans_b = rb.plans if rb is not None else [leaf(b)]
        out = node.outputs[0]
        merged, error = [], None
        for pa in plans_a:
            for pb in plans_b:
                if pa.root is not pb.root:
                    continue
                terms_b = pb.terms if sign > 0 else tuple(negated(t) for t in pb.terms)
                both = pa.terms + terms_b
                try:
                    terms, why = combine(list(both), lambda t: self.term_cost(t, out, both))
                except NotRepresentable as exc:
                    error = error or exc
                    continue
                merged.append(Plan(pa.root, tuple(terms), pa.nodes + pb.nodes + [node], pa.below + pb.below,
                                   pa.closed + pb.closed, pa.convs + pb.convs,
                                   pa.dtype if pa.dtype is not None else pb.dtype, pa.kept + pb.kept,
                                   pa.why + pb.why + tuple((node, w) for w in why)))
        if not merged:
            if error is not None:
                raise error
            if any(p.convs for p in plans_a + plans_b):
                self.ctx.decline(self.rule, node, f"branches read different tensors "
                                                  f"('{plans_a[0].root.name}', '{plans_b[0].root.name}')")
            return None
        apart = self.kept(node, ra, rb)
        return Region(out, prune(merged + [apart], lambda p: self.plan_cost(p, out), apart), apart)

    # ------------------------------------------------------------- rewrite
    def write(self, region: Region) -> None:
        """Write the region's chosen plan: its cut regions first, then its open segment."""
        if region.choice is None:
            self.decide(region)
        plan = region.choice
        for below in plan.below:
            self.write(below)
        if region.why_apart is not None:
            at = plan.nodes[0] if plan.nodes else (plan.kept[-1] if plan.kept else None)
            if at is not None:
                self.ctx.decline(self.rule, at, region.why_apart)
        for node, reason in plan.why:
            self.ctx.decline(self.rule, node, reason)
        if plan.writes:
            self.replace(plan, region.sink)

    def replace(self, plan: Plan, sink: gs.Tensor) -> None:
        """The open segment as one Conv per term reading the root, summed by Adds into ``sink``."""
        builder = Builder(self.ctx, plan.nodes[-1].name or "conv")
        convs, outputs = [], []
        k = len(plan.terms)
        for i, term in enumerate(plan.terms):
            f = self.term_conv(term, sink, plan.terms)
            w, b = cast_back(plan.dtype or np.float32, f.weight, f.bias)
            attrs = {"kernel_shape": list(f.kernel_shape), "strides": list(f.strides), "pads": list(f.pads),
                     "dilations": list(f.dilations), "group": f.groups}
            bias = builder.const("bias", b) if np.any(b) else None  # a zero bias is not written
            out = sink if k == 1 else builder.tensor(f"term{i}", dtype=sink.dtype)
            builder.op("Conv", [plan.root, builder.const("weight", w), bias], outputs=[out], attrs=attrs)
            convs.append(f)
            outputs.append(out)
        acc = outputs[0]
        for i, t in enumerate(outputs[1:], start=1):
            acc = builder.op("Add", [acc, t], outputs=[sink] if i == k - 1 else None)[0]
        made = self.ctx.replace(self.rule, plan.nodes, builder.nodes)
        for node, f in zip((n for n in made if n.op == "Conv"), convs):
            self.ctx.created.append(weight_ranges(node.name, f))


def weight_ranges(name: str, form: ConvForm) -> dict:
    """Per-output-channel weight range of a merged conv.

    Merging branches can leave output channels with very different weight magnitudes, which
    hurts per-tensor INT8 quantization (RepVGG issues #46/#59, YOLOv6 #265): users should know
    before TensorRT tells them.
    """
    absmax = np.abs(np.asarray(form.weight, dtype=np.float64)).reshape(form.out_channels, -1).max(axis=1)
    positive = absmax[absmax > 0]
    ratio = float(positive.max() / np.median(positive)) if positive.size else 0.0
    return {"conv": name, "out_channels": int(form.out_channels), "kernel": list(form.kernel_shape),
            "groups": int(form.groups), "weight_absmax": float(absmax.max()) if absmax.size else 0.0,
            "channel_absmax_min": float(absmax.min()) if absmax.size else 0.0,
            "channel_absmax_median": float(np.median(absmax)) if absmax.size else 0.0,
            "outlier_ratio": ratio}
