"""Shape inference without copying the weights, optionally at pinned input sizes."""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data

from .dtypes import FLOAT_TYPES
from .evaluate import CONTROL_FLOW, RANDOM_OPS, evaluate_protos
from .walk import bodies



def _pin(values: list[onnx.ValueInfoProto], sizes: dict[str, int]) -> None:
    for v in values:
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in sizes:
                d.dim_value = sizes[d.dim_param]


def _skeleton(model: onnx.ModelProto, value_info: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` for shape inference: large float initializers keep their dims, not their data."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    g, src = skeleton.graph, model.graph
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    if value_info:
        g.value_info.extend(src.value_info)
    for t in src.initializer:
        if t.data_type in FLOAT_TYPES and (len(t.dims) and int(np.prod(t.dims)) > 1024 or uses_external_data(t)):
            stub = g.initializer.add()
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
        else:
            g.initializer.append(t)
    return skeleton


def inferred_shapes(model: onnx.ModelProto, pin: tuple[int, int] | None = None) -> dict[str, onnx.ValueInfoProto]:
    """Shapes of intermediate tensors by ONNX shape inference, without copying the weights.

    Inference runs on a skeleton of the model whose large float initializers keep their dims
    but no data (inference needs dims, not values). ``pin=(batch, other)`` first gives every
    symbolic dim of the graph inputs a size: ``batch`` on axis 0, ``other`` elsewhere (a symbol
    keeps one size wherever it appears). Returns ``{}`` when inference fails: shapes help, never gate.
    """
    skeleton = _skeleton(model)
    g = skeleton.graph
    if pin is not None:
        sizes: dict[str, int] = {}
        for v in g.input:
            for axis, d in enumerate(v.type.tensor_type.shape.dim):
                if d.HasField("dim_param") and d.dim_param not in sizes:
                    sizes[d.dim_param] = pin[0] if axis == 0 else pin[1]
                elif not d.HasField("dim_param") and not d.HasField("dim_value"):
                    d.dim_value = pin[0] if axis == 0 else pin[1]
        _pin(list(g.input) + list(g.output) + list(g.value_info), sizes)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=pin is not None)
        if pin is not None:
            values = _small_constants(skeleton)
            for _ in range(MAX_FOLD_ROUNDS):  # exporters compute Slice / Reshape sizes at run time
                if not _fold_shape_arithmetic(skeleton, inferred, values):
                    break
                inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception:
        return {}
    shapes = {v.name: v for v in inferred.graph.value_info}
    if pin is not None:
        shapes.update({v.name: v for v in list(inferred.graph.input) + list(inferred.graph.output)})
        for t in skeleton.graph.initializer:  # including node outputs that folding made constants
            shapes.setdefault(t.name, onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return shapes


def _body_graphs(graph: onnx.GraphProto) -> list[tuple[str, onnx.GraphProto]]:
    """Every If / Loop / Scan body under ``graph`` (nested ones included) with its node's name, in one order."""
    found = []
    for node in graph.node:
        for body in bodies(node):
            found.append((node.name or node.op_type, body))
            found.extend(_body_graphs(body))
    return found


def _conflict(declared: onnx.TypeProto, inferred: onnx.TypeProto) -> bool:
    """Whether shape inference contradicts ``declared``: another element type, rank or static dim."""
    if not (declared.HasField("tensor_type") and inferred.HasField("tensor_type")):
        return False
    d, i = declared.tensor_type, inferred.tensor_type
    if d.elem_type and i.elem_type and d.elem_type != i.elem_type:
        return True
    if not (d.HasField("shape") and i.HasField("shape")):
        return False
    if len(d.shape.dim) != len(i.shape.dim):
        return True
    return any(a.HasField("dim_value") and b.HasField("dim_value") and a.dim_value != b.dim_value
               for a, b in zip(d.shape.dim, i.shape.dim))


def _inferred_bodies(model: onnx.ModelProto, relax_inputs: bool) -> list[tuple[str, onnx.GraphProto]] | None:
    """The bodies of ``model`` as inference sees them with the main graph's value_info, the bodies'
    value_info and their output shapes undeclared (and, ``relax_inputs``, their input shapes too),
    the main graph first (as ``("", graph)``); ``None`` when inference fails or the bodies do not pair."""
    skeleton = _skeleton(model, value_info=False)
    for _, body in _body_graphs(skeleton.graph):
        del body.value_info[:]
        for v in list(body.output) + (list(body.input) if relax_inputs else []):
            if v.type.HasField("tensor_type"):
                v.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton)
    except Exception:
        return None
    found = [("", inferred.graph)] + _body_graphs(inferred.graph)
    return found if len(found) == len(_body_graphs(model.graph)) + 1 else None


def consistent_declarations(model: onnx.ModelProto) -> list[str]:
    """Make the types ``model`` declares agree with ONNX shape inference, in place; what changed, one
    line each.

    onnxruntime refuses a model that declares a tensor with another rank than inference finds for it
    ("Mismatch between number of inferred and declared dimensions"), and in an If / Loop / Scan body
    that fails the whole node. A rewrite can leave a declaration stale: its tensor's producer changed,
    a folded constant lets inference see a rank it could not (a Squeeze's axes), an outer tensor a
    Loop reads changed. Each declaration inference contradicts (element type, rank, a static dim) is
    updated to what inference finds: the value_info of the main graph and of the bodies, and the
    bodies' inputs and outputs (these keep their element type: another one is a rewrite's error, left
    for verification to name). The main graph's inputs and outputs, the interface, are never touched.

    Two inference runs: one with the bodies' inputs undeclared (a Loop passes its condition, a Scan
    its slices), which fixes those; one with the inputs as fixed (a Loop state's shape is declared
    only there), which fixes the rest. A tensor inference says nothing about keeps its declaration.
    """
    changed: list[str] = []

    def update(owner: str, v: onnx.ValueInfoProto, inferred: onnx.TypeProto, keep_type: bool) -> None:
        if not _conflict(v.type, inferred):
            return
        if keep_type and v.type.tensor_type.elem_type and inferred.tensor_type.elem_type \
                and v.type.tensor_type.elem_type != inferred.tensor_type.elem_type:
            return
        before = onnx.helper.printable_type(v.type)
        if keep_type:
            v.type.tensor_type.shape.CopyFrom(inferred.tensor_type.shape)
        else:
            v.type.CopyFrom(inferred)
        where = f" in the body of '{owner}'" if owner else ""
        changed.append(f"'{v.name}'{where}: {before} -> {onnx.helper.printable_type(v.type)}")

    declared = [("", model.graph)] + _body_graphs(model.graph)
    if len(declared) > 1 and any(len(b.input) for _, b in declared[1:]):
        seen = _inferred_bodies(model, relax_inputs=True)
        for (owner, body), (_, inferred) in zip(declared[1:], (seen or [])[1:]):
            for v, i in zip(body.input, inferred.input):
                update(owner, v, i.type, keep_type=True)
    if len(declared) == 1 and not len(model.graph.value_info):
        return changed
    seen = _inferred_bodies(model, relax_inputs=False)
    for index, ((owner, body), (_, inferred)) in enumerate(zip(declared, seen or [])):
        found = {v.name: v.type for v in inferred.value_info}
        for v in body.value_info:
            if v.name in found:
                update(owner, v, found[v.name], keep_type=False)
        if index:
            for v, i in zip(body.output, inferred.output):
                update(owner, v, i.type, keep_type=True)
    return changed


#: rounds of shape-arithmetic folding (each followed by inference) at most
MAX_FOLD_ROUNDS = 8
SMALL = 1 << 12


def _static_dims(v: onnx.ValueInfoProto) -> list[int] | None:
    tt = v.type.tensor_type
    if not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
        return None
    return [d.dim_value for d in tt.shape.dim]


def _small_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {}
    for t in model.graph.initializer:
        if math.prod(t.dims) <= SMALL and not uses_external_data(t):
            try:
                values[t.name] = numpy_helper.to_array(t)
            except Exception:  # a weightless stub of the skeleton
                pass
    return values


def _fold_shape_arithmetic(skeleton: onnx.ModelProto, inferred: onnx.ModelProto, values: dict) -> bool:
    """Replace, in ``skeleton``, ``Shape`` nodes of tensors whose shape inference found static, and
    the nodes computing on small constants from there (shape arithmetic), by initializers.

    ``values`` holds the small constants known so far (updated). The computable nodes are
    evaluated together, in one ``onnx.reference`` run. True if any node was replaced.
    """
    from onnx import numpy_helper

    g = skeleton.graph
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    computable, batch = set(values), []
    for node in g.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in RANDOM_OPS | CONTROL_FLOW:
            continue
        if node.op_type == "Shape" and node.input[0] not in computable:
            dims = _static_dims(known[node.input[0]]) if node.input[0] in known else None
            if dims is not None:
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                values[node.output[0]] = np.asarray(dims, dtype=np.int64)[attrs.get("start", 0):attrs.get("end", None)]
                computable.add(node.output[0])
            continue
        if all(not i or i in computable for i in node.input):
            batch.append(node)
            computable.update(node.output)
    evaluated = _evaluate(batch, values, list(skeleton.opset_import))
    folded = {name for name, v in evaluated.items() if v.size <= SMALL}
    values.update((k, v) for k, v in evaluated.items() if k in folded)
    done = [n for n in g.node if n.output and all(o in values and (o in folded or n.op_type == "Shape")
                                                   for o in n.output if o)]
    if not done:
        return False
    ids = {id(n) for n in done}
    kept = [n for n in g.node if id(n) not in ids]
    for n in done:
        for name in n.output:
            if name:
                g.initializer.append(numpy_helper.from_array(values[name], name))
    del g.node[:]
    g.node.extend(kept)
    return True


def _evaluate(nodes: list, values: dict, opset) -> dict:
    """``evaluate_protos``, or ``{}`` when the reference implementation cannot run them."""
    if not nodes:
        return {}
    try:
        return evaluate_protos(nodes, values, opset)
    except Exception:
        return {}
