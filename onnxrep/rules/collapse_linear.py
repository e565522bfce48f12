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
* ``Where(inside, Pad(u, p, 0), v)`` one op, ``pad(u, p, v)`` with a per-channel ``v`` (the border fill
                                  ``canonicalize-border-fill`` writes): as ``Pad(u, p, v)``; left as it
                                  is unless merged, so the border stays exactly ``v``
* ``conv2(conv1(u))``             1x1 -> KxK and KxK -> 1x1 sequences compose into one conv

**Exact is not enough.** A merge can cost more than its parts (a depthwise KxK and a 1x1
expansion are one *dense* KxK conv), and whether a merge pays can depend on what comes later
(DBB's 1x1 -> AvgPool branch is a dense KxK on its own, but free once summed into the KxK
branch). So each tensor keeps several *plans* (``regions.plans``): the region merged from its
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

from ..algebra import AffineForm, NotRepresentable, avgpool, pad_pointwise
from ..cost import ZERO
from ..graph import GraphContext, is_onnx_op
from ..rule import Pass
from .ops.linear import (activation_scale, avgpool_params, bn_form, border_write, constant_affine, conv_form,
                         spatial_crop, spatial_pads, static_spatial)
from .regions.costs import RegionCosts
from .regions.plans import (Plan, Region, affine_after_terms, as_conv, channels_of, combine, leaf, negated,
                            precision_rtol, prune, then)
from .regions.write import write_segment


