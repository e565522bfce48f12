"""The dims ONNX shape inference finds for the tensors of a gs graph as it stands, from its inputs alone.

``static_dims(graph)`` exports a weightless skeleton of the graph *as it is now* (after the rewrites of
earlier sweeps: folds can make a Slice's ends constant, and inference then sees the sizes behind it) and
runs ONNX shape inference on it, with data propagation. Nothing is pinned (``shapes.inferred_shapes(pin=)``
gives dynamic dims a size for counting MACs): a dim counts as static only where inference derives it for
every input size the model's declared inputs allow.

What the skeleton leaves out, so that no declaration stands in for inference:

* ``value_info`` of every graph and the shapes declared for the outputs of every graph: an exporter may
  declare a tensor with the size it traced;
* the shapes of Loop and Scan bodies' inputs, and no dims at all are read inside those bodies: a loop
  state can change shape from one iteration to the next, while inference types a body once. A Loop
  body's read of an outer tensor is still that tensor (its dims are the outer graph's);
* initializers the caller may feed (also graph inputs): their declared type only, never their value.

Large constants keep their dims but not their values (``shapes._skeleton`` does the same for a
ModelProto); Constant nodes of more than ``SMALL`` elements become such stubs too.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from . import gs_shim
from .io import first_line

#: constants of more than this many elements are stubs in the skeleton (dims and type, no values)
SMALL = 1024
#: ops whose bodies are typed once for any number of iterations
LOOPS = {"Loop", "Scan"}

Dims = tuple  # of int (static), or a symbol (str) or None (dynamic)


class Inferred:
    """``dims(t)``: the dims inference found for ``t`` (a tuple: an int per static dim, the symbol or ``None``
    per dynamic one), or ``None`` when its rank is unknown or it lives in a Loop / Scan body; ``error``: why
    inference gave nothing."""

    def __init__(self, found: dict[int, tuple[gs.Tensor, Dims]] | None = None, error: str | None = None):
        self._found = found or {}
        self.error = error

    def dims(self, tensor: gs.Tensor) -> Dims | None:
        entry = self._found.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def __len__(self) -> int:
        return len(self._found)


def _elem_type(dtype) -> int:
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except Exception:  # noqa: BLE001  (unknown or non-numpy dtype)
        return 0


def _dim(d):
    """A gs dim as ``make_tensor_value_info`` takes it: an int, a symbol, or ``None`` (unknown)."""
    if isinstance(d, (int, np.integer)) and d >= 0:
        return int(d)
    return d if isinstance(d, str) and d else None


def _value_info(name: str, dtype, shape) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, _elem_type(dtype), None if shape is None else [_dim(d) for d in shape])


def _stored(name: str, values: np.ndarray | None, dtype, shape) -> onnx.TensorProto:
    """An initializer: the values when small, else a stub with dims and type only."""
    if values is not None:
        try:
            return numpy_helper.from_array(np.asarray(values), name)
        except Exception:  # noqa: BLE001  (a dtype numpy_helper cannot write: keep the stub)
            pass
    stub = onnx.TensorProto()
    stub.name, stub.data_type = name, _elem_type(dtype)
    stub.dims.extend(int(d) for d in shape)
    return stub


def _constant(t: gs.Constant) -> onnx.TensorProto:
    shape = tuple(t.shape)
    small = int(np.prod(shape, dtype=np.int64)) <= SMALL
    return _stored(t.name, t.values if small else None, t.dtype, shape)


class _Skeleton:
    """Builds the skeleton GraphProtos and records, in the order a pre-order walk of the inferred model
    meets them, the gs graph each one came from and whether its dims are read."""

    def __init__(self, overridable: frozenset):
        self.overridable = overridable
        self.order: list[tuple[gs.Graph, bool]] = []
        self.domains: set[str] = set()
        self.overridable_read: dict[str, gs.Constant] = {}

    def graph(self, g: gs.Graph, readable: bool, loop_body: bool) -> onnx.GraphProto:
        self.order.append((g, readable))
        nodes, initializers, seen = [], [], set()
        for node in g.nodes:
            if not node.outputs:
                continue  # removed by an edit of this sweep
            if node.op == "Constant" and not node.domain and _stub_constant(node):
                value = node.attrs["value"]
                initializers.append(_stored(node.outputs[0].name, None, value.dtype, tuple(value.shape)))
                continue
            plain = {k: v for k, v in node.attrs.items() if not isinstance(v, gs.Graph)}
            proto = gs_shim.node_proto(node.op, plain, [t.name for t in node.inputs], [t.name for t in node.outputs])
            proto.domain, proto.name = node.domain or "", node.name or ""
            if proto.domain not in ("", "ai.onnx"):
                self.domains.add(proto.domain)
            for key, value in node.attrs.items():
                if isinstance(value, gs.Graph):
                    inner_loop = node.op in LOOPS
                    body = self.graph(value, readable and not inner_loop, inner_loop)
                    proto.attribute.append(onnx.helper.make_attribute(key, body))
            nodes.append(proto)
            for t in node.inputs:
                if isinstance(t, gs.Constant) and t.name not in seen:
                    seen.add(t.name)
                    if t.name in self.overridable:
                        self.overridable_read[t.name] = t  # a graph input of the skeleton
                    else:
                        initializers.append(_constant(t))
        inputs = [_value_info(t.name, t.dtype, None if loop_body else t.shape) for t in g.inputs]
        outputs = [_value_info(t.name, t.dtype, None) for t in g.outputs]
        return onnx.helper.make_graph(nodes, g.name or "graph", inputs, outputs, initializer=initializers)


def _stub_constant(node: gs.Node) -> bool:
    value = node.attrs.get("value")
    return isinstance(value, gs.Constant) and int(np.prod(tuple(value.shape), dtype=np.int64)) > SMALL


def _walk(g: onnx.GraphProto):
    yield g
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _walk(a.g)


def _dims(t: onnx.TypeProto) -> Dims | None:
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.tensor_type.shape.dim)


def static_dims(graph: gs.Graph, opset: int, overridable=frozenset()) -> Inferred:
    """What ONNX shape inference (with data propagation, nothing pinned) finds for the tensors of
    ``graph`` (a main graph) and of its If branches outside Loop / Scan bodies. ``Inferred()`` with the
    reason when inference fails: dims help, they never gate."""
    skeleton = _Skeleton(frozenset(overridable))
    main = skeleton.graph(graph, True, False)
    main.input.extend(_value_info(t.name, t.dtype, t.shape) for t in skeleton.overridable_read.values()
                      if t.name not in {i.name for i in main.input})
    opsets = [onnx.helper.make_opsetid("", opset)] + [onnx.helper.make_opsetid(d, 1) for d in sorted(skeleton.domains)]
    model = onnx.helper.make_model(main, opset_imports=opsets)
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # noqa: BLE001
        return Inferred(error=first_line(exc)[:200])
    protos = list(_walk(inferred.graph))
    if len(protos) != len(skeleton.order):
        return Inferred(error="the inferred model's graphs do not pair with the skeleton's")
    found: dict[int, tuple[gs.Tensor, Dims]] = {}
    for (g, readable), proto in zip(skeleton.order, protos):
        if not readable:
            continue
        types = {v.name: v.type for v in list(proto.value_info) + list(proto.output)}
        if proto is protos[0]:
            types.update({v.name: v.type for v in proto.input})
        local = [t for n in g.nodes for t in n.outputs] + list(g.inputs)
        for t in local:
            dims = _dims(types[t.name]) if t.name in types else None
            if dims is not None:
                found[id(t)] = (t, dims)
    return Inferred(found)
