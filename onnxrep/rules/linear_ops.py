"""Read ONNX nodes as algebra forms: a Conv as a ``ConvForm``, BN / Mul / Add / Sub / Div / Neg
by constants as an ``AffineForm``. Graph-facing but free of rewrite logic."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..algebra import AffineForm, ConvForm, NotRepresentable, bn_affine, channel_constant
from ..graph import GraphContext


def conv_form(ctx: GraphContext, node: gs.Node) -> ConvForm:
    """The Conv node as a ``ConvForm`` (weights kept in the model's dtype, no copy)."""
    if len(node.inputs) < 2:
        raise NotRepresentable("Conv without a weight input")
    w = ctx.constant(node.inputs[1])
    if w is None:
        raise NotRepresentable("conv weight is not a constant")
    b = None
    if len(node.inputs) > 2 and not ctx.is_absent(node.inputs[2]):
        b = ctx.constant(node.inputs[2])
        if b is None:
            raise NotRepresentable("conv bias is not a constant")
    a = node.attrs
    n = w.ndim - 2
    kernel = tuple(w.shape[2:])
    if "kernel_shape" in a and tuple(a["kernel_shape"]) != kernel:
        raise NotRepresentable("kernel_shape attribute disagrees with the weight")
    strides = tuple(a.get("strides", (1,) * n))
    dilations = tuple(a.get("dilations", (1,) * n))
    auto_pad = a.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("NOTSET", ""):
        pads = tuple(a.get("pads", (0,) * (2 * n)))
    elif auto_pad == "VALID":
        pads = (0,) * (2 * n)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if any(s != 1 for s in strides):
            raise NotRepresentable(f"auto_pad={auto_pad} with stride > 1 depends on the input size")
        total = [d * (k - 1) for d, k in zip(dilations, kernel)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        pads = tuple(small + big) if auto_pad == "SAME_UPPER" else tuple(big + small)
    else:
        raise NotRepresentable(f"unknown auto_pad {auto_pad!r}")
    return ConvForm.make(w, b, strides, pads, dilations, int(a.get("group", 1)))


def bn_form(ctx: GraphContext, node: gs.Node) -> AffineForm:
    """An inference-mode BatchNormalization as ``s x + t`` (channel axis 1)."""
    if node.attrs.get("training_mode", 0):
        raise NotRepresentable("BatchNormalization has training_mode=1 (model exported in training mode?)")
    if len(node.outputs) != 1:
        raise NotRepresentable("BatchNormalization has training outputs (running mean/var)")
    params = [ctx.constant(t) for t in node.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        raise NotRepresentable("BatchNormalization parameters are not constants")
    if any(p.ndim != 1 for p in params):
        raise NotRepresentable("BatchNormalization parameters are not vectors")
    return bn_affine(*params, epsilon=float(node.attrs.get("epsilon", 1e-5)))


def constant_affine(ctx: GraphContext, node: gs.Node) -> tuple[gs.Tensor, AffineForm] | None:
    """``(x, affine)`` for Mul/Add/Sub/Div/Neg of ``x`` by a per-channel or scalar constant.

    ``None`` when the node is not such an op (for example a Mul of two tensors).
    """
    op = node.op
    if op == "Neg" and len(node.inputs) == 1:
        return node.inputs[0], AffineForm(np.float64(-1.0), np.float64(0.0))
    if op not in ("Mul", "Add", "Sub", "Div") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    ca, cb = ctx.constant(a), ctx.constant(b)
    if (ca is None) == (cb is None):
        return None
    x, c, const_first = (b, ca, True) if cb is None else (a, cb, False)
    if not np.issubdtype(c.dtype, np.floating):
        raise NotRepresentable(f"{op} by a non-float constant")
    vec, rank, min_rank = channel_constant(c)
    one, zero = np.ones_like(vec), np.zeros_like(vec)
    if op == "Mul":
        aff = AffineForm(vec, zero, rank, min_rank)
    elif op == "Add":
        aff = AffineForm(one, vec, rank, min_rank)
    elif op == "Sub":
        aff = AffineForm(-one, vec, rank, min_rank) if const_first else AffineForm(one, -vec, rank, min_rank)
    else:  # Div
        if const_first:
            return None
        if np.any(vec == 0):
            raise NotRepresentable("division by a constant containing zeros")
        aff = AffineForm(1.0 / vec, zero, rank, min_rank)
    return x, aff
