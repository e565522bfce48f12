"""move-bn-before-reshape: a BN after a Reshape that merges channels, moved before it onto a conv / Gemm
that absorbs it, only when that adds no parameters."""
from __future__ import annotations

import pytest

from checks import assert_verifies, declined_once, rewrites, run_opt
from onnx_builders import GraphBuilder, op_histogram
from repmlp_graphs import shape

MOVE = "move-bn-before-reshape"


@pytest.mark.parametrize("target", [(-1, 3, 2, 4), (-1, 3, 8), (-1, 6, 4)], ids=["4d", "3d", "r1"])
def test_moved_onto_a_conv_with_bias_and_folded(target):
    """Conv over 24 = 3 x 8 (or 6 x 4) channels, Reshape to 3 (6) channels, BN: one Conv + Reshape."""
    g = GraphBuilder(20)
    c = g.conv("x", 5, 24, 1, bias=True)
    r = g.node("Reshape", [c, shape(g, *target)])
    y = g.bn(r, target[1], output="y")
    m = g.model({"x": ("N", 5, 1, 1)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Conv": 1, "Reshape": 1}
    assert rewrites(rep)[MOVE] == 1
    assert rep.after.params < rep.before.params
    assert_verifies(m, out, input_shapes={"x": (3, 5, 1, 1)})


def test_moved_onto_a_gemm():
    g = GraphBuilder(21)
    fc = g.node("Gemm", ["x", g.init(g.randn(6, 12)), g.init(g.randn(12))])
    y = g.bn(g.node("Reshape", [fc, shape(g, -1, 4, 3)]), 4, output="y")
    m = g.model({"x": ("N", 6)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Gemm": 1, "Reshape": 1}
    assert_verifies(m, out, input_shapes={"x": (2, 6)})


def test_declined_without_an_absorber():
    g = GraphBuilder(22)
    y = g.bn(g.node("Reshape", ["x", shape(g, -1, 2, 4)]), 2, output="y")
    out, _, d = declined_once(g.model({"x": ("N", 8)}, [y]), MOVE)
    assert "no conv or Gemm" in d.reason and "repeat its parameters 4 times" in d.reason
    assert op_histogram(out)["BatchNormalization"] == 1


def test_declined_when_the_fold_would_add_a_bias():
    """A bias-free conv over 64 channels, BN over 4: folding it adds a bias of 64 for 16 parameters."""
    g = GraphBuilder(23)
    c = g.conv("x", 3, 64, 1, bias=False)
    y = g.bn(g.node("Reshape", [c, shape(g, -1, 4, 4, 4)]), 4, output="y")
    m = g.model({"x": ("N", 3, 1, 1)}, [y])
    out, rep, d = declined_once(m, MOVE)
    assert "add a bias of 64" in d.reason and "16 parameters" in d.reason
    assert rep.after.params <= rep.before.params
    assert_verifies(m, out)


def test_declined_when_channels_do_not_map_whole():
    """(N, 6, 2, 2) -> (N, 4, 6): input channel 1 spreads over output channels 0 and 1."""
    g = GraphBuilder(24)
    c = g.conv("x", 3, 6, 1)
    y = g.bn(g.node("Reshape", [c, shape(g, -1, 4, 6)]), 4, output="y")
    m = g.model({"x": ("N", 3, 2, 2)}, [y])
    out, _, d = declined_once(m, MOVE)
    assert "does not merge whole channels (6 -> 4" in d.reason
    assert_verifies(m, out)
