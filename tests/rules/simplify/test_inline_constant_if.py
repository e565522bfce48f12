"""inline-constant-if: an If whose condition is a constant becomes the nodes of the branch it takes (then and
else, a condition the folds make constant, nested Ifs, an If in a Loop body, pass-through outputs, names
another branch also uses); an If on a graph input stays."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from checks import assert_verifies, rule, run_opt
from onnx_builders import make_model, op_histogram

INLINE = "inline-constant-if"
F, B, I64 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64


def _const(name: str, value, dtype=np.float32) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype=dtype), name))


def _branch(name: str, nodes, outputs) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(o, F, None) for o in outputs])


def _then_else(prefix: str = ""):
    """then: (x + 1) * 2 (2 nodes, 2 Constants); else: relu(x) - 3 then neg (3 nodes, 1 Constant)."""
    p = prefix
    then = _branch(f"{p}then", [_const(f"{p}one", 1.0), helper.make_node("Add", ["x", f"{p}one"], [f"{p}t1"]),
                                _const(f"{p}two", 2.0), helper.make_node("Mul", [f"{p}t1", f"{p}two"], [f"{p}t2"])],
                   [f"{p}t2"])
    other = _branch(f"{p}else", [helper.make_node("Relu", ["x"], [f"{p}e1"]), _const(f"{p}three", 3.0),
                                 helper.make_node("Sub", [f"{p}e1", f"{p}three"], [f"{p}e2"]),
                                 helper.make_node("Neg", [f"{p}e2"], [f"{p}e3"])], [f"{p}e3"])
    return then, other


def _model(nodes, inputs=(("x", F, ["N", 4]),), outputs=(("y", F, ["N", 4]),), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs])
    return make_model(graph, [helper.make_opsetid("", opset)])


def _constant_if(flag: bool, output="y"):
    then, other = _then_else()
    return _model([_const("c", flag, np.bool_),
                   helper.make_node("If", ["c"], [output], name="if", then_branch=then, else_branch=other)])


def _all_nodes(graph: onnx.GraphProto) -> int:
    return sum(1 + sum(_all_nodes(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
               for n in graph.node)


def test_a_true_condition_takes_the_then_branch():
    m = _constant_if(True)
    out, rep = run_opt(m)
    assert op_histogram(m) == {"Constant": 1, "If": 1} and _all_nodes(m.graph) == 2 + 4 + 4
    assert op_histogram(out) == {"Add": 1, "Mul": 1}
    assert [o.name for o in out.graph.output] == ["y"] and out.graph.node[-1].output == ["y"]
    record = rule(rep, INLINE)
    assert record.rewrites == 1 and record.declines == []
    assert_verifies(m, out)


def test_a_false_condition_takes_the_else_branch():
    m = _constant_if(False)
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Relu": 1, "Sub": 1, "Neg": 1}
    assert rule(rep, INLINE).rewrites == 1
    assert_verifies(m, out)
    y = np.array([[-1.0, 0.5, 2.0, -3.0]], np.float32)
    from onnxrep.verification import run
    assert np.allclose(run(out, {"x": y})["y"], -(np.maximum(y, 0) - 3))


def test_an_if_on_a_graph_input_stays():
    then, other = _then_else()
    m = _model([helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)],
               inputs=(("x", F, ["N", 4]), ("flag", B, [])))
    out, rep = run_opt(m)
    assert op_histogram(out) == {"If": 1} and rule(rep, INLINE).rewrites == 0
    assert_verifies(m, out)  # both values of flag (the verification runs each)


def test_a_condition_the_folds_make_constant():
    """if x.shape[1] > 3 (x: N x 4): Shape -> Gather(1) -> Greater(3); fold-static-dims folds the size, fold-constants
    the comparison, and the If goes; the batch stays dynamic."""
    then, other = _then_else()
    m = _model([helper.make_node("Shape", ["x"], ["s"]), _const("i1", 1, np.int64),
                helper.make_node("Gather", ["s", "i1"], ["c_dim"], axis=0), _const("i3", 3, np.int64),
                helper.make_node("Greater", ["c_dim", "i3"], ["big"]),
                helper.make_node("If", ["big"], ["y"], then_branch=then, else_branch=other)])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Add": 1, "Mul": 1}
    assert rule(rep, INLINE).rewrites == 1 and rule(rep, "fold-static-dims").rewrites == 1
    for batch in (1, 3):
        assert_verifies(m, out, input_shapes={"x": (batch, 4)})


def _nested(outer_flag: bool):
    """The outer If (constant) takes a branch that computes a = x * 5 and holds an inner If on the input `flag`
    whose branches read `a` (a tensor of the outer branch) and x: then a + x, else a - x."""
    inner_then = _branch("inner_then", [helper.make_node("Add", ["a", "x"], ["it"])], ["it"])
    inner_else = _branch("inner_else", [helper.make_node("Sub", ["a", "x"], ["ie"])], ["ie"])
    outer_then = _branch("outer_then", [_const("five", 5.0), helper.make_node("Mul", ["x", "five"], ["a"]),
                                        helper.make_node("If", ["flag"], ["inner_y"], name="inner",
                                                         then_branch=inner_then, else_branch=inner_else)],
                         ["inner_y"])
    outer_else = _branch("outer_else", [helper.make_node("Neg", ["x"], ["n"])], ["n"])
    return _model([_const("c", outer_flag, np.bool_),
                   helper.make_node("If", ["c"], ["y"], name="outer", then_branch=outer_then, else_branch=outer_else)],
                  inputs=(("x", F, ["N", 4]), ("flag", B, [])))


def test_a_nested_if_moves_with_its_branch_and_reads_the_moved_tensors():
    m = _nested(True)
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Mul": 1, "If": 1}
    inner = out.graph.node[-1]
    assert inner.op_type == "If" and inner.output == ["y"]
    reads = {i for a in inner.attribute for n in a.g.node for i in n.input}
    assert out.graph.node[0].output[0] in reads  # the moved Mul's output, under its new name
    assert rule(rep, INLINE).rewrites == 1
    res = assert_verifies(m, out)
    assert len(res.runs) == 2  # flag true and false


def test_nested_constant_ifs_are_both_inlined():
    """The inner If's condition is a constant too: the outer If goes in one sweep, the inner one (now in the main
    graph) in the next."""
    inner_then = _branch("inner_then", [helper.make_node("Add", ["a", "x"], ["it"])], ["it"])
    inner_else = _branch("inner_else", [helper.make_node("Sub", ["a", "x"], ["ie"])], ["ie"])
    outer_then = _branch("outer_then", [_const("five", 5.0), helper.make_node("Mul", ["x", "five"], ["a"]),
                                        _const("d", False, np.bool_),
                                        helper.make_node("If", ["d"], ["inner_y"], then_branch=inner_then,
                                                         else_branch=inner_else)], ["inner_y"])
    outer_else = _branch("outer_else", [helper.make_node("Neg", ["x"], ["n"])], ["n"])
    m = _model([_const("c", True, np.bool_),
                helper.make_node("If", ["c"], ["y"], then_branch=outer_then, else_branch=outer_else)])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Mul": 1, "Sub": 1}
    assert rule(rep, INLINE).rewrites == 2
    assert_verifies(m, out)


def test_an_if_in_a_loop_body_is_inlined_into_the_body():
    """Loop(n) with state s: s <- s * 2 if <constant> else s + 1; the If goes into the body, the Loop runs as before."""
    then = _branch("then", [_const("two", 2.0), helper.make_node("Mul", ["s_in", "two"], ["m"])], ["m"])
    other = _branch("else", [_const("one", 1.0), helper.make_node("Add", ["s_in", "one"], ["p"])], ["p"])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), _const("k", True, np.bool_),
         helper.make_node("If", ["k"], ["s_out"], then_branch=then, else_branch=other)],
        "body", [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", B, []),
                 helper.make_tensor_value_info("s_in", F, ["N", 4])],
        [helper.make_tensor_value_info("cond_out", B, []), helper.make_tensor_value_info("s_out", F, ["N", 4])])
    m = _model([_const("n", 3, np.int64), _const("go", True, np.bool_),
                helper.make_node("Loop", ["n", "go", "x"], ["y"], body=body)])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Loop": 1}
    loop_body = out.graph.node[-1].attribute[0].g
    assert [n.op_type for n in loop_body.node if n.op_type != "Constant"] == ["Identity", "Mul"]
    assert rule(rep, INLINE).rewrites == 1
    from onnxrep.verification import run
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert np.array_equal(run(out, {"x": x})["y"], x * 8)
    assert_verifies(m, out)


def test_outputs_the_branch_passes_through():
    """The then branch returns its initializers w and u (ONNX lets a branch return an initializer, not an outer
    tensor): y0 = w is a graph output, so an Identity writes it; y1 = u is not, and its reader reads u; the
    Negs write y2 and y3. (A branch returning one tensor twice passes the checker, but onnxruntime cannot run
    it; such outputs become Identities too.)"""
    w, u = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    then = helper.make_graph([helper.make_node("Neg", ["x"], ["t"]), helper.make_node("Abs", ["x"], ["v"])], "then",
                             [], [helper.make_tensor_value_info(n, F, None) for n in ("w", "u", "t", "v")],
                             initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(u, "u")])
    other = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["x"], ["s"])],
                              "else", [], [helper.make_tensor_value_info(n, F, None) for n in ("z4", "z5", "r", "s")],
                              initializer=[numpy_helper.from_array(np.zeros(4, np.float32), n) for n in ("z4", "z5")])
    m = _model([_const("c", True, np.bool_),
                helper.make_node("If", ["c"], ["y0", "y1", "y2", "y3"], then_branch=then, else_branch=other),
                helper.make_node("Add", ["y1", "y2"], ["z"])],
               outputs=(("y0", F, [4]), ("z", F, ["N", 4]), ("y3", F, ["N", 4])))
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Identity": 1, "Neg": 1, "Abs": 1, "Add": 1}
    producers = {o: n.op_type for n in out.graph.node for o in n.output}
    assert producers["y0"] == "Identity" and producers["y2"] == "Neg" and producers["y3"] == "Abs"
    add = next(n for n in out.graph.node if n.op_type == "Add")
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert add.input[1] == "y2" and np.array_equal(inits[add.input[0]], u)  # y1's Identity removed
    assert rule(rep, INLINE).rewrites == 2  # the If, then y1's Identity
    assert_verifies(m, out)


def test_names_another_branch_uses_are_made_unique():
    """Two Ifs whose branches use the same tensor names (t1, t2, one, two): the first is inlined (constant
    condition); its names would be shadowed by the second If's branches, so they are renamed; the model passes
    the full checker."""
    then_a, else_a = _then_else()
    then_b, else_b = _then_else()
    m = _model([_const("c", True, np.bool_),
                helper.make_node("If", ["c"], ["ya"], then_branch=then_a, else_branch=else_a),
                helper.make_node("If", ["flag"], ["yb"], then_branch=then_b, else_branch=else_b),
                helper.make_node("Add", ["ya", "yb"], ["y"])],
               inputs=(("x", F, ["N", 4]), ("flag", B, [])))
    out, rep = run_opt(m)  # full_check on the result
    main_names = {o for n in out.graph.node for o in n.output} | {t.name for t in out.graph.initializer}
    assert not main_names & {"t1", "t2", "one", "two"}, main_names
    assert op_histogram(out)["If"] == 1 and rule(rep, INLINE).rewrites == 1
    assert_verifies(m, out)
