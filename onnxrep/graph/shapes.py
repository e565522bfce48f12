"""Shape inference without copying the weights, optionally at pinned input sizes."""
from __future__ import annotations

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


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
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=False)
    except Exception:
        return {}
    shapes = {v.name: v for v in inferred.graph.value_info}
    if pin is not None:
        shapes.update({v.name: v for v in list(inferred.graph.input) + list(inferred.graph.output)})
    return shapes
