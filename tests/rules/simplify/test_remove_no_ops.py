"""remove-no-ops: nodes whose output is their input go (the table of what is removed), and what stays, with the
decline reason where the rule has one (the table of what is kept)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper

from checks import assert_verifies, rule, run_opt
from onnx_builders import GraphBuilder, make_model, op_histogram
from onnxrep.rules.simplify.remove_no_ops import RemoveNoOps

NOOPS = "remove-no-ops"
X = "x"
I64 = np.int64
INT64_MAX = np.iinfo(np.int64).max


def only(model: onnx.ModelProto, **kw):
    """``run_opt`` with this rule alone: the counts are its own."""
    return run_opt(model, rules=[RemoveNoOps()], include_defaults=False, **kw)


def _ints(g: GraphBuilder, *values) -> str:
    return g.init(np.array(values, I64))


def _case(case: str):
    """``x -> [the op] -> Neg -> y``: the op's output is no graph output. Returns the model and the op type."""
    g = GraphBuilder(7)
    shape, opset = (2, 3, 4), 17
    if case == "identity":
        t, op = g.node("Identity", [X]), "Identity"
    elif case == "dropout":  # opset 17: no training_mode input
        t, op = g.node("Dropout", [X, g.init(np.float32(0.5))]), "Dropout"
    elif case == "dropout-training-false":
        t, op = g.node("Dropout", [X, g.init(np.float32(0.5)), g.init(np.array(False))]), "Dropout"
    elif case == "dropout-mask-unread":
        g.nodes.append(helper.make_node("Dropout", [X], ["t", "mask"], name="drop", ratio=0.3))
        t, op, opset = "t", "Dropout", 11
    elif case == "cast-same-type":
        t, op = g.node("Cast", [X], to=T.FLOAT), "Cast"
    elif case == "castlike-same-type":
        t, op = g.node("CastLike", [X, g.init(np.float32(0))]), "CastLike"
    elif case == "reshape-static":
        t, op = g.node("Reshape", [X, _ints(g, 2, 3, 4)]), "Reshape"
    elif case == "reshape-zero-copies-dynamic":
        shape = ("N", 3, 4)
        t, op = g.node("Reshape", [X, _ints(g, 0, 3, 4)]), "Reshape"
    elif case == "reshape-minus-one-dynamic":
        shape = ("N", 3, 4)
        t, op = g.node("Reshape", [X, _ints(g, -1, 3, 4)]), "Reshape"
    elif case == "reshape-to-own-shape":
        shape = ("N", 3, "W")
        t, op = g.node("Reshape", [X, g.node("Shape", [X])]), "Reshape"
    elif case == "expand-ones":
        shape = ("N", 3, 4)
        t, op = g.node("Expand", [X, _ints(g, 1, 1)]), "Expand"
    elif case == "expand-same-static":
        t, op = g.node("Expand", [X, _ints(g, 2, 3, 4)]), "Expand"
    elif case == "transpose-identity":
        t, op = g.node("Transpose", [X], perm=[0, 1, 2]), "Transpose"
    elif case == "transpose-rank-1-reversal":
        shape = (5,)
        t, op = g.node("Transpose", [X]), "Transpose"
    elif case == "slice-int64-max-dynamic":
        shape = ("N", 3, "W")
        t, op = g.node("Slice", [X, _ints(g, 0, 0), _ints(g, INT64_MAX, INT64_MAX), _ints(g, 0, -1)]), "Slice"
    elif case == "slice-static-past-the-end":
        t, op = g.node("Slice", [X, _ints(g, -9), _ints(g, 4), _ints(g, 2), _ints(g, 1)]), "Slice"
    elif case == "concat-one":
        t, op = g.node("Concat", [X], axis=1), "Concat"
    elif case == "pad-zero":
        t, op = g.node("Pad", [X, _ints(g, 0, 0, 0, 0, 0, 0)], mode="constant"), "Pad"
    elif case == "pad-zero-reflect":
        t, op = g.node("Pad", [X, _ints(g, 0, 0, 0, 0, 0, 0)], mode="reflect"), "Pad"
    elif case == "flatten-rank-2":
        shape = ("N", 6)
        t, op = g.node("Flatten", [X], axis=1), "Flatten"
    else:
        raise AssertionError(case)
    y = g.node("Neg", [t], "y")
    return g.model({X: shape}, [y], opset=opset), op


REMOVED = ["identity", "dropout", "dropout-training-false", "dropout-mask-unread", "cast-same-type",
           "castlike-same-type", "reshape-static", "reshape-zero-copies-dynamic", "reshape-minus-one-dynamic",
           "reshape-to-own-shape", "expand-ones", "expand-same-static", "transpose-identity",
           "transpose-rank-1-reversal", "slice-int64-max-dynamic", "slice-static-past-the-end", "concat-one",
           "pad-zero", "pad-zero-reflect", "flatten-rank-2"]


