"""The part of a model onnxruntime can run, when it cannot run the whole.

A node onnxruntime cannot run (a TensorRT plugin, a custom-domain op, an op without a CPU kernel)
*blocks* every tensor computed from it. What can be checked is every tensor that feeds a blocked
node and is not computed from one, and every graph output not computed from one: those become the
outputs of a verification model cut from the graph (:func:`cut`: the nodes they depend on, nothing
else). Blocked nodes are found from the schemas ONNX and onnxruntime know, then from onnxruntime's
own refusals (it names the node it has no kernel for), one at a time.

Past a blocked node, its float outputs that something reads can be fed (:func:`fed_values`): both
models get the same random values there, and what is computed from them is compared as well.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx
from onnx import defs, helper

from ..graph.convert import default_opset
from ..graph.foreign import ONNX_DOMAINS
from ..graph.shapes import inferred_shapes
from ..graph.walk import inner_nodes, outer_reads
from .inputs import VerifyError
from .sessions import run

#: a node onnxruntime refuses, as its messages name it
_NODE_NAMED = [re.compile(r"node with name '([^']*)'"), re.compile(r'In Node, \("([^"]*)", (\w+)'),
               re.compile(r"\(node:'([^']*)'"), re.compile(r"Node \(([^)]*)\)")]
_OP_NAMED = [re.compile(r"(?:implementation|kernel) for (\w+)\("),
             re.compile(r"(?:^|\s)([\w.]+):(\w+)\(-?\d+\) is not a registered")]
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


def refused_nodes(message: str, model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The main-graph nodes an onnxruntime error message names, by node name, else by op type (a
    node inside an If / Loop / Scan body blocks the node that holds the body)."""
    def owners(match) -> list[onnx.NodeProto]:
        return [top for top in model.graph.node if any(match(n) for n in inner_nodes(top))]

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


def plan(model: onnx.ModelProto, blocked_keys: set[tuple[str, ...]], fed: Iterable[str] = ()) -> Plan:
    """The verifiable tensors of ``model`` when the nodes ``blocked_keys`` cannot run.

    ``fed``: outputs of blocked nodes that the verification feeds with the same random values on
    both sides; what is computed from them is verifiable too (as a function of those values).
    """
    g = model.graph
    fed = set(fed)
    blocked = [n for n in g.node if node_key(n) in blocked_keys]
    tainted: set[str] = set()
    producer_blocked = {id(n) for n in blocked}
    for node in g.node:  # graph order is topological
        if id(node) in producer_blocked:
            tainted.update(o for o in node.output if o and o not in fed)
            continue
        reads = list(node.input) + outer_reads(node)
        if any(i in tainted for i in reads if i):
            tainted.update(o for o in node.output if o)
    result = Plan(blocked=[f"{n.op_type} '{n.name or n.output[0]}'" for n in blocked])
    for n in blocked:
        what = f"input of {n.op_type} '{n.name or n.output[0]}'"
        for i in n.input:
            if i and i not in result.targets and i not in tainted:
                result.targets[i] = what
    for o in g.output:
        if o.name in tainted or o.name in fed:
            result.unverifiable[o.name] = "computed from an op onnxruntime cannot run"
        else:
            result.targets.setdefault(o.name, "graph output")
    # a graph input, a weight or a fed value: nothing to compare
    computed = {o for n in g.node if id(n) not in producer_blocked for o in n.output if o}
    result.targets = {k: v for k, v in result.targets.items() if k in computed}
    return result


def cut(model: onnx.ModelProto, targets: list[str], fed: Mapping[str, onnx.ValueInfoProto] | None = None
        ) -> onnx.ModelProto:
    """A model with ``targets`` as its outputs and only the nodes they depend on; its inputs are the
    model's, then the ``fed`` tensors (name -> declaration), where the walk back stops."""
    fed = dict(fed or {})
    g = model.graph
    producer = {o: n for n in g.node for o in n.output if o}
    keep, stack, seen = set(), list(targets), set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = None if name in fed else producer.get(name)
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(i for i in node.input if i)
        stack.extend(outer_reads(node))
    out = onnx.ModelProto()
    for attr in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(out, attr, getattr(model, attr))
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    og = out.graph
    og.name = g.name
    og.node.extend(n for n in g.node if id(n) in keep)
    og.input.extend(g.input)
    og.input.extend(fed[name] for name in fed if name in seen)
    og.initializer.extend(t for t in g.initializer if t.name in seen or t.name in {i.name for i in g.input})
    og.sparse_initializer.extend(t for t in g.sparse_initializer if t.values.name in seen)
    declared = {v.name: v for v in list(g.output) + list(g.value_info)}
    if any(name not in declared for name in targets):
        declared = {**inferred_shapes(model), **declared}  # typed outputs where inference can tell
    for name in targets:
        og.output.append(declared[name] if name in declared else onnx.ValueInfoProto(name=name))
    og.value_info.extend(v for v in g.value_info if v.name in seen and v.name not in targets and v.name not in fed)
    return out


