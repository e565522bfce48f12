"""Writing a region's open segment: one Conv per term reading the root, summed by Adds into the sink."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...algebra import SizeDependentPads, cast_back
from ...graph import Builder, GraphContext
from ...report import MergedConv
from .costs import RegionCosts
from .plans import Plan


def write_segment(ctx: GraphContext, costs: RegionCosts, plan: Plan, sink: gs.Tensor) -> None:
    """The open segment as one Conv per term reading the root, summed by Adds into ``sink``."""
    builder = Builder(ctx, plan.nodes[-1].name or "conv")
    convs, outputs = [], []
    k = len(plan.terms)
    for i, term in enumerate(plan.terms):
        f = costs.term_conv(term, sink, plan.terms)
        w, b = cast_back(plan.dtype or np.float32, f.weight, f.bias)
        attrs = {"kernel_shape": list(f.kernel_shape), "strides": list(f.strides), "dilations": list(f.dilations),
                 "group": f.groups}
        if isinstance(f.pads, SizeDependentPads):
            attrs["auto_pad"] = f.pads.mode
        else:
            attrs["pads"] = list(f.pads)
        bias = builder.const("bias", b) if np.any(b) else None  # a zero bias is not written
        out = sink if k == 1 else builder.tensor(f"term{i}", dtype=sink.dtype)
        builder.op("Conv", [plan.root, builder.const("weight", w), bias], outputs=[out], attrs=attrs)
        convs.append(f)
        outputs.append(out)
    acc = outputs[0]
    for i, t in enumerate(outputs[1:], start=1):
        acc = builder.op("Add", [acc, t], outputs=[sink] if i == k - 1 else None)[0]
    made = ctx.replace(plan.nodes, builder.nodes) or []
    for node, f in zip((n for n in made if n.op == "Conv"), convs):
        ctx.merged(MergedConv.of(node.name, f.weight, f.groups))
