"""fold-constants: nodes whose inputs are all constants become initializers, except where that is
not safe or not smaller (the table of what stays, and why)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from checks import assert_verifies, rule, run_opt
from onnx_builders import GraphBuilder, node_ops, op_histogram

FOLD = "fold-constants"
X = "x"


def _shape_arithmetic_model():
    """x (N, 4, 6, 6) -> Slice with starts / ends from Unsqueeze(Constant) -> Conv: the legacy exporter
    without constant folding."""
    g = GraphBuilder(160)
    g.nodes.append(helper.make_node("Constant", [], ["two"], value=helper.make_tensor("v", TensorProto.INT64, [], [2])))
    starts = g.node("Unsqueeze", ["two", g.init(np.array([0], np.int64))])
    ends = g.init(np.array([5], np.int64))
    axes = g.init(np.array([2], np.int64))
    s = g.node("Slice", [X, starts, ends, axes])
    y = g.conv(s, 4, 4, 1, output="y")
    return g.model({X: ("N", 4, 6, 6)}, [y])


def test_shape_arithmetic_on_constants_is_folded():
    m = _shape_arithmetic_model()
    out, rep = run_opt(m)
    assert "Unsqueeze" not in node_ops(out) and "Constant" not in node_ops(out)
    rec = rule(rep, FOLD)
    assert rec.rewrites == 1 and rec.nodes_removed == 2 and rec.declines == []  # Unsqueeze + its Constant
    assert_verifies(m, out)


def _left_case(case: str):
    g = GraphBuilder(161)
    c = g.init(g.randn(4))
    if case == "graph-output":
        t = g.node("Neg", [c], "t")
        return g.model({X: (2, 4)}, [g.node("Add", [X, t], "y"), "t"]), "Neg"
    if case == "random-op":
        r = g.node("RandomUniform", [], dtype=1, shape=[4], seed=1.0)
        return g.model({X: (2, 4)}, [g.node("Mul", [X, g.node("Mul", [r, g.init(np.float32(0))])], "y")]), \
            "RandomUniform"
    if case == "result-larger-than-inputs":
        e = g.node("Expand", [g.init(np.float32(1.5)), g.init(np.array([2, 4], np.int64))])
        return g.model({X: (2, 4)}, [g.node("Add", [X, e], "y")]), "Expand"
    if case == "initializer-that-is-a-graph-input":
        t = g.node("Neg", [g.init(g.randn(4), "w")])
        return g.model({X: (2, 4)}, [g.node("Add", [X, t], "y")], graph_inputs_from_inits=["w"]), "Neg"
    raise AssertionError(case)


LEFT = [  # case: the node stays, fold-constants neither rewrites nor declines it
    "graph-output",                       # the interface keeps its producer
    "random-op",                          # not a function of its inputs
    "result-larger-than-inputs",          # Expand of a scalar: C parameters instead of 1
    "initializer-that-is-a-graph-input",  # the caller may feed another value
]


@pytest.mark.parametrize("case", LEFT)
def test_what_fold_constants_leaves(case):
    m, op = _left_case(case)
    out, rep = run_opt(m)
    assert op_histogram(out)[op] == op_histogram(m)[op]
    assert rule(rep, FOLD).rewrites == 0 and rule(rep, FOLD).declines == []
    if case != "random-op":
        assert_verifies(m, out)


def test_an_op_the_reference_evaluator_cannot_run_is_declined_with_its_reason(monkeypatch):
    import onnxrep.rules.fold_constants as fold

    def refuse(node, values, opset):
        raise NotImplementedError(f"no reference implementation of {node.op}\nsecond line")

    monkeypatch.setattr(fold, "evaluate", refuse)
    g = GraphBuilder(162)
    m = g.model({X: (2, 4)}, [g.node("Add", [X, g.node("Neg", [g.init(g.randn(4))], name="neg")], "y")])
    out, rep = run_opt(m)
    assert [(d.node, d.kind, d.reason) for d in rule(rep, FOLD).declines] == [
        ("neg", "check", "cannot evaluate: no reference implementation of Neg")]
    assert isinstance(out, onnx.ModelProto) and "Neg" in node_ops(out)


def _all_graph_params(model: onnx.ModelProto) -> int:
    """Elements of every initializer and Constant node, in every graph (If bodies too)."""
    def graphs(g):
        yield g
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(a.g)
    total = 0
    for g in graphs(model.graph):
        total += sum(int(np.prod(t.dims)) for t in g.initializer)
        total += sum(int(np.prod(a.t.dims)) for n in g.node if n.op_type == "Constant" for a in n.attribute
                     if a.name == "value")
    return total


def _shared_weights_in_both_branches(rows: int = 64):
    """W (rows x 8) read by a Slice in each branch of an If on x's sign (silero-vad's LSTM weights, read
    by both branches of an inner If): y = x @ Slice(W)^T in either branch, with another half of W."""
    w = np.random.default_rng(5).normal(size=(rows, 8)).astype(np.float32)

    def branch(name, start):
        nodes = [helper.make_node("Constant", [], [f"{name}_s"], value=helper.make_tensor("s", TensorProto.INT64, [1], [start])),
                 helper.make_node("Constant", [], [f"{name}_e"], value=helper.make_tensor("e", TensorProto.INT64, [1], [start + rows // 2])),
                 helper.make_node("Slice", ["W", f"{name}_s", f"{name}_e"], [f"{name}_w"]),
                 helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"], name=f"{name}_mm")]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT,
                                                                                  [2, 8])])

    nodes = [helper.make_node("Constant", [], ["W"], value=helper.make_tensor("W", TensorProto.FLOAT, w.shape,
                                                                               w.ravel().tolist())),
             helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
             helper.make_node("Greater", ["total", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["y"], then_branch=branch("a", 0), else_branch=branch("b", rows // 2))]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, rows // 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_fold_never_adds_parameters_a_shared_constant_keeps():
    """Folding Slice(W) in each branch would store W twice (silero-vad: +264,022 parameters): both folds are
    declined with what they would add (the 256-element half, less the bounds they free)."""
    m = _shared_weights_in_both_branches()
    before = _all_graph_params(m)
    out, rep = run_opt(m)
    assert _all_graph_params(out) == before == 64 * 8 + 4 + 1
    reasons = [d.reason for d in rule(rep, FOLD).declines]
    assert len(reasons) == 2 and all(r.startswith("would add 254 parameters") for r in reasons), reasons
    assert_verifies(m, out)


def test_a_fold_may_spend_what_earlier_folds_freed():
    """The balance runs over the whole optimization: ReduceSum of a 100-element constant read once frees 99;
    then Slice(W, 0:2) may add 14 (W stays: the other Slice reads it), and Slice(W, 2:4), W's last reader,
    frees W: both fold and the model ends smaller."""
    g = GraphBuilder(162)
    w = g.init(np.random.default_rng(3).normal(size=(4, 8)).astype(np.float32), "W")
    bias = g.node("ReduceSum", [g.init(np.random.default_rng(4).normal(size=100).astype(np.float32), "c")],
                  "bias", keepdims=0)
    halves = [g.node("Slice", [w, g.init(np.array([a], np.int64)), g.init(np.array([a + 2], np.int64))], f"w{a}")
              for a in (0, 2)]
    prods = [g.node("MatMul", [X, h], f"p{k}") for k, h in enumerate(halves)]
    y = g.node("Add", [g.node("Add", prods, "s"), bias], "y")
    m = g.model({X: (3, 2)}, [y])
    out, rep = run_opt(m)
    assert rule(rep, FOLD).rewrites == 3 and rule(rep, FOLD).declines == []
    assert _all_graph_params(out) == 1 + 16 + 16 < _all_graph_params(m) == 100 + 32 + 4
    assert_verifies(m, out)


def test_a_fold_never_stores_more_bytes():
    """Cast(W_int8) * scale (weight-only int8, dequantized in the graph) folds to as many elements in float32:
    four times the bytes, so the fold is declined and the weights stay int8 (minilm-l6-int8: 22.9 MB, not
    55.2 MB)."""
    g = GraphBuilder(163)
    w8 = g.init(np.random.default_rng(6).integers(-127, 128, size=(8, 4)).astype(np.int8), "w8")
    w = g.node("Mul", [g.node("Cast", [w8], "wf", to=TensorProto.FLOAT), g.init(np.float32(0.02), "scale")], "w")
    y = g.node("MatMul", [X, w], "y")
    m = g.model({X: (3, 8)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Cast", "Mul", "MatMul"]
    reasons = [d.reason for d in rule(rep, FOLD).declines]
    assert reasons and reasons[0].startswith("would add 96 bytes"), reasons  # 32 x 4 bytes - 32 x 1
    assert {i.name: i.data_type for i in out.graph.initializer}["w8"] == TensorProto.INT8
    assert_verifies(m, out)
