"""eliminate-common-subexpressions: twins (same op, attributes and inputs) are one node; equal constants one."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper

from checks import assert_verifies, rule, run_opt
from onnx_builders import GraphBuilder, make_model, op_histogram
from onnxrep.rules.simplify.cse import VALUE_MAX_BYTES, EliminateCommonSubexpressions

CSE = "eliminate-common-subexpressions"


def cse_only(model: onnx.ModelProto):
    """``run_opt`` with this rule alone: the counts below are its own (the other simplifications would turn
    the Constant nodes into initializers and drop an inference Dropout first)."""
    return run_opt(model, rules=[EliminateCommonSubexpressions()], include_defaults=False)


def _constant(g: GraphBuilder, value, name: str) -> str:
    """A Constant node (not an initializer) holding ``value``."""
    value = np.asarray(value)
    g.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_node",
                                    value=onnx.numpy_helper.from_array(value, name)))
    return name


def _params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def _reasons(rep) -> list[tuple[str, str, str]]:
    return [(d.node, d.kind, d.reason) for d in rule(rep, CSE).declines]


def test_two_shape_gather_chains_are_one():
    """Shape -> Gather -> Concat(-1) -> Reshape twice on x (dynamic dims, so nothing folds): the Gather indices
    are two equal initializers, the -1s two equal Constant nodes; one chain is left."""
    g = GraphBuilder(1)
    relu = g.node("Relu", ["x"])
    outs = []
    for k, data in enumerate(["x", relu]):
        n = g.node("Gather", [g.node("Shape", ["x"]), g.init(np.array([0], np.int64), f"zero{k}")], axis=0)
        target = g.node("Concat", [n, _constant(g, np.array([-1], np.int64), f"minus_one{k}")], axis=0)
        outs.append(g.node("Reshape", [data, target]))
    y = g.node("Add", outs, "y")
    m = g.model({"x": ("N", 3, "H", 4)}, [y])
    out, rep = cse_only(m)
    assert op_histogram(m) == {"Relu": 1, "Shape": 2, "Gather": 2, "Constant": 2, "Concat": 2, "Reshape": 2,
                               "Add": 1}
    assert op_histogram(out) == {"Relu": 1, "Shape": 1, "Gather": 1, "Constant": 1, "Concat": 1, "Reshape": 2,
                                 "Add": 1}
    record = rule(rep, CSE)
    assert record.rewrites == 4 and record.nodes_removed == 4 and record.declines == []  # Constant, Shape, Gather, Concat
    assert [why for _, why in record.fired] == ["initializer 'zero1' equals 'zero0': its readers read that one"]
    assert [t.name for t in out.graph.initializer] == ["zero0"]
    assert_verifies(m, out, input_shapes={"x": (2, 3, 5, 4)})


def test_two_convs_on_one_input_with_equal_weights_stored_twice():
    """Conv(x, W, b) and Conv(x, W', b') with W == W', b == b' by value (four initializers): one Conv, two
    initializers; a third Conv on another tensor with W'' == W reads W too."""
    g = GraphBuilder(2)
    w, b = g.randn(8, 4, 3, 3), g.randn(8)
    c1 = g.conv("x", 4, 8, 3, pads=1, weight=g.init(w, "W1"), bias=False)
    c2 = g.conv("x", 4, 8, 3, pads=1, weight=g.init(w.copy(), "W2"), bias=False)
    c1 = g.node("Add", [c1, g.init(b.reshape(8, 1, 1), "b1")])  # biases as Adds: the Conv has no bias input
    c2 = g.node("Add", [c2, g.init(b.reshape(8, 1, 1).copy(), "b2")])
    z = g.node("Relu", ["x"])
    c3 = g.conv(z, 4, 8, 3, pads=1, weight=g.init(w.copy(), "W3"), bias=False)
    y1, y2 = g.node("Relu", [c1], "y1"), g.node("Sigmoid", [c2], "y2")
    y3 = g.node("Tanh", [c3], "y3")
    m = g.model({"x": (1, 4, 6, 6)}, [y1, y2, y3])
    out, rep = run_opt(m)
    assert op_histogram(m) == {"Conv": 3, "Add": 2, "Relu": 2, "Sigmoid": 1, "Tanh": 1}
    assert op_histogram(out) == {"Conv": 2, "Relu": 2, "Sigmoid": 1, "Tanh": 1}  # the Adds are the Convs' biases
    assert rule(rep, CSE).rewrites == 1
    assert _params(m) == 3 * w.size + 2 * b.size and _params(out) <= w.size + b.size
    weights = {n.input[1] for n in out.graph.node if n.op_type == "Conv"}
    assert len(weights) == 1, weights  # the Conv on -x reads the same weight
    assert_verifies(m, out)


def test_commutative_twins_and_a_split_of_two_outputs():
    g = GraphBuilder(3)
    a, b = g.node("Add", ["x", "z"]), g.node("Add", ["z", "x"])
    s1 = [g.fresh("s"), g.fresh("s")]
    s2 = [g.fresh("s"), g.fresh("s")]
    g.nodes.append(helper.make_node("Split", ["x"], s1, axis=1, name="split1"))
    g.nodes.append(helper.make_node("Split", ["x"], s2, axis=1, name="split2"))
    p = g.node("Mul", [g.node("Mul", [s1[0], s2[1]]), g.node("Mul", [s2[0], s1[1]])])
    y = g.node("Sub", [g.node("Mul", [a, b]), g.node("Concat", [p, p], axis=1)], "y")
    m = g.model({"x": (2, 4), "z": (2, 4)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Add": 1, "Split": 1, "Mul": 3, "Concat": 1, "Sub": 1}
    assert rule(rep, CSE).rewrites == 3  # the Add, the Split, then Mul(s0, s1) read in either order
    assert_verifies(m, out)


def test_a_twin_that_writes_a_graph_output_stays_and_the_first_goes():
    g = GraphBuilder(4)
    t1 = g.node("Tanh", ["x"], "t1")
    t2 = g.node("Tanh", ["x"], "t2")
    y = g.node("Mul", [t1, g.node("Sigmoid", [t1])], "y")
    m = g.model({"x": (2, 3)}, [y, t2])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Tanh": 1, "Sigmoid": 1, "Mul": 1}
    assert [n.output[0] for n in out.graph.node if n.op_type == "Tanh"] == ["t2"]
    assert [o.name for o in out.graph.output] == ["y", "t2"]
    assert rule(rep, CSE).rewrites == 1
    assert_verifies(m, out)


def test_twins_that_both_write_graph_outputs_are_kept():
    g = GraphBuilder(5)
    a, b = g.node("Tanh", ["x"], "a"), g.node("Tanh", ["x"], "b")
    m = g.model({"x": (2, 3)}, [a, b])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Tanh": 2}
    assert _reasons(rep) == [("Tanh_2", "privacy", "same inputs and attributes as 'Tanh_1', but both write graph "
                                                   "outputs (a, b): the model's interface keeps both")]
    assert_verifies(m, out)


def test_random_ops_dropout_in_training_and_custom_ops_are_kept():
    g = GraphBuilder(6)
    r = [g.node("RandomNormalLike", ["x"], seed=1.0) for _ in range(2)]
    d = [g.node("Dropout", ["x", g.init(np.array(0.5, np.float32), f"ratio{k}"), g.init(np.array(True), f"train{k}")],
                seed=3) for k in range(2)]
    c = [g.node("Scale", ["x"], domain="custom.example") for _ in range(2)]
    y = g.node("Sum", r + d + c, "y")
    m = g.model({"x": (2, 3)}, [("y", (2, 3))], extra_opsets={"custom.example": 1})
    out, rep = _optimize_unchecked(m)
    assert Counter(op_histogram(out)) == Counter({"RandomNormalLike": 2, "Dropout": 2, "Scale": 2, "Sum": 1})
    assert _reasons(rep) == [
        ("RandomNormalLike_2", "check", "same inputs and attributes as 'RandomNormalLike_1', but RandomNormalLike "
                                        "draws new values at each node"),
        ("Dropout_2", "check", "same inputs and attributes as 'Dropout_1', but Dropout in training mode draws a "
                               "new mask at each node"),
        ("Scale_2", "check", "same inputs and attributes as 'Scale_1', but an op of domain 'custom.example': "
                             "onnxrep cannot know that a custom op is free of side effects or state, so it never "
                             "merges one")]


def _optimize_unchecked(m):
    """optimize without the checker's full check (a custom op has no schema)."""
    from onnxrep import optimize
    return optimize(m)


