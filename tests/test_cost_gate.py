"""The cost gate of the region collapse: exact merges that would cost more are not made.

Each test builds a small graph whose cheapest exact form is known by hand (MACs per output pixel
in the docstrings), optimizes it, and asserts the op histogram, the MACs and parameters of the
result (``report.after``, counted by ``onnxrep.cost``), the reasons given, and the onnxruntime
error.
"""
from __future__ import annotations

import numpy as np
import pytest

from checks import assert_verifies, attr, conv_nodes, reasons, run_opt
from onnx_builders import GraphBuilder, node_ops, op_histogram

X = "x"


def kernels(model):
    return sorted((attr(n, "group", 1), tuple(attr(n, "kernel_shape"))) for n in conv_nodes(model))


def test_convffn_depthwise_then_expansion_stays_two_convs():
    """FastViT's ConvFFN: dw7x7 + BN -> 1x1 (C -> 4C). One dense 7x7 costs C*4C*49 = 12,544 per pixel
    (C = 8) against C*49 + C*4C = 648 apart: the BN folds into the depthwise conv, the 1x1 stays."""
    c, h = 8, 10
    g = GraphBuilder(1)
    t = g.bn(g.conv(X, c, c, 7, pads=3, group=c, bias=False), c)
    y = g.node("Relu", [g.conv(t, c, 4 * c, 1)], "y")
    m = g.model({X: (1, c, h, h)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Conv", "Relu"]
    assert kernels(out) == [(1, (1, 1)), (c, (7, 7))]
    assert rep.after.macs == rep.before.macs == h * h * (c * 49 + c * 4 * c)
    assert rep.after.params < rep.before.params
    why = [r for r in reasons(rep) if r.startswith("kept apart")]
    assert why == ["kept apart: one conv would cost 1.25 MMACs, 12.6 k params, 1 node(s); "
                   "apart 64.8 kMACs, 680 params, 2 node(s)"], reasons(rep)
    assert_verifies(m, out)


@pytest.mark.parametrize("r,merged", [(2, False), (8, True)])
def test_reduction_then_kxk_merges_only_when_it_pays(r, merged):
    """1x1 (C -> R) -> 3x3 (R -> C), C = 8: one 3x3 costs C*C*9 = 576 per pixel, apart C*R + R*C*9
    = 160 (R = 2) or 640 (R = 8): a bottleneck stays two convs, a wide one becomes one."""
    c, h = 8, 6
    g = GraphBuilder(2)
    t = g.conv(X, c, r, 1, bias=False)
    y = g.node("Relu", [g.bn(g.conv(t, r, c, 3, pads=1), c)], "y")
    m = g.model({X: (1, c, h, h)}, [y])
    out, rep = run_opt(m)
    assert len(conv_nodes(out)) == (1 if merged else 2)
    assert rep.after.macs == h * h * (c * c * 9 if merged else c * r + r * c * 9)
    assert rep.after.macs <= rep.before.macs and rep.after.params <= rep.before.params
    assert_verifies(m, out)


def test_depthwise_beside_dense_1x1_keeps_two_convs_and_folds_every_bn():
    """dw3x3-BN(x) + 1x1-BN(x) + BN(x), then a post-BN: one dense 3x3 costs C*C*9 = 576 per pixel
    against C*9 + C*C = 136 apart. Every BN folds: the identity and the post-BN's shift into one
    term, the post-BN's scale into both (s (A + B) + t = (s A + t) + s B)."""
    c, h = 8, 5
    g = GraphBuilder(3)
    a = g.bn(g.conv(X, c, c, 3, pads=1, group=c, bias=False), c)
    b = g.bn(g.conv(X, c, c, 1, bias=False), c)
    s = g.bn(g.add(g.add(a, b), g.bn(X, c)), c)
    m = g.model({X: (1, c, h, h)}, [g.node("Relu", [s], "y")])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Conv": 2, "Add": 1, "Relu": 1}
    assert kernels(out) == [(1, (1, 1)), (c, (3, 3))]
    assert rep.after.macs == h * h * (c * 9 + c * c)
    assert any(r.startswith("branches kept apart: one conv would cost") for r in reasons(rep))
    assert_verifies(m, out)


@pytest.mark.parametrize("e,into", [(4, "first"), (16, "second")])
def test_the_1x1_between_two_3x3_joins_the_cheaper_side(e, into):
    """3x3 (8 -> 8) -> 1x1 (8 -> E) -> 3x3 (E -> 8). The 1x1 joins the first conv (8 -> E 3x3: 288 + 288
    per pixel for E = 4) or the second (8 -> 8 3x3: 576 + 576 for E = 16), whichever is cheaper than
    the other and than leaving it alone (576 + 32 + 288 / 576 + 128 + 1152)."""
    c, h = 8, 6
    g = GraphBuilder(4)
    a = g.conv(X, c, c, 3, pads=1)
    b = g.conv(a, c, e, 1, bias=False)
    y = g.node("Relu", [g.conv(b, e, c, 3, pads=1)], "y")
    m = g.model({X: (1, c, h, h)}, [y])
    out, rep = run_opt(m)
    first, second = conv_nodes(out)
    assert len(conv_nodes(out)) == 2
    if into == "first":  # the first conv now writes the 1x1's output
        assert first.output[0] == b and second.input[0] == b
        assert rep.after.macs == h * h * (c * e * 9 + e * c * 9)
    else:
        assert first.output[0] == a and second.input[0] == a
        assert rep.after.macs == h * h * (c * c * 9 + c * c * 9)
    assert rep.after.macs < rep.before.macs
    assert_verifies(m, out)


def test_strided_merge_that_saves_macs_but_adds_parameters_is_not_made():
    """1x1 (16 -> 10) at 8x8, then 3x3 stride 2 (10 -> 8) at 4x4: one 3x3 s2 (16 -> 8) costs fewer MACs
    (16*1152 = 18,432 against 64*160 + 16*720 = 21,760) but more parameters (1,152 against 880):
    neither MACs nor parameters may grow, so the convs stay apart."""
    g = GraphBuilder(5)
    t = g.conv(X, 16, 10, 1, bias=False)
    y = g.node("Relu", [g.conv(t, 10, 8, 3, pads=1, strides=2, bias=False)], "y")
    m = g.model({X: (1, 16, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert len(conv_nodes(out)) == 2 and rep.after.params == rep.before.params == 880
    assert any("one conv would cost 18.4 kMACs, 1.15 k params" in r for r in reasons(rep)), reasons(rep)
    assert_verifies(m, out)


@pytest.mark.parametrize("dynamic", [False, True])
def test_stride_factors_decide_when_spatial_dims_are_dynamic(dynamic):
    """1x1 (8 -> 8) at full size then 3x3 stride 2 (8 -> 8): apart 64 + 576/4 = 208 per input pixel,
    merged 576/4 = 144: merged, whether the sizes are static or only relative (stride factors)."""
    c = 8
    g = GraphBuilder(6)
    t = g.conv(X, c, c, 1, bias=False)
    y = g.node("Relu", [g.conv(t, c, c, 3, pads=1, strides=2)], "y")
    m = g.model({X: (1, c, "H", "W") if dynamic else (1, c, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Relu"]
    assert attr(conv_nodes(out)[0], "strides") == [2, 2]
    assert_verifies(m, out, **({"input_shapes": {X: (1, c, 12, 10)}} if dynamic else {}))


def test_dbb_avgpool_branch_is_dense_alone_but_free_inside_the_sum():
    """1x1 -> AvgPool 3x3 (a dense 3x3 on its own) summed with a dense 3x3 on the same input: one
    3x3 conv, since the merge is decided when the region is complete, not branch by branch."""
    c, h = 4, 6
    g = GraphBuilder(7)
    pooled = g.node("AveragePool", [g.conv(X, c, c, 1, bias=False)], kernel_shape=[3, 3], pads=[1] * 4,
                    count_include_pad=1)
    y = g.node("Relu", [g.add(g.conv(X, c, c, 3, pads=1), pooled)], "y")
    m = g.model({X: (1, c, h, h)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Relu"] and rep.after.macs == h * h * c * c * 9
    assert_verifies(m, out)


def test_zero_pad_after_a_1x1_stays_when_dims_are_dynamic():
    """1x1 -> zero Pad on an H x W input: the Pad could become the 1x1's padding (one node less), but
    the 1x1 would then compute the border too (2H more pixels). Sizes are polynomials in the input
    size, so that counts: the Pad stays. With static dims the same holds by plain counting."""
    g = GraphBuilder(8)
    t = g.conv(X, 2, 1, 1, bias=False)
    p = g.node("Pad", [t, g.init(np.array([0, 0, 0, 1, 0, 0, 0, 1], np.int64))])
    y = g.node("Relu", [p], "y")
    for dims in [("H", "W"), (5, 7)]:
        m = g.model({X: (1, 2) + dims}, [y])
        out, rep = run_opt(m)
        assert node_ops(out) == ["Conv", "Pad", "Relu"] and rep.after.macs == rep.before.macs
        assert_verifies(m, out, input_shapes={X: (1, 2, 5, 7)})


def test_conv_bn_after_a_custom_op_folds_though_shapes_are_unknown():
    """Found by the fuzzer: after a custom op, shape inference gives the conv no shape while the BN's
    output (a graph output) has one; the conv was counted at 1 pixel and the BN at 36, so one conv
    looked 48x dearer than the pair. A tensor of unknown size now takes the size of the tensors it
    is elementwise with."""
    c = 4
    g = GraphBuilder(9)
    h = g.node("MyAct", [X], domain="com.example")
    y = g.bn(g.conv(h, c, 6, 3, pads=1), 6, output="y")
    m = g.model({X: (1, c, 6, 6)}, [(y, (1, 6, 6, 6))], extra_opsets={"com.example": 1})
    out, rep = run_opt(m)
    assert node_ops(out) == ["MyAct", "Conv"]
    assert not any("would cost" in r for r in reasons(rep)), reasons(rep)


def test_dynamic_sizes_follow_the_tensor_not_the_constant():
    """Found by the fuzzer: ``Mul(c, x)`` with the constant first gave its output the size of the
    constant (one static axis of 1), and every size after it was wrong (negative MACs at 32x32)."""
    import onnx_graphsurgeon as gs
    from onnxrep.cost import Poly, SpatialSize
    from onnxrep.graph import GraphContext
    from onnxrep.rules.regions.costs import RegionCosts

    g = GraphBuilder(10)
    t = g.node("Mul", [g.init(np.ones((2, 1, 1), np.float32)), X])
    y = g.node("Relu", [g.conv(t, 2, 3, 3, pads=[0, 1, 0, 1], strides=2)], "y")
    m = g.model({X: (1, 2, "H", "W")}, [y])
    graph = gs.import_onnx(m)
    costs = RegionCosts(GraphContext(graph, 17))
    for node in graph.nodes:
        costs.note_sizes(node)
    conv = next(n for n in graph.nodes if n.op == "Conv")
    h = SpatialSize.of("H").window(3, 2, 0, 1)   # (H - 3) / 2 + 1
    w = SpatialSize.of("W").window(3, 2, 2, 1)   # (W - 1) / 2 + 1
    assert costs.sizes[conv.outputs[0].name] == (h, w)
    assert costs.pixels(conv.outputs[0]) == h.poly() * w.poly() and costs.pixels(conv.outputs[0]) > Poly([0])
