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
    #: multiply-accumulates per inference (``onnxrep.cost`` convention) and how many nodes with
    #: MACs had shapes that inference could not give (counted as 0)
    macs: int = 0
    macs_unknown: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) if len(t.dims) else 1


def graph_stats(model: onnx.ModelProto) -> GraphStats:
    """Top-level node count, Conv count, parameter count (initializers + Constant tensors), op histogram, MACs."""
    from .cost import model_macs

    g = model.graph
    ops = Counter(n.op_type for n in g.node)
    params = sum(_numel(t) for t in g.initializer)
    for n in g.node:
        if n.op_type == "Constant":
            params += sum(_numel(a.t) for a in n.attribute if a.name == "value")
    macs = model_macs(model)
    return GraphStats(len(g.node), ops.get("Conv", 0), params, dict(sorted(ops.items(), key=lambda kv: -kv[1])),
                      macs.macs, macs.unknown)


def estimated_size(model: onnx.ModelProto) -> int:
    """Bytes the model's tensors take, from their dims: a cheap stand-in for ``ByteSize()``.

    ``ByteSize()`` serializes the whole message with protobuf's upb backend (seconds and a
    second copy of the weights for a 2 GB model) and raises past 2 GB. Graph structure is
    small next to the weights; callers keep a margin below the 2 GB limit for it.
    """
    total = 0
    for t in model.graph.initializer:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 1
        total += _numel(t) * itemsize
    for n in model.graph.node:
        for a in n.attribute:
            if a.name == "value" and a.HasField("t"):
                dt = a.t.data_type
                total += _numel(a.t) * (onnx.helper.tensor_dtype_to_np_dtype(dt).itemsize if dt else 1)
    return total
