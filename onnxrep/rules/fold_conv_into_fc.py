"""A conv on a fixed-size view summed with an FC on the flattened view of the same tensor: one FC.

RepMLP (REPARAM.md transform 10) partitions a feature map into ``h×w`` patches, ``T``, and sums two
branches: an FC over each sample of ``T`` flattened (a pointwise conv over ``S·h·w`` channels with
``groups = S``, or a Gemm) and depthwise convs on ``T`` viewed as ``(·, S, h, w)``. Both are linear in
the same numbers: with ``x`` a row of ``T`` (row-major, so every view of ``T`` holds the same row),

    FC(x) + flat(conv(view(x))) = (W_fc + M) x + (b_fc + repeat(b_conv, h'·w'))

where ``M`` is the conv's matrix on the fixed size (``algebra.conv_fc``). The branches' outputs are
viewed alike before the Add (same shape; views keep the row-major order), so the sum is the merged
FC's output, viewed as the FC branch's was. The region collapse first merges the conv branches and
their BNs into one conv; this rule then folds that conv into the FC, and with it the BNs between the FC
and the Add (RepMLP's BN over ``S`` share-sets after a Reshape): the FC's output channel ``j`` is element
``j`` of a row, so a BN over ``S`` channels of that row (viewed as one sample) scales it by
``s[j // (O/S)]``. A Gemm / MatMul FC (2-D rows, constant weight) is the pointwise conv with
``W = alpha op(B)^T`` and bias ``beta C``, and is written back as a Gemm.

It merges only when the result costs no more MACs than the two branches and no more parameters but one:
a bias-free FC (RepMLP's fc3) takes on a bias of its width ``O = S·h·w``, where the branches had ``S`` per
BN and conv (the authors' deploy FC has the same bias; a branch and its nodes go). A conv whose groups do not fit the FC's blocks would densify it: declined
when that costs more.
"""
from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from ..algebra import AffineForm, ConvForm, NotRepresentable, add, cast_back, conv_then_affine, is_pointwise
from ..algebra.conv_fc import conv_as_fc
from ..algebra.forms import f64
from ..cost import Cost, conv_cost
from ..graph import Builder, GraphContext, is_onnx_op
from ..report import MergedConv
from ..rule import Pass
from .ops.linear import bn_form, conv_form, gemm_attrs, has_bias
from .ops.views import sample_shape, view_source


_FC_OPS = ("Conv", "Gemm", "MatMul")


def _inference_bn(node: gs.Node) -> bool:
    return node.op == "BatchNormalization" and is_onnx_op(node) and len([o for o in node.outputs if o.name]) == 1


def after_bns(ctx: GraphContext, fc: ConvForm, chain: list[gs.Node]) -> ConvForm:
    """The FC followed by the chain's BNs, each over a view of the FC's rows (``O`` divisible by its
    channels ``S``: output channel ``j`` is in BN channel ``j // (O / S)``)."""
    for node in chain:
        if node.op != "BatchNormalization":
            continue
        shape = sample_shape(node.inputs[0])
        if not shape or math.prod(shape) != fc.out_channels or fc.out_channels % shape[0]:
            raise NotRepresentable(f"a BatchNormalization over a view {shape} that is not one row of the FC's "
                                   f"{fc.out_channels} outputs", code="channels")
        s, t = bn_form(ctx, node).vectors(shape[0])
        r = fc.out_channels // shape[0]
        fc = conv_then_affine(fc, AffineForm(np.repeat(s, r), np.repeat(t, r)))
    return fc


