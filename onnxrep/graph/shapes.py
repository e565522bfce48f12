"""Shape inference without copying the weights, optionally at pinned input sizes."""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data

from .dtypes import FLOAT_TYPES
from .evaluate import CONTROL_FLOW, RANDOM_OPS, evaluate_protos



def _pin(values: list[onnx.ValueInfoProto], sizes: dict[str, int]) -> None:
    for v in values:
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in sizes:
                d.dim_value = sizes[d.dim_param]


def inferred_shapes(model: onnx.ModelProto, pin: tuple[int, int] | None = None) -> dict[str, onnx.ValueInfoProto]:
    """Shapes of intermediate tensors by ONNX shape inference, without copying the weights.

    Inference runs on a skeleton of the model whose large float initializers keep their dims
    but no data (inference needs dims, not values). ``pin=(batch, other)`` first gives every
    symbolic dim of the graph inputs a size: ``batch`` on axis 0, ``other`` elsewhere (a symbol
    keeps one size wherever it appears). Returns ``{}`` when inference fails: shapes help, never gate.
    """
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    g, src = skeleton.graph, model.graph
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    for t in src.initializer:
        if t.data_type in FLOAT_TYPES and (len(t.dims) and int(np.prod(t.dims)) > 1024 or uses_external_data(t)):
            stub = g.initializer.add()
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
        else:
            g.initializer.append(t)
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
