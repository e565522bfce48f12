"""Graph-level tests of the built-in rules on hand-built ONNX models.

Every test builds a model with ``tests/onnx_builders.py`` (seeded random weights, BN with
var in [0.5, 2]), runs ``optimize``, and asserts numbers: the optimized model passes the ONNX
checker, its op histogram / node count, the rules' rewrite counts and decline reasons, and the
onnxruntime max abs error against the original (``<= 1e-4 * max|ref|``).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from onnx_builders import GraphBuilder, dims, initializer, newest_ort_opset, node_ops, op_histogram
from checks import COLLAPSE, assert_verifies, attr, conv_nodes, reasons, rewrites, declined_once, rule, run_opt
from onnxrep import optimize, verify



# --------------------------------------------------------------------------- helpers


def weight_of(model, node, i=1):
    return initializer(model, node.input[i])


def node_sig(n: onnx.NodeProto):
    return (n.op_type, n.domain, n.name, list(n.input), list(n.output),
            sorted((a.name, str(helper.get_attribute_value(a))) for a in n.attribute))


def collapse_to(model, ops: dict, n_rewrites: int = 1, nodes_removed: int | None = None, alone: bool = False,
                **verify_kw):
    """Optimize; expect exactly ``ops`` and ``n_rewrites`` rewrites of the collapse rule; verify. ``alone``: the
    collapse without the other rules (remove-no-ops would take an Identity or Dropout before it)."""
    from onnxrep.rules import CollapseLinearRegions
    out, rep = run_opt(model, rules=[CollapseLinearRegions()], include_defaults=False) if alone else run_opt(model)
    assert op_histogram(out) == ops, node_ops(out)
    assert rewrites(rep) == ({COLLAPSE: n_rewrites} if n_rewrites else {})
    if nodes_removed is not None:
        assert rule(rep, COLLAPSE).nodes_removed == nodes_removed
    assert rep.after.nodes == sum(ops.values())
    assert rep.before.nodes == len(model.graph.node)
    assert_verifies(model, out, **verify_kw)
    return out, rep


X = "x"


# =========================================================================== 1. conv + affine
def test_conv_bn_folds_into_one_conv():
    g = GraphBuilder(1)
    y = g.bn(g.conv(X, 4, 6, 3, pads=1), 6, output="y")
    m = g.model({X: (2, 4, 9, 9)}, [y])
    out, rep = collapse_to(m, {"Conv": 1}, nodes_removed=1)
    (conv,) = conv_nodes(out)
    assert conv.output[0] == "y" and conv.input[0] == X
    assert weight_of(out, conv).shape == (6, 4, 3, 3)
    assert attr(conv, "pads") == [1, 1, 1, 1] and attr(conv, "group") == 1
    assert rep.before.convs == 1 and rep.after.convs == 1
    assert rep.after.params == 6 * 4 * 9 + 6


def test_conv_without_bias_bn_gets_a_bias():
    g = GraphBuilder(2)
    y = g.bn(g.conv(X, 3, 5, 3, pads=1, bias=False), 5, output="y")
    m = g.model({X: (1, 3, 8, 8)}, [y])
    out, _ = collapse_to(m, {"Conv": 1})
    (conv,) = conv_nodes(out)
    assert len(conv.input) == 3 and weight_of(out, conv, 2).shape == (5,)


def test_conv_mul_add_per_channel_constants_fold():
    g = GraphBuilder(3)
    c = g.conv(X, 4, 6, 3, pads=1)
    c = g.node("Mul", [c, g.chan_const(6)])                 # (C,1,1)
    y = g.node("Add", [c, g.chan_const(6, lead=True)], "y")  # (1,C,1,1)
    m = g.model({X: (2, 4, 8, 8)}, [y])
    collapse_to(m, {"Conv": 1}, nodes_removed=2)


def test_conv_scalar_mul_and_const_first_add_fold():
    g = GraphBuilder(4)
    c = g.conv(X, 4, 4, 1)
    c = g.node("Mul", [g.init(np.float32(0.37)), c])
    y = g.node("Add", [g.chan_const(4, lead=True), c], "y")
    m = g.model({X: (1, 4, 6, 6)}, [y])
    collapse_to(m, {"Conv": 1}, nodes_removed=2)


@pytest.mark.parametrize("const_first", [False, True], ids=["conv-minus-c", "c-minus-conv"])
def test_conv_sub_constant_folds(const_first):
    g = GraphBuilder(5)
    c = g.conv(X, 4, 6, 3, pads=1)
    k = g.chan_const(6)
    y = g.node("Sub", [k, c] if const_first else [c, k], "y")
    m = g.model({X: (2, 4, 7, 7)}, [y])
    out, _ = collapse_to(m, {"Conv": 1}, nodes_removed=1)
    if const_first:  # c - conv(x): the kernel is negated
        w0 = initializer(m, m.graph.node[0].input[1])
        w1 = weight_of(out, conv_nodes(out)[0])
        np.testing.assert_allclose(w1, -w0, rtol=0, atol=0)


def test_conv_div_constant_folds():
    g = GraphBuilder(6)
    c = g.conv(X, 4, 6, 3, pads=1)
    y = g.node("Div", [c, g.chan_const(6, lo=0.5, hi=2.0)], "y")
    m = g.model({X: (2, 4, 7, 7)}, [y])
    collapse_to(m, {"Conv": 1}, nodes_removed=1)


def test_div_by_zero_constant_is_declined():
    g = GraphBuilder(6)
    c = g.conv(X, 2, 2, 1)
    y = g.node("Div", [c, g.init(np.array([1.0, 0.0], np.float32).reshape(2, 1, 1))], "y")
    m = g.model({X: (1, 2, 4, 4)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Div"]
    assert rewrites(rep) == {}
    assert any("zero" in r for r in reasons(rep)), reasons(rep)


def test_conv_neg_identity_dropout_chain_folds():
    g = GraphBuilder(7)
    c = g.conv(X, 3, 3, 3, pads=1)
    c = g.node("Neg", [c])
    c = g.node("Identity", [c])
    c = g.node("Dropout", [c])
    y = g.bn(c, 3, output="y")
    m = g.model({X: (1, 3, 6, 6)}, [y], opset=13)
    collapse_to(m, {"Conv": 1}, nodes_removed=4, alone=True)


# =========================================================================== 2. RepVGG
def repvgg_legacy(g: GraphBuilder, x: str, c: int, group: int = 1, output: str | None = None) -> str:
    """Conv3x3(bias), Conv1x1(bias), Add, BatchNormalization(x), Add, Relu (legacy export)."""
    a = g.conv(x, c, c, 3, pads=1, group=group)
    b = g.conv(x, c, c, 1, group=group)
    s = g.add(a, b)
    s = g.add(s, g.bn(x, c))
    return g.node("Relu", [s], output)


def repvgg_unfolded(g: GraphBuilder, x: str, c: int, group: int = 1, output: str | None = None) -> str:
    a = g.bn(g.conv(x, c, c, 3, pads=1, group=group, bias=False), c)
    b = g.bn(g.conv(x, c, c, 1, group=group, bias=False), c)
    s = g.add(g.add(a, b), g.bn(x, c))
    return g.node("Relu", [s], output)


@pytest.mark.parametrize("group", [1, 2, 8], ids=["dense", "groups2", "depthwise"])
@pytest.mark.parametrize("builder", [repvgg_legacy, repvgg_unfolded], ids=["legacy", "unfolded-bn"])
def test_repvgg_block_collapses_to_conv_relu(builder, group):
    c = 8
    g = GraphBuilder(10 + group)
    y = builder(g, X, c, group, output="y")
    m = g.model({X: (2, c, 10, 10)}, [y])
    n_before = len(m.graph.node)
    out, rep = collapse_to(m, {"Conv": 1, "Relu": 1}, nodes_removed=n_before - 2)
    assert node_ops(out) == ["Conv", "Relu"]
    (conv,) = conv_nodes(out)
    assert attr(conv, "group") == group
    assert attr(conv, "kernel_shape") == [3, 3] and attr(conv, "pads") == [1, 1, 1, 1]
    assert weight_of(out, conv).shape == (c, c // group, 3, 3)
    assert rep.before.convs == 2 and rep.after.convs == 1
    assert rep.sweeps <= 2


def test_repvgg_identity_as_raw_input():
    c = 6
    g = GraphBuilder(20)
    s = g.add(g.conv(X, c, c, 3, pads=1), X)          # Add(conv, x)
    s = g.add(g.conv(X, c, c, 1), s)
    y = g.node("Relu", [s], "y")
    m = g.model({X: (2, c, 9, 9)}, [y])
    out, _ = collapse_to(m, {"Conv": 1, "Relu": 1}, nodes_removed=3)
    assert attr(conv_nodes(out)[0], "group") == 1


def test_only_conv_plus_identity_residual():
    c = 4
    g = GraphBuilder(21)
    y = g.add(X, g.conv(X, c, c, 3, pads=1), "y")
    m = g.model({X: (1, c, 8, 8)}, [y])
    collapse_to(m, {"Conv": 1}, nodes_removed=1)


def _branches(g: GraphBuilder, c: int) -> list[str]:
    """Four parallel branches on x: 3x3-BN, 1x1-BN, BN(x), 3x3 (MobileOne-ish)."""
    return [g.bn(g.conv(X, c, c, 3, pads=1), c), g.bn(g.conv(X, c, c, 1), c), g.bn(X, c),
            g.conv(X, c, c, 3, pads=1)]


SUM_SHAPES = {
    "chain-abcd": lambda g, a, b, c, d: g.add(g.add(g.add(a, b), c), d),
    "chain-dcba": lambda g, a, b, c, d: g.add(d, g.add(c, g.add(b, a))),
    "tree-ab-cd": lambda g, a, b, c, d: g.add(g.add(a, b), g.add(c, d)),
    "tree-ca-db": lambda g, a, b, c, d: g.add(g.add(c, a), g.add(d, b)),
    "chain-cbda": lambda g, a, b, c, d: g.add(g.add(c, g.add(b, d)), a),
}


@pytest.mark.parametrize("shape", sorted(SUM_SHAPES))
def test_sums_as_chains_and_trees_in_any_order(shape):
    c = 6
    g = GraphBuilder(30)
    a, b, i, d = _branches(g, c)
    y = g.node("Relu", [SUM_SHAPES[shape](g, a, b, i, d)], "y")
    m = g.model({X: (2, c, 8, 8)}, [y])
    collapse_to(m, {"Conv": 1, "Relu": 1}, nodes_removed=len(m.graph.node) - 2)


def test_sub_of_a_branch():
    c = 5
    g = GraphBuilder(31)
    a = g.conv(X, c, c, 3, pads=1)
    b = g.bn(g.conv(X, c, c, 1), c)
    s = g.sub(a, b)                     # a - b
    s = g.sub(g.bn(X, c), s)            # BN(x) - (a - b)
    y = g.node("Relu", [s], "y")
    m = g.model({X: (2, c, 7, 7)}, [y])
    collapse_to(m, {"Conv": 1, "Relu": 1}, nodes_removed=5)


def test_two_stacked_repvgg_blocks_collapse_independently():
    c = 4
    g = GraphBuilder(32)
    h = repvgg_legacy(g, X, c)
    y = repvgg_legacy(g, h, c, output="y")
    m = g.model({X: (1, c, 8, 8)}, [y])
    collapse_to(m, {"Conv": 2, "Relu": 2}, n_rewrites=2, nodes_removed=8)


def test_grouped_plus_dense_branch_merges_at_gcd_groups():
    c = 8
    g = GraphBuilder(33)
    s = g.add(g.conv(X, c, c, 3, pads=1, group=2), g.conv(X, c, c, 1, group=4))
    y = g.add(s, g.bn(X, c), "y")
    m = g.model({X: (1, c, 6, 6)}, [y])
    out, rep = collapse_to(m, {"Conv": 1})
    assert attr(conv_nodes(out)[0], "group") == 2
    assert rep.after.macs == 36 * c * (c // 2) * 9 < rep.before.macs


def test_depthwise_beside_grouped_branch_stays_apart_with_identity_folded():
    """dw3x3 + g2 1x1 + BN(x): one g2 3x3 costs 8*4*9 = 288 MACs per pixel against 72 + 32 apart;
    the BN identity folds into the depthwise term (same cost), so 2 Convs + 1 Add remain."""
    c = 8
    g = GraphBuilder(33)
    s = g.add(g.conv(X, c, c, 3, pads=1, group=c), g.conv(X, c, c, 1, group=2))
    y = g.add(s, g.bn(X, c), "y")
    m = g.model({X: (1, c, 6, 6)}, [y])
    out, rep = collapse_to(m, {"Conv": 2, "Add": 1})
    assert sorted(attr(n, "group") for n in conv_nodes(out)) == [2, c]
    assert rep.after.macs == 36 * (c * 9 + c * 4) == rep.before.macs
    assert rep.after.params < rep.before.params
    why = [r for r in reasons(rep) if r.startswith("branches kept apart")]
    assert len(why) == 1 and "one conv would cost 10.4 kMACs" in why[0], why


def test_stride2_branches_merge():
    c = 4
    g = GraphBuilder(34)
    s = g.add(g.conv(X, c, 6, 3, pads=1, strides=2), g.conv(X, c, 6, 1, strides=2))
    m = g.model({X: (1, c, 9, 9)}, [g.node("Relu", [s], "y")])
    out, _ = collapse_to(m, {"Conv": 1, "Relu": 1})
    assert attr(conv_nodes(out)[0], "strides") == [2, 2]


def test_asymmetric_pad_branches_merge_into_even_kernel():
    # 3x3 pads (1,1,1,1) and 3x3 pads (0,0,2,2): same output size, taps offset by one -> a 4x4 kernel
    c = 3
    g = GraphBuilder(35)
    s = g.add(g.conv(X, c, c, 3, pads=1), g.conv(X, c, c, 3, pads=[0, 0, 2, 2]))
    m = g.model({X: (1, c, 7, 7)}, [g.node("Relu", [s], "y")])
    out, _ = collapse_to(m, {"Conv": 1, "Relu": 1})
    conv = conv_nodes(out)[0]
    assert attr(conv, "kernel_shape") == [4, 4] and attr(conv, "pads") == [1, 1, 2, 2]


# =========================================================================== 3. ACNet
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("with_bn", [False, True], ids=["folded", "bn"])
def test_acnet_block_collapses_to_one_kxk_conv(k, with_bn):
    c, p = 6, k // 2
    g = GraphBuilder(40 + k)

    def branch(ks, pads):
        y = g.conv(X, c, c, ks, pads=pads, bias=not with_bn)
        return g.bn(y, c) if with_bn else y

    sq = branch(k, p)
    hor = branch((1, k), [0, p, 0, p])
    ver = branch((k, 1), [p, 0, p, 0])
    y = g.node("Relu", [g.add(g.add(sq, hor), ver)], "y")
    m = g.model({X: (2, c, 11, 11)}, [y])
    out, _ = collapse_to(m, {"Conv": 1, "Relu": 1})
    conv = conv_nodes(out)[0]
    assert attr(conv, "kernel_shape") == [k, k] and attr(conv, "pads") == [p] * 4
    assert weight_of(out, conv).shape == (c, c, k, k)


# =========================================================================== 4. post-BN
@pytest.mark.parametrize("group", [1, 4], ids=["dense", "depthwise"])
def test_post_bn_after_the_sum(group):
    """QARepVGG / RepViT: BN(conv3x3 + conv1x1 + x) -> one Conv."""
    c = 4
    g = GraphBuilder(50 + group)
    s = g.add(g.add(g.conv(X, c, c, 3, pads=1, group=group), g.conv(X, c, c, 1, group=group)), X)
    y = g.bn(s, c, output="y")
    m = g.model({X: (2, c, 8, 8)}, [y])
    out, _ = collapse_to(m, {"Conv": 1}, nodes_removed=4)
    assert attr(conv_nodes(out)[0], "group") == group


def test_repvit_post_bn_then_relu_and_residual_consumer():
    """BN(dw3x3-BN + dw1x1 + x) feeding a Relu: the block still collapses; the Relu stays."""
    c = 4
    g = GraphBuilder(55)
    a = g.bn(g.conv(X, c, c, 3, pads=1, group=c), c)
    s = g.add(g.add(a, g.conv(X, c, c, 1, group=c)), X)
    y = g.node("Relu", [g.bn(s, c)], "y")
    m = g.model({X: (1, c, 8, 8)}, [y])
    collapse_to(m, {"Conv": 1, "Relu": 1})


# =========================================================================== 5. affine before a conv
def test_bn_before_unpadded_conv_merges():
    g = GraphBuilder(60)
    y = g.conv(g.bn(X, 4), 4, 6, 3, pads=0, output="y")
    m = g.model({X: (2, 4, 8, 8)}, [y])
    out, _ = collapse_to(m, {"Conv": 1}, nodes_removed=1)
    assert conv_nodes(out)[0].input[0] == X


def test_bn_before_grouped_unpadded_conv_merges():
    g = GraphBuilder(61)
    y = g.conv(g.bn(X, 4), 4, 8, 3, pads=0, group=2, output="y")
    m = g.model({X: (2, 4, 8, 8)}, [y])
    collapse_to(m, {"Conv": 1})


def test_bn_before_padded_conv_is_not_merged():
    g = GraphBuilder(62)
    y = g.conv(g.bn(X, 4), 4, 6, 3, pads=1, output="y")
    m = g.model({X: (2, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["BatchNormalization", "Conv"]
    assert rewrites(rep) == {}
    rs = reasons(rep)
    assert len(rs) == 1 and "padding" in rs[0], rs
    assert_verifies(m, out)


def test_add_const_before_padded_conv_is_not_merged():
    g = GraphBuilder(63)
    y = g.conv(g.node("Add", [X, g.chan_const(4, lead=True)]), 4, 6, 3, pads=1, output="y")
    m = g.model({X: (2, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Add", "Conv"]
    assert rewrites(rep) == {}
    assert any("padding" in r for r in reasons(rep)), reasons(rep)
    assert_verifies(m, out)


def test_mul_const_before_padded_conv_merges():
    g = GraphBuilder(64)
    y = g.conv(g.node("Mul", [X, g.chan_const(4, lead=True)]), 4, 6, 3, pads=1, output="y")
    m = g.model({X: (2, 4, 8, 8)}, [y])
    collapse_to(m, {"Conv": 1}, nodes_removed=1)


def test_add_const_before_unpadded_conv_merges():
    g = GraphBuilder(65)
    y = g.conv(g.node("Add", [X, g.chan_const(4)]), 4, 6, 1, output="y")
    m = g.model({X: (2, 4, 8, 8)}, [y])
    collapse_to(m, {"Conv": 1})


def test_sequential_convs_are_not_merged_but_both_sides_are_collapsed():
    g = GraphBuilder(66)
    h = g.bn(g.conv(X, 4, 4, 3, pads=1), 4)
    y = g.bn(g.conv(h, 4, 4, 3, pads=1), 4, output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y])
    out, rep = collapse_to(m, {"Conv": 2}, n_rewrites=2)
    assert any("not merged with its input region" in r for r in reasons(rep)), reasons(rep)


# =========================================================================== 6. safety
def test_branch_output_that_is_a_graph_output_is_not_merged():
    c = 4
    g = GraphBuilder(70)
    a = g.conv(X, c, c, 3, pads=1)
    b = g.conv(X, c, c, 1, output="b")   # also a graph output
    s = g.add(g.add(a, b), g.bn(X, c))
    y = g.node("Relu", [s], "y")
    m = g.model({X: (1, c, 8, 8)}, [y, "b"])
    out, rep = run_opt(m)
    producers = {o: n for n in out.graph.node for o in n.output}
    assert producers["b"].op_type == "Conv" and producers["b"].input[0] == X
    assert list(producers["b"].input) == list(m.graph.node[1].input)
    assert [o.name for o in out.graph.output] == ["y", "b"]
    # nothing may absorb `b`; the rest (3x3 conv + BN(x) + two Adds) has no common root with it
    assert op_histogram(out)["Conv"] >= 2
    assert rewrites(rep).get(COLLAPSE, 0) <= 1
    assert_verifies(m, out)


def test_branch_output_read_by_another_node_is_not_merged():
    c = 4
    g = GraphBuilder(71)
    a = g.conv(X, c, c, 3, pads=1)
    b = g.conv(X, c, c, 1)
    i = g.bn(X, c, output="ident")
    s = g.add(g.add(a, b), i)
    y = g.node("Relu", [s], "y")
    z = g.node("Relu", [i], "z")          # a second reader of the BN branch, a graph output
    m = g.model({X: (1, c, 8, 8)}, [y, z])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Conv": 1, "BatchNormalization": 1, "Add": 1, "Relu": 2}
    producers = {o: n for n in out.graph.node for o in n.output}
    assert producers["ident"].op_type == "BatchNormalization"
    assert rewrites(rep) == {COLLAPSE: 1}
    assert any("different tensors" in r for r in reasons(rep)), reasons(rep)
    assert_verifies(m, out)


def test_inner_tensor_of_conv_bn_that_is_a_graph_output_keeps_its_conv():
    g = GraphBuilder(72)
    c = g.conv(X, 3, 3, 3, pads=1, output="feat")
    y = g.bn(c, 3, output="y")
    m = g.model({X: (1, 3, 6, 6)}, ["y", "feat"])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "BatchNormalization"]
    assert rewrites(rep) == {}
    assert_verifies(m, out)


def test_shared_weight_two_convs_two_bns_both_fold():
    """Depthwise 1x1 convs sharing W (4 params), each with a BN (16): each fold writes a new 4+4 and
    the BN goes, so parameters drop; the shared initializer itself is never modified."""
    g = GraphBuilder(73)
    w = g.init(g.randn(4, 1, 1, 1), "W_shared")
    y1 = g.bn(g.conv(X, 4, 4, 1, weight=w, group=4), 4, output="y1")
    y2 = g.bn(g.conv(X, 4, 4, 1, weight=w, group=4), 4, output="y2")
    m = g.model({X: (1, 4, 8, 8)}, [y1, y2])
    original = initializer(m, "W_shared").copy()
    out, rep = collapse_to(m, {"Conv": 2}, n_rewrites=2, nodes_removed=2)
    left = initializer(out, "W_shared")
    assert left is None or np.array_equal(left, original)
    convs = conv_nodes(out)
    assert convs[0].input[1] != convs[1].input[1]
    assert "W_shared" not in (convs[0].input[1], convs[1].input[1])
    assert not np.array_equal(weight_of(out, convs[0]), weight_of(out, convs[1]))
    assert rep.after.params < rep.before.params


def test_shared_weight_one_folded_one_plain_keeps_original():
    g = GraphBuilder(74)
    w = g.init(g.randn(4, 1, 1, 1), "W_shared")
    y1 = g.bn(g.conv(X, 4, 4, 1, weight=w, group=4), 4, output="y1")
    y2 = g.conv(X, 4, 4, 1, weight=w, group=4, output="y2")
    m = g.model({X: (1, 4, 8, 8)}, [y1, y2])
    original = initializer(m, "W_shared").copy()
    out, _ = collapse_to(m, {"Conv": 2}, nodes_removed=1)
    np.testing.assert_array_equal(initializer(out, "W_shared"), original)
    plain = [n for n in out.graph.node if n.output[0] == "y2"][0]
    assert plain.input[1] == "W_shared"


def test_bn_after_a_shared_3x3_weight_is_not_folded_when_the_copy_costs_more():
    """Folding BN(16 params) into a conv whose 3x3 weight (144) another conv keeps would copy the
    weight: parameters would grow, so the BN stays, with the reason and both costs."""
    g = GraphBuilder(76)
    w = g.init(g.randn(4, 4, 3, 3, scale=0.3), "W_shared")
    y1 = g.bn(g.conv(X, 4, 4, 3, pads=1, weight=w), 4, output="y1")
    y2 = g.conv(X, 4, 4, 3, pads=1, weight=w, output="y2")
    m = g.model({X: (1, 4, 8, 8)}, [y1, y2])
    out, rep = run_opt(m)
    assert op_histogram(out) == op_histogram(m) and rep.after.params == rep.before.params
    assert any(r.startswith("kept apart: one conv would cost 9.22 kMACs, 292 params") for r in reasons(rep)), \
        reasons(rep)
    assert_verifies(m, out)


def test_custom_domain_op_passes_through_untouched():
    c = 4
    g = GraphBuilder(75)
    h = g.node("MyOp", [X], name="custom", domain="com.example", alpha=0.5, mode="fancy", sizes=[1, 2, 3])
    y = repvgg_legacy(g, h, c, output="y")
    m = g.model({X: (1, c, 8, 8)}, [(y, (1, c, 8, 8))], extra_opsets={"com.example": 1})
    onnx.checker.check_model(m)
    out, rep = optimize(m)
    onnx.checker.check_model(out)
    custom_in = [node_sig(n) for n in m.graph.node if n.domain == "com.example"]
    custom_out = [node_sig(n) for n in out.graph.node if n.domain == "com.example"]
    assert custom_out == custom_in and len(custom_in) == 1
    assert node_ops(out) == ["MyOp", "Conv", "Relu"]
    assert conv_nodes(out)[0].input[0] == h
    assert rewrites(rep) == {COLLAPSE: 1}
    assert {o.domain: o.version for o in out.opset_import} == {"": 17, "com.example": 1}


def test_custom_domain_op_with_conv_name_is_not_read_as_conv():
    g = GraphBuilder(76)
    w = g.init(g.randn(3, 3, 1, 1))
    h = g.node("Conv", [X, w], name="fake_conv", domain="com.example")
    y = g.bn(h, 3, output="y")
    m = g.model({X: (1, 3, 4, 4)}, [(y, (1, 3, 4, 4))], extra_opsets={"com.example": 1})
    out, rep = optimize(m)
    onnx.checker.check_model(out)
    assert [node_sig(n) for n in out.graph.node] == [node_sig(n) for n in m.graph.node]
    assert rewrites(rep) == {}


@pytest.mark.parametrize("op_type,attrs", [("Sigmoid", {}), ("LeakyRelu", {"alpha": 0.2}),
                                           ("HardSigmoid", {"alpha": 0.3, "beta": 0.4})])
def test_unknown_ai_onnx_op_passes_through(op_type, attrs):
    g = GraphBuilder(77)
    h = g.node(op_type, [g.conv(X, 3, 3, 3, pads=1)], name="the_act", **attrs)
    y = g.bn(h, 3, output="y")
    m = g.model({X: (1, 3, 6, 6)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", op_type, "BatchNormalization"]
    assert [node_sig(n) for n in out.graph.node] == [node_sig(n) for n in m.graph.node]
    assert rewrites(rep) == {}
    assert_verifies(m, out)


def test_strides_mismatch_is_declined_and_left_unchanged():
    # stride-2 3x3 pad 1 and stride-1 5x5 pad 0 both map 8x8 -> 4x4 from the same x
    c = 4
    g = GraphBuilder(78)
    s = g.add(g.conv(X, c, c, 3, pads=1, strides=2), g.conv(X, c, c, 5, pads=0), "y")
    m = g.model({X: (1, c, 8, 8)}, [s])
    out, rep = run_opt(m)
    assert [node_sig(n) for n in out.graph.node] == [node_sig(n) for n in m.graph.node]
    assert rewrites(rep) == {}
    assert any("strides differ" in r for r in reasons(rep)), reasons(rep)
    assert_verifies(m, out)


def test_dilation_mismatch_is_declined():
    c = 3
    g = GraphBuilder(79)
    s = g.add(g.conv(X, c, c, 3, pads=2, dilations=2), g.conv(X, c, c, 3, pads=1), "y")
    m = g.model({X: (1, c, 9, 9)}, [s])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Conv", "Add"]
    assert any("dilations differ" in r for r in reasons(rep)), reasons(rep)
    assert_verifies(m, out)


def test_taps_between_dilated_taps_is_declined():
    # 3x3 d2 p2 and 2x2 d2 p1: same output size, but the 2x2's taps sit on odd offsets
    c = 3
    g = GraphBuilder(80)
    s = g.add(g.conv(X, c, c, 3, pads=2, dilations=2), g.conv(X, c, c, 2, pads=1, dilations=2), "y")
    m = g.model({X: (1, c, 9, 9)}, [s])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Conv", "Add"]
    assert any("between dilated taps" in r for r in reasons(rep)), reasons(rep)
    assert_verifies(m, out)


def test_dilated_branches_with_1x1_merge():
    c = 3
    g = GraphBuilder(81)
    s = g.add(g.conv(X, c, c, 3, pads=2, dilations=2), g.conv(X, c, c, 1), "y")
    m = g.model({X: (1, c, 9, 9)}, [s])
    out, _ = collapse_to(m, {"Conv": 1})
    assert attr(conv_nodes(out)[0], "dilations") == [2, 2]


def test_branches_reading_different_inputs_are_not_summed():
    c = 3
    g = GraphBuilder(82)
    s = g.add(g.conv(X, c, c, 3, pads=1), g.conv("x2", c, c, 3, pads=1), "y")
    m = g.model({X: (1, c, 6, 6), "x2": (1, c, 6, 6)}, [s])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Conv", "Add"]
    assert any("different tensors" in r for r in reasons(rep)), reasons(rep)
    assert_verifies(m, out)


# =========================================================================== 7. opsets, training mode, overridable
@pytest.mark.parametrize("opset", [11, 13, 17, "newest"])
def test_repvgg_block_at_opset(opset):
    opset = newest_ort_opset() if opset == "newest" else opset
    c = 4
    g = GraphBuilder(90)
    y = repvgg_unfolded(g, X, c, output="y")
    m = g.model({X: (1, c, 8, 8)}, [y], opset=opset)
    out, rep = collapse_to(m, {"Conv": 1, "Relu": 1})
    assert rep.opset == opset
    assert [(o.domain, o.version) for o in out.opset_import] == [("", opset)]
    assert out.ir_version == m.ir_version


def test_newest_onnx_opset_is_used_when_onnxruntime_supports_it():
    # documents which opset the "newest" case above really ran
    assert newest_ort_opset() <= onnx.defs.onnx_opset_version()
    assert newest_ort_opset() >= 17


def test_opset_below_11_is_left_alone_with_a_note():
    g = GraphBuilder(91)
    y = g.bn(g.conv(X, 3, 3, 3, pads=1), 3, output="y")
    m = g.model({X: (1, 3, 6, 6)}, [y], opset=10)
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "BatchNormalization"]
    assert rep.rewrites == 0 and rep.sweeps == 0
    assert any("older than 11" in n for n in rep.notes), rep.notes


def _training_bn_model(bn_first: bool = False):
    """A valid training-mode BN (opset 15): three outputs (Y, running_mean, running_var)."""
    g = GraphBuilder(92)
    extra = ["run_mean", "run_var"]
    if bn_first:
        y = g.conv(g.bn(X, 3, training_mode=1, extra_outputs=extra), 3, 3, 1, output="y")
    else:
        y = g.bn(g.conv(X, 3, 3, 3, pads=1), 3, output="y", training_mode=1, extra_outputs=extra)
    return g.model({X: (2, 3, 6, 6)}, [y], opset=15)


@pytest.mark.parametrize("bn_first", [False, True], ids=["conv-bn", "bn-conv"])
def test_bn_in_training_mode_is_not_folded(bn_first):
    m = _training_bn_model(bn_first)
    out, rep = run_opt(m)
    assert sorted(node_ops(out)) == ["BatchNormalization", "Conv"]
    assert rewrites(rep) == {}
    bn = next(n for n in out.graph.node if n.op_type == "BatchNormalization")
    assert attr(bn, "training_mode") == 1 and list(bn.output)[1:] == ["run_mean", "run_var"]
    assert_verifies(m, out)


@pytest.mark.parametrize("bn_first", [False, True], ids=["conv-bn", "bn-conv"])
def test_bn_in_training_mode_decline_says_training_mode(bn_first):
    _, rep = run_opt(_training_bn_model(bn_first))
    rs = reasons(rep)
    assert any("training mode" in r or "training_mode" in r for r in rs), rs


def test_single_output_bn_with_training_mode_attr_is_declined_with_reason():
    """The reason exists in bn_form; reachable when BN has one output (onnxruntime rejects such a model,
    so this one is only optimized, not run)."""
    g = GraphBuilder(92)
    y = g.bn(g.conv(X, 3, 3, 3, pads=1), 3, output="y", training_mode=1)
    m = g.model({X: (2, 3, 6, 6)}, [(y, (2, 3, 6, 6))], opset=15)
    out, rep = optimize(m)
    assert node_ops(out) == ["Conv", "BatchNormalization"]
    rs = reasons(rep)
    assert len(rs) == 1 and "training mode" in rs[0] and "training_mode=1" in rs[0], rs


def test_dropout_in_training_mode_is_not_passed_through():
    g = GraphBuilder(96)
    h = g.node("Dropout", [g.conv(X, 3, 3, 3, pads=1), g.init(np.float32(0.0)), g.init(np.bool_(True))])
    y = g.bn(h, 3, output="y")
    m = g.model({X: (1, 3, 6, 6)}, [y], opset=13)
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Dropout", "BatchNormalization"]
    assert rewrites(rep) == {}
    assert_verifies(m, out)  # ratio 0: deterministic even in training mode


def test_dropout_in_training_mode_decline_reason():
    g = GraphBuilder(96)
    h = g.node("Dropout", [g.conv(X, 3, 3, 3, pads=1), g.init(np.float32(0.0)), g.init(np.bool_(True))])
    y = g.bn(h, 3, output="y")
    m = g.model({X: (1, 3, 6, 6)}, [y], opset=13)
    _, rep = run_opt(m)
    assert any("training" in r for r in reasons(rep)), reasons(rep)


def test_dropout_inference_mode_input_is_passed_through():
    g = GraphBuilder(97)
    h = g.node("Dropout", [g.conv(X, 3, 3, 3, pads=1), g.init(np.float32(0.3)), g.init(np.bool_(False))])
    y = g.bn(h, 3, output="y")
    m = g.model({X: (1, 3, 6, 6)}, [y], opset=13)
    collapse_to(m, {"Conv": 1}, nodes_removed=2, alone=True)


def test_bn_training_mode_zero_is_folded():
    g = GraphBuilder(93)
    y = g.bn(g.conv(X, 3, 3, 3, pads=1), 3, output="y", training_mode=0)
    m = g.model({X: (2, 3, 6, 6)}, [y], opset=15)
    collapse_to(m, {"Conv": 1})


def test_initializer_listed_as_graph_input_is_not_folded():
    g = GraphBuilder(94)
    w = g.init(g.randn(4, 3, 3, 3, scale=0.3), "W")
    y = g.bn(g.conv(X, 3, 4, 3, pads=1, weight=w), 4, output="y")
    m = g.model({X: (1, 3, 6, 6)}, [y], graph_inputs_from_inits=["W"])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "BatchNormalization"]
    assert rewrites(rep) == {}
    assert [i.name for i in out.graph.input] == [X, "W"]
    np.testing.assert_array_equal(initializer(out, "W"), initializer(m, "W"))
    assert any("not a constant" in r for r in reasons(rep)), reasons(rep)
    assert_verifies(m, out)


def test_bn_parameter_listed_as_graph_input_is_not_folded():
    g = GraphBuilder(95)
    y = g.bn(g.conv(X, 3, 4, 3, pads=1), 4, output="y")
    m = g.model({X: (1, 3, 6, 6)}, [y])
    gamma = m.graph.node[1].input[1]
    t = next(t for t in m.graph.initializer if t.name == gamma)
    m.graph.input.append(helper.make_tensor_value_info(gamma, t.data_type, list(t.dims)))
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "BatchNormalization"]
    assert [i.name for i in out.graph.input] == [X, gamma]
    assert_verifies(m, out)


# =========================================================================== 8. dynamic dims
def test_dynamic_dims_preserved():
    c = 4
    g = GraphBuilder(100)
    y = repvgg_legacy(g, X, c, output="y")
    m = g.model({X: ("N", c, "H", "W")}, [("y", ["N", c, "H", "W"])])
    out, _ = collapse_to(m, {"Conv": 1, "Relu": 1}, input_shapes={X: (2, c, 16, 16)})
    assert dims(out.graph.input[0]) == ["N", c, "H", "W"]
    assert dims(out.graph.output[0]) == ["N", c, "H", "W"]
    assert len(out.graph.input) == 1 and len(out.graph.output) == 1
    assert len(out.graph.value_info) == 0  # inferred shapes are not added to the output


# =========================================================================== 9. Gemm / MatMul / ConvTranspose


# =========================================================================== 10. 1-D convs
def test_conv1d_branches_merge():
    c = 6
    g = GraphBuilder(120)
    a = g.bn(g.conv(X, c, c, [3], pads=[1, 1], bias=False), c)
    b = g.conv(X, c, c, [1], pads=[0, 0])
    s = g.add(g.add(a, b), g.bn(X, c))
    y = g.node("Relu", [s], "y")
    m = g.model({X: (2, c, 20)}, [y])
    out, _ = collapse_to(m, {"Conv": 1, "Relu": 1})
    conv = conv_nodes(out)[0]
    assert attr(conv, "kernel_shape") == [3] and attr(conv, "pads") == [1, 1]
    assert weight_of(out, conv).shape == (c, c, 3)


def test_conv1d_mul_by_rank3_channel_constant_folds():
    c = 4
    g = GraphBuilder(121)
    h = g.conv(X, c, c, [5], pads=[2, 2])
    y = g.node("Mul", [h, g.chan_const(c, rank=3)], "y")   # (C, 1)
    m = g.model({X: (1, c, 12)}, [y])
    collapse_to(m, {"Conv": 1})


def test_rank4_constant_on_rank3_conv_output_is_not_folded():
    """A (C,1,1) constant on a (N,C,L) tensor broadcasts to rank 4: not a per-channel affine."""
    c = 4
    g = GraphBuilder(122)
    h = g.conv(X, c, c, [3], pads=[1, 1])
    y = g.node("Mul", [h, g.init(g.randn(c, 1, 1))], "y")
    m = g.model({X: (1, c, 4)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Mul"]
    assert rewrites(rep) == {}
    assert_verifies(m, out)


# =========================================================================== more safety and coverage
def test_region_sink_that_is_a_graph_output_and_read_again_still_folds():
    g = GraphBuilder(130)
    y = g.bn(g.conv(X, 3, 3, 3, pads=1), 3, output="y")
    z = g.node("Relu", [y], "z")
    m = g.model({X: (1, 3, 6, 6)}, [y, z])
    out, _ = collapse_to(m, {"Conv": 1, "Relu": 1}, nodes_removed=1)
    assert [n.output[0] for n in out.graph.node] == ["y", "z"]


def _if_node(g: GraphBuilder, then_nodes, then_out, shape):
    then_g = helper.make_graph(then_nodes, "then", [],
                               [helper.make_tensor_value_info(then_out, onnx.TensorProto.FLOAT, shape)])
    else_g = helper.make_graph([helper.make_node("Neg", [X], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", onnx.TensorProto.FLOAT, shape)])
    g.nodes.append(helper.make_node("If", [g.init(np.array(True), "cond")], ["z"], name="if",
                                    then_branch=then_g, else_branch=else_g))
    return "z"


def test_tensor_read_inside_a_subgraph_is_not_private():
    g = GraphBuilder(131)
    c = g.conv(X, 3, 3, 3, pads=1, output="c")
    y = g.bn(c, 3, output="y")
    z = _if_node(g, [helper.make_node("Identity", ["c"], ["t_out"])], "t_out", [1, 3, 6, 6])
    m = g.model({X: (1, 3, 6, 6)}, [y, z], graph_inputs_from_inits=["cond"])  # a condition the caller may feed
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "BatchNormalization", "If"]
    assert rewrites(rep) == {}
    assert_verifies(m, out)


def test_new_initializer_names_do_not_collide_with_subgraph_tensors():
    g = GraphBuilder(132)
    y = g.bn(g.conv(X, 3, 3, 3, pads=1), 3, output="y")
    bn = g.nodes[-1].name                                     # 'BN_1': hint for the merged conv's params
    body = [helper.make_node("Identity", [X], [f"{bn}_weight"]),
            helper.make_node("Identity", [f"{bn}_weight"], [f"{bn}_bias"]),
            helper.make_node("Identity", [f"{bn}_bias"], ["t_out"])]
    z = _if_node(g, body, "t_out", [1, 3, 6, 6])
    m = g.model({X: (1, 3, 6, 6)}, [y, z], graph_inputs_from_inits=["cond"])  # a condition the caller may feed
    out, rep = run_opt(m)                                     # checker: SSA violation
    assert sorted(node_ops(out)) == ["Conv", "If"]
    assert_verifies(m, out)


def test_constant_node_weight_and_scale_fold():
    g = GraphBuilder(133)
    g.nodes.append(helper.make_node("Constant", [], ["Wc"], name="wconst",
                                    value=numpy_helper.from_array(g.randn(4, 3, 3, 3, scale=0.3), "Wv")))
    g.nodes.append(helper.make_node("Constant", [], ["Sc"], name="sconst", value_float=1.7))
    h = g.node("Conv", [X, "Wc"], pads=[1] * 4)
    y = g.node("Mul", [h, "Sc"], "y")
    m = g.model({X: (1, 3, 6, 6)}, [y])
    out, _ = collapse_to(m, {"Conv": 1}, nodes_removed=3)     # Mul + the two orphaned Constant nodes
    assert len(out.graph.initializer) == 1 and len(out.graph.node[0].input) == 2  # a zero bias is not written


@pytest.mark.parametrize("pad3,pad1", [("SAME_UPPER", "VALID"), ("SAME_LOWER", "SAME_UPPER")])
def test_auto_pad_branches_merge_with_explicit_pads(pad3, pad1):
    c = 4
    g = GraphBuilder(134)
    a = g.node("Conv", [X, g.init(g.randn(c, c, 3, 3)), g.init(g.randn(c))], auto_pad=pad3)
    b = g.node("Conv", [X, g.init(g.randn(c, c, 1, 1))], auto_pad=pad1)
    y = g.node("Relu", [g.add(g.add(a, b), X)], "y")
    m = g.model({X: (1, c, 7, 7)}, [y])
    out, _ = collapse_to(m, {"Conv": 1, "Relu": 1})
    conv = conv_nodes(out)[0]
    assert attr(conv, "auto_pad") is None and attr(conv, "pads") == [1, 1, 1, 1]


def test_even_kernel_same_lower_plus_1x1():
    c = 3
    g = GraphBuilder(135)
    a = g.node("Conv", [X, g.init(g.randn(c, c, 2, 2))], auto_pad="SAME_LOWER")
    b = g.node("Conv", [X, g.init(g.randn(c, c, 1, 1))], auto_pad="SAME_UPPER")
    m = g.model({X: (1, c, 6, 6)}, [g.add(a, b, "y")])
    out, _ = collapse_to(m, {"Conv": 1})
    assert attr(conv_nodes(out)[0], "pads") == [1, 1, 0, 0]


def test_value_info_of_removed_tensors_is_dropped_and_kept_for_survivors():
    g = GraphBuilder(136)
    h = g.bn(g.conv(X, 3, 3, 3, pads=1, output="inner"), 3, output="h")
    y = g.node("Relu", [h], "y")
    m = g.model({X: (1, 3, 6, 6)}, [y])
    m.graph.value_info.extend([helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 3, 6, 6])
                               for n in ("inner", "h")])
    out, _ = collapse_to(m, {"Conv": 1, "Relu": 1})
    assert [v.name for v in out.graph.value_info] == ["h"]


@pytest.mark.parametrize("shape,why", [((4,), "other than the channels"), ((4, 1), "other than the channels"),
                                       ((1, 1, 1, 1, 1), "broadcast a rank-4 tensor up"),
                                       ((1, 4, 4, 1), "not per-channel")])
def test_constants_not_on_the_channel_axis_are_not_folded(shape, why):
    g = GraphBuilder(137)
    h = g.conv(X, 4, 4, 3, pads=1)
    y = g.node("Mul", [h, g.init(g.randn(*shape))], "y")
    m = g.model({X: (1, 4, 4, 4)}, [y])              # W == C == 4: a (4,) constant is still not per-channel
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Mul"]
    assert rewrites(rep) == {}
    assert any(why in r for r in reasons(rep)), reasons(rep)
    assert_verifies(m, out)


def test_fp16_repvgg_block():
    c = 4
    g = GraphBuilder(138, dtype=np.float16)
    y = repvgg_unfolded(g, X, c, output="y")
    m = g.model({X: (1, c, 8, 8)}, [y])
    out, _ = run_opt(m)
    assert node_ops(out) == ["Conv", "Relu"]
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in out.graph.initializer)
    res = verify(m, out)
    (d,) = res.outputs
    assert d.max_abs <= 2e-3 * d.ref_max_abs       # fp16: the reference rounds every intermediate


def test_fp16_merged_weights_overflow_is_declined_and_the_inner_part_still_folds():
    g = GraphBuilder(139, dtype=np.float16)
    h = g.conv(X, 4, 4, 3, pads=1)
    h = g.node("Mul", [h, g.init(np.full((4, 1, 1), 300, np.float16))])
    y = g.node("Mul", [h, g.init(np.full((4, 1, 1), 300, np.float16))], "y")
    m = g.model({X: (1, 4, 6, 6)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Mul"]
    assert rewrites(rep) == {COLLAPSE: 1}
    assert any("overflow float16" in r for r in reasons(rep)), reasons(rep)
    w = weight_of(out, conv_nodes(out)[0])
    assert w.dtype == np.float16 and np.all(np.isfinite(w))


def test_model_header_and_metadata_are_kept():
    g = GraphBuilder(145)
    y = g.bn(g.conv(X, 3, 3, 3, pads=1), 3, output="y")
    m = g.model({X: (1, 3, 6, 6)}, [y])
    m.producer_name, m.producer_version, m.doc_string, m.model_version = "pytorch", "2.x", "doc", 7
    helper.set_model_props(m, {"author": "me"})
    m.graph.name = "mygraph"
    out, _ = collapse_to(m, {"Conv": 1})
    assert (out.producer_name, out.producer_version, out.doc_string, out.model_version) == ("pytorch", "2.x", "doc", 7)
    assert [(p.key, p.value) for p in out.metadata_props] == [("author", "me")]
    assert out.graph.name == "mygraph" and out.ir_version == m.ir_version


def test_nameless_nodes():
    c = 4
    g = GraphBuilder(146)
    y = repvgg_legacy(g, X, c, output="y")
    m = g.model({X: (1, c, 6, 6)}, [y])
    for n in m.graph.node:
        n.name = ""
    collapse_to(m, {"Conv": 1, "Relu": 1})


def test_new_names_avoid_existing_initializer_names():
    g = GraphBuilder(147)
    y = g.bn(g.conv(X, 3, 3, 3, pads=1), 3, output="y")
    bn = g.nodes[-1].name
    keep = g.node("Add", [X, g.init(np.ones((1, 3, 1, 1), np.float32), f"{bn}_weight")], "z")  # takes the hint name
    m = g.model({X: (1, 3, 6, 6)}, [y, keep])
    out, _ = collapse_to(m, {"Conv": 1, "Add": 1})
    names = [t.name for t in out.graph.initializer]
    assert len(names) == len(set(names)) == 3
    np.testing.assert_array_equal(initializer(out, f"{bn}_weight"), np.ones((1, 3, 1, 1), np.float32))


@pytest.mark.parametrize("cout,groups", [((8, 8), (4, 4)), ((8, 8), (4, 2))], ids=["dw-multiplier", "g4+g2"])
def test_depthwise_channel_multiplier_branches(cout, groups):
    g = GraphBuilder(148)
    a = g.conv(X, 4, cout[0], 3, pads=1, group=groups[0])
    b = g.conv(X, 4, cout[1], 1, group=groups[1])
    m = g.model({X: (1, 4, 6, 6)}, [g.node("Relu", [g.add(a, b)], "y")])
    if groups[0] == groups[1]:
        out, _ = collapse_to(m, {"Conv": 1, "Relu": 1})
        assert attr(conv_nodes(out)[0], "group") == min(groups)
    else:  # one g2 3x3 (8*2*9 = 144 MACs per pixel) costs more than the g4 3x3 and the g2 1x1 (72 + 16)
        out, rep = run_opt(m)
        assert op_histogram(out) == op_histogram(m) and rep.after.macs == rep.before.macs == 36 * 88
        assert any(r.startswith("branches kept apart: one conv would cost 5.18 kMACs") for r in reasons(rep))


def test_conv3d_branches_merge():
    g = GraphBuilder(149)
    s = g.add(g.add(g.conv(X, 3, 3, [3, 3, 3], pads=1), g.conv(X, 3, 3, [1, 1, 1])), g.bn(X, 3))
    m = g.model({X: (1, 3, 5, 5, 5)}, [g.node("Relu", [s], "y")])
    out, _ = collapse_to(m, {"Conv": 1, "Relu": 1})
    assert attr(conv_nodes(out)[0], "kernel_shape") == [3, 3, 3]


def test_pre_bn_on_both_branches_partly_merges():
    """conv3x3(pad 1)(BN1(x)) + conv1x1(BN2(x)): only the unpadded branch can absorb its BN."""
    g = GraphBuilder(150)
    a = g.conv(g.bn(X, 3), 3, 3, 3, pads=1)
    b = g.conv(g.bn(X, 3), 3, 3, 1)
    m = g.model({X: (1, 3, 5, 5)}, [g.node("Relu", [g.add(a, b)], "y")])
    out, rep = collapse_to(m, {"BatchNormalization": 1, "Conv": 2, "Add": 1, "Relu": 1})
    rs = reasons(rep)
    assert any("zero-padding" in r for r in rs) and any("different tensors" in r for r in rs), rs


def test_affine_only_region_is_left_alone():
    g = GraphBuilder(151)
    s = g.add(g.add(X, g.bn(X, 3)), g.node("Mul", [X, g.chan_const(3)]))
    m = g.model({X: (1, 3, 5, 5)}, [g.node("Relu", [s], "y")])
    out, rep = run_opt(m)
    assert sorted(map(node_sig, out.graph.node)) == sorted(map(node_sig, m.graph.node))
    assert rep.rewrites == 0


def test_identity_minus_conv():
    g = GraphBuilder(152)
    m = g.model({X: (1, 3, 5, 5)}, [g.sub(X, g.conv(X, 3, 3, 3, pads=1), "y")])
    collapse_to(m, {"Conv": 1})


def test_identity_with_channel_broadcast_is_declined():
    """x of 1 channel broadcast against a 1->4 conv: the identity is not a 1->4 conv branch."""
    g = GraphBuilder(153)
    m = g.model({X: (1, 1, 5, 5)}, [g.add(g.conv(X, 1, 4, 3, pads=1), X, "y")])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Add"]
    assert any("channels differ" in r for r in reasons(rep)), reasons(rep)
    assert_verifies(m, out)


def test_unused_overridable_initializer_keeps_its_graph_input():
    g = GraphBuilder(154)
    y = g.bn(g.conv(X, 3, 3, 3, pads=1), 3, output="y")
    g.init(np.ones(3, np.float32), "unused_param")
    m = g.model({X: (1, 3, 6, 6), "extra": (2,)}, [y], graph_inputs_from_inits=["unused_param"])
    out, _ = run_opt(m, include_defaults=False)
    assert [i.name for i in out.graph.input] == [X, "extra", "unused_param"]


def test_unused_plain_graph_input_is_kept():
    g = GraphBuilder(155)
    y = g.bn(g.conv(X, 3, 3, 3, pads=1), 3, output="y")
    m = g.model({X: (1, 3, 6, 6), "extra": (2,)}, [y])
    out, _ = run_opt(m)
    assert [i.name for i in out.graph.input] == [X, "extra"]


def test_bn_with_empty_optional_outputs_folds():
    g = GraphBuilder(156)
    y = g.bn(g.conv(X, 3, 3, 3, pads=1), 3, output="y", extra_outputs=["", "", "", ""])
    m = g.model({X: (1, 3, 6, 6)}, [y], opset=11)
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv"]


# =========================================================================== property: random parallel blocks


@st.composite
def parallel_blocks(draw, aligned: bool):
    """A random multi-branch block on one input: conv branches (any kernel / groups / pads with the same
    output size), identity branches (raw, BN, Mul), per-branch post-affines, Sub, any sum tree,
    optional post-BN. ``aligned``: every conv branch is centred, so every merge is exact."""
    seed = draw(st.integers(0, 2**16))
    c = draw(st.sampled_from([2, 4, 6]))
    stride = draw(st.sampled_from([1, 1, 2]))
    dil = draw(st.sampled_from([1, 1, 2]))
    h = draw(st.sampled_from([7, 8]))
    n = draw(st.integers(2, 4))
    kinds = draw(st.lists(st.sampled_from(["conv", "conv", "conv", "id", "bn", "mul"]), min_size=n, max_size=n))
    if stride != 1 or "conv" not in kinds:   # identity branches need stride 1; need one conv at least
        kinds = ["conv"] * n if stride != 1 else ["conv"] + kinds[1:]
    g = GraphBuilder(seed)
    branches = []
    for kind in kinds:
        if kind == "conv":
            k = draw(st.sampled_from([(1, 1), (3, 3), (1, 3), (3, 1), (5, 5), (2, 2)] if not aligned
                                     else [(1, 1), (3, 3), (1, 3), (3, 1), (5, 5)]))
            groups = draw(st.sampled_from([1, 2, c] if c % 2 == 0 else [1, c]))
            pads_b, pads_e = [], []
            for kk in k:
                total = dil * (kk - 1)
                pb = total // 2 if aligned else draw(st.integers(0, total))
                pads_b.append(pb)
                pads_e.append(total - pb)
            t = g.conv(X, c, c, list(k), pads=pads_b + pads_e, strides=stride, dilations=dil, group=groups,
                       bias=draw(st.booleans()))
        elif kind == "id":
            t = X
        elif kind == "bn":
            t = g.bn(X, c)
        else:
            t = g.node("Mul", [X, g.chan_const(c, lead=True)])
        post = draw(st.sampled_from(["none", "none", "bn", "mul", "add"]))
        if post == "bn":
            t = g.bn(t, c)
        elif post == "mul":
            t = g.node("Mul", [t, g.chan_const(c)])
        elif post == "add" and t != X:
            t = g.node("Add", [g.init(np.float32(0.3)), t])
        branches.append(t)
    while len(branches) > 1:
        i = draw(st.integers(0, len(branches) - 2))
        a, b = branches.pop(i), branches.pop(i)
        branches.insert(i, g.sub(a, b) if draw(st.integers(0, 3)) == 0 else g.add(a, b))
    s = branches[0]
    if draw(st.booleans()):
        s = g.bn(s, c)
    y = g.node("Relu", [s], "y")
    return g.model({X: (2, c, h, h)}, [y])


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(parallel_blocks(aligned=True))
def test_property_aligned_blocks_collapse_to_one_conv(m):
    """Aligned branches always merge exactly; they become one Conv unless that costs more MACs or
    parameters than the branches (a depthwise or grouped branch beside a dense one; a per-channel
    bias where the branches had one scalar shift), and say so: never more MACs than either the
    input or the one-conv form, never more parameters than the input."""
    out, rep = run_opt(m)
    one_conv = one_conv_macs(m)
    hist = op_histogram(out)
    assert rep.after.macs <= min(rep.before.macs, one_conv), (node_ops(out), reasons(rep))
    assert rep.after.params <= rep.before.params
    assert hist.get("Relu") == 1 and set(hist) <= {"Conv", "Add", "Sub", "Relu"}, hist
    if hist != {"Conv": 1, "Relu": 1}:  # apart only where one conv costs more MACs or parameters
        assert any("would cost" in r for r in reasons(rep)), (node_ops(out), reasons(rep))
    assert_verifies(m, out, allow_zero=True)


def one_conv_macs(m) -> int:
    """MACs of the block as one conv: the widest kernel at the gcd of the branch groups (an identity,
    BN or Mul branch is depthwise)."""
    import math
    n, c = dims(m.graph.input[0])[:2]
    h = dims(m.graph.output[0])[2:]
    convs = conv_nodes(m)
    groups = [attr(n, "group", 1) for n in convs]
    if any(n.op_type != "Conv" and "x" in n.input for n in m.graph.node):  # an identity-like branch
        groups.append(c)
    kh = max(attr(n, "kernel_shape")[0] for n in convs)
    kw = max(attr(n, "kernel_shape")[1] for n in convs)
    return n * math.prod(h) * c * (c // math.gcd(*groups)) * kh * kw


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(parallel_blocks(aligned=False))
def test_property_any_block_verifies_and_never_grows(m):
    out, rep = run_opt(m)
    assert len(out.graph.node) <= len(m.graph.node)
    assert rep.after.params <= rep.before.params + 10 ** 6
    if not reasons(rep):
        assert op_histogram(out) == {"Conv": 1, "Relu": 1}, node_ops(out)
    assert_verifies(m, out, allow_zero=True)


@st.composite
def linear_chains(draw):
    """A random chain of convs (any k / pads / stride / groups) and per-channel affines (BN, Mul, Add,
    Sub either way, Div, Neg, Identity) on one input; the channel count stays fixed."""
    seed = draw(st.integers(0, 2**16))
    c = draw(st.sampled_from([2, 4]))
    g = GraphBuilder(seed)
    t = X
    n_convs = 0
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["conv", "conv", "bn", "mul", "add", "sub", "rsub", "div", "neg", "id"]))
        if kind == "conv" and n_convs < 3:
            k = draw(st.sampled_from([1, 3]))
            p = draw(st.integers(0, k // 2))
            t = g.conv(t, c, c, k, pads=p, strides=draw(st.sampled_from([1, 1, 2])) if n_convs == 0 else 1,
                       group=draw(st.sampled_from([1, c])))
            n_convs += 1
        elif kind == "bn":
            t = g.bn(t, c)
        elif kind in ("mul", "add", "sub", "div"):
            k_ = g.chan_const(c, lead=draw(st.booleans()), lo=0.5 if kind == "div" else None, hi=2.0)
            t = g.node(kind.capitalize(), [t, k_])
        elif kind == "rsub":
            t = g.node("Sub", [g.chan_const(c), t])
        elif kind == "neg":
            t = g.node("Neg", [t])
        else:
            t = g.node("Identity", [t])
    y = g.node("Identity", [t], "y")
    return g.model({X: (1, c, 9, 9)}, [y])


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(linear_chains())
def test_property_linear_chains_verify_and_never_grow(m):
    out, rep = run_opt(m)
    assert len(out.graph.node) <= len(m.graph.node)
    n_conv = op_histogram(m).get("Conv", 0)
    assert op_histogram(out).get("Conv", 0) <= max(n_conv, 0)
    assert_verifies(m, out, allow_zero=True)


@pytest.mark.parametrize("block", ["conv3x3", "repvgg"])
def test_crop_then_padded_conv_verifies(block):
    g = GraphBuilder(0)
    t = g.node("Slice", [X, g.init(np.array([1, 1], np.int64)), g.init(np.array([-1, -1], np.int64)),
                         g.init(np.array([2, 3], np.int64))])
    if block == "conv3x3":
        y = g.conv(t, 2, 2, 3, pads=1, output="y")
    else:
        y = g.add(g.add(g.conv(t, 2, 2, 3, pads=1), g.conv(t, 2, 2, 1)), t, "y")
    m = g.model({X: (1, 2, 10, 10)}, [y])
    out, _ = run_opt(m)
    assert_verifies(m, out)


def test_pad_then_unpadded_conv_verifies():
    """Zero Pad -> Conv pads 0 equals Conv with the pads (merged or not, it must verify)."""
    g = GraphBuilder(1)
    t = g.node("Pad", [X, g.init(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    m = g.model({X: (1, 3, 6, 6)}, [g.conv(t, 3, 4, 3, pads=0, output="y")])
    out, _ = run_opt(m)
    assert len(out.graph.node) <= 2
    assert_verifies(m, out)


def _repvgg_body(g: GraphBuilder, name: str, c: int, out: str) -> onnx.GraphProto:
    """A RepVGG block on the outer tensor X, as an If branch (names drawn from ``g``: unique)."""
    n0, i0 = len(g.nodes), len(g.inits)
    s = g.node("Add", [g.conv(X, c, c, 3, pads=1), g.conv(X, c, c, 1)])
    g.node("Relu", [g.node("Add", [s, g.bn(X, c)])], out)
    nodes, inits = g.nodes[n0:], g.inits[i0:]
    del g.nodes[n0:], g.inits[i0:]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT,
                                                                              [1, c, 6, 6])], inits)


@pytest.mark.parametrize("cond", [True, False])
def test_if_bodies_are_optimized(cond):
    c = 3
    g = GraphBuilder(141)
    then_g, else_g = _repvgg_body(g, "then", c, "t_out"), _repvgg_body(g, "else", c, "e_out")
    g.nodes.append(helper.make_node("If", [g.init(np.array(cond), "cond")], ["z"], name="if",
                                    then_branch=then_g, else_branch=else_g))
    m = g.model({X: (1, c, 6, 6)}, ["z"], graph_inputs_from_inits=["cond"])  # fed: not inline-constant-if's
    out, rep = run_opt(m)
    (if_node,) = out.graph.node
    for branch in ("then_branch", "else_branch"):
        body = attr(if_node, branch)
        assert [n.op_type for n in body.node] == ["Conv", "Relu"], [n.op_type for n in body.node]
    assert rewrites(rep) == {COLLAPSE: 2}
    assert_verifies(m, out)


# =========================================================================== activations runtimes fuse
def _gelu(g, x):
    """The exporters' GELU: x * (erf(x / sqrt 2) + 1) * 0.5."""
    e = g.node("Erf", [g.node("Div", [x, g.init(np.float32(np.sqrt(2)))])])
    return g.node("Mul", [g.node("Mul", [x, g.node("Add", [e, g.init(np.float32(1.0))])]), g.init(np.float32(0.5))])


