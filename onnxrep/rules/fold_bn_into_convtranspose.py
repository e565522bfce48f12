"""BatchNormalization after a ConvTranspose folded into it, any groups.

ConvTranspose weights are laid out ``(I, O/g, k...)``: ``W[i, j]`` feeds output channel
``(i // (I/g)) * (O/g) + j``. So ``BN(convT(x, W, b)) = convT(x, W', s b + t)`` with
``W'[i, j] = s[(i // (I/g)) * (O/g) + j] W[i, j]``.
"""
from __future__ import annotations

from ..algebra import cast_back, convtranspose_then_affine
from ..pattern import const, op, var
from ..rule import PatternRule
from .ops.linear import bn_form


class FoldBatchNormIntoConvTranspose(PatternRule):
    name = "fold-bn-into-convtranspose"
    priority = 20
    pattern = op("BatchNormalization",
                 op("ConvTranspose", var("x"), const("w"), const("b", optional=True), name="convt"),
                 const("scale"), const("bias"), const("mean"), const("var"), name="bn")

    def rewrite(self, m, b):
        convt = m.node("convt")
        aff = bn_form(m.ctx, m.node("bn"))
        groups = int(convt.attrs.get("group", 1))
        w, bias = convtranspose_then_affine(m["w"], m["b"], groups, aff)
        w, bias = cast_back(m["w"].dtype, w, bias)
        b.op("ConvTranspose", [m["x"], b.const("weight", w), b.const("bias", bias)], outputs=[m.output],
             attrs=dict(convt.attrs))
