"""Size statistics of an ONNX model (read from the protobuf; external data is never loaded)."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx


@dataclass
class GraphStats:
    nodes: int
    convs: int
    params: int
    ops: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) if len(t.dims) else 1


def graph_stats(model: onnx.ModelProto) -> GraphStats:
    """Top-level node count, Conv count, parameter count (initializers + Constant tensors), op histogram."""
    g = model.graph
    ops = Counter(n.op_type for n in g.node)
    params = sum(_numel(t) for t in g.initializer)
    for n in g.node:
        if n.op_type == "Constant":
            params += sum(_numel(a.t) for a in n.attribute if a.name == "value")
    return GraphStats(len(g.node), ops.get("Conv", 0), params, dict(sorted(ops.items(), key=lambda kv: -kv[1])))