def test_dropout_at_inference_is_merged():
    g = GraphBuilder(7)
    d = [g.node("Dropout", ["x", g.init(np.array(0.5, np.float32), f"ratio{k}")]) for k in range(2)]
    y = g.node("Mul", d, "y")
    m = g.model({"x": (2, 3)}, [y])
    out, rep = cse_only(m)
    assert op_histogram(out) == {"Dropout": 1, "Mul": 1} and rule(rep, CSE).rewrites == 1
    assert_verifies(m, out)


def test_constants_of_other_dtypes_or_large_ones_are_not_merged():
    """Equal values of two dtypes stay apart; weights over VALUE_MAX_BYTES are compared by identity."""
    g = GraphBuilder(8)
    n = 64
    w = g.randn(n, n, 9, 9, scale=0.01)
    assert w.nbytes > VALUE_MAX_BYTES
    c = [g.conv("x", n, n, 9, weight=g.init(w.copy()), bias=False) for _ in range(2)]
    y = g.node("Add", [g.node("Relu", [c[0]]), g.node("Sigmoid", [c[1]])])
    e1 = g.node("Cast", [g.node("Add", [g.node("Shape", ["x"]), g.init(np.array([1], np.int64))])], to=1)
    e2 = g.node("Add", [g.node("Cast", [g.node("Shape", ["x"])], to=1), g.init(np.array([1], np.float32))])
    m = g.model({"x": ("N", n, 9, 9)}, [y, g.node("Mul", [e1, e2], "s")])
    out, rep = run_opt(m)
    assert op_histogram(out)["Conv"] == 2 and op_histogram(out)["Shape"] == 1
    assert len(out.graph.initializer) == 4
    assert_verifies(m, out, input_shapes={"x": (1, n, 9, 9)})


