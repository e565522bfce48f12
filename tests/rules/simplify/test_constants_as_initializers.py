"""constants-as-initializers: Constant nodes become initializers under their output's name, with the same values
and parameters (the table of attribute kinds), inside If bodies too; what stays a node, and why."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T, helper, numpy_helper

from checks import assert_verifies, rule, run_opt
from onnx_builders import make_model, op_histogram
from onnxrep.graph.stats import graph_stats
from onnxrep.rules.simplify.constants_as_initializers import ConstantsAsInitializers

CONST = "constants-as-initializers"


def only(model: onnx.ModelProto):
    return run_opt(model, rules=[ConstantsAsInitializers()], include_defaults=False)


def _params_all_graphs(model: onnx.ModelProto) -> int:
    """The report's parameters (every graph; value_float(s) / value_int(s) count as the tensor they make)."""
    return graph_stats(model).params


KINDS = {  # attribute: (its value, the array it makes)
    "value": (numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "v"),
              np.arange(6, dtype=np.float32).reshape(2, 3)),
    "value-scalar": (numpy_helper.from_array(np.array(2.5, np.float32), "v"), np.array(2.5, np.float32)),
    "value_float": (2.5, np.array(2.5, np.float32)),
    "value_floats": ([1.0, 2.0, 3.0], np.array([1, 2, 3], np.float32)),
    "value_int": (3, np.array(3, np.int64)),
    "value_ints": ([2, 3], np.array([2, 3], np.int64)),
    "value-float16": (numpy_helper.from_array(np.array([1.5, -2.0, 3.0], np.float16), "v"),
                      np.array([1.5, -2.0, 3.0], np.float16)),
}


def _reader(kind: str, value: np.ndarray) -> tuple[list, list, list]:
    """Nodes that read the constant ``c`` and the graph's input and output infos."""
    if value.dtype == np.int64 and value.ndim == 1:  # a shape: Reshape x (6,) to it
        return ([helper.make_node("Reshape", ["x", "c"], ["y"], name="reader")],
                [helper.make_tensor_value_info("x", T.FLOAT, [6])], [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])])
    if value.dtype == np.int64:  # a scalar int: Gather index 0..5 of x
        return ([helper.make_node("Gather", ["x", "c"], ["y"], name="reader")],
                [helper.make_tensor_value_info("x", T.FLOAT, [6])], [helper.make_tensor_value_info("y", T.FLOAT, [])])
    elem = helper.np_dtype_to_tensor_dtype(value.dtype)
    shape = [2, 3] if value.ndim == 2 else [4, 3] if value.ndim == 1 else [2]
    return ([helper.make_node("Add", ["x", "c"], ["y"], name="reader")],
            [helper.make_tensor_value_info("x", elem, shape)], [helper.make_tensor_value_info("y", elem, shape)])


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_constant_becomes_an_initializer(kind):
    attr, expected = KINDS[kind]
    name = "value" if kind.startswith("value-") else kind
    nodes, inputs, outputs = _reader(kind, expected)
    graph = helper.make_graph([helper.make_node("Constant", [], ["c"], name="const", **{name: attr})] + nodes, "g",
                              inputs, outputs)
    m = make_model(graph, [helper.make_opsetid("", 17)])
    out, rep = only(m)
    assert "Constant" not in op_histogram(out)
    init = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert list(init) == ["c"]  # under its output's name: readers read the same name
    assert init["c"].dtype == expected.dtype and init["c"].shape == expected.shape
    assert np.array_equal(init["c"], expected)
    assert (rule(rep, CONST).rewrites, rule(rep, CONST).nodes_removed) == (1, 1)
    assert rep.after.params == rep.before.params == expected.size  # no parameter change
    assert_verifies(m, out)


def _branch(name: str, const_name: str, value: float, returns_constant: bool = False) -> onnx.GraphProto:
    c = helper.make_node("Constant", [], [const_name], name=f"{name}_const",
                         value=numpy_helper.from_array(np.full(3, value, np.float32), const_name))
    if returns_constant:
        return helper.make_graph([c], name, [], [helper.make_tensor_value_info(const_name, T.FLOAT, [3])])
    add = helper.make_node("Add", ["x", const_name], [f"{name}_y"], name=f"{name}_add")
    return helper.make_graph([c, add], name, [], [helper.make_tensor_value_info(f"{name}_y", T.FLOAT, [3])])


