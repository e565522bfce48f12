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
