"""BatchNormalization before a Gemm (or a MatMul with a constant 2-D weight) folded into it.

``Gemm(s x + t) = alpha (s x + t) op(B) + beta C = alpha x op(B') + C'`` with
``op(B')[k, :] = s[k] op(B)[k, :]`` and ``C' = beta C + alpha t op(B)`` (``s = gamma / sqrt(var + eps)``,
``t = beta_bn - mean s``). BN normalizes axis 1, which is the Gemm's reduction axis only for a
2-D input read untransposed (``transA = 0``): RepViT's and LeViT's ``BN_Linear`` classifier head.
"""
from __future__ import annotations

from ..algebra import affine_then_gemm, cast_back
from ..pattern import const, op, var
from ..rule import PatternRule
from .ops.linear import bn_form, gemm_attrs


class FoldBatchNormBeforeGemm(PatternRule):
    name = "fold-bn-before-gemm"
    priority = 20
    pattern = op(("Gemm", "MatMul"),
                 op("BatchNormalization", var("x"), const("scale"), const("bias"), const("mean"), const("var"),
                    name="bn"),
                 const("b"), const("c", optional=True), name="fc")

    def check(self, m):
        fc = m.node("fc")
        if m["b"].ndim != 2:
            return f"{fc.op} weight is not 2-D"
        if fc.attrs.get("transA", 0):
            return "Gemm reads its input transposed (BN normalizes the other axis)"
        shape = m["x"].shape
        if shape is None or len(shape) != 2:
            return "BatchNormalization input is not known to be 2-D (its channels are not the Gemm's features)"
        return None

    def rewrite(self, m, b):
        fc = m.node("fc")
        attrs, alpha, beta, trans_b = gemm_attrs(fc)
        new_b, new_c = affine_then_gemm(bn_form(m.ctx, m.node("bn")), m["b"], m["c"], alpha, beta, trans_b)
        cast_b, cast_c = cast_back(m["b"].dtype, new_b, new_c)
        attrs.update(alpha=alpha, beta=1.0)
        b.op("Gemm", [m["x"], b.const("weight", cast_b), b.const("bias", cast_c)], outputs=[m.output], attrs=attrs)