def _branch(name: str, size: int) -> onnx.GraphProto:
    """Two identical Shape -> Gather -> Unsqueeze chains on the outer x, each with its own (equal) index
    constant, and two Tanh of x: y = Tanh(x) * Tanh(x) reshaped to (N, -1) by each chain's size."""
    nodes, inits = [], []
    for k in range(2):
        inits.append(onnx.numpy_helper.from_array(np.array(0, np.int64), f"{name}_i{k}"))
        nodes += [helper.make_node("Shape", ["x"], [f"{name}_s{k}"]),
                  helper.make_node("Gather", [f"{name}_s{k}", f"{name}_i{k}"], [f"{name}_g{k}"], axis=0),
                  helper.make_node("Constant", [], [f"{name}_axes{k}"], value=helper.make_tensor("a", TensorProto.INT64, [1], [0])),
                  helper.make_node("Unsqueeze", [f"{name}_g{k}", f"{name}_axes{k}"], [f"{name}_u{k}"]),
                  helper.make_node("Tanh", ["x"], [f"{name}_t{k}"])]
    nodes += [helper.make_node("Constant", [], [f"{name}_m"], value=helper.make_tensor("m", TensorProto.INT64, [1], [size])),
              helper.make_node("Concat", [f"{name}_u0", f"{name}_m"], [f"{name}_shape"], axis=0),
              helper.make_node("Mul", [f"{name}_t0", f"{name}_t1"], [f"{name}_p"]),
              helper.make_node("Reshape", [f"{name}_p", f"{name}_shape"], [f"{name}_y"])]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 12])],
                             initializer=inits)