class CollapseLinearRegions(Pass):
    name = "collapse-linear-regions"
    priority = 10

    def run(self, ctx: GraphContext) -> None:
        walk = _Walk(ctx)
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

    def __init__(self, ctx: GraphContext):
        self.ctx = ctx
        self.memo: dict[str, Region] = {}
        self.costs = RegionCosts(ctx)

    def flush(self, name: str) -> None:
        """Write the region ending at tensor ``name`` unless a consumer absorbed it; forget it."""
        region = self.memo.pop(name, None)
        if region is not None and not region.absorbed:
            self.write(region)

    # ------------------------------------------------------------ analysis
    def operand(self, t: gs.Tensor) -> Region | None:
        """The region computing ``t`` if a consumer may absorb it (``t`` private), else ``None``."""
        region = self.memo.get(t.name)
        if region is not None and self.ctx.is_private(t):
            return region
        return None

    def visit(self, node: gs.Node) -> None:
        self.costs.note_sizes(node)
        if not is_onnx_op(node):
            return
        if len([t for t in node.outputs if t.name]) != 1 or not node.outputs[0].name:
            if node.op == "BatchNormalization":
                self.ctx.decline(node, "BatchNormalization in training mode (it outputs running "
                                                  "statistics): exported with model.train()?")
            return
        try:
            region = self.expression(node)
        except NotRepresentable as exc:
            self.ctx.decline(node, str(exc))
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
                    fill = border_write(self.ctx, node)
                    if fill is not None:  # Pad + Where: one pad(u, p, v) with a per-channel v
                        where, pads, value = fill
                        return self.reshape_border(node, pads, value, nodes=[node, where])
                    return self.reshape_border(node, *spatial_pads(self.ctx, node))
                return self.reshape_border(node, spatial_crop(self.ctx, node), None)
            except NotRepresentable:
                # these ops are linear only in special cases: stay quiet unless a region was cut short
                if self.operand(node.inputs[0]) is None:
                    return None
                raise
        if op in ("Mul", "Add", "Sub", "Div", "Neg"):
            found = constant_affine(self.ctx, node)
            gate = activation_scale(self.ctx, node) if found is not None else None
            if gate is not None:
                self.ctx.decline(node, f"left to the {gate} it scales (runtimes fuse it whole)")
                return None
            if found is not None:
                x, aff = found
                return self.unary(node, affine=aff, x=x)
            if op in ("Add", "Sub") and len(node.inputs) == 2:
                return self.branch_sum(node, -1.0 if op == "Sub" else 1.0)
        return None

    def extended(self, inner: Region, nodes: list[gs.Node], step, affine, convs: int, dtype
                 ) -> tuple[list[Plan], Exception]:
        """Every plan of ``inner`` followed by ``nodes`` (one op): ``step`` on a one-term plan; an
        ``affine`` also distributes over the terms of a sum kept apart."""
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
            plans.append(Plan(p.root, terms, p.nodes + nodes, p.below, p.closed, p.convs + convs,
                              p.dtype if p.dtype is not None else dtype, p.kept, p.why))
        return plans, error

    def unary(self, node: gs.Node, step=None, own=None, convs: int = 0, dtype=None, x: gs.Tensor | None = None,
              affine: AffineForm | None = None, nodes: list[gs.Node] | None = None) -> Region:
        """Plans for ``node`` applied to ``x``: every plan of ``x`` extended by ``step`` (or ``affine``),
        and the cut (``x``'s region written on its own, ``node`` starting a segment with form ``own``).
        ``nodes``: the nodes read as this one op (``[node]`` unless given), the last one's output its result."""
        x = node.inputs[0] if x is None else x
        nodes = nodes or [node]
        if affine is not None:
            step, own = (lambda f: then(f, affine)), affine
        if own is None:
            own = step(AffineForm.identity())
        out = nodes[-1].outputs[0]
        inner = self.operand(x)
        if inner is None:
            return Region(out, [Plan(x, (own,), nodes, convs=convs, dtype=dtype)])
        plans, error = self.extended(inner, nodes, step, affine, convs, dtype)
        if not plans:
            self.ctx.decline(node, f"not merged with its input region: {error}")
        cut = Plan(x, (own,), nodes, (inner,), self.costs.total(inner), convs, dtype)
        return Region(out, prune(plans + [cut], lambda p: self.costs.plan_cost(p, out), cut), cut)

    def kept(self, nodes: list[gs.Node], *operands: Region | None) -> Plan:
        """``nodes`` (one op) left as they are, their operands' regions written on their own: a plan
        rooted at the last node's output."""
        below = tuple(r for r in operands if r is not None)
        closed = ZERO
        for n in nodes:
            closed = closed + self.costs.node_cost(n)
        for r in below:
            closed = closed + self.costs.total(r)
        return Plan(nodes[-1].outputs[0], (AffineForm.identity(),), [], below, closed, 0, None, tuple(nodes))

    def avgpool(self, node: gs.Node) -> Region:
        kernel, strides, pads, include_pad = avgpool_params(node)
        x = node.inputs[0]
        inner = self.operand(x)
        forms = [t for p in inner.plans for t in p.terms] if inner is not None else [AffineForm.identity()]
        channels = next((c for c in (channels_of(f, x) for f in forms) if c is not None), None)
        if channels is None:
            raise NotRepresentable("AveragePool channel count unknown (no shape information)", code="channels")
        pool = avgpool(channels, kernel, strides, pads, include_pad)
        return self.unary(node, lambda f: then(f, pool), own=pool)

    def reshape_border(self, node: gs.Node, pads, value, nodes: list[gs.Node] | None = None) -> Region:
        """Pad (``value`` given: a scalar, or one per channel) or crop (``value`` None) of a pointwise
        form's output; ``nodes``: the nodes that compute it (``[node]`` unless given).

        ``pad(F(x), p, v) = F'(pad0(x, p))`` (``F`` with pads ``+ p``) when ``v = F(0)``; by any other
        value the pad is not linear, and is left as it is unless merged with ``F``."""
        x = node.inputs[0]
        nodes = nodes or [node]
        rtol = precision_rtol(x.dtype)

        def step(form):
            form = as_conv(form, channels_of(form, x), len(pads) // 2)
            border = form.bias if value is None or all(p <= 0 for p in pads) else value
            return pad_pointwise(form, pads, border, rtol=rtol)

        inner = self.operand(x)
        if inner is None:
            return self.unary(node, step, nodes=nodes)
        try:
            own = step(AffineForm.identity())
        except NotRepresentable:  # a Pad by a non-zero value: only a merge makes it linear
            plans, error = self.extended(inner, nodes, step, None, 0, None)
            if not plans:
                raise error
            out = nodes[-1].outputs[0]
            kept = self.kept(nodes, inner)
            return Region(out, prune(plans + [kept], lambda p: self.costs.plan_cost(p, out), kept), kept)
        return self.unary(node, step, own=own, nodes=nodes)

    def pass_through(self, node: gs.Node) -> Region | None:
        if node.op == "Dropout" and len(node.inputs) > 2 and not self.ctx.is_absent(node.inputs[2]):
            mode = self.ctx.constant(node.inputs[2])
            if mode is None or bool(np.any(mode)):
                self.ctx.decline(node, "Dropout in training mode (random): exported with model.train()?")
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
                    terms, why = combine(list(both), lambda t: self.costs.term_cost(t, out, both),
                                         static_spatial(pa.root))
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
                self.ctx.decline(node, f"branches read different tensors "
                                                  f"('{plans_a[0].root.name}', '{plans_b[0].root.name}')")
            return None
        apart = self.kept([node], ra, rb)
        return Region(out, prune(merged + [apart], lambda p: self.costs.plan_cost(p, out), apart), apart)

    # ------------------------------------------------------------- rewrite
    def write(self, region: Region) -> None:
        """Write the region's chosen plan: its cut regions first, then its open segment."""
        if region.choice is None:
            self.costs.decide(region)
        plan = region.choice
        for below in plan.below:
            self.write(below)
        if region.why_apart is not None:
            at = plan.nodes[0] if plan.nodes else (plan.kept[-1] if plan.kept else None)
            if at is not None:
                self.ctx.decline(at, region.why_apart)
        for node, reason in plan.why:
            self.ctx.decline(node, reason)
        if plan.writes:
            write_segment(self.ctx, self.costs, plan, region.sink)
