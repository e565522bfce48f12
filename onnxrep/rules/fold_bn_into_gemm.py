"""BatchNormalization after a Gemm, or after a MatMul with a constant 2-D weight, folded into a Gemm.

``BN(alpha A op(B) + beta C) = alpha A op(B') + C'`` with ``op(B')[:, n] = s[n] op(B)[:, n]`` and
``C' = s beta C + t`` (``s = gamma / sqrt(var + eps)``, ``t = beta_bn - mean s``). A MatMul is the
Gemm with ``alpha = 1`` and no ``C``; BN normalizes axis 1, so the MatMul output must be 2-D.
"""
from __future__ import annotations

from ..algebra import cast_back, gemm_then_affine
from ..pattern import const, op, var
from ..rule import PatternRule
from .ops.linear import bn_form, gemm_attrs


class FoldBatchNormIntoGemm(PatternRule):
    name = "fold-bn-into-gemm"
    priority = 20
    pattern = op("BatchNormalization",
                 op(("Gemm", "MatMul"), var("a"), const("b"), const("c", optional=True), name="fc"),
                 const("scale"), const("bias"), const("mean"), const("var"), name="bn")

    def check(self, m):
        fc = m.node("fc")
        if m["b"].ndim != 2:
            return f"{fc.op} weight is not 2-D"
        if fc.op == "MatMul":
            shape = m["a"].shape
            if shape is None or len(shape) != 2:
                return "MatMul input is not known to be 2-D (BN would normalize another axis)"
        return None

    def rewrite(self, m, b):
        fc = m.node("fc")
        aff = bn_form(m.ctx, m.node("bn"))
        attrs, alpha, beta, trans_b = gemm_attrs(fc)
        new_b, new_c = gemm_then_affine(m["b"], m["c"], alpha, beta, trans_b, aff)
        cast_b, cast_c = cast_back(m["b"].dtype, new_b, new_c)
        attrs.update(alpha=alpha, beta=1.0)
        b.op("Gemm", [m["a"], b.const("weight", cast_b), b.const("bias", cast_c)], outputs=[m.output], attrs=attrs)
