"""eliminate-dead-channels: output channels with zero weights removed with their reads downstream.

Each model is built with exactly-zero weight rows (a ResRep compactor merged into its conv leaves
them) and Relu between layers so the region collapse does not merge the layers themselves.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from checks import assert_verifies, rule, run_opt

RULE = "eliminate-dead-channels"
RNG = np.random.default_rng(0)


class Net:
    """A tiny graph builder: float32 tensors of known shapes."""

    def __init__(self, c=4, hw=8):
        self.nodes, self.inits, self.k = [], [], 0
        self.shapes = {"x": [1, c, hw, hw]}

    def name(self, p):
        self.k += 1
        return f"{p}{self.k}"

    def const(self, arr, p="w"):
        n = self.name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), n))
        return n

    def conv(self, x, out_c, k=1, pad=0, zero=(), bias=True, zero_bias=(), group=1):
        in_c = self.shapes[x][1]
        w = RNG.standard_normal((out_c, in_c // group, k, k)).astype(np.float32)
        w[list(zero)] = 0
        b = RNG.uniform(0.2, 1.0, out_c).astype(np.float32)
        b[list(zero_bias)] = 0
        ins = [x, self.const(w)] + ([self.const(b, "b")] if bias else [])
        y = self.name("conv")
        self.nodes.append(helper.make_node("Conv", ins, [y], name=y, pads=[pad] * 4, group=group))
        n, _, h, w_ = self.shapes[x]
        self.shapes[y] = [n, out_c, h + 2 * pad - k + 1, w_ + 2 * pad - k + 1]
        return y

    def op(self, op_type, inputs, shape, **attrs):
        y = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [y], name=y, **attrs))
        self.shapes[y] = shape
        return y

    def relu(self, x):
        return self.op("Relu", [x], self.shapes[x])

    def model(self, *outputs):
        vi = lambda n: helper.make_tensor_value_info(n, T.FLOAT, self.shapes[n])  # noqa: E731
        g = helper.make_graph(self.nodes, "g", [vi("x")], [vi(o) for o in outputs], self.inits,
                              value_info=[vi(n) for n in self.shapes if n != "x" and n not in outputs])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _weights(model, node_name):
    node = next(n for n in model.graph.node if n.output[0] == node_name)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [inits[i] for i in node.input[1:] if i in inits]


def _cuts(report):
    return [(c.node, c.before, c.after) for c in rule(report, RULE).channels]


def test_zero_rows_removed_and_their_constant_folded_downstream():
    """conv(8, rows 2 and 5 zero) -> Relu -> 1x1 conv: relu(b) of the dead rows goes into its bias."""
    n = Net()
    a = n.conv("x", 8, k=3, pad=1, zero=(2, 5))
    y = n.conv(n.relu(a), 6)
    m = n.model(y)
    out, rep = run_opt(m)
    assert _weights(out, a)[0].shape == (6, 4, 3, 3) and _weights(out, y)[0].shape == (6, 6, 1, 1)
    assert _cuts(rep) == [(a, 8, 6)] and rule(rep, RULE).rewrites == 1
    assert rep.after.params == rep.before.params - 2 * (36 + 1) - 2 * 6
    assert_verifies(m, out)


def test_padded_consumer_takes_only_zero_constants():
    """A 3x3 padded conv after the dead channels: the one with constant 0 goes, the one with relu(b) > 0
    stays (the border pixels would see fewer taps of it), with the reason."""
    n = Net()
    a = n.conv("x", 8, k=3, pad=1, zero=(2, 5), zero_bias=(5,))
    y = n.conv(n.relu(a), 6, k=3, pad=1)
    m = n.model(y)
    out, rep = run_opt(m)
    assert _weights(out, a)[0].shape == (7, 4, 3, 3) and _cuts(rep) == [(a, 8, 7)]
    assert any("pads its input" in d.reason for d in rule(rep, RULE).declines)
    assert_verifies(m, out)


def test_residual_add_removes_a_channel_dead_in_every_input():
    n = Net()
    a = n.relu(n.conv("x", 8, k=3, pad=1, zero=(1, 3)))
    b = n.relu(n.conv("x", 8, k=3, pad=1, zero=(1,)))
    s = n.op("Add", [a, b], n.shapes[a])
    y = n.conv(n.relu(s), 5)
    m = n.model(y)
    out, rep = run_opt(m)
    assert sorted(_cuts(rep)) == sorted([(n.nodes[0].output[0], 8, 7), (n.nodes[2].output[0], 8, 7)])
    assert _weights(out, y)[0].shape == (5, 7, 1, 1)
    assert_verifies(m, out)


def test_concat_depthwise_and_flatten_gemm_head():
    """Two convs with dead rows -> Concat -> depthwise 3x3 (padded: constant 0 only) -> Relu ->
    Flatten of a 2x2 map -> Gemm: each dead channel goes with its 4 columns of the Gemm."""
    n = Net(hw=2)
    a = n.conv("x", 3, zero=(0,), zero_bias=(0,))
    b = n.conv("x", 3, zero=(2,), zero_bias=(2,))
    cat = n.op("Concat", [a, b], [1, 6, 2, 2], axis=1)
    dw = n.relu(n.conv(cat, 6, k=3, pad=1, group=6))
    flat = n.op("Flatten", [dw], [1, 24], axis=1)
    gw, gb = n.const(RNG.standard_normal((24, 5))), n.const(RNG.standard_normal(5), "b")
    y = n.op("Gemm", [flat, gw, gb], [1, 5])
    m = n.model(y)
    out, rep = run_opt(m)
    groups = [at.i for o in out.graph.node if o.op_type == "Conv" for at in o.attribute if at.name == "group"]
    assert sorted(groups) == [1, 1, 4]  # the depthwise conv lost the two dead channels on both sides
    assert _weights(out, y)[0].shape == (16, 5)
    assert rep.after.params < rep.before.params
    assert_verifies(m, out)


def test_graph_output_and_unknown_reader_keep_the_channel():
    n = Net()
    a = n.conv("x", 8, zero=(2,))
    r = n.relu(a)
    y = n.conv(r, 6)
    m = n.model(y, r)  # the Relu output is a graph output: its channels are the interface
    out, rep = run_opt(m)
    assert rule(rep, RULE).rewrites == 0 and _weights(out, a)[0].shape == (8, 4, 1, 1)
    assert any("graph output" in d.reason for d in rule(rep, RULE).declines)


def test_no_dead_channels_no_work():
    n = Net()
    y = n.conv(n.relu(n.conv("x", 8)), 6)
    out, rep = run_opt(n.model(y))
    assert rule(rep, RULE).rewrites == 0 and not rule(rep, RULE).declines
    assert [o.op_type for o in out.graph.node] == ["Conv", "Relu", "Conv"]


def test_split_and_slice_on_channels_move_their_bounds():
    """conv(8, rows 1 and 6 zero) -> Relu -> Split [3, 5] -> two 1x1 convs; and a Slice [2:7] of it ->
    1x1 conv: the split sizes become [2, 4], the slice [1:5]."""
    n = Net()
    r = n.relu(n.conv("x", 8, zero=(1, 6)))
    s1, s2 = "split_a", "split_b"
    n.nodes.append(helper.make_node("Split", [r, n.const(np.asarray([3, 5]), "sizes")], [s1, s2], name="split", axis=1))
    n.inits[-1] = numpy_helper.from_array(np.asarray([3, 5], np.int64), n.inits[-1].name)
    n.shapes[s1], n.shapes[s2] = [1, 3, 8, 8], [1, 5, 8, 8]
    ya, yb = n.conv(s1, 4), n.conv(s2, 4)
    sl = n.op("Slice", [r, n.const(np.asarray([2]), "st"), n.const(np.asarray([7]), "en"), n.const(np.asarray([1]), "ax")],
              [1, 5, 8, 8])
    for k in (-3, -2, -1):  # int64 bounds
        n.inits[k] = numpy_helper.from_array(numpy_helper.to_array(n.inits[k]).astype(np.int64), n.inits[k].name)
    yc = n.conv(sl, 4)
    m = n.model(ya, yb, yc)
    out, rep = run_opt(m)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    split = next(o for o in out.graph.node if o.op_type == "Split")
    slc = next(o for o in out.graph.node if o.op_type == "Slice")
    assert list(inits[split.input[1]]) == [2, 4]
    assert (int(inits[slc.input[1]][0]), int(inits[slc.input[2]][0])) == (1, 5)
    assert [_weights(out, y)[0].shape[1] for y in (ya, yb, yc)] == [2, 4, 4]
    assert _cuts(rep) == [(n.nodes[0].output[0], 8, 6)]
    assert_verifies(m, out)


def test_every_channel_dead_is_left_alone():
    n = Net()
    y = n.conv(n.relu(n.conv("x", 3, zero=(0, 1, 2))), 4)
    out, rep = run_opt(n.model(y))
    assert rule(rep, RULE).rewrites == 0
    assert any("every channel" in d.reason for d in rule(rep, RULE).declines)


def test_grouped_conv_source_keeps_its_rows():
    """A zero row of a grouped (not depthwise) conv: removing it would leave groups of unequal size."""
    n = Net()
    a = n.conv("x", 8, zero=(1,), group=2)
    y = n.conv(n.relu(a), 4)
    out, rep = run_opt(n.model(y))
    assert rule(rep, RULE).rewrites == 0 and _weights(out, a)[0].shape == (8, 2, 1, 1)
    assert any("grouped conv" in d.reason for d in rule(rep, RULE).declines)


def test_gemm_zero_columns_removed_with_the_next_gemm_rows():
    """Gemm (column 2 of B zero, C[2] = 0.7) -> Relu -> MatMul: the column goes, relu(0.7) * B2[2] becomes
    the MatMul's bias (a Gemm now)."""
    n = Net(hw=1)
    flat = n.op("Flatten", ["x"], [1, 4], axis=1)
    b1 = RNG.standard_normal((4, 6))
    b1[:, 2] = 0
    c1 = RNG.uniform(0.2, 1.0, 6)
    c1[2] = 0.7
    g1 = n.op("Gemm", [flat, n.const(b1), n.const(c1, "c")], [1, 6], beta=1.5)
    y = n.op("MatMul", [n.relu(g1), n.const(RNG.standard_normal((6, 3)))], [1, 3])
    m = n.model(y)
    out, rep = run_opt(m)
    assert [o.op_type for o in out.graph.node] == ["Flatten", "Gemm", "Relu", "Gemm"]
    assert _weights(out, g1)[0].shape == (4, 5) and _weights(out, y)[0].shape == (5, 3)
    assert _cuts(rep) == [(g1, 6, 5)]
    assert_verifies(m, out)
