"""What the corpus test and benchmark read from a model: its interface, and its size with subgraphs.

onnxrep's report (``graph_stats``) counts the nodes of the top-level graph only (its parameters in every
graph); a model whose work sits in If / Loop / Scan bodies (silero-vad, SLANet-plus) has most of its
nodes there. ``deep_counts`` counts every graph, independently of onnxrep.
"""
from __future__ import annotations

import math

import onnx
from onnx import AttributeProto


def _numel(t: onnx.TensorProto) -> int:
    return math.prod(t.dims)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def deep_counts(graph: onnx.GraphProto) -> tuple[int, int]:
    """``(nodes, parameters)`` of ``graph`` and every subgraph in it: parameters are the elements of
    initializers, sparse initializers and Constant values, ``value_float(s)`` / ``value_int(s)`` included (the
    report's convention, all graphs)."""
    nodes = len(graph.node)
    params = sum(_numel(t) for t in graph.initializer)
    params += sum(_numel(s.values) for s in graph.sparse_initializer)
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            params += sum(_numel(a.t) for a in n.attribute if a.type == AttributeProto.TENSOR)
            params += sum(1 for a in n.attribute if a.type in (AttributeProto.FLOAT, AttributeProto.INT))
            params += sum(len(a.floats) + len(a.ints) for a in n.attribute
                          if a.type in (AttributeProto.FLOATS, AttributeProto.INTS))
        for g in subgraphs(n):
            sub_nodes, sub_params = deep_counts(g)
            nodes += sub_nodes
            params += sub_params
    return nodes, params


def _dims(vi: onnx.ValueInfoProto):
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)


def interface(model: onnx.ModelProto) -> dict[str, list[tuple]]:
    """The real inputs and the outputs, in order: ``(name, element type, declared dims)``; a dim is its
    value, its ``dim_param`` or None (unknown), and the dims are None when no shape is declared."""
    inits = {t.name for t in model.graph.initializer} | {t.values.name for t in model.graph.sparse_initializer}
    def row(vi):
        return (vi.name, onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type), _dims(vi))
    return {"inputs": [row(vi) for vi in model.graph.input if vi.name not in inits],
            "outputs": [row(vi) for vi in model.graph.output]}
