"""YOLOv7's ImplicitA folded into the conv that reads it (pads 0, groups 1):

    conv(x + a, W, c) = conv(x, W, c + sum_{i,k} W[:, i, k] a[i])
"""
import numpy as np

from onnxrep import PatternRule, const, op, var


class FoldImplicitA(PatternRule):
    """Conv(x + a) with a per-channel constant a  =>  Conv(x) with a's share in its bias."""
    name = "fold-implicit-a"
    priority = 5  # before collapse-linear-regions (10), which folds it as part of a larger region
    pattern = op("Conv", op("Add", var("x"), const("a"), commutative=True), const("w"),
                 const("c", optional=True), name="conv")

    def check(self, m):
        conv, w = m.node("conv"), m["w"]
        if any(conv.attrs.get("pads", [])) or conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return "conv pads its input (x + a would be padded with zeros, not with -a)"
        if conv.attrs.get("group", 1) != 1:
            return "grouped conv"
        shape = (1,) * (w.ndim - m["a"].ndim) + m["a"].shape  # as it broadcasts against x
        if len(shape) != w.ndim or shape[1] != m["a"].size or m["a"].size != w.shape[1]:
            return f"constant of shape {m['a'].shape} is not one value per input channel"
        return None

    def rewrite(self, m, b):
        w = m["w"].astype(np.float64)
        c = np.zeros(w.shape[0]) if m["c"] is None else m["c"].astype(np.float64)
        c = c + w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2) @ m["a"].reshape(-1).astype(np.float64)
        b.op("Conv", [m.tensor("x"), m.tensor("w"), b.const("bias", c.astype(m["w"].dtype))],
             outputs=[m.output], attrs=m.node("conv").attrs)
