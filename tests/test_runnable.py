"""Loading and verifying models with ops onnxruntime cannot run (onnxrep.verification.runnable, graph.foreign)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from onnxrep import verify
from onnxrep.graph.foreign import foreign_ops, unregistered_nodes
from onnxrep.graph.io import InputError, load_model
from onnxrep.verification.runnable import cut, plan, refused_nodes, statically_blocked
from onnxrep.verification import VerifyError

V = lambda name: helper.make_tensor_value_info(name, T.FLOAT, [1, 4, 6, 6])  # noqa: E731


def _chain(first="MyOp", first_domain="com.example", second="EfficientNMS_TRT", second_domain=""):
    """conv_a -> first -> conv_b -> second -> out, plus conv_c(x) -> side (an output independent of both)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node(first, ["a"], ["p"], name="first", domain=first_domain),
             helper.make_node("Conv", ["p", "w"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node(second, ["b", "a"], ["out"], name="second", domain=second_domain, plugin_version="1"),
             helper.make_node("Conv", ["x", "w"], ["side"], name="conv_c", pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [V("x")], [V("out"), V("side")], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


def test_plan_verifies_inputs_not_computed_from_a_blocked_node():
    m = _chain()
    blocked = statically_blocked(m)
    assert blocked == {("p",)}  # EfficientNMS_TRT has an onnxruntime schema (TensorRT), no CPU kernel
    p = plan(m, blocked | {("out",)})
    assert p.targets == {"a": "input of MyOp 'first'", "side": "graph output"}  # b is computed from p
    assert p.unverifiable == {"out": "computed from an op onnxruntime cannot run"}
    part = cut(m, list(p.targets))
    assert [n.name for n in part.graph.node] == ["conv_a", "conv_c"] and [o.name for o in part.graph.output] == ["a", "side"]
    onnx.checker.check_model(part)


def test_refused_nodes_from_onnxruntime_messages():
    m = _chain(first="Relu", first_domain="")
    msg = "Could not find an implementation for EfficientNMS_TRT(1) node with name 'second'"
    assert [n.name for n in refused_nodes(msg, m)] == ["second"]
    # float16 inputs: another message (onnxruntime 1.32)
    msg16 = ("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Failed to find kernel for EfficientNMS_TRT(1) "
             "(node:'second' ep:'CPUExecutionProvider'). Kernel not found")
    assert [n.name for n in refused_nodes(msg16, m)] == ["second"]
    m.graph.node[3].name = ""
    assert [n.output[0] for n in refused_nodes(msg16.replace("'second'", "''"), m)] == ["out"]
    msg2 = "[ONNXRuntimeError] : 1 : FAIL : Fatal error: com.example:MyOp(-1) is not a registered function/op"
    assert [n.name for n in refused_nodes(msg2, _chain())] == ["first"]


def test_verify_compares_what_onnxruntime_can_run():
    m = _chain(first="Relu", first_domain="")  # only the TensorRT plugin blocks: found from ORT's refusal
    r = verify(m, m)
    assert r.passed and r.partial and r.blocked == ["EfficientNMS_TRT 'second'"]
    assert sorted(o.name for o in r.outputs) == ["a", "b", "side"] and r.unverifiable == {
        "out": "computed from an op onnxruntime cannot run"}
    # a candidate that differs before the plugin fails, and says where
    bad = _chain(first="Relu", first_domain="")
    bad.graph.node[2].input[1] = "w2"
    bad.graph.initializer.append(numpy_helper.from_array(np.zeros((4, 4, 3, 3), np.float32), "w2"))
    r2 = verify(m, bad)
    assert not r2.passed and [o.name for o in r2.outputs if not o.passes()] == ["b"]
    # nothing computable before the custom op: its output is fed (shape and dtype of its input) and the
    # conv after it compared; the TensorRT plugin is found blocked on the way
    fed = _chain()
    fed.graph.node[1].input[0] = "x"
    del fed.graph.node[4]
    del fed.graph.output[1]
    r3 = verify(fed, fed)
    assert r3.passed and r3.fed == ["p"] and sorted(o.name for o in r3.outputs) == ["a", "b"]
    assert r3.blocked == ["MyOp 'first'", "EfficientNMS_TRT 'second'"]
    # an integer output (an NMS index) is not fed: nothing left to compare is an error that says so
    fed.graph.value_info.append(helper.make_tensor_value_info("p", T.INT64, [1, 4, 6, 6]))
    fed.graph.node[2].input[0] = "pf"
    fed.graph.node.insert(2, helper.make_node("Cast", ["p"], ["pf"], to=T.FLOAT))
    fed.graph.node[4].input[1] = "b"
    with pytest.raises(VerifyError, match="cannot run any graph output"):
        verify(fed, fed)


def test_downstream_of_a_custom_op_is_compared_with_fed_values():
    """conv_a -> MyOp -> conv_b -> EfficientNMS_TRT: conv_b's output is compared, fed the same values."""
    m = _chain()
    r = verify(m, m)
    assert r.passed and r.fed == ["p"] and sorted(o.name for o in r.outputs) == ["a", "b", "side"]
    wrong = _chain()
    wrong.graph.node[2].attribute[0].CopyFrom(helper.make_attribute("pads", [1, 1, 1, 1]))
    wrong.graph.node[2].input[1] = "w2"
    wrong.graph.initializer.append(numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w2"))
    r2 = verify(m, wrong)
    assert [o.name for o in r2.outputs if not o.passes()] == ["b"]


def test_unknown_default_domain_ops_load_and_the_rest_is_still_checked(tmp_path):
    m = _chain()
    assert [n.name for n in unregistered_nodes(m)] == ["second"]
    assert dict(foreign_ops(m)) == {"EfficientNMS_TRT (default domain, not an ONNX op)": 1, "com.example.MyOp": 1}
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    loaded, _ = load_model(path)
    assert [n.domain for n in loaded.graph.node] == ["", "com.example", "", "", ""]  # restored after the check
    assert [i.domain for i in loaded.opset_import] == ["", "com.example"]
    broken = _chain()
    broken.graph.node[0].attribute.append(helper.make_attribute("no_such_attr", 1))
    onnx.save(broken, path)
    with pytest.raises(InputError, match="invalid ONNX model: Unrecognized attribute: no_such_attr"):
        load_model(path)
