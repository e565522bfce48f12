"""Evaluate ONNX nodes on constant inputs with the ONNX reference implementation."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import gs_shim

#: ops never evaluated ahead of time: their outputs are not a function of their inputs alone
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
#: ops with subgraphs
CONTROL_FLOW = {"If", "Loop", "Scan"}


def evaluate_protos(nodes: list[onnx.NodeProto], values: dict[str, np.ndarray], opset_imports) -> dict:
    """Outputs of ``nodes`` (in order, reading ``values``), by one ``onnx.reference`` run.

    Raises whatever the reference implementation raises (an op it cannot run).
    """
    from onnx.reference import ReferenceEvaluator

    made = {o for n in nodes for o in n.output if o}
    feeds = {i: values[i] for n in nodes for i in n.input if i and i not in made}
    inputs = [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in feeds.items()]
    names = sorted(made)
    outputs = [onnx.helper.make_tensor_value_info(o, 0, None) for o in names]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "evaluate", inputs, outputs),
                                   opset_imports=list(opset_imports))
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    results = ReferenceEvaluator(model).run(None, feeds)
    return {name: np.asarray(r) for name, r in zip(names, results)}


def evaluate(node: gs.Node, values: list, opset: int) -> list[np.ndarray]:
    """Run one gs node on constant inputs (``None`` for an omitted one); its outputs in order."""
    names = [f"in{i}" if v is not None else "" for i, v in enumerate(values)]
    outputs = [f"out{i}" for i in range(len(node.outputs))]
    proto = gs_shim.node_proto(node.op, node.attrs, names, outputs)
    feeds = {n: v for n, v in zip(names, values) if v is not None}
    results = evaluate_protos([proto], feeds, [onnx.helper.make_opsetid("", opset)])
    return [results[o] for o in outputs]
