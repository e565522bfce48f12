"""conv-to-fc: a conv on a map smaller than its kernel rewritten as an FC only where that costs fewer MACs
and no more parameters; the report says why it fired."""
from __future__ import annotations

from checks import assert_verifies, declined_once, rewrites, rule, run_opt
from onnx_builders import GraphBuilder, op_histogram

RULE = "conv-to-fc"


def test_kxk_conv_on_one_pixel_is_its_centre_taps():
    """A 3x3 conv (pads 1) on a pooled 1x1 map reads only its centre tap: a 1x1 conv, 9x fewer MACs."""
    g = GraphBuilder(40)
    pooled = g.node("GlobalAveragePool", ["x"])
    y = g.conv(pooled, 8, 6, 3, pads=1, output="y")
    m = g.model({"x": ("N", 8, 5, 5)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"GlobalAveragePool": 1, "Conv": 1}
    conv = out.graph.node[1]
    assert [list(a.ints) for a in conv.attribute if a.name == "kernel_shape"] == [[1, 1]]
    assert rewrites(rep)[RULE] == 1 and rep.before.macs - rep.after.macs == 6 * 8 * 9 - 6 * 8
    (node, why), = rule(rep, RULE).fired
    assert "a 3x3 conv on a 1x1 map" in why and "432 -> 48 MACs" in why
    assert rule(rep, RULE).to_dict()["fired"] == [{"node": node, "why": why}]
    assert_verifies(m, out, input_shapes={"x": (3, 8, 5, 5)})


def test_depthwise_5x5_on_2x2_map_becomes_a_grouped_fc():
    """25 taps per pixel against 4 pixels: 16 weights per channel instead of 25, MACs 100 -> 16."""
    g = GraphBuilder(41)
    y = g.conv("x", 4, 4, 5, pads=2, group=4, output="y")
    m = g.model({"x": ("N", 4, 2, 2)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Reshape": 2, "Conv": 1}
    assert rep.after.macs < rep.before.macs and rep.after.params <= rep.before.params
    res = assert_verifies(m, out, input_shapes={"x": (3, 4, 2, 2)})
    assert res.outputs[0].shape == (3, 4, 2, 2)


def test_more_weights_as_an_fc_is_declined():
    """3x3 on 2x2: 16 weights per channel pair as an FC against 9: stays a conv."""
    g = GraphBuilder(42)
    y = g.conv("x", 4, 4, 3, pads=1, output="y")
    m = g.model({"x": ("N", 4, 2, 2)}, [y])
    out, _, d = declined_once(m, RULE)
    assert "as an FC over its 4-pixel input it would cost" in d.reason
    assert op_histogram(out) == {"Conv": 1}


def test_kernel_that_fits_the_map_is_not_a_candidate():
    g = GraphBuilder(43)
    y = g.conv("x", 4, 4, 3, pads=1, output="y")
    out, rep = run_opt(g.model({"x": ("N", 4, 8, 8)}, [y]))
    assert RULE not in rewrites(rep) and not rule(rep, RULE).declines
