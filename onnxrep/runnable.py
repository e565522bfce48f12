"""The part of a model onnxruntime can run, when it cannot run the whole.

A node onnxruntime cannot run (a TensorRT plugin, a custom-domain op, an op without a CPU kernel)
*blocks* every tensor computed from it. What can be checked is every tensor that feeds a blocked
node and is not computed from one, and every graph output not computed from one: those become the
outputs of a verification model cut from the graph (:func:`cut`: the nodes they depend on, nothing
else). Blocked nodes are found from the schemas ONNX and onnxruntime know, then from onnxruntime's
own refusals (it names the node it has no kernel for), one at a time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import onnx
from onnx import defs

from .graph.foreign import ONNX_DOMAINS, onnx_opset
from .graph.shapes import inferred_shapes

#: a node onnxruntime refuses, as its messages name it
_NODE_NAMED = [re.compile(r"node with name '([^']*)'"), re.compile(r'In Node, \("([^"]*)", (\w+)'),
               re.compile(r"Node \(([^)]*)\)")]
_OP_NAMED = [re.compile(r"implementation for (\w+)\("), re.compile(r"(?:^|\s)([\w.]+):(\w+)\(-?\d+\) is not a registered")]
#: refusals followed one by one at most
MAX_REFUSALS = 32


@lru_cache(maxsize=1)
def _ort_schemas() -> frozenset[tuple[str, str]]:
    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import get_all_operator_schema
        return frozenset((s.domain, s.name) for s in get_all_operator_schema())
    except Exception:  # noqa: BLE001 - an older onnxruntime: ONNX's schemas only
        return frozenset()


def known_to_runtime(node: onnx.NodeProto, opset: int) -> bool:
    """True when ONNX or onnxruntime has a schema for the node's op (it may still lack a kernel)."""
    domain = "" if node.domain in ONNX_DOMAINS else node.domain
    if (domain, node.op_type) in _ort_schemas():
        return True
    try:
        defs.get_schema(node.op_type, opset if domain == "" else 1 << 30, domain)
        return True
    except Exception:
        return False


def node_key(node: onnx.NodeProto) -> tuple[str, ...]:
    """A node's identity in a model and in its optimized copy: its output names (kept by onnxrep)."""
    return tuple(node.output)


def _inner_nodes(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The node and every node of its If / Loop / Scan bodies."""
    found = [node]
    for a in node.attribute:
        for body in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in body.node:
                found.extend(_inner_nodes(n))
    return found


def refused_nodes(message: str, model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The main-graph nodes an onnxruntime error message names, by node name, else by op type (a
    node inside an If / Loop / Scan body blocks the node that holds the body)."""
    def owners(match) -> list[onnx.NodeProto]:
        return [top for top in model.graph.node if any(match(n) for n in _inner_nodes(top))]

    for pattern in _NODE_NAMED:
        m = pattern.search(message)
        if m and m.group(1):
            hits = owners(lambda n: n.name == m.group(1))
            if hits:
                return hits
    for pattern in _OP_NAMED:
        m = pattern.search(message)
        if m:
            op = m.groups()[-1]
            domain = m.group(1) if len(m.groups()) == 2 else None
            return owners(lambda n: n.op_type == op and (domain is None or n.domain == domain))
    return []


@dataclass
class Plan:
    """What can be checked: ``targets`` (tensor name -> what it is), and the outputs that cannot."""
    targets: dict[str, str] = field(default_factory=dict)
    unverifiable: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)   # "op 'name'" of each blocked node


def plan(model: onnx.ModelProto, blocked_keys: set[tuple[str, ...]]) -> Plan:
    """The verifiable tensors of ``model`` when the nodes ``blocked_keys`` cannot run."""
    g = model.graph
    blocked = [n for n in g.node if node_key(n) in blocked_keys]
    tainted: set[str] = set()
    producer_blocked = {id(n) for n in blocked}
    for node in g.node:  # graph order is topological
        reads = list(node.input) + _outer_reads(node)
        if id(node) in producer_blocked or any(i in tainted for i in reads if i):
            tainted.update(o for o in node.output if o)
    result = Plan(blocked=[f"{n.op_type} '{n.name or n.output[0]}'" for n in blocked])
    for n in blocked:
        what = f"input of {n.op_type} '{n.name or n.output[0]}'"
        for i in n.input:
            if not i or i in result.targets:
                continue
            if i in tainted:
                continue
            result.targets[i] = what
    for o in g.output:
        if o.name in tainted:
            result.unverifiable[o.name] = "computed from an op onnxruntime cannot run"
        else:
            result.targets.setdefault(o.name, "graph output")
    computed = {o for n in g.node for o in n.output if o}  # a graph input or a weight: nothing to compare
    result.targets = {k: v for k, v in result.targets.items() if k in computed}
    return result


def _outer_reads(node: onnx.NodeProto) -> list[str]:
    names = []
    for a in node.attribute:
        for body in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in body.node:
                names.extend(i for i in n.input if i)
                names.extend(_outer_reads(n))
    return names


def cut(model: onnx.ModelProto, targets: list[str]) -> onnx.ModelProto:
    """A model with ``targets`` as its outputs and only the nodes they depend on (same inputs).

    Initializers are shared by copy only where read; weights are not duplicated beyond those.
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output if o}
    keep, stack, seen = set(), list(targets), set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(i for i in node.input if i)
        stack.extend(_outer_reads(node))
    out = onnx.ModelProto()
    for attr in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(out, attr, getattr(model, attr))
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    og = out.graph
    og.name = g.name
    og.node.extend(n for n in g.node if id(n) in keep)
    og.input.extend(g.input)
    og.initializer.extend(t for t in g.initializer if t.name in seen or t.name in {i.name for i in g.input})
    og.sparse_initializer.extend(t for t in g.sparse_initializer if t.values.name in seen)
    declared = {v.name: v for v in list(g.output) + list(g.value_info)}
    if any(name not in declared for name in targets):
        declared = {**inferred_shapes(model), **declared}  # typed outputs where inference can tell
    for name in targets:
        og.output.append(declared[name] if name in declared else onnx.ValueInfoProto(name=name))
    og.value_info.extend(v for v in g.value_info if v.name in seen and v.name not in targets)
    return out


def statically_blocked(model: onnx.ModelProto) -> set[tuple[str, ...]]:
    """Nodes whose op neither ONNX nor onnxruntime defines."""
    opset = onnx_opset(model)
    return {node_key(n) for n in model.graph.node if not known_to_runtime(n, opset)}
