"""A conv on a map smaller than its kernel rewritten as an FC, where that costs fewer MACs and no more
parameters.

On a fixed input size a conv is a matrix (``algebra.conv_fc``): per output pixel it reads ``prod(k)`` taps,
the FC only the ``P_in`` pixels the map has. So when ``P_in < prod(k)`` (a KxK conv on a map smaller than
the kernel: late stages at small inputs, heads on pooled maps) the FC has fewer MACs, and when also
``P_in · P_out <= prod(k)`` no more weights. It is written as a pointwise conv with the conv's groups over
the flattened sample, between two Reshapes (``(-1, C·P_in, 1, ...)`` and back to ``(-1, E, *out)``); on a
1-pixel map the Reshapes are not needed and the conv becomes its centre taps. The report says why each
one fired; a Conv on a map the kernel fits in is left alone (the FC would cost more).
"""
from __future__ import annotations

import math

import numpy as np

from ..algebra import NotRepresentable, cast_back
from ..algebra.conv_fc import conv_as_fc
from ..cost import conv_cost
from ..graph import Builder, GraphContext
from ..rule import Pass
from .linear_ops import conv_form
from .views import sample_shape


class ConvToFC(Pass):
    name = "conv-to-fc"
    priority = 16  # after fold-conv-into-fc has taken the convs an FC absorbs

    def run(self, ctx: GraphContext) -> None:
        for node in ctx.nodes("Conv"):
            shape = sample_shape(node.inputs[0])
            if shape is None or len(shape) < 2 or len(node.inputs) < 2:
                continue
            in_size = shape[1:]
            kernel = ctx.constant_info(node.inputs[1])
            if kernel is None or math.prod(in_size) >= math.prod(kernel[0][2:]):
                continue  # the kernel fits in the map: the FC would cost more
            try:
                form = conv_form(ctx, node)
                fc, out_size = conv_as_fc(form, in_size)
            except NotRepresentable:
                continue
            has_bias = len(node.inputs) > 2 and not ctx.is_absent(node.inputs[2])
            before = conv_cost(form.weight_shape, math.prod(out_size), bias=has_bias)
            after = conv_cost(fc.weight_shape, 1, bias=has_bias)
            if not (after.macs < before.macs and after.params <= before.params):
                ctx.decline(node, f"as an FC over its {math.prod(in_size)}-pixel input it would cost "
                                  f"{after.describe()} against {before.describe()}")
                continue
            self.rewrite(ctx, node, form, fc, shape, out_size, has_bias,
                         f"a {'x'.join(map(str, form.kernel_shape))} conv on a {'x'.join(map(str, in_size))} map "
                         f"as an FC over its pixels: {before.macs:,} -> {after.macs:,} MACs and {before.params:,} "
                         f"-> {after.params:,} parameters per sample")

    @staticmethod
    def rewrite(ctx: GraphContext, node, form, fc, shape, out_size, has_bias: bool, why: str) -> None:
        try:
            w, b = cast_back(ctx.constant(node.inputs[1]).dtype, fc.weight, fc.bias)
        except NotRepresentable as exc:
            ctx.decline(node, str(exc))
            return
        n = len(out_size)
        b_ = Builder(ctx, node.name or "conv")
        attrs = {"kernel_shape": [1] * n, "group": fc.groups, "pads": [0] * (2 * n)}
        bias = b_.const("bias", b) if has_bias else None
        y = node.outputs[0]
        if math.prod(shape[1:]) == 1 and math.prod(out_size) == 1:
            b_.op("Conv", [node.inputs[0], b_.const("weight", w), bias], outputs=[y], attrs=attrs)
        else:
            rows = b_.op("Reshape", [node.inputs[0], b_.const("rows", np.array([-1, fc.in_channels] + [1] * n,
                                                                                  np.int64))])[0]
            out = b_.op("Conv", [rows, b_.const("weight", w), bias], attrs=attrs)[0]
            target = np.array([-1, form.out_channels, *out_size], np.int64)
            b_.op("Reshape", [out, b_.const("shape", target)], outputs=[y])
        if ctx.replace([node], b_.nodes, at=node):
            ctx.fired(node, why)
