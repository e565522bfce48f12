"""A sum of two Transposes by one permutation is the Transpose of the sum.

``Transpose_p(a) ± Transpose_p(b) = Transpose_p(a ± b)``: both operands have rank ``len(p)``, and
elementwise arithmetic (broadcasting included) commutes with permuting the axes of both operands
alike. jax2onnx leaves such Transposes where a network returns to its NHWC layout inside a block
(each branch of the last RepVGG block ends in its own NCHW->NHWC Transpose before the sum); with
the Transpose after the sum, the branches are parallel convs of one tensor again, and the region
collapse merges them. One Transpose less per rewrite.
"""
from __future__ import annotations

from ..pattern import op, var
from ..rule import PatternRule


class SinkTransposesBelowSum(PatternRule):
    name = "sink-transposes-below-sum"
    priority = 6  # before the region collapse (10), which then sees the branches side by side
    pattern = op(("Add", "Sub"), op("Transpose", var("a"), name="ta"), op("Transpose", var("b"), name="tb"),
                 name="sum")

    def check(self, m):
        pa, pb = m.node("ta").attrs.get("perm"), m.node("tb").attrs.get("perm")
        if pa is None or pb is None:
            return "a Transpose without perm (the reversal; ranks may differ)"
        if list(pa) != list(pb):
            return f"the operands are transposed differently ({list(pa)} vs {list(pb)})"
        return None

    def rewrite(self, m, b):
        node = m.node("sum")
        total = b.op(node.op, [m["a"], m["b"]], outputs=[b.tensor("sum", dtype=m.output.dtype)])[0]
        b.op("Transpose", [total], outputs=[m.output], attrs={"perm": list(m.node("ta").attrs["perm"])})