def _if_model(then: onnx.GraphProto, other: onnx.GraphProto, extra: list | None = None) -> onnx.ModelProto:
    nodes = (extra or []) + [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
                             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
                             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [3])],
                              [numpy_helper.from_array(np.float32(0), "zero")])
    return make_model(graph, [helper.make_opsetid("", 17)])


def _loads(model: onnx.ModelProto) -> None:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def test_constants_inside_if_branches_become_branch_initializers():
    """Each branch's Constant becomes an initializer of that branch (onnx-graphsurgeon writes it there); the
    model loads and verifies on both branches, and the parameters stay 3 + 3 + 1."""
    m = _if_model(_branch("a", "ca", 1.0), _branch("b", "cb", -1.0))
    out, rep = only(m)
    branches = {a.name: a.g for a in out.graph.node[-1].attribute}
    assert {k: ([n.op_type for n in g.node], [t.name for t in g.initializer]) for k, g in branches.items()} == {
        "then_branch": (["Add"], ["ca"]), "else_branch": (["Add"], ["cb"])}
    assert _params_all_graphs(out) == _params_all_graphs(m) == 7
    assert rule(rep, CONST).rewrites == 2 and rule(rep, CONST).declines == []
    _loads(out)
    for seed in range(4):  # x's sum is positive or not at random: each seed runs the branch it picks
        assert_verifies(m, out, seed=seed)


KEPT = [  # case: the decline reason
    ("graph-output", "its output 'y' is a graph output (it keeps its producer)"),
    ("branch-output", "its output 'ca' is a graph output (it keeps its producer)"),
    ("read-in-a-body", "a body reads 'w': as an initializer it would be stored in every graph that reads it"),
    ("strings", "its value is a value_strings (sparse or strings): kept as a node"),
]


def _kept(case: str) -> onnx.ModelProto:
    if case == "graph-output":
        graph = helper.make_graph([helper.make_node("Constant", [], ["y"], name="const", value_float=1.0),
                                   helper.make_node("Identity", ["x"], ["z"], name="id")], "g",
                                  [helper.make_tensor_value_info("x", T.FLOAT, [3])],
                                  [helper.make_tensor_value_info("y", T.FLOAT, []),
                                   helper.make_tensor_value_info("z", T.FLOAT, [3])])
        return make_model(graph, [helper.make_opsetid("", 17)])
    if case == "branch-output":
        return _if_model(_branch("a", "ca", 1.0, returns_constant=True), _branch("b", "cb", -1.0))
    if case == "read-in-a-body":
        def reads_w(name):
            return helper.make_graph([helper.make_node("Mul", ["x", "w"], [f"{name}_y"], name=f"{name}_mul")], name,
                                     [], [helper.make_tensor_value_info(f"{name}_y", T.FLOAT, [3])])
        w = helper.make_node("Constant", [], ["w"], name="const",
                             value=numpy_helper.from_array(np.arange(3, dtype=np.float32), "w"))
        return _if_model(reads_w("a"), reads_w("b"), extra=[w])
    graph = helper.make_graph([helper.make_node("Constant", [], ["s"], name="const", value_strings=["a", "b"]),
                               helper.make_node("Identity", ["s"], ["y"], name="id")], "g", [],
                              [helper.make_tensor_value_info("y", T.STRING, [2])])
    return make_model(graph, [helper.make_opsetid("", 17)])


@pytest.mark.parametrize("case,reason", KEPT, ids=[c for c, _ in KEPT])
def test_what_stays_a_constant_node(case, reason):
    m = _kept(case)
    out, rep = only(m)
    reasons = [d.reason for d in rule(rep, CONST).declines]
    assert reason in reasons, reasons
    assert _params_all_graphs(out) == _params_all_graphs(m)
    _loads(out)


def test_the_default_rules_leave_no_constant_node_in_a_legacy_export_style_graph():
    """Constant weights and a Constant shape (as paddle2onnx and spox write them): the conv's weights merge, the
    Reshape's shape becomes an initializer; no Constant node is left and the parameters do not grow."""
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], name="w_const", value=numpy_helper.from_array(w, "w")),
             helper.make_node("Constant", [], ["s"], name="s_const", value_ints=[0, -1]),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "s"], ["y"], name="flat")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", T.FLOAT, ["N", 256])])
    m = make_model(graph, [helper.make_opsetid("", 17)])
    out, rep = run_opt(m)
    assert "Constant" not in op_histogram(out)
    assert rep.after.params <= rep.before.params == w.size + 2
    assert_verifies(m, out)