@pytest.mark.parametrize("case", REMOVED)
def test_what_remove_no_ops_removes(case):
    m, op = _case(case)
    out, rep = only(m)
    assert op not in op_histogram(out), op_histogram(out)
    record = rule(rep, NOOPS)
    assert (record.rewrites, record.declines) == (1, [])
    assert len(out.graph.node) == len(m.graph.node) - 1 - (case == "reshape-to-own-shape")  # and its Shape
    assert_verifies(m, out)


def _kept(case: str):
    """A model where the op stays; returns it, the op and the input shapes to verify at."""
    g = GraphBuilder(8)
    shape, opset, extra_inputs, outputs = (2, 3, 4), 17, {}, []
    if case == "graph-output":
        t, op = g.node("Identity", [X], "y", name="id"), "Identity"
        return g.model({X: shape}, [t]), op
    if case == "dropout-mask-read":
        g.nodes.append(helper.make_node("Dropout", [X], ["t", "mask"], name="drop", ratio=0.3))
        t, op, opset, outputs = "t", "Dropout", 11, [g.node("Cast", ["mask"], "m", to=T.FLOAT)]
    elif case == "dropout-training-true":
        t, op = g.node("Dropout", [X, g.init(np.float32(0.0)), g.init(np.array(True))], name="drop"), "Dropout"
    elif case == "cast-other-type":
        t, op = g.node("Cast", [g.node("Cast", [X], to=T.DOUBLE, name="c"), ], to=T.FLOAT, name="c2"), "Cast"
        return g.model({X: shape}, [g.node("Neg", [t], "y")]), "Cast"
    elif case == "cast-unknown-type":  # a custom op's output: no type
        u = g.node("Mystery", [X], domain="com.example", name="custom")
        t, op = g.node("Cast", [u], to=T.FLOAT, name="cast"), "Cast"
        return g.model({X: shape}, [(g.node("Neg", [t], "y"), shape)], extra_opsets={"com.example": 1}), op
    elif case == "reshape-changes":
        t, op = g.node("Reshape", [X, _ints(g, 6, 4)], name="r"), "Reshape"
    elif case == "reshape-dynamic-target":
        shape = ("N", 3, 4)
        t, op = g.node("Reshape", [X, _ints(g, 2, 3, 4)], name="r"), "Reshape"
    elif case == "expand-broadcasts":
        shape = (2, 1, 4)
        t, op = g.node("Expand", [X, _ints(g, 2, 3, 4)], name="e"), "Expand"
    elif case == "expand-dynamic-dim":
        shape = ("N", 3, 4)
        t, op = g.node("Expand", [X, _ints(g, 2, 3, 4)], name="e"), "Expand"
    elif case == "transpose-perm":
        t, op = g.node("Transpose", [X], perm=[0, 2, 1], name="t"), "Transpose"
    elif case == "slice-part":
        t, op = g.node("Slice", [X, _ints(g, 1), _ints(g, 4), _ints(g, 2)], name="s"), "Slice"
    elif case == "slice-int32-max-dynamic":
        shape = ("N", 3, "W")
        t, op = g.node("Slice", [X, _ints(g, 0), _ints(g, 2**31 - 1), _ints(g, 2)], name="s"), "Slice"
    elif case == "concat-two":
        t, op = g.node("Concat", [X, X], axis=1, name="cat"), "Concat"
    elif case == "pad-nonzero":
        t, op = g.node("Pad", [X, _ints(g, 0, 0, 1, 0, 0, 1)], name="p"), "Pad"
    elif case == "flatten-rank-3":
        t, op = g.node("Flatten", [X], axis=1, name="f"), "Flatten"
    else:
        raise AssertionError(case)
    y = g.node("Neg", [t], "y")
    return g.model({X: shape, **extra_inputs}, [y] + outputs, opset=opset), op


KEPT = [  # case: the decline reason (None: plainly not a no-op, nothing to say)
    ("graph-output", "its output 'y' is a graph output (the model's interface keeps its producer)"),
    ("dropout-mask-read", "its mask 'mask' is read (the Dropout stays to compute it)"),
    ("dropout-training-true", "training_mode is true: it drops elements"),
    ("cast-other-type", None),
    ("cast-unknown-type", "not proven a no-op: the input's element type is unknown"),
    ("reshape-changes", None),
    ("reshape-dynamic-target", "not proven a no-op: target dim 2 against the dynamic dim 'N'"),
    ("expand-broadcasts", None),
    ("expand-dynamic-dim", "not proven a no-op: target dim 2 against the dynamic dim 'N' (it may broadcast a 1)"),
    ("transpose-perm", None),
    ("slice-part", None),
    ("slice-int32-max-dynamic", "not proven a no-op: end 2147483647 on the dynamic dim 'W' (only INT64_MAX is "
                                "past every dim)"),
    ("concat-two", None),
    ("pad-nonzero", None),
    ("flatten-rank-3", None),
]


