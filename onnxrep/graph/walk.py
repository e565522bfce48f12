"""Walking ONNX protos into If / Loop / Scan bodies (the gs-side equivalent is ``convert.subgraphs``)."""
from __future__ import annotations

from typing import Iterator

import onnx


def bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The node's subgraphs (If branches, Loop / Scan bodies)."""
    found = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            found.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            found.extend(a.graphs)
    return found


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs, nested ones included."""
    for node in graph.node:
        yield node
        for body in bodies(node):
            yield from all_nodes(body)


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph in it, nested ones included."""
    yield graph
    for node in graph.node:
        for body in bodies(node):
            yield from all_graphs(body)


def inner_nodes(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The node and every node of its subgraphs."""
    return [node] + [n for body in bodies(node) for n in all_nodes(body)]


def outer_reads(node: onnx.NodeProto) -> list[str]:
    """Names read by the nodes of the node's subgraphs (outer-scope reads among them)."""
    return [i for body in bodies(node) for n in all_nodes(body) for i in n.input if i]
