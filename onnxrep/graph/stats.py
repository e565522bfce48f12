"""Size statistics of an ONNX model (read from the protobuf; external data is never loaded)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx

from ..cost import PIN_BATCH, PIN_OTHER, op_macs
from ..report import GraphStats
from .shapes import inferred_shapes
from .walk import all_graphs


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) if len(t.dims) else 1


def _stored(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The tensors a graph stores: its initializers and its Constant nodes' values (not its bodies'), a
    ``value_float(s)`` / ``value_int(s)`` as the tensor it makes (an initializer holds it as well)."""
    stored = list(graph.initializer)
    for n in graph.node:
        if n.op_type != "Constant":
            continue
        for a in n.attribute:
            if a.name == "value" and a.HasField("t"):
                stored.append(a.t)
            elif a.name in _LISTED:
                elem, values = _LISTED[a.name], onnx.helper.get_attribute_value(a)
                dims = [len(values)] if isinstance(values, list) else []
                stored.append(onnx.helper.make_tensor(a.name, elem, dims, values if dims else [values]))
    return stored


#: a Constant's values written as attributes of their own, and their element type
_LISTED = {"value_float": onnx.TensorProto.FLOAT, "value_floats": onnx.TensorProto.FLOAT,
           "value_int": onnx.TensorProto.INT64, "value_ints": onnx.TensorProto.INT64}


def graph_stats(model: onnx.ModelProto) -> GraphStats:
    """The main graph's node count, Conv count, op histogram and MACs; the parameters (initializers and
    Constant tensors) of every graph: a subgraph's weights are the model's too, and an export may move an
    initializer that only a body reads into that body."""
    g = model.graph
    ops = Counter(n.op_type for n in g.node)
    params = sum(_numel(t) for graph in all_graphs(g) for t in _stored(graph))
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
    for graph in all_graphs(model.graph):
        for t in _stored(graph):
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 1
            total += _numel(t) * itemsize
    return total


@dataclass(frozen=True)
class ModelMacs:
    macs: int
    unknown: int  # nodes with MACs whose shapes inference could not give (counted as 0)


def _dims(v: onnx.ValueInfoProto) -> list[int] | None:
    tt = v.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]


def model_macs(model: onnx.ModelProto) -> ModelMacs:
    """MACs of the main graph of ``model`` (If / Loop / Scan bodies are not counted).

    Dynamic input dims are pinned to ``PIN_BATCH`` on axis 0 and ``PIN_OTHER`` elsewhere.
    Weights are never loaded: their shapes come from the initializers' dims.
    """
    g = model.graph
    shapes: dict[str, list[int] | None] = {t.name: list(t.dims) for t in g.initializer}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        shapes.setdefault(v.name, _dims(v))
    needs = {"Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool"}
    if any(n.op_type in needs for n in g.node):
        for name, v in inferred_shapes(model, pin=(PIN_BATCH, PIN_OTHER)).items():
            if name not in shapes or shapes[name] is None or None in shapes[name]:
                shapes[name] = _dims(v)
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)
    total = unknown = 0
    for n in g.node:
        if n.op_type not in needs or n.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute
                 if a.name in ("kernel_shape", "transA", "transB")}
        macs = op_macs(n.op_type, attrs, [shapes.get(i) if i else None for i in n.input],
                       [shapes.get(o) for o in n.output])
        if macs is None:
            unknown += 1
        else:
            total += macs
    return ModelMacs(total, unknown)