@pytest.mark.parametrize("case,reason", KEPT, ids=[c for c, _ in KEPT])
def test_what_remove_no_ops_keeps(case, reason):
    m, op = _kept(case)
    out, rep = only(m)
    assert op_histogram(out)[op] == op_histogram(m)[op]
    record = rule(rep, NOOPS)
    assert record.rewrites == 0
    assert [d.reason for d in record.declines] == ([reason] if reason else [])
    if case != "cast-unknown-type":  # onnxruntime cannot run the custom op
        assert_verifies(m, out, allow_zero=case == "dropout-mask-read",  # onnxruntime's inference mask: all false
                        input_shapes={X: (2, 3, 4)} if case.endswith("dynamic-target") else None)


def test_dropout_whose_training_mode_is_an_input_is_declined():
    g = GraphBuilder(9)
    t = g.node("Dropout", [X, g.init(np.float32(0.5)), "training"], name="drop")
    y = g.node("Neg", [t], "y")
    m = g.model({X: (2, 3)}, [y])
    m.graph.input.append(helper.make_tensor_value_info("training", T.BOOL, []))
    out, rep = only(m)
    assert [d.reason for d in rule(rep, NOOPS).declines] == ["training_mode is not a constant (it may drop elements)"]
    assert "Dropout" in op_histogram(out)


def _branch(name: str, ops: list[tuple[str, dict]]) -> onnx.GraphProto:
    """A body reading the outer ``x`` through ``ops`` (each a no-op), then ``Neg``."""
    nodes, t = [], "x"
    for k, (op, attrs) in enumerate(ops):
        nodes.append(helper.make_node(op, [t], [f"{name}{k}"], name=f"{name}_{op}", **attrs))
        t = f"{name}{k}"
    nodes.append(helper.make_node("Neg", [t], [f"{name}_y"], name=f"{name}_neg"))
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", T.FLOAT, [2, 3])])


def test_no_ops_inside_if_branches_go_and_the_model_loads():
    """Inside If branches: an Identity, a Cast to float of a float (its type found through the Identity: bodies
    have no inferred types) and an identity Transpose go; the branches keep their Neg and stay loadable."""
    ops = [("Identity", {}), ("Cast", {"to": T.FLOAT}), ("Transpose", {"perm": [0, 1]})]
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
             helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
             helper.make_node("If", ["c"], ["y"], name="if", then_branch=_branch("a", ops),
                              else_branch=_branch("b", ops[:2]))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])],
                              [onnx.numpy_helper.from_array(np.float32(0), "zero")])
    m = make_model(graph, [helper.make_opsetid("", 17)])
    out, rep = only(m)
    branches = {a.name: [n.op_type for n in a.g.node] for a in out.graph.node[-1].attribute}
    assert branches == {"then_branch": ["Neg"], "else_branch": ["Neg"]}
    assert rule(rep, NOOPS).rewrites == 5
    assert [d.reason for d in rule(rep, NOOPS).declines] == []
    assert_verifies(m, out)


def test_an_initializer_a_body_would_read_keeps_its_identity():
    """w (an initializer) -> Identity -> read inside an If branch: the branch reading w itself would make the
    export copy w into the branch, so the Identity stays (declined); parameters unchanged."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    then = helper.make_graph([helper.make_node("Add", ["x", "w_id"], ["a_y"], name="a_add")], "a", [],
                             [helper.make_tensor_value_info("a_y", T.FLOAT, [2, 3])])
    other = helper.make_graph([helper.make_node("Sub", ["x", "w_id"], ["b_y"], name="b_sub")], "b", [],
                              [helper.make_tensor_value_info("b_y", T.FLOAT, [2, 3])])
    nodes = [helper.make_node("Identity", ["w"], ["w_id"], name="id"),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
             helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
             helper.make_node("If", ["c"], ["y"], name="if", then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])],
                              [onnx.numpy_helper.from_array(np.float32(0), "zero"),
                               onnx.numpy_helper.from_array(w, "w")])
    m = make_model(graph, [helper.make_opsetid("", 17)])
    out, rep = only(m)
    assert [d.reason for d in rule(rep, NOOPS).declines] == [
        "a body reads its output: it would read the initializer 'w' directly, and the export would copy it into "
        "the body"]
    assert rep.after.params == rep.before.params == 7
    assert_verifies(m, out)


def test_with_every_default_rule_a_conv_behind_no_ops_still_merges():
    """x -> Identity -> Conv -> Dropout -> BN -> Cast(float) -> y: the no-ops go before the region collapse,
    which folds the BN into the conv; one Conv and the graph output's producer, the Cast, are left (declined)."""
    g = GraphBuilder(10)
    c = g.conv(g.node("Identity", [X]), 3, 4, 3, pads=1)
    t = g.bn(g.node("Dropout", [c]), 4)
    y = g.node("Cast", [t], "y", to=T.FLOAT, name="cast_out")
    m = g.model({X: ("N", 3, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Conv": 1, "Cast": 1}
    assert rule(rep, NOOPS).rewrites == 2
    assert [(d.node, d.kind) for d in rule(rep, NOOPS).declines] == [("cast_out", "privacy")]
    assert_verifies(m, out)
