"""fold-conv-into-fc (with move-bn-before-reshape and merge-reshapes): RepMLP's conv branches folded into
its FC, on blocks written as ONNX by hand."""
from __future__ import annotations

import pytest

from checks import assert_verifies, reasons, rewrites, run_opt
from onnx_builders import GraphBuilder, op_histogram
from repmlp_graphs import repmlp_block, shape

FOLD = "fold-conv-into-fc"


@pytest.mark.parametrize("s,c,hw,parts,ks", [
    (1, 1, (4, 4), (1, 1), (1, 3)),        # one share-set, the whole map one patch
    (2, 4, (4, 4), (2, 2), (1, 3)),        # 2x2 patches, C/S = 2 rows per partition
    (4, 4, (3, 5), (2, 1), (1, 3, 5)),     # non-square patches, a 5x5 branch wider than h
    (2, 2, (6, 6), (1, 2), (3,)),          # one branch
])
def test_block_becomes_one_fc(s, c, hw, parts, ks):
    g = GraphBuilder(7)
    hp, wp = parts
    y = repmlp_block(g, "x", c, hw, parts, s, ks)
    m = g.model({"x": ("N", c, hp * hw[0], wp * hw[1])}, [y])
    out, rep = run_opt(m)
    hist = op_histogram(out)
    assert hist.get("Conv") == 1 and "BatchNormalization" not in hist and "Add" not in hist, hist
    fc = next(n for n in out.graph.node if n.op_type == "Conv")
    assert [a.i for a in fc.attribute if a.name == "group"] == [s]
    # fc3 has no bias: its BN (4 S parameters) is folded with the conv branch, whose bias it needs anyway
    assert rewrites(rep)[FOLD] == 1 and "move-bn-before-reshape" not in rewrites(rep)
    # fewer MACs; parameters grow by at most fc3's new bias (S·h·w, the authors' deploy fc3 has it too)
    assert rep.after.macs < rep.before.macs and rep.after.params <= rep.before.params + s * hw[0] * hw[1]
    # partition (Reshape, Transpose), rows (Reshape), FC, one Reshape back, Transpose, Reshape
    assert hist == {"Reshape": 4, "Transpose": 2, "Conv": 1}, hist
    for batch in (1, 3):
        assert_verifies(m, out, input_shapes={"x": (batch, c, hp * hw[0], wp * hw[1])})


def test_gemm_fc():
    """The FC as a Gemm on 2-D rows (BN moved before the Reshape, folded by fold-bn-into-gemm)."""
    g = GraphBuilder(8)
    y = repmlp_block(g, "x", 2, (4, 4), (2, 1), 1, (1, 3), fc="gemm")
    m = g.model({"x": ("N", 2, 8, 4)}, [y])
    out, rep = run_opt(m)
    hist = op_histogram(out)
    assert hist.get("Gemm") == 1 and "Conv" not in hist and "BatchNormalization" not in hist, hist
    assert rewrites(rep)[FOLD] == 1
    assert_verifies(m, out, input_shapes={"x": (3, 2, 8, 4)})


def test_dense_branch_costlier_merged_is_declined():
    """A 3x3 branch mixing share-sets (groups 1) densifies fc3 (groups S): on 8x8 patches that costs
    more than the two apart, so both stay."""
    g = GraphBuilder(9)
    y = repmlp_block(g, "x", 2, (8, 8), (1, 1), 2, (3,), conv_groups=1)
    m = g.model({"x": ("N", 2, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out)["Conv"] == 2
    why = [r for r in reasons(rep, FOLD) if "costlier" in r]
    assert len(why) == 1 and "groups 2 and 1 -> 1" in why[0], reasons(rep, FOLD)
    assert rep.after.params <= rep.before.params and rep.after.macs <= rep.before.macs
    assert_verifies(m, out)


def test_dense_branch_on_small_patches_merges():
    """The same dense branch on 2x2 patches costs more apart (9 taps per pixel > 4 pixels): merged."""
    g = GraphBuilder(10)
    y = repmlp_block(g, "x", 2, (2, 2), (2, 2), 2, (3,), conv_groups=1)
    m = g.model({"x": ("N", 2, 4, 4)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out)["Conv"] == 1 and rewrites(rep)[FOLD] == 1
    fc = next(n for n in out.graph.node if n.op_type == "Conv")
    assert [a.i for a in fc.attribute if a.name == "group"] == [1]
    assert rep.after.macs < rep.before.macs
    assert_verifies(m, out)


def test_conv_branch_read_elsewhere_stays():
    """The conv branch's output is also a graph output: it keeps its producer, nothing is folded."""
    g = GraphBuilder(11)
    y = repmlp_block(g, "x", 2, (4, 4), (1, 1), 2, (3,))
    conv_out = next(n for n in g.nodes if n.op_type == "BatchNormalization" and n.input[0].startswith("conv")).output[0]
    m = g.model({"x": ("N", 2, 4, 4)}, [y, conv_out])
    out, rep = run_opt(m)
    assert op_histogram(out)["Conv"] == 2 and FOLD not in rewrites(rep)
    assert any("graph output" in r for r in reasons(rep, FOLD)), reasons(rep, FOLD)
    assert_verifies(m, out)


def test_branches_viewed_differently_are_not_summed_as_rows():
    """An Add of the FC's rows and the conv's map in different layouts (the conv output transposed first)
    is not a sum of two views of the same rows: left alone."""
    g = GraphBuilder(12)
    s, h, w = 2, 4, 4
    rows = g.node("Reshape", ["x", shape(g, -1, s * h * w, 1, 1)])
    f = g.node("Reshape", [g.conv(rows, s * h * w, s * h * w, 1, group=s), shape(g, -1, s, h, w)])
    view = g.node("Reshape", ["x", shape(g, -1, s, h, w)])
    c = g.node("Transpose", [g.conv(view, s, s, 3, pads=1, group=s)], perm=[0, 1, 3, 2])
    y = g.add(f, c, "y")
    m = g.model({"x": ("N", s, h, w)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out)["Conv"] == 2 and FOLD not in rewrites(rep)
    assert_verifies(m, out)


def test_bn_over_a_view_of_several_rows_is_not_folded():
    """A BN on the 6-D view (channel axis = the partitions, several FC rows per sample) is not a scale per
    FC output: the rule declines, nothing changes."""
    g = GraphBuilder(13)
    s, h, w = 2, 4, 4
    t = g.node("Reshape", ["x", shape(g, -1, 2, s, h, w)])  # x rows: 2 partitions of S·h·w
    rows = g.node("Reshape", [t, shape(g, -1, s * h * w, 1, 1)])
    f = g.node("Reshape", [g.conv(rows, s * h * w, s * h * w, 1, group=s, bias=False), shape(g, -1, 2, s, h, w)])
    f = g.bn(f, 2)
    view = g.node("Reshape", [t, shape(g, -1, s, h, w)])
    c = g.node("Reshape", [g.conv(view, s, s, 3, pads=1, group=s), shape(g, -1, 2, s, h, w)])
    y = g.add(f, c, "y")
    m = g.model({"x": ("N", 2 * s * h * w)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out)["Conv"] == 2 and FOLD not in rewrites(rep)
    assert any("not one row of the FC's 32 outputs" in r for r in reasons(rep, FOLD)), reasons(rep, FOLD)
    assert_verifies(m, out, input_shapes={"x": (3, 2 * s * h * w)})
