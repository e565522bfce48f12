"""Branch alignment proven on the static spatial size the graph states (TensorFlow 'same' padding).

A Keras stride-2 RepVGG block exported by tf2onnx: a 3x3 conv with pads (0, 0, 1, 1) (the odd pixel
at the end) and a 1x1 without pads, or both with ``auto_pad=SAME_UPPER`` when the exporter leaves
padding to the runtime. Their outputs line up on even sizes only (explicit pads) or on every size
(``SAME_UPPER``, whose pads follow the size); a merge needs the size, so it is made where the graph
states it and declined, with the reason, where it is dynamic.
"""
from __future__ import annotations

import pytest

from checks import assert_verifies, reasons, rewrites, run_opt
from onnx_builders import GraphBuilder, op_histogram

COLLAPSE = "collapse-linear-regions"


def tf_stride2_block(h, w, auto_pad: bool = False, seed: int = 0, cin: int = 4, cout: int = 8):
    """``relu(BN(conv3x3_s2(x)) + BN(conv1x1_s2(x)))`` on an ``(N, cin, h, w)`` input."""
    g = GraphBuilder(seed)
    if auto_pad:
        k3 = g.node("Conv", ["x", g.init(g.randn(cout, cin, 3, 3, scale=0.3))], auto_pad="SAME_UPPER",
                    strides=[2, 2], kernel_shape=[3, 3])
        k1 = g.node("Conv", ["x", g.init(g.randn(cout, cin, 1, 1, scale=0.3))], auto_pad="SAME_UPPER",
                    strides=[2, 2], kernel_shape=[1, 1])
    else:
        k3 = g.conv("x", cin, cout, 3, pads=[0, 0, 1, 1], strides=2, bias=False)
        k1 = g.conv("x", cin, cout, 1, strides=2, bias=False)
    y = g.node("Relu", [g.add(g.bn(k3, cout), g.bn(k1, cout))], "y")
    return g.model({"x": ["N", cin, h, w]}, [y])


@pytest.mark.parametrize("auto_pad", [False, True])
@pytest.mark.parametrize("hw", [(16, 16), (8, 12), (2, 2)])
def test_even_static_size_merges(auto_pad, hw):
    model = tf_stride2_block(*hw, auto_pad=auto_pad)
    out, report = run_opt(model)
    assert op_histogram(out) == {"Conv": 1, "Relu": 1}
    assert rewrites(report).get(COLLAPSE) == 1
    for batch in (1, 3):
        assert_verifies(model, out, input_shapes={"x": (batch, 4, *hw)})


def test_auto_pad_odd_static_size_merges():
    """SAME_UPPER on 15 rows pads (1, 1): the 1x1 sits at the 3x3's centre row, at its first column."""
    model = tf_stride2_block(15, 16, auto_pad=True)
    out, _ = run_opt(model)
    assert op_histogram(out) == {"Conv": 1, "Relu": 1}
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    pads = next(list(a.ints) for a in conv.attribute if a.name == "pads")
    assert pads == [1, 0, 1, 1]
    assert_verifies(model, out, input_shapes={"x": (2, 4, 15, 16)})


@pytest.mark.parametrize("auto_pad", [False, True])
def test_dynamic_size_declined_with_the_reason(auto_pad):
    model = tf_stride2_block("H", "W", auto_pad=auto_pad)
    out, report = run_opt(model)
    assert op_histogram(out)["Conv"] == 2
    assert "BatchNormalization" not in op_histogram(out)  # the BNs still fold into their convs
    why = " ".join(reasons(report))
    if auto_pad:
        assert "auto_pad=SAME_UPPER with stride > 1 depends on the input size, which is dynamic" in why
    else:
        assert "not aligned on spatial axis 0" in why and "dynamic" in why
    for hw in ((16, 16), (8, 20)):
        assert_verifies(model, out, input_shapes={"x": (2, 4, *hw)})


@pytest.mark.parametrize("stride,hw", [(1, (7, 6)), (2, (8, 6))])
def test_avgpool_same_on_a_static_size_merges(stride, hw):
    """A 1x1 -> AvgPool -> BN branch with ``auto_pad=SAME_UPPER`` (count_include_pad=1) beside a 3x3:
    the pool's pads are read off the stated size, and the branches are one conv."""
    g = GraphBuilder(4)
    c = 4
    pad3 = [1, 1, 1, 1] if stride == 1 else [0, 0, 1, 1]
    k3 = g.bn(g.conv("x", c, c, 3, pads=pad3, strides=stride, bias=False), c)
    pooled = g.node("AveragePool", [g.conv("x", c, c, 1, bias=False)], kernel_shape=[3, 3],
                    strides=[stride, stride], auto_pad="SAME_UPPER", count_include_pad=1)
    y = g.node("Relu", [g.add(k3, g.bn(pooled, c))], "y")
    model = g.model({"x": ["N", c, *hw]}, [y])
    out, report = run_opt(model)
    assert op_histogram(out) == {"Conv": 1, "Relu": 1}, reasons(report)
    assert_verifies(model, out, input_shapes={"x": (2, c, *hw)})
