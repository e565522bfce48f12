"""A conv whose kernel reaches past its (static) input: the taps that only read padding cropped away.

``algebra.crop``: on a map smaller than the kernel (a 7x7 depthwise conv on a 2x2 map at the end of a
small-input network, a 3x3 conv on a pooled 1x1 map) most taps multiply zero padding; the conv with the
used taps only (and pads shrunk by as much) computes the same output. Fewer MACs and parameters, the same
one Conv node. The report says what each crop saved.

This is where "a conv on a small fixed map rewritten as an FC where that is cheaper" (``algebra.conv_fc``)
lands: after the crop, the FC over the map's pixels never costs fewer MACs *and* no more parameters than
the cropped conv (docs/design-notes.md), so the FC form is used only where it absorbs a conv branch
(``fold-conv-into-fc``).
"""
from __future__ import annotations

import math

from ..algebra import NotRepresentable, cast_back
from ..algebra.crop import crop_dead_taps
from ..graph import Builder, GraphContext
from ..rule import Pass
from .ops.linear import conv_form
from .ops.views import sample_shape


class CropDeadTaps(Pass):
    name = "crop-dead-taps"
    priority = 16

    def run(self, ctx: GraphContext) -> None:
        for node in ctx.nodes("Conv"):
            shape = sample_shape(node.inputs[0])
            info = ctx.constant_info(node.inputs[1]) if len(node.inputs) > 1 else None
            if shape is None or len(shape) < 2 or info is None or len(info[0]) != len(shape) + 1:
                continue
            in_size, kernel = shape[1:], info[0][2:]
            if all(k == 1 for k in kernel):
                continue
            try:
                form = conv_form(ctx, node)
                cropped = crop_dead_taps(form, in_size)
            except NotRepresentable:
                continue
            if cropped is None:
                continue
            try:
                w, = cast_back(ctx.constant(node.inputs[1]).dtype, cropped.weight)
            except NotRepresentable as exc:
                ctx.decline(node, str(exc))
                continue
            b = Builder(ctx, node.name or "conv")
            attrs = {k: v for k, v in node.attrs.items() if k not in ("kernel_shape", "pads", "auto_pad")}
            attrs.update(kernel_shape=list(cropped.kernel_shape), pads=list(cropped.pads))
            b.op("Conv", [node.inputs[0], b.const("weight", w), *node.inputs[2:3]], outputs=[node.outputs[0]],
                 attrs=attrs)
            if ctx.replace([node], b.nodes, at=node):
                ctx.fired(node, f"a {'x'.join(map(str, kernel))} kernel on a {'x'.join(map(str, in_size))} map reads "
                                f"its input with {'x'.join(map(str, cropped.kernel_shape))} taps only: "
                                f"{math.prod(kernel)} -> {math.prod(cropped.kernel_shape)} MACs per output and "
                                f"weights {math.prod(form.weight_shape):,} -> {math.prod(cropped.weight_shape):,}")