def _hardswish(g, x):
    """x * clip(x + 3, 0, 6) / 6."""
    c = g.node("Clip", [g.node("Add", [x, g.init(np.float32(3.0))]), g.init(np.float32(0.0)), g.init(np.float32(6.0))])
    return g.node("Div", [g.node("Mul", [x, c]), g.init(np.float32(6.0))])


@pytest.mark.parametrize("act,gate", [(_gelu, "Erf"), (_hardswish, "Clip")])
def test_activation_scale_is_not_folded_into_the_next_conv(act, gate, tmp_path):
    """conv -> GELU -> conv (ConvFFN, RepViT's channel mixer): folding GELU's trailing * 0.5 into the
    second conv is exact, but onnxruntime then no longer fuses the GELU (FastViT-T8 ran 10% slower)."""
    g = GraphBuilder(160)
    y = g.conv(act(g, g.conv(X, 4, 8, 1)), 8, 4, 1, output="y")
    m = g.model({X: (1, 4, 5, 5)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == op_histogram(m)
    assert any(r.startswith(f"left to the {gate}-gated activation") for r in reasons(rep)), reasons(rep)
    assert_verifies(m, out)
    if gate == "Erf":  # and onnxruntime does fuse it
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / "ort.onnx")
        ort.InferenceSession(out.SerializeToString(), so, providers=["CPUExecutionProvider"])
        assert "Gelu" in {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}


def test_a_per_channel_scale_after_a_gated_activation_still_folds():
    """Only a scalar is an activation's own scale: a per-channel layer scale after x * sigmoid(x) folds."""
    g = GraphBuilder(161)
    h = g.conv(X, 4, 8, 1)
    s = g.node("Mul", [g.node("Mul", [h, g.node("Sigmoid", [h])]), g.chan_const(8)])
    y = g.conv(s, 8, 4, 1, output="y")
    m = g.model({X: (1, 4, 5, 5)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Conv": 2, "Sigmoid": 1, "Mul": 1}
    assert_verifies(m, out)


# =========================================================================== decline table
def _decline_case(case: str):
    """A small graph where collapse-linear-regions declines exactly one thing."""
    c, g = 4, GraphBuilder(300)
    shape = (1, c, 8, 8)
    if case == "strides-differ":  # both map 8x8 -> 4x4, but a sum of different strides is no conv
        y = g.add(g.conv(X, c, c, 3, pads=1, strides=2), g.conv(X, c, c, 5, pads=0), "y")
    elif case == "dilations-differ":
        y = g.add(g.conv(X, c, c, 3, pads=2, dilations=2), g.conv(X, c, c, 5, pads=2), "y")
    elif case == "different-roots":
        y = g.add(g.conv(X, c, c, 3, pads=1), g.conv("x2", c, c, 3, pads=1), "y")
        return g.model({X: shape, "x2": shape}, [y])
    elif case == "division-by-zero":
        y = g.node("Div", [g.conv(X, c, c, 1), g.init(np.array([1, 0, 2, 3], np.float32).reshape(c, 1, 1))], "y")
    elif case == "costlier-merged":  # depthwise 3x3 -> 1x1 expansion: one dense 3x3 would cost more
        y = g.conv(g.conv(X, c, c, 3, pads=1, group=c, bias=False), c, 4 * c, 1, output="y")
    elif case == "bn-training-mode":
        y = g.bn(g.conv(X, c, c, 3, pads=1), c, output="y", training_mode=1, extra_outputs=["rm", "rv"])
        return g.model({X: shape}, [y], opset=15)
    elif case == "gelu-scale":  # x * 0.5 * (1 + erf(x / sqrt 2)) then a conv: the 0.5 stays with the GELU
        t = g.conv(X, c, c, 1)
        gate = g.node("Add", [g.node("Erf", [g.node("Div", [t, g.init(np.float32(1.4142135))])]),
                              g.init(np.float32(1.0))])
        y = g.conv(g.node("Mul", [g.node("Mul", [t, gate]), g.init(np.float32(0.5))], name="half"), c, c, 1,
                   output="y")
    else:
        raise AssertionError(case)
    return g.model({X: shape}, [y])


DECLINES = [  # (case, kind, the reason's beginning)
    ("strides-differ", "check", "strides differ on spatial axis 0: 2 vs 1"),
    ("dilations-differ", "check", "dilations differ on spatial axis 0: 2 vs 1"),
    ("different-roots", "check", "branches read different tensors"),
    ("division-by-zero", "check", "division by a constant containing zeros"),
    ("costlier-merged", "check", "kept apart: one conv would cost 36.9 kMACs, 592 params, 1 node(s); "
     "apart 6.4 kMACs, 116 params, 2 node(s)"),
    ("bn-training-mode", "check", "BatchNormalization in training mode (it outputs running statistics)"),
    ("gelu-scale", "check", "left to the Erf-gated activation it scales (runtimes fuse it whole)"),
]


@pytest.mark.parametrize("case,kind,reason", DECLINES, ids=[d[0] for d in DECLINES])
def test_declines(case, kind, reason):
    m = _decline_case(case)
    out, _, d = declined_once(m, COLLAPSE)
    assert d.kind == kind and d.reason.startswith(reason), d
    assert_verifies(m, out)
