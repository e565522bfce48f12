"""Collapse each linear region of the graph into one Conv.

Between two non-linear ops, every tensor ``t`` is an affine map of one *root* tensor ``r``:
``t = F(r)`` with ``F`` a ``ConvForm`` (``conv(r, W, b)``) or an ``AffineForm`` (``s r + t``, the
identity being ``s = 1, t = 0``). One forward pass in topological order computes ``F`` for every
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

``u`` is expanded only when it is *private* (read once, not a graph output); otherwise it is a
root itself, which is why every tensor shared by branches (RepVGG's ``x``) is exactly the root
of each branch. A region is replaced when it is maximal (every reader of its sink has been visited and none
absorbed it: it is emitted right then, so only growing regions hold float64 weights), its form
is a conv and it has at least two nodes. A combination that is not exact is declined with the
algebra's reason (``--explain``) and the parts on either side are still collapsed on their own;
a region that cannot be written out (negative pads, a float16 overflow) keeps its last node,
and its inputs' regions collapse in the next sweep.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..algebra import (AffineForm, ConvForm, NotRepresentable, add, affine_as_conv, affine_sum,
                       affine_then_affine, affine_then_conv, avgpool, cast_back, compose, conv_then_affine, pad_pointwise)
from ..graph import Builder, GraphContext, is_onnx_op
from ..pattern import Rule
from .linear_ops import avgpool_params, bn_form, constant_affine, conv_form, spatial_crop, spatial_pads


@dataclass(eq=False)
class Expr:
    """``sink = form(root)``, computed by ``nodes`` (empty for a plain tensor)."""
    root: gs.Tensor
    form: ConvForm | AffineForm
    sink: gs.Tensor
    nodes: list = field(default_factory=list)
    children: list = field(default_factory=list)
    convs: int = 0
    dtype: np.dtype | None = None
    absorbed: bool = False

    @classmethod
    def leaf(cls, tensor: gs.Tensor) -> "Expr":
        return cls(tensor, AffineForm.identity(), tensor)

    @property
    def trivial(self) -> bool:
        return not self.nodes


def sum_forms(a, b, sign: float):
    """``a + sign * b`` for any two forms on the same root."""
    if isinstance(a, AffineForm) and isinstance(b, AffineForm):
        return affine_sum(a, b, sign)
    if isinstance(a, AffineForm):
        a = affine_as_conv(a, b.in_channels, b.n_spatial)
    if isinstance(b, AffineForm):
        b = affine_as_conv(b, a.in_channels, a.n_spatial)
    return add(a, b, sign)


def then(first, second):
    """``second ∘ first``."""
    if isinstance(first, AffineForm):
        return affine_then_affine(first, second) if isinstance(second, AffineForm) else affine_then_conv(first, second)
    if isinstance(second, AffineForm):
        return conv_then_affine(first, second)
    return compose(first, second)


def as_conv(form, channels: int | None, n_spatial: int) -> ConvForm:
    """A form as a ``ConvForm`` (an affine becomes a 1x1 depthwise conv on ``channels``)."""
    if isinstance(form, ConvForm):
        return form
    channels = form.channels or channels
    if channels is None:
        raise NotRepresentable("number of channels unknown (no shape information)")
    return affine_as_conv(form, channels, n_spatial)


def channels_of(form, tensor: gs.Tensor) -> int | None:
    """Channels of ``tensor``, the output of ``form``: from the form, else from the tensor's shape."""
    if isinstance(form, ConvForm):
        return form.out_channels
    if form.channels is not None:
        return form.channels
    shape = tensor.shape
    if shape is not None and len(shape) > 1 and isinstance(shape[1], int):
        return shape[1]
    return None


