"""sink-transposes-below-sum: Transpose_p(a) ± Transpose_p(b) -> Transpose_p(a ± b), then the branches merge."""
from __future__ import annotations

import pytest

from checks import assert_verifies, reasons, rewrites, run_opt
from onnx_builders import GraphBuilder, op_histogram

RULE = "sink-transposes-below-sum"
NHWC = [0, 2, 3, 1]


def last_block_of_a_flax_net(op="Add", perms=(NHWC, NHWC), c=8, hw=(6, 5)):
    """``Transpose(BN(conv3x3(x))) op Transpose(BN(conv1x1(x)))`` then Relu, as jax2onnx writes it."""
    g = GraphBuilder(1)
    k3 = g.node("Transpose", [g.bn(g.conv("x", c, c, 3, pads=1, bias=False), c)], perm=perms[0])
    k1 = g.node("Transpose", [g.bn(g.conv("x", c, c, 1, bias=False), c)], perm=perms[1])
    y = g.node("Relu", [g.node(op, [k3, k1])], "y")
    return g.model({"x": ["N", c, *hw]}, [y])


@pytest.mark.parametrize("op", ["Add", "Sub"])
def test_the_transposed_branches_merge(op):
    model = last_block_of_a_flax_net(op)
    out, report = run_opt(model)
    assert op_histogram(out) == {"Conv": 1, "Transpose": 1, "Relu": 1}
    assert rewrites(report)[RULE] == 1
    assert_verifies(model, out, input_shapes={"x": (2, 8, 6, 5)})


def test_a_three_branch_sum_sinks_both_adds():
    g = GraphBuilder(2)
    c = 4
    branches = [g.node("Transpose", [g.bn(g.conv("x", c, c, k, pads=k // 2, bias=False), c)], perm=NHWC)
                for k in (3, 1)] + [g.node("Transpose", [g.bn("x", c)], perm=NHWC)]
    y = g.node("Relu", [g.add(g.add(branches[0], branches[1]), branches[2])], "y")
    model = g.model({"x": ["N", c, 5, 7]}, [y])
    out, report = run_opt(model)
    assert op_histogram(out) == {"Conv": 1, "Transpose": 1, "Relu": 1}
    assert rewrites(report)[RULE] == 2
    assert_verifies(model, out, input_shapes={"x": (3, c, 5, 7)})


def test_different_permutations_are_left():
    model = last_block_of_a_flax_net(perms=(NHWC, [0, 3, 2, 1]), hw=(6, 6))  # (N, H, W, C) + (N, W, H, C)
    out, report = run_opt(model)
    assert RULE not in rewrites(report)
    assert op_histogram(out)["Transpose"] == 2 and op_histogram(out)["Conv"] == 2
    assert any("transposed differently" in r for r in reasons(report, RULE))
    assert_verifies(model, out, input_shapes={"x": (1, 8, 6, 6)})


def test_a_shared_transpose_is_kept():
    """A Transpose read twice stays (sinking it would add one): the rule does not fire."""
    g = GraphBuilder(3)
    c = 4
    ta = g.node("Transpose", [g.conv("x", c, c, 3, pads=1)], perm=NHWC)
    tb = g.node("Transpose", [g.conv("x", c, c, 1)], perm=NHWC)
    s = g.add(ta, tb, "s")
    model = g.model({"x": ["N", c, 5, 5]}, [s, g.node("Relu", [ta], "r")])
    out, report = run_opt(model)
    assert RULE not in rewrites(report)
    assert op_histogram(out)["Transpose"] == 2
    assert_verifies(model, out, input_shapes={"x": (1, c, 5, 5)})