def fc_form(ctx: GraphContext, fc: gs.Node, n_spatial: int) -> ConvForm:
    """The FC as a pointwise conv over its input's channels (``n_spatial`` kernel axes of size 1)."""
    if fc.op == "Conv":
        f = conv_form(ctx, fc)
        if not is_pointwise(f) or any(f.pads) or f.n_spatial != n_spatial:
            raise NotRepresentable("the FC conv is not pointwise", code="shape")
        return f
    attrs, alpha, beta, trans_b = gemm_attrs(fc)
    if attrs.get("transA", 0):
        raise NotRepresentable("the Gemm reads its input transposed", code="shape")
    weight = ctx.constant(fc.inputs[1])
    if weight is None or weight.ndim != 2:
        raise NotRepresentable(f"{fc.op} weight is not a constant matrix", code="not-constant")
    w = alpha * (f64(weight) if trans_b else f64(weight).T)  # (N, K)
    bias = np.zeros(w.shape[0])
    if has_bias(ctx, fc):
        c = ctx.constant(fc.inputs[2])
        if c is None or c.size not in (1, w.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
            raise NotRepresentable("Gemm bias is not a constant per output", code="not-constant")
        bias = bias + beta * f64(c).reshape(-1)
    return ConvForm.make(w.reshape(w.shape + (1,) * n_spatial), bias)


class FoldConvIntoFC(Pass):
    name = "fold-conv-into-fc"
    priority = 12  # after the region collapse has merged each side's branches and BNs

    def run(self, ctx: GraphContext) -> None:
        for node in ctx.nodes("Add"):
            if len(node.inputs) != 2 or node.inputs[0] is node.inputs[1]:
                continue
            for fc_side, conv_side in ((0, 1), (1, 0)):
                found = self.branches(ctx, node, node.inputs[fc_side], node.inputs[conv_side])
                if found is None:
                    continue
                if isinstance(found, str):
                    ctx.decline(node, found)
                    break
                self.rewrite(ctx, node, *found)
                break

    @staticmethod
    def branches(ctx: GraphContext, add_node: gs.Node, a: gs.Tensor, c: gs.Tensor):
        """``(fc, fc_views, conv, conv_views)`` when ``a`` views an FC's output and ``c`` a conv's on the
        same rows; ``None`` when the Add is not such a sum; a string when it is but cannot merge."""
        fc_out, fc_views = view_source(ctx, a, also=_inference_bn)  # BNs over the FC's rows
        conv_out, conv_views = view_source(ctx, c)
        fc, conv = ctx.producer(fc_out), ctx.producer(conv_out)
        if not (fc is not None and conv is not None and is_onnx_op(fc) and is_onnx_op(conv)
                and fc.op in _FC_OPS and conv.op == "Conv" and fc is not conv):
            return None
        fc_in, conv_in = fc.inputs[0], conv.inputs[0]
        if view_source(ctx, fc_in)[0] is not view_source(ctx, conv_in)[0]:
            return None  # not two views of one tensor
        s_fc_in, s_fc_out = sample_shape(fc_in), sample_shape(fc_out)
        s_in, s_out = sample_shape(conv_in), sample_shape(conv_out)
        if any(s is None for s in (s_fc_in, s_fc_out, s_in, s_out)) or len(s_in) < 2 or len(s_out) < 2:
            return "a conv and an FC on views of one tensor, but their shapes are not static"
        if fc.op != "Conv" and (len(s_fc_in) != 1 or len(s_fc_out) != 1):
            return f"the {fc.op} does not read rows (its input is not 2-D)"
        if any(d != 1 for d in s_fc_in[1:] + s_fc_out[1:]):
            return None  # the 'FC' is a conv on a spatial map: the region collapse's business
        if sample_shape(a) != sample_shape(c) or a.shape is None or c.shape is None or len(a.shape) != len(c.shape):
            return "the branches are viewed differently before the Add"
        if math.prod(s_in) != s_fc_in[0] or math.prod(s_out) != s_fc_out[0]:
            return (f"the conv's rows ({math.prod(s_in)} -> {math.prod(s_out)}) are not the FC's "
                    f"({s_fc_in[0]} -> {s_fc_out[0]})")
        return fc, fc_views, conv, conv_views

    def rewrite(self, ctx: GraphContext, add_node: gs.Node, fc: gs.Node, fc_views: list[gs.Node],
                conv: gs.Node, conv_views: list[gs.Node]) -> None:
        try:
            conv_f = conv_form(ctx, conv)
            fc_f = after_bns(ctx, fc_form(ctx, fc, conv_f.n_spatial), fc_views)
            in_size = sample_shape(conv.inputs[0])[1:]
            matrix, out_size = conv_as_fc(conv_f, in_size)
            merged = add(fc_f, matrix)
        except NotRepresentable as exc:
            ctx.decline(add_node, f"conv not folded into the FC: {exc}")
            return
        fc_bias = has_bias(ctx, fc)
        bn_params = sum(4 * sample_shape(n.inputs[0])[0] for n in fc_views if n.op == "BatchNormalization")
        before = (conv_cost(fc_f.weight_shape, 1, bias=fc_bias) + Cost(0, bn_params, 0)
                  + conv_cost(conv_f.weight_shape, math.prod(out_size), bias=bool(conv_f.bias.any())))
        after = conv_cost(merged.weight_shape, 1, bias=True)
        # the one growth allowed: the bias a bias-free FC takes on (one vector of its width) to drop a branch
        if after.macs > before.macs or after.params - before.params > (0 if fc_bias else merged.out_channels):
            ctx.decline(add_node, f"conv not folded into the FC: costlier merged ({after.describe()} per sample, "
                                  f"groups {fc_f.groups} and {conv_f.groups} -> {merged.groups}) than apart "
                                  f"({before.describe()})")
            return
        try:
            w, b = cast_back(ctx.constant(fc.inputs[1]).dtype, merged.weight, merged.bias)
        except NotRepresentable as exc:
            ctx.decline(add_node, f"conv not folded into the FC: {exc}")
            return
        builder = Builder(ctx, fc.name or "fc")
        if fc.op == "Conv":
            attrs = {k: v for k, v in fc.attrs.items() if k != "group"}
            attrs["group"] = merged.groups
            fc_op, w_fc = "Conv", w
        else:  # groups 1 (a Gemm has no blocks): y = x W^T + b
            attrs = {"transB": 1}
            fc_op, w_fc = "Gemm", w.reshape(w.shape[:2])
        out = add_node.outputs[0]
        # the merged FC writes what the FC wrote, viewed as before (the BNs are in it); the last view the sum
        views = [v for v in fc_views if v.op != "BatchNormalization"]
        results = [fc.outputs[0]] + [v.outputs[0] for v in views]
        outputs = [builder.tensor("fc", dtype=r.dtype, shape=r.shape) for r in results[:-1]] + [out]
        t = fc.inputs[0]
        for node, result in zip([fc] + views, outputs):
            if node is fc:
                t = builder.op(fc_op, [t, builder.const("weight", w_fc), builder.const("bias", b)], outputs=[result],
                               attrs=attrs)[0]
            else:
                t = builder.op(node.op, [t, *node.inputs[1:]], outputs=[result], attrs=dict(node.attrs))[0]
        region = [conv, *conv_views, fc, *fc_views, add_node]
        made = ctx.replace(region, builder.nodes, at=add_node)
        if made and fc_op == "Conv":
            ctx.merged(MergedConv.of(made[0].name, w, merged.groups))
