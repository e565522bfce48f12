"""fold-bn-into-convtranspose: BatchNormalization after a ConvTranspose (any groups)."""
from __future__ import annotations

import pytest

from checks import assert_verifies, attr, declined_once, rewrites, run_opt
from onnx_builders import GraphBuilder, node_ops

X = "x"
CONVT = "fold-bn-into-convtranspose"


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_convtranspose_bn_fold(group, bias):
    cin, cout = 4, 6
    g = GraphBuilder(114 + group)
    inputs = [X, g.init(g.randn(cin, cout // group, 3, 3, scale=0.3))]
    if bias:
        inputs.append(g.init(g.randn(cout)))
    h = g.node("ConvTranspose", inputs, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1],
               group=group, kernel_shape=[3, 3])
    y = g.bn(h, cout, output="y")
    m = g.model({X: (2, cin, 5, 5)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["ConvTranspose"]
    assert rewrites(rep) == {CONVT: 1}
    ct = out.graph.node[0]
    assert attr(ct, "group", 1) == group and attr(ct, "strides") == [2, 2]
    assert attr(ct, "output_padding") == [1, 1]
    assert len(ct.input) == 3
    assert_verifies(m, out)


@pytest.mark.parametrize("case", ["1d-group2-dilation2", "depthwise-pads"])
def test_convtranspose_bn_fold_more(case):
    g = GraphBuilder(143)
    if case == "1d-group2-dilation2":
        h = g.node("ConvTranspose", [X, g.init(g.randn(4, 3, 3))], strides=[2], group=2, dilations=[2])
        y, c, shape = g.bn(h, 6, output="y"), 6, (1, 4, 7)
    else:
        h = g.node("ConvTranspose", [X, g.init(g.randn(4, 1, 4, 4))], strides=[2, 2], group=4, pads=[1, 1, 1, 1])
        y, c, shape = g.bn(h, 4, output="y"), 4, (1, 4, 5, 5)
    m = g.model({X: shape}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["ConvTranspose"] and rewrites(rep) == {CONVT: 1}
    assert_verifies(m, out)


def test_convtranspose_followed_by_mul_is_left_alone():
    g = GraphBuilder(144)
    h = g.node("ConvTranspose", [X, g.init(g.randn(4, 2, 3, 3))], strides=[2, 2])
    m = g.model({X: (1, 4, 5, 5)}, [g.node("Mul", [h, g.chan_const(2)], "y")])
    out, rep = run_opt(m)
    assert node_ops(out) == ["ConvTranspose", "Mul"] and rep.rewrites == 0


# --------------------------------------------------------------------------- decline table
def _decline_case(case: str):
    g = GraphBuilder(170)
    h = g.node("ConvTranspose", [X, g.init(g.randn(4, 2, 3, 3))], strides=[2, 2])
    if case == "bn-training-mode":
        y = g.bn(h, 2, output="y", training_mode=1, extra_outputs=["rm", "rv"])
        return g.model({X: (1, 4, 5, 5)}, [y], opset=15)
    raise AssertionError(case)


DECLINES = [("bn-training-mode", "rewrite", "BatchNormalization has training_mode=1 (model exported in training mode?)")]


@pytest.mark.parametrize("case,kind,reason", DECLINES, ids=[d[0] for d in DECLINES])
def test_declines(case, kind, reason):
    m = _decline_case(case)
    out, _, d = declined_once(m, CONVT)
    assert (d.kind, d.reason) == (kind, reason) and node_ops(out) == node_ops(m)
    assert_verifies(m, out)