def precision_rtol(dtype) -> float:
    """Relative tolerance for values an exporter computed in ``dtype`` (4 ulps, at least 1e-5)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return 1e-5
    return max(1e-5, 4 * float(np.finfo(dt).eps)) if dt.kind == "f" else 1e-5


class CollapseLinearRegions(Rule):
    name = "collapse-linear-regions"
    priority = 10

    def run(self, ctx: GraphContext) -> None:
        walk = _Walk(ctx, self.name)
        for node, reason in walk.blocked.values():  # still true: say it again in this sweep's report
            if ctx.is_live(node):
                ctx.decline(self.name, node, reason)
        unvisited = {}  # tensor name -> readers not visited yet
        for node in list(ctx.graph.nodes):
            if not ctx.is_live(node):
                continue
            walk.visit(node)
            # a region is maximal once every reader of its sink has been visited without absorbing it:
            # emit it now, so that only the regions still growing hold float64 weights
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
        self.memo: dict[str, Expr] = {}
        # id(node) -> (node, reason): regions ending there could not be written; kept across sweeps
        self.blocked = ctx.state.setdefault(rule + ":blocked", {})

    def flush(self, name: str) -> None:
        """Emit the region ending at tensor ``name`` unless a consumer absorbed it; forget it."""
        expr = self.memo.pop(name, None)
        if expr is not None and not expr.absorbed:
            self.emit(expr)

    # ------------------------------------------------------------ analysis
    def operand(self, t: gs.Tensor) -> Expr:
        e = self.memo.get(t.name)
        if e is not None and self.ctx.is_private(t) and not any(id(c) in self.blocked for c in t.outputs):
            return e
        return Expr.leaf(t)

    def visit(self, node: gs.Node) -> None:
        if not is_onnx_op(node):
            return
        if len([t for t in node.outputs if t.name]) != 1 or not node.outputs[0].name:
            if node.op == "BatchNormalization":
                self.ctx.decline(self.rule, node, "BatchNormalization in training mode (it outputs running "
                                                  "statistics): exported with model.train()?")
            return
        try:
            expr = self.expression(node)
        except NotRepresentable as exc:
            self.ctx.decline(self.rule, node, str(exc))
            return
        if expr is None:
            return
        for child in expr.children:
            child.absorbed = True
            self.memo.pop(child.sink.name, None)
            child.form = None  # its float64 weights are in the parent now
            child.children = []
        self.memo[expr.sink.name] = expr

    def expression(self, node: gs.Node) -> Expr | None:
        op = node.op
        if op == "Conv":
            return self.conv(node)
        if op == "BatchNormalization":
            return self.affine(node, node.inputs[0], bn_form(self.ctx, node))
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
                if self.operand(node.inputs[0]).trivial:
                    return None
                raise
        if op in ("Mul", "Add", "Sub", "Div", "Neg"):
            found = constant_affine(self.ctx, node)
            if found is not None:
                return self.affine(node, *found)
            if op in ("Add", "Sub") and len(node.inputs) == 2:
                return self.branch_sum(node, -1.0 if op == "Sub" else 1.0)
        return None

    def extend(self, node, inner: Expr, form, convs: int, dtype) -> Expr:
        return Expr(inner.root, form, node.outputs[0], inner.nodes + [node], [inner], inner.convs + convs,
                    inner.dtype if inner.dtype is not None else dtype)

    def conv(self, node: gs.Node) -> Expr:
        cf = conv_form(self.ctx, node)
        x = node.inputs[0]
        inner = self.operand(x)
        if not inner.trivial:
            try:
                return self.extend(node, inner, then(inner.form, cf), 1, cf.weight.dtype)
            except NotRepresentable as exc:
                self.ctx.decline(self.rule, node, f"not merged with its input region: {exc}")
        return Expr(x, cf, node.outputs[0], [node], [], 1, cf.weight.dtype)

    def affine(self, node: gs.Node, x: gs.Tensor, aff: AffineForm) -> Expr:
        inner = self.operand(x)
        if not inner.trivial:
            try:
                return self.extend(node, inner, then(inner.form, aff), 0, None)
            except NotRepresentable as exc:
                self.ctx.decline(self.rule, node, f"not merged with its input region: {exc}")
        return Expr(x, aff, node.outputs[0], [node])

    def avgpool(self, node: gs.Node) -> Expr:
        kernel, strides, pads, include_pad = avgpool_params(node)
        inner = self.operand(node.inputs[0])
        channels = channels_of(inner.form, node.inputs[0])
        if channels is None:
            raise NotRepresentable("AveragePool channel count unknown (no shape information)")
        pool = avgpool(channels, kernel, strides, pads, include_pad)
        if not inner.trivial:
            try:
                return self.extend(node, inner, then(inner.form, pool), 0, None)
            except NotRepresentable as exc:
                self.ctx.decline(self.rule, node, f"not merged with its input region: {exc}")
        x = node.inputs[0]
        return Expr(x, pool, node.outputs[0], [node])

    def reshape_border(self, node: gs.Node, pads, value) -> Expr:
        """Pad (``value`` given) or crop (``value`` None) of a pointwise form's output."""
        x = node.inputs[0]
        inner = self.operand(x)
        form = as_conv(inner.form, channels_of(inner.form, x), len(pads) // 2)
        border = form.bias if value is None or all(p <= 0 for p in pads) else value
        padded = pad_pointwise(form, pads, border, rtol=precision_rtol(x.dtype))
        if inner.trivial:
            return Expr(x, padded, node.outputs[0], [node])
        return self.extend(node, inner, padded, 0, None)

    def pass_through(self, node: gs.Node) -> Expr | None:
        if node.op == "Dropout" and len(node.inputs) > 2 and not self.ctx.is_absent(node.inputs[2]):
            mode = self.ctx.constant(node.inputs[2])
            if mode is None or bool(np.any(mode)):
                self.ctx.decline(self.rule, node, "Dropout in training mode (random): exported with model.train()?")
                return None
        inner = self.operand(node.inputs[0])
        if inner.trivial:
            return Expr(inner.root, inner.form, node.outputs[0], [node])
        return self.extend(node, inner, inner.form, 0, None)

    def branch_sum(self, node: gs.Node, sign: float) -> Expr | None:
        a, b = (self.operand(t) for t in node.inputs)
        if a.root.name != b.root.name:
            if a.convs or b.convs:
                self.ctx.decline(self.rule, node,
                                 f"branches read different tensors ('{a.root.name}', '{b.root.name}')")
            return None
        form = sum_forms(a.form, b.form, sign)
        return Expr(a.root, form, node.outputs[0], a.nodes + b.nodes + [node],
                    [e for e in (a, b) if not e.trivial], a.convs + b.convs,
                    a.dtype if a.dtype is not None else b.dtype)

    # ------------------------------------------------------------- rewrite
    def emit(self, expr: Expr) -> None:
        if not isinstance(expr.form, ConvForm) or len(expr.nodes) < 2 or expr.convs < 1:
            return
        try:
            self.replace(expr)
        except NotRepresentable as exc:
            # keep the region's last node; its inputs' regions collapse on their own next sweep
            last = expr.nodes[-1]
            if id(last) in self.blocked:
                return
            self.ctx.decline(self.rule, last, str(exc))
            if len(expr.nodes) > 2:
                self.blocked[id(last)] = (last, str(exc))
                self.ctx.changed = True

    def replace(self, expr: Expr) -> None:
        f = expr.form
        if any(p < 0 for p in f.pads):
            raise NotRepresentable("the merged conv would need negative padding")
        w, b = cast_back(expr.dtype or np.float32, f.weight, f.bias)
        builder = Builder(self.ctx, expr.nodes[-1].name or "conv")
        attrs = {"kernel_shape": list(f.kernel_shape), "strides": list(f.strides), "pads": list(f.pads),
                 "dilations": list(f.dilations), "group": f.groups}
        builder.op("Conv", [expr.root, builder.const("weight", w), builder.const("bias", b)],
                   outputs=[expr.sink], attrs=attrs)
        made = self.ctx.replace(self.rule, expr.nodes, builder.nodes)
        self.ctx.created.append(weight_ranges(made[0].name, f))


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
