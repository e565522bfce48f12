"""A complete custom onnxrep rule: fold a scalar Mul after a Gemm into the Gemm's alpha and beta.

    k * (alpha * A @ op(B) + beta * C) = (k * alpha) * A @ op(B) + (k * beta) * C

Use it with   onnxrep optimize in.onnx out.onnx --rules-from examples/custom_rule.py
or            onnxrep.optimize(model, rules=[FoldScalarMulIntoGemm()])
"""
import numpy as np

from onnxrep import PatternRule, const, op, var


class FoldScalarMulIntoGemm(PatternRule):
    name = "fold-scalar-mul-into-gemm"
    # Mul(Gemm(a, b, c?), k) in either input order; the Gemm's output must be read only by the Mul
    # (the engine checks that: a rule never deletes a tensor someone else still reads).
    pattern = op("Mul", op("Gemm", var("a"), var("b"), var("c", optional=True), name="gemm"), const("k"),
                 commutative=True)

    def check(self, m):
        if m["k"].size != 1:
            return f"Mul constant has shape {m['k'].shape}, not a scalar"
        if not np.isfinite(m["k"]).all():
            return "Mul constant is not finite"
        return None

    def rewrite(self, m, b):
        gemm = m.node("gemm")
        k = float(np.asarray(m["k"], dtype=np.float64).reshape(()))
        attrs = dict(gemm.attrs)
        attrs["alpha"] = float(attrs.get("alpha", 1.0)) * k
        attrs["beta"] = float(attrs.get("beta", 1.0)) * k
        b.op("Gemm", [m["a"], m["b"], m["c"]], outputs=[m.output], attrs=attrs)


RULES = [FoldScalarMulIntoGemm()]