def fed_values(model: onnx.ModelProto, blocked_keys: set[tuple[str, ...]], known: Mapping[str, np.ndarray],
               seed: int) -> dict[str, np.ndarray]:
    """Seeded random values for the float outputs of blocked nodes that something reads.

    The shape is the declared one when every dim is known (symbols bound by the known tensors'
    declared shapes), else that of the node's first input when it is known (``known``: values of
    graph inputs and verified tensors) and the output is declared with the same rank or not at all;
    the dtype is the declared one, else the first input's. Integer outputs (NMS indices, counts) are
    not fed: what reads them stays unverified.
    """
    g = model.graph
    declared = {v.name: v for v in list(g.value_info) + list(g.output)}
    declared = {**inferred_shapes(model), **declared}
    bindings = _bindings(g, known)
    read = {i for n in g.node for i in list(n.input) + outer_reads(n) if i}
    rng = np.random.default_rng(seed + 7919)
    values = {}
    for node in g.node:
        if node_key(node) not in blocked_keys:
            continue
        first = known.get(node.input[0]) if node.input and node.input[0] else None
        for name in node.output:
            if not name or name not in read:
                continue
            vi = declared.get(name)
            elem = vi.type.tensor_type.elem_type if vi is not None else 0
            dtype = helper.tensor_dtype_to_np_dtype(elem) if elem else (first.dtype if first is not None else None)
            shape = _static_shape(vi, bindings) if vi is not None else None
            rank = len(vi.type.tensor_type.shape.dim) if vi is not None and vi.type.tensor_type.HasField("shape") else None
            if shape is None and first is not None and rank in (None, first.ndim):
                shape = first.shape
            if dtype is None or shape is None or np.dtype(dtype).kind != "f":
                continue
            values[name] = rng.standard_normal(shape).astype(dtype)
    return values


def _bindings(g: onnx.GraphProto, known: Mapping[str, np.ndarray]) -> dict[str, int]:
    found = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.name in known:
            for d, size in zip(v.type.tensor_type.shape.dim, np.shape(known[v.name])):
                if d.dim_param:
                    found.setdefault(d.dim_param, int(size))
    return found


def _static_shape(vi: onnx.ValueInfoProto, bindings: Mapping[str, int]) -> tuple[int, ...] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.dim_param in bindings:
            dims.append(bindings[d.dim_param])
        else:
            return None
    return tuple(dims)


def declaration(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))


def statically_blocked(model: onnx.ModelProto) -> set[tuple[str, ...]]:
    """Nodes whose op neither ONNX nor onnxruntime defines."""
    opset = default_opset(model)
    return {node_key(n) for n in model.graph.node if not known_to_runtime(n, opset)}


# ------------------------------------------------------------------ running the part
@dataclass
class Partial:
    """The part of the reference onnxruntime ran: what was compared, its outputs, the cut model, and
    the values fed for outputs of blocked nodes (``fed_values``) with their declarations."""
    plan: Plan
    outputs: dict
    model: onnx.ModelProto | None
    fed: dict = field(default_factory=dict)

    def cut_from(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """This part of ``model`` (the reference, or the optimized model: same tensor names)."""
        return cut(model, list(self.plan.targets), {k: declaration(k, v) for k, v in self.fed.items()})


def run_partial(full: onnx.ModelProto, inputs: Mapping[str, Any], error: VerifyError, seed: int) -> Partial:
    """Run the largest part of ``full`` onnxruntime can (module doc), after ``error`` from the whole."""
    blocked = statically_blocked(full)
    blocked |= {node_key(n) for n in refused_nodes(str(error), full)}
    if not blocked:
        raise VerifyError(f"reference model: {error}")
    try:
        part = _run_refusing(full, blocked, lambda: Partial(plan(full, blocked), {}, None), inputs)
    except VerifyError as e:
        raise VerifyError(f"reference model: {e}") from e
    part = _past_blocked(full, blocked, part, inputs, seed)
    if not part.plan.targets:
        raise VerifyError(f"onnxruntime cannot run any graph output or the inputs of {', '.join(part.plan.blocked)}")
    return part


def _run_refusing(full: onnx.ModelProto, blocked: set, make: Callable[[], Partial], inputs: Mapping[str, Any]
                  ) -> Partial:
    """``make()`` a part and run it; a node onnxruntime refuses joins ``blocked`` (in place) and the
    part is made again. VerifyError when a refusal names no new node."""
    for _ in range(MAX_REFUSALS):
        part = make()
        if not part.plan.targets:
            return part
        part.model = part.cut_from(full)
        try:
            part.outputs = run(part.model, {**inputs, **part.fed})
            return part
        except VerifyError as e:
            new = {node_key(n) for n in refused_nodes(str(e), full)} - blocked
            if not new:
                raise
            blocked |= new
    raise VerifyError(f"onnxruntime refused more than {MAX_REFUSALS} nodes")


def _past_blocked(full: onnx.ModelProto, blocked: set, part: Partial, inputs: Mapping[str, Any],
                  seed: int) -> Partial:
    """Extend ``part`` past the blocked nodes: their float outputs get the same seeded random values in
    both models, and what is computed from them is compared too. ``part`` if that cannot run."""
    known, blocked = {**inputs, **part.outputs}, set(blocked)

    def make() -> Partial:
        fed = fed_values(full, blocked, known, seed)
        return Partial(plan(full, blocked, fed), {}, None, fed)
    try:
        wider = _run_refusing(full, blocked, make, inputs)
    except VerifyError:  # e.g. a shape guessed for a plugin's output that is not its real one
        return part
    return wider if len(wider.plan.targets) > len(part.plan.targets) else part
