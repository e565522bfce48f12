"""The README's worked custom rule (examples/custom_rule.py) does what it says."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxrep import load_rules_from, optimize, verify

RULE_FILE = Path(__file__).parents[1] / "examples" / "custom_rule.py"


def _gemm_mul(k, with_c=True, trans_b=1):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(6, 5) if trans_b else (5, 6)).astype(np.float32), "B"),
             numpy_helper.from_array(np.asarray(k, np.float32), "k")]
    inputs = ["a", "B"]
    if with_c:
        inits.append(numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "C"))
        inputs.append("C")
    nodes = [helper.make_node("Gemm", inputs, ["g"], alpha=0.7, beta=1.3, transB=trans_b),
             helper.make_node("Mul", ["k", "g"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("with_c", [True, False])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_custom_rule_folds_scalar_mul(with_c, trans_b):
    model = _gemm_mul(-2.5, with_c, trans_b)
    rules = load_rules_from(RULE_FILE)
    out, report = optimize(model, rules=rules)
    assert [n.op_type for n in out.graph.node] == ["Gemm"]
    rule = next(r for r in report.rules if r.name == "fold-scalar-mul-into-gemm")
    assert rule.rewrites == 1 and rule.nodes_removed == 1
    attrs = {a.name: a.f for a in out.graph.node[0].attribute if a.name in ("alpha", "beta")}
    assert attrs["alpha"] == pytest.approx(0.7 * -2.5) and attrs["beta"] == pytest.approx(1.3 * -2.5)
    result = verify(model, out, input_shapes={"a": (4, 5)})
    assert result.passed and result.max_abs <= 1e-5 * result.outputs[0].ref_max_abs + 1e-6


def test_custom_rule_declines_with_reason():
    model = _gemm_mul(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    out, report = optimize(model, rules=load_rules_from(RULE_FILE))
    assert [n.op_type for n in out.graph.node] == ["Gemm", "Mul"]
    rule = next(r for r in report.rules if r.name == "fold-scalar-mul-into-gemm")
    assert rule.rewrites == 0
    assert [d.reason for d in rule.declines] == ["Mul constant has shape (6,), not a scalar"]


def test_custom_rule_respects_shared_gemm_output():
    model = _gemm_mul(3.0)
    model.graph.output.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", 6]))
    out, report = optimize(model, rules=load_rules_from(RULE_FILE))
    assert sorted(n.op_type for n in out.graph.node) == ["Gemm", "Mul"]
    assert verify(model, out).passed
