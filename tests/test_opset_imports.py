"""Export keeps the opset imports a node still uses (graph/opsets.py): an import of a domain no node uses any
more (or ever did: tf2onnx's ai.onnx.ml) goes, with a note; one listed twice is listed once; the default domain,
a plugin's domain and a local function's stay."""
from __future__ import annotations

import onnx
from onnx import TensorProto as T, helper

from checks import assert_verifies, run_opt
from onnx_builders import make_model
from onnxrep import optimize


def _imports(model: onnx.ModelProto) -> list[tuple[str, int]]:
    return [(o.domain, o.version) for o in model.opset_import]


def _relu_model(extra_nodes=(), opsets=(("", 17),)) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu"), *extra_nodes]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])])
    return make_model(graph, [helper.make_opsetid(d, v) for d, v in opsets])


def test_an_import_no_node_uses_goes_with_a_note():
    m = _relu_model(opsets=[("", 17), ("ai.onnx.ml", 2)])
    out, rep = run_opt(m)
    assert _imports(out) == [("", 17)]
    assert "opset import(s) no node uses dropped: ai.onnx.ml v2" in rep.notes
    assert_verifies(m, out)


def test_the_import_of_a_dead_custom_node_goes_with_it():
    """A custom-domain node whose output nothing reads is removed by the cleanup; its domain's import with it."""
    dead = helper.make_node("Probe", ["x"], ["unused"], name="probe", domain="com.example")
    m = _relu_model([dead], opsets=[("", 17), ("com.example", 1)])
    out, rep = optimize(m)
    assert [n.op_type for n in out.graph.node] == ["Relu"]
    assert _imports(out) == [("", 17)]


def test_imports_in_use_stay_and_a_repeated_one_is_listed_once():
    """onnx.compose.merge_models lists every import of both models: ('', 17) and ('com.example', 1) twice."""
    custom = helper.make_node("Probe", ["y"], ["z"], name="probe", domain="com.example")
    m = _relu_model([custom], opsets=[("", 17), ("com.example", 1), ("", 17), ("com.example", 1)])
    m.graph.output.append(helper.make_tensor_value_info("z", T.FLOAT, [2, 3]))
    out, rep = optimize(m)
    assert _imports(out) == [("", 17), ("com.example", 1)]
    assert "opset import(s) no node uses dropped: ai.onnx v17 (repeated), com.example v1 (repeated)" in rep.notes


def test_the_domain_of_a_local_function_and_of_its_nodes_stay():
    body = [helper.make_node("Neg", ["a"], ["b"]), helper.make_node("Probe", ["b"], ["c"], domain="com.inner")]
    fn = helper.make_function("local.fns", "NegProbe", ["a"], ["c"], body,
                              [helper.make_opsetid("", 17), helper.make_opsetid("com.inner", 1)])
    call = helper.make_node("NegProbe", ["y"], ["z"], name="call", domain="local.fns")
    m = _relu_model([call], opsets=[("", 17), ("local.fns", 1), ("com.inner", 1), ("ai.onnx.ml", 3)])
    m.graph.output.append(helper.make_tensor_value_info("z", T.FLOAT, [2, 3]))
    m.functions.append(fn)
    out, rep = optimize(m)
    assert _imports(out) == [("", 17), ("local.fns", 1), ("com.inner", 1)]
    assert len(out.functions) == 1