def test_inside_an_if_body():
    """Twins inside each branch of an If (reading the outer x) are merged in the branch; the two branches are
    not merged with each other."""
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["y"], then_branch=_branch("a", -1), else_branch=_branch("b", 12))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])],
                              initializer=[onnx.numpy_helper.from_array(np.array(0, np.float32), "zero")])
    m = make_model(graph, [helper.make_opsetid("", 17)])
    out, rep = cse_only(m)
    branches = {a.name: a.g for n in out.graph.node if n.op_type == "If" for a in n.attribute}
    for body in branches.values():
        assert op_histogram(helper.make_model(body)) == {"Shape": 1, "Gather": 1, "Constant": 2, "Unsqueeze": 1,
                                                         "Tanh": 1, "Concat": 1, "Mul": 1, "Reshape": 1}
        assert len(body.initializer) == 1
    assert rule(rep, CSE).rewrites == 2 * 5  # per branch: the axes Constant, Shape, Gather, Unsqueeze and Tanh
    assert_verifies(m, out, input_shapes={"x": (2, 3, 4)})


def test_a_graph_of_5000_nodes_in_one_sweep():
    """1,250 layers of Cos(p), Cos(p) (twins), Max and Add of an equal scalar stored in each layer: one
    sweep merges every twin and every scalar; the count, not the time, is asserted (benchmarks time it)."""
    g = GraphBuilder(9)
    p = "x"
    layers = 1250
    for k in range(layers):
        a, b = g.node("Cos", [p]), g.node("Cos", [p])
        p = g.node("Add", [g.node("Max", [a, b]), g.init(np.array(0.25, np.float32), f"quarter{k}")])
    y = g.node("Identity", [p], "y")
    m = g.model({"x": (2, 3)}, [y])
    assert len(m.graph.node) == 4 * layers + 1
    out, rep = cse_only(m)
    record = rule(rep, CSE)
    assert record.rewrites == layers and len(record.fired) == layers - 1
    assert op_histogram(out) == {"Cos": layers, "Max": layers, "Add": layers, "Identity": 1}
    assert [t.name for t in out.graph.initializer] == ["quarter0"]
    assert_verifies(m, out)



def test_in_a_branch_the_twin_that_is_the_branch_output_stays():
    """In a branch, t2 = Tanh(x) is the branch's output and its twin t1 (read by a Relu) is earlier: t1 goes,
    the Relu reads t2, and the branch is put back in order."""
    def branch(name):
        nodes = [helper.make_node("Tanh", ["x"], [f"{name}_t1"], name=f"{name}_tanh1"),
                 helper.make_node("Relu", [f"{name}_t1"], [f"{name}_r"]),
                 helper.make_node("Tanh", ["x"], [f"{name}_t2"], name=f"{name}_tanh2")]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_{o}", TensorProto.FLOAT,
                                                                                  [2, 3]) for o in ("t2", "r")])
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["y", "z"], then_branch=branch("a"), else_branch=branch("b"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, 3]) for o in "yz"],
                              initializer=[onnx.numpy_helper.from_array(np.array(0, np.float32), "zero")])
    m = make_model(graph, [helper.make_opsetid("", 17)])
    out, rep = cse_only(m)
    for a in next(n for n in out.graph.node if n.op_type == "If").attribute:
        assert [(n.name or n.op_type) for n in a.g.node] == [f"{a.g.name}_tanh2", "Relu"]
    assert rule(rep, CSE).rewrites == 2
    assert_verifies(m, out)
