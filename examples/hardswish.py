"""A pattern rule with alternatives: two spellings of HardSwish fused into the op (opset 14+).

    hardswish(x) = x * HardSigmoid(x; alpha=1/6, beta=1/2) = x * Clip(x + 3, 0, 6) / 6
"""
from onnxrep import PatternRule, any_of, approx, const, op, var

X = var("x")  # used three times: every occurrence must be the same tensor


class FuseHardSwish(PatternRule):
    """x * HardSigmoid(x) and x * Clip(x + 3, 0, 6) / 6  =>  HardSwish(x)."""
    name = "fuse-hardswish"
    min_opset = 14  # HardSwish
    pattern = any_of(
        op("Mul", X, op("HardSigmoid", X, attrs={"alpha": approx(1 / 6), "beta": approx(0.5)}),
           commutative=True),
        op("Div", op("Mul", X, op("Clip", op("Add", X, const("three", value=3), commutative=True),
                                  const("lo", value=0), const("hi", value=6)), commutative=True),
           const("six", value=6)))

    def rewrite(self, m, b):
        b.op("HardSwish", [m.tensor("x")], outputs=[m.output])
