"""Graph-level tests of the DBB-related rewrites on hand-built ONNX graphs and real exports.

* Pad before a conv: a zero ``Pad`` is the conv's own padding; a constant ``Pad`` merges only
  when its value is the producer's value at zero; reflect / edge pads never merge.
* DBB (Diverse Branch Block): ``1x1 -> BN -> pad with BN(0) -> KxK -> BN`` plus the KxK-BN, 1x1-BN
  and ``1x1 -> BN -> pad -> AvgPool -> BN`` branches collapse to exactly one Conv (dense, grouped,
  strided, depthwise), with the border written as ``Add(Pad(Sub(y, v)), v)`` in the model.
* ``canonicalize-border-fill``: legacy-exporter-like border writes (a zero Pad, then ScatterND
  writes of a per-channel constant into the four borders) are proven equal to ``pad(y, p, v)``
  and rewritten; wrong values, partial writes, data-dependent writes, dynamic spatial sizes and
  escaping tensors are left alone (with a reason) and the model still verifies.
* Exact border fills: a proven fill that does not merge stays ``Pad(y, p, v)`` or
  ``Where(inside, Pad(y, p, 0), v)``, bit for bit in float16 (never ``y - v + v``); it is left as
  exported where that form would only add parameters; a ``Where`` of a zero Pad is read as one pad by v.
* AveragePool with ``count_include_pad=0`` and pads, or ``ceil_mode=1``, is not a conv.
* Real exports of ``dbb_tiny`` in the three torch export modes reach deploy parity.

Every test asserts numbers: op histogram / Conv count, rewrites and decline reasons, the ONNX
checker, and the onnxruntime error ``max_abs <= 1e-4 * max|ref|``.
"""
from __future__ import annotations

import onnx
import numpy as np
import pytest
from onnx import helper

from onnx_builders import GraphBuilder, initializer, node_ops, op_histogram
from checks import (COLLAPSE, assert_verifies, attr, conv_nodes, reasons, declined_once, rule, run_opt,
                    tensor_values)
from onnxrep import optimize, verify

BORDER = "canonicalize-border-fill"
X = "x"


# --------------------------------------------------------------------------- helpers


def ints(g: GraphBuilder, *values) -> str:
    return g.init(np.array(values, dtype=np.int64))


def bn_with_zero(g: GraphBuilder, x: str, c: int, eps: float = 1e-5) -> tuple[str, np.ndarray]:
    """BatchNormalization with random parameters, and its value at zero ``BN(0)`` (float64)."""
    gamma, beta, mean, var = g.bn_params(c)
    out = g.node("BatchNormalization", [x] + [g.init(p) for p in (gamma, beta, mean, var)], epsilon=eps)
    f = lambda a: a.astype(np.float64)  # noqa: E731
    return out, f(beta) - f(mean) * f(gamma) / np.sqrt(f(var) + eps)


def pad4(g: GraphBuilder, y: str, p: int, value: float | None = None, mode: str = "constant") -> str:
    inputs = [y, ints(g, 0, 0, p, p, 0, 0, p, p)]
    if value is not None:
        inputs.append(g.init(np.array(value, g.dtype)))
    return g.node("Pad", inputs, mode=mode)


def strip_indices(n: int, c: int, rows, cols) -> np.ndarray:
    """ScatterND indices ``(n, c, len(rows), len(cols), 4)`` of every element of a strip."""
    nn, cc, hh, ww = np.meshgrid(np.arange(n), np.arange(c), rows, cols, indexing="ij")
    return np.stack([nn, cc, hh, ww], -1).astype(np.int64)


SIDES = ("top", "bottom", "left", "right")


def scatter_border(g: GraphBuilder, padded: str, shape, p: int, value, sides=SIDES) -> str:
    """Legacy-exporter-like border fill: one ScatterND per side writing the per-channel ``value``
    into the ``p`` outer rows / columns of ``padded`` (static ``shape = (N, C, H+2p, W+2p)``)."""
    n, c, hp, wp = shape
    rows, cols = np.arange(hp), np.arange(wp)
    strips = {"top": (np.arange(p), cols), "bottom": (np.arange(hp - p, hp), cols),
              "left": (rows, np.arange(p)), "right": (rows, np.arange(wp - p, wp))}
    for side in sides:
        idx = strip_indices(n, c, *strips[side])
        upd = np.broadcast_to(np.asarray(value, g.dtype).reshape(1, c, 1, 1), idx.shape[:-1])
        padded = g.node("ScatterND", [padded, g.init(idx), g.init(np.ascontiguousarray(upd))])
    return padded


def bn_and_pad(g: GraphBuilder, y: str, v: np.ndarray, p: int, shape, style: str) -> str:
    """DBB's BNAndPadLayer border on ``y`` (whose value at zero is ``v``), written as:

    * ``canonical``: ``Add(Pad(Sub(y, v)), v)``;
    * ``scatter``: a zero Pad, then four ScatterND border writes of ``v``;
    * ``zero``: a plain zero Pad (wrong unless v == 0: not DBB).
    """
    n, c, h, w = shape
    if style == "canonical":
        vc = g.init(np.asarray(v, g.dtype).reshape(1, c, 1, 1))
        return g.node("Add", [pad4(g, g.node("Sub", [y, vc]), p), vc])
    if style == "scatter":
        return scatter_border(g, pad4(g, y, p), (n, c, h + 2 * p, w + 2 * p), p, v)
    if style == "zero":
        return pad4(g, y, p)
    raise ValueError(style)


def dbb_block(g: GraphBuilder, x: str, n: int, cin: int, cout: int, hw: tuple[int, int], k: int = 3,
              stride: int = 1, groups: int = 1, depthwise: bool = False, style: str = "canonical",
              output: str = "y") -> str:
    """A DBB training block (all convs bias-free, each followed by its BN), summed with Adds."""
    p = k // 2
    h, w = hw
    outs = [g.bn(g.conv(x, cin, cout, k, pads=p, strides=stride, group=groups, bias=False), cout)]
    if not depthwise:
        outs.append(g.bn(g.conv(x, cin, cout, 1, strides=stride, group=groups, bias=False), cout))
        a, v = bn_with_zero(g, g.conv(x, cin, cout, 1, group=groups, bias=False), cout)
        a = bn_and_pad(g, a, v, p, (n, cout, h, w), style)
        a = g.node("AveragePool", [a], kernel_shape=[k, k], strides=[stride] * 2, pads=[0] * 4, count_include_pad=1)
    else:  # the pool reads the block input, zero padding counted
        a = g.node("AveragePool", [x], kernel_shape=[k, k], strides=[stride] * 2, pads=[p] * 4, count_include_pad=1)
    outs.append(g.bn(a, cout))
    mid = 2 * cin if depthwise else cin
    kk, v = bn_with_zero(g, g.conv(x, cin, mid, 1, group=groups, bias=False), mid)
    kk = bn_and_pad(g, kk, v, p, (n, mid, h, w), style)
    outs.append(g.bn(g.conv(kk, mid, cout, k, strides=stride, group=groups, bias=False), cout))
    y = outs[0]
    for i, o in enumerate(outs[1:]):
        y = g.add(y, o, output=output if i == len(outs) - 2 else None)
    return y


def assert_one_conv(out, k, stride, groups, pads):
    assert op_histogram(out) == {"Conv": 1}, node_ops(out)
    (conv,) = conv_nodes(out)
    assert attr(conv, "kernel_shape") == [k, k] and attr(conv, "strides") == [stride, stride]
    assert attr(conv, "pads") == list(pads) and attr(conv, "group", 1) == groups
    assert len(conv.input) == 3  # with a bias


# =========================================================================== Pad before a conv
@pytest.mark.parametrize("pad_pads,conv_pads,strides", [
    ((1, 1, 1, 1), (0, 0, 0, 0), (1, 1)),
    ((1, 2, 2, 1), (0, 0, 0, 0), (2, 1)),
    ((0, 1, 0, 1), (1, 0, 1, 0), (1, 2)),
])
def test_zero_pad_then_conv_is_one_conv_with_the_pads(pad_pads, conv_pads, strides):
    g = GraphBuilder(1)
    hb, wb, he, we = pad_pads
    pp = g.node("Pad", [X, ints(g, 0, 0, hb, wb, 0, 0, he, we)], mode="constant")
    y = g.conv(pp, 4, 6, 3, pads=list(conv_pads), strides=list(strides), output="y")
    m = g.model({X: (1, 4, 9, 8)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Conv": 1}
    (conv,) = conv_nodes(out)
    assert attr(conv, "pads") == [a + b for a, b in zip(pad_pads, conv_pads)]
    assert attr(conv, "strides") == list(strides)
    assert rule(rep, COLLAPSE).rewrites == 1
    # the weights are untouched (a pad merges without arithmetic)
    assert np.array_equal(initializer(out, conv.input[1]), initializer(m, m.graph.node[1].input[1]))
    assert_verifies(m, out)


def test_zero_pad_with_axes_input_opset18():
    g = GraphBuilder(2)
    pp = g.node("Pad", [X, ints(g, 1, 2, 2, 1), g.init(np.array(0.0, np.float32)), ints(g, 2, 3)], mode="constant")
    y = g.bn(g.conv(pp, 4, 6, 3), 6, output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y], opset=18)
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Conv": 1}
    assert attr(conv_nodes(out)[0], "pads") == [1, 2, 2, 1]
    assert_verifies(m, out)


def test_nonzero_constant_pad_before_conv_is_not_merged():
    g = GraphBuilder(3)
    y = g.conv(pad4(g, X, 1, value=0.5), 4, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Pad": 1, "Conv": 1}
    assert rule(rep, COLLAPSE).rewrites == 0
    assert_verifies(m, out)


def test_nonzero_pad_after_bn_is_not_merged_but_bn_folds_into_next_conv():
    """1x1 -> BN -> Pad(0.5) -> 3x3: 0.5 is not BN(0), so the Pad stays between two Convs (the BN
    folds into the 1x1) and the decline says why."""
    g = GraphBuilder(4)
    c1 = g.conv(X, 4, 5, 1)
    b, v = bn_with_zero(g, c1, 5)
    y = g.conv(pad4(g, b, 1, value=0.5), 5, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Conv": 2, "Pad": 1}
    assert any("value at zero" in r for r in reasons(rep, COLLAPSE)), reasons(rep, COLLAPSE)
    assert_verifies(m, out)


@pytest.mark.parametrize("how", ["add_scalar", "conv_bias"])
def test_pad_value_equal_to_producer_value_at_zero_merges(how):
    """1x1 conv whose value at zero is 0.5 on every channel -> Pad(0.5) -> 3x3: one Conv."""
    g = GraphBuilder(5)
    if how == "add_scalar":
        c1 = g.node("Add", [g.conv(X, 4, 5, 1, bias=False), g.init(np.array(0.5, np.float32))])
    else:
        w = g.init(g.randn(5, 4, 1, 1, scale=0.5))
        c1 = g.node("Conv", [X, w, g.init(np.full(5, 0.5, np.float32))], kernel_shape=[1, 1])
    y = g.conv(pad4(g, c1, 1, value=0.5), 5, 6, 3, strides=2, output="y")
    m = g.model({X: (1, 4, 9, 9)}, [y])
    out, rep = run_opt(m)
    assert_one_conv(out, 3, 2, 1, [1, 1, 1, 1])
    assert_verifies(m, out)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_reflect_and_edge_pads_are_not_merged(mode):
    g = GraphBuilder(6)
    y = g.bn(g.conv(pad4(g, X, 1, mode=mode), 4, 6, 3), 6, output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Pad": 1, "Conv": 1}  # the BN still folds into the conv
    pad = [n for n in out.graph.node if n.op_type == "Pad"][0]
    assert attr(pad, "mode").decode() == mode
    assert attr(conv_nodes(out)[0], "pads") == [0, 0, 0, 0]
    assert_verifies(m, out)


def test_zero_pad_that_is_a_graph_output_is_not_merged():
    g = GraphBuilder(7)
    pp = pad4(g, X, 1)
    y = g.conv(pp, 4, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y, pp])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Pad": 1, "Conv": 1}
    assert attr(conv_nodes(out)[0], "pads", [0, 0, 0, 0]) == [0, 0, 0, 0]
    assert_verifies(m, out)


# =========================================================================== DBB, canonical border
@pytest.mark.parametrize("cin,cout,k,stride,groups", [
    (4, 6, 3, 1, 1), (4, 6, 3, 2, 1), (4, 6, 3, 1, 2), (4, 8, 5, 2, 2), (6, 6, 3, 1, 3),
])
def test_dbb_block_canonical_border_is_one_conv(cin, cout, k, stride, groups):
    g = GraphBuilder(10 + k + stride + groups)
    dbb_block(g, X, 1, cin, cout, (9, 8), k, stride, groups)
    m = g.model({X: (1, cin, 9, 8)}, ["y"])
    assert op_histogram(m)["Conv"] == 5 and op_histogram(m)["Pad"] == 2
    out, rep = run_opt(m)
    assert_one_conv(out, k, stride, groups, [k // 2] * 4)
    assert rule(rep, COLLAPSE).rewrites == 1 and rule(rep, COLLAPSE).nodes_removed == len(m.graph.node) - 1
    assert rule(rep, BORDER).rewrites == 0
    assert_verifies(m, out)


@pytest.mark.parametrize("c,k,stride", [(4, 3, 1), (4, 3, 2), (3, 5, 1), (6, 5, 2)])
def test_dbb_depthwise_block_is_one_depthwise_conv(c, k, stride):
    """Depthwise DBB: 1x1 widens C -> 2C (groups C), KxK 2C -> C (groups C), AvgPool on x with pads."""
    g = GraphBuilder(20 + c + k + stride)
    dbb_block(g, X, 1, c, c, (9, 9), k, stride, groups=c, depthwise=True)
    m = g.model({X: (1, c, 9, 9)}, ["y"])
    assert op_histogram(m)["Conv"] == 3 and op_histogram(m)["AveragePool"] == 1
    out, rep = run_opt(m)
    assert_one_conv(out, k, stride, c, [k // 2] * 4)
    assert initializer(out, conv_nodes(out)[0].input[1]).shape == (c, 1, k, k)
    assert_verifies(m, out)


def test_dbb_block_with_zero_border_is_not_one_conv():
    """Sanity: zero padding where DBB writes BN(0) is not the same function: the 1x1-KxK and the
    avg branches cannot merge (declined with a reason), and what remains still verifies."""
    g = GraphBuilder(30)
    dbb_block(g, X, 1, 4, 6, (8, 8), style="zero")
    m = g.model({X: (1, 4, 8, 8)}, ["y"])
    out, rep = run_opt(m)
    hist = op_histogram(out)
    # the zero Pad before the KxK conv becomes the conv's padding; the one before AvgPool stays
    assert hist.get("Conv", 0) > 1 and hist.get("Pad", 0) == 1, hist
    assert any("value at zero" in r for r in reasons(rep, COLLAPSE)), reasons(rep, COLLAPSE)
    assert_verifies(m, out)


def test_two_stacked_dbb_blocks_with_relu():
    g = GraphBuilder(31)
    h = g.node("Relu", [dbb_block(g, X, 1, 4, 4, (8, 8), output="h")])
    y = g.node("Relu", [dbb_block(g, h, 1, 4, 6, (8, 8), groups=2, output="y2")], output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Conv", "Relu", "Conv", "Relu"]
    assert rule(rep, COLLAPSE).rewrites == 2
    assert_verifies(m, out)


# =========================================================================== border-fill canonicalizer
@pytest.mark.parametrize("depthwise", [False, True])
def test_scatter_border_dbb_block_collapses_to_one_conv(depthwise):
    g = GraphBuilder(40)
    c = 4
    dbb_block(g, X, 1, c, c if depthwise else 6, (8, 8), 3, 1, c if depthwise else 1, depthwise, style="scatter")
    m = g.model({X: (1, c, 8, 8)}, ["y"])
    n_pads = 1 if depthwise else 2
    assert op_histogram(m)["ScatterND"] == 4 * n_pads and op_histogram(m)["Pad"] == n_pads
    out, rep = run_opt(m)
    assert_one_conv(out, 3, 1, c if depthwise else 1, [1, 1, 1, 1])
    border = rule(rep, BORDER)
    assert border.rewrites == n_pads and not border.declines
    # each region is Pad + 4 ScatterND, rewritten to Pad + Where (BN(0) differs per channel): 3 nodes fewer
    assert border.nodes_removed == 3 * n_pads
    assert_verifies(m, out)


def test_scatter_border_dbb_block_stride2_grouped():
    g = GraphBuilder(41)
    dbb_block(g, X, 1, 4, 8, (9, 10), 5, 2, 2, style="scatter")
    m = g.model({X: (1, 4, 9, 10)}, ["y"])
    out, rep = run_opt(m)
    assert_one_conv(out, 5, 2, 2, [2, 2, 2, 2])
    assert rule(rep, BORDER).rewrites == 2
    assert_verifies(m, out)


def kxk_branch(g: GraphBuilder, cin=4, mid=5, cout=6, hw=(8, 8), p=1, *, offset=0.0, sides=SIDES,
               data_dependent=False, batch=1):
    """``x -> 1x1 -> BN -> Pad(0) -> ScatterND border writes of BN(0) + offset -> KxK -> BN``.
    Returns ``(y, pad_output)``."""
    h, w = hw
    y0, v = bn_with_zero(g, g.conv(X, cin, mid, 1, bias=False), mid)
    pp = pad4(g, y0, p)
    shape = (batch, mid, h + 2 * p, w + 2 * p)
    q = pp
    if data_dependent:  # top border := 2 * (the first inner rows): reads the data
        sl = g.node("Slice", [pp, ints(g, p), ints(g, 2 * p), ints(g, 2)])
        upd = g.node("Mul", [sl, g.init(np.array(2.0, np.float32))])
        q = g.node("ScatterND", [q, g.init(strip_indices(batch, mid, np.arange(p), np.arange(w + 2 * p))), upd])
        sides = ("bottom", "left", "right")
    q = scatter_border(g, q, shape, p, v + offset, sides)
    y = g.bn(g.conv(q, mid, cout, 2 * p + 1, bias=False), cout, output="y")
    return y, pp


def test_scatter_border_single_branch_collapses():
    g = GraphBuilder(42)
    kxk_branch(g)
    m = g.model({X: (1, 4, 8, 8)}, ["y"])
    out, rep = run_opt(m)
    assert_one_conv(out, 3, 1, 1, [1, 1, 1, 1])
    assert rule(rep, BORDER).rewrites == 1
    assert_verifies(m, out)


def test_wrong_border_value_is_canonicalized_but_not_merged():
    g = GraphBuilder(43)
    kxk_branch(g, offset=0.5)
    m = g.model({X: (1, 4, 8, 8)}, ["y"])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 1 and not rule(rep, BORDER).declines
    # the border stays, written exactly (Pad + Where) between two convs: BN(0) + 0.5 is no conv's bias
    assert op_histogram(out) == {"Conv": 2, "Pad": 1, "Where": 1}, node_ops(out)
    assert any("value at zero" in r for r in reasons(rep, COLLAPSE)), reasons(rep, COLLAPSE)
    assert_verifies(m, out)


def test_wrong_border_value_in_full_dbb_block_still_verifies():
    """Both BNAndPad borders of a DBB block written with a value that is not BN(0)."""
    g = GraphBuilder(44)
    c, p, hw = 4, 1, (8, 8)
    outs = [g.bn(g.conv(X, c, 6, 3, pads=p, bias=False), 6), g.bn(g.conv(X, c, 6, 1, bias=False), 6)]
    a, v = bn_with_zero(g, g.conv(X, c, 6, 1, bias=False), 6)
    a = scatter_border(g, pad4(g, a, p), (1, 6, 10, 10), p, v + 0.25)
    outs.append(g.bn(g.node("AveragePool", [a], kernel_shape=[3, 3], pads=[0] * 4, count_include_pad=1), 6))
    kk, v = bn_with_zero(g, g.conv(X, c, c, 1, bias=False), c)
    kk = scatter_border(g, pad4(g, kk, p), (1, c, 10, 10), p, v - 0.25)
    outs.append(g.bn(g.conv(kk, c, 6, 3, bias=False), 6))
    y = g.add(g.add(outs[0], outs[1]), g.add(outs[2], outs[3]), output="y")
    m = g.model({X: (1, c, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 2
    hist = op_histogram(out)
    assert hist.get("ScatterND", 0) == 0 and hist["Pad"] == 2 and hist["Conv"] > 1, hist
    assert hist["Conv"] < 5
    assert_verifies(m, out)


def test_three_of_four_borders_is_not_canonicalized():
    g = GraphBuilder(45)
    kxk_branch(g, sides=("top", "bottom", "left"))
    m = g.model({X: (1, 4, 8, 8)}, ["y"])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 0
    assert any("not one constant per channel" in r for r in reasons(rep, BORDER)), reasons(rep, BORDER)
    hist = op_histogram(out)
    assert hist["ScatterND"] == 3 and hist["Pad"] == 1 and hist["Conv"] == 2, hist
    assert_verifies(m, out)


def test_border_with_a_different_value_per_side_is_not_canonicalized():
    g = GraphBuilder(46)
    y0, v = bn_with_zero(g, g.conv(X, 4, 5, 1, bias=False), 5)
    q = scatter_border(g, pad4(g, y0, 1), (1, 5, 10, 10), 1, v, sides=("top", "bottom", "left"))
    q = scatter_border(g, q, (1, 5, 10, 10), 1, v + 1.0, sides=("right",))
    y = g.conv(q, 5, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 0 and op_histogram(out)["ScatterND"] == 4
    assert any("not one constant per channel" in r for r in reasons(rep, BORDER))
    assert_verifies(m, out)


def test_writes_inside_the_padded_area_are_not_canonicalized():
    g = GraphBuilder(47)
    y0, v = bn_with_zero(g, g.conv(X, 4, 5, 1, bias=False), 5)
    q = scatter_border(g, pad4(g, y0, 1), (1, 5, 10, 10), 2, v)  # 2 rows/cols: one inside
    y = g.conv(q, 5, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 0 and op_histogram(out)["ScatterND"] == 4
    assert any("inside" in r for r in reasons(rep, BORDER)), reasons(rep, BORDER)
    assert_verifies(m, out)


def test_data_dependent_border_writes_are_not_canonicalized():
    g = GraphBuilder(48)
    kxk_branch(g, data_dependent=True)
    m = g.model({X: (1, 4, 8, 8)}, ["y"])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 0
    assert any("reads another tensor" in r for r in reasons(rep, BORDER)), reasons(rep, BORDER)
    hist = op_histogram(out)
    assert hist["ScatterND"] == 4 and hist["Mul"] == 1 and hist["Slice"] == 1, hist
    assert_verifies(m, out)


def test_dynamic_spatial_dims_are_declined():
    g = GraphBuilder(49)
    kxk_branch(g)  # indices written for 8x8; the model only runs at that size
    m = g.model({X: (1, 4, "H", "W")}, ["y"])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 0
    assert any("dynamic" in r for r in reasons(rep, BORDER)), reasons(rep, BORDER)
    assert op_histogram(out)["ScatterND"] == 4
    assert_verifies(m, out, input_shapes={X: (1, 4, 8, 8)})


def test_dynamic_batch_static_spatial_is_canonicalized():
    g = GraphBuilder(50)
    kxk_branch(g)  # indices for batch 1 (the probe and verify run at batch 1)
    m = g.model({X: ("N", 4, 8, 8)}, ["y"])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 1
    assert_one_conv(out, 3, 1, 1, [1, 1, 1, 1])
    assert_verifies(m, out)


def test_pad_output_that_is_a_graph_output_is_not_rewritten():
    g = GraphBuilder(51)
    _, pp = kxk_branch(g)
    m = g.model({X: (1, 4, 8, 8)}, ["y", pp])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 0
    assert any("exits" in r for r in reasons(rep, BORDER)), reasons(rep, BORDER)
    hist = op_histogram(out)
    assert hist["Pad"] == 1 and hist["ScatterND"] == 4, hist
    assert [o.name for o in out.graph.output] == ["y", pp]
    assert_verifies(m, out)


def test_border_writes_after_a_nonzero_constant_pad():
    """Pad(value 3) then writes of BN(0) into every border pixel: still pad(y, p, BN(0))."""
    g = GraphBuilder(52)
    y0, v = bn_with_zero(g, g.conv(X, 4, 5, 1, bias=False), 5)
    q = scatter_border(g, pad4(g, y0, 1, value=3.0), (1, 5, 10, 10), 1, v)
    y = g.conv(q, 5, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 1
    assert_one_conv(out, 3, 1, 1, [1, 1, 1, 1])
    assert_verifies(m, out)


def test_zero_border_writes_on_the_graph_input():
    """Pad of the graph input with border writes of 0: a plain zero pad, folded into the conv."""
    g = GraphBuilder(53)
    q = scatter_border(g, pad4(g, X, 1), (1, 4, 10, 10), 1, np.zeros(4))
    y = g.conv(q, 4, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 1
    assert_one_conv(out, 3, 1, 1, [1, 1, 1, 1])
    assert_verifies(m, out)


def test_nonzero_border_writes_on_the_graph_input_are_canonicalized_not_merged():
    g = GraphBuilder(54)
    q = scatter_border(g, pad4(g, X, 1), (1, 4, 10, 10), 1, np.array([0.3, -0.2, 0.1, 0.7]))
    y = g.conv(q, 4, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 1
    hist = op_histogram(out)
    assert hist.get("ScatterND", 0) == 0 and hist["Pad"] == 1 and hist["Conv"] == 1, hist
    assert_verifies(m, out)


@pytest.mark.parametrize("op,reduction", [("ScatterND", "max"), ("ScatterElements", "min")])
def test_scatter_with_max_min_reduction_is_not_data_movement(op, reduction):
    """A clamp of the padded interior hidden in a scattering reduction, then the four border writes."""
    g = GraphBuilder(55)
    y0, v = bn_with_zero(g, g.conv(X, 4, 5, 1, bias=False), 5)
    pp = pad4(g, y0, 1)
    c = -20.0 if reduction == "max" else 20.0
    if op == "ScatterND":
        idx = strip_indices(1, 5, np.arange(1, 9), np.arange(1, 9))  # the interior
        q = g.node("ScatterND", [pp, g.init(idx), g.init(np.full(idx.shape[:-1], c, np.float32))],
                   reduction=reduction)
    else:
        idx = np.ascontiguousarray(np.broadcast_to(np.arange(10).reshape(1, 1, 1, 10), (1, 5, 10, 10)), np.int64)
        q = g.node("ScatterElements", [pp, g.init(idx), g.init(np.full((1, 5, 10, 10), c, np.float32))],
                   axis=3, reduction=reduction)
    q = scatter_border(g, q, (1, 5, 10, 10), 1, v)
    g.conv(q, 5, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, ["y"], opset=18)
    out, rep = run_opt(m)
    # on large inputs the clamp is active: the optimized model must still compute the same function
    x = (np.random.default_rng(0).standard_normal((1, 4, 8, 8)) * 100).astype(np.float32)
    assert_verifies(m, out, inputs={X: x})
    assert rule(rep, BORDER).rewrites == 0


@pytest.mark.parametrize("style", ["scatter", "canonical"])
def test_fp16_dbb_border_merges(style):
    g = GraphBuilder(56, dtype=np.float16)
    gamma, beta, mean, var = g.bn_params(5)
    c1 = g.conv(X, 4, 5, 1, bias=False)
    y0 = g.node("BatchNormalization", [c1] + [g.init(a) for a in (gamma, beta, mean, var)], epsilon=1e-5)
    v = beta - mean * gamma / np.sqrt(var + np.float16(1e-5))  # BN(0) as the model computes it (fp16)
    q = bn_and_pad(g, y0, v, 1, (1, 5, 8, 8), style)
    g.conv(q, 5, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, ["y"])
    out, rep = run_opt(m)
    res = verify(m, out)
    assert res.outputs[0].max_abs <= 2e-3 * res.outputs[0].ref_max_abs  # fp16 rounding of every step
    assert op_histogram(out) == {"Conv": 1}, node_ops(out)


# =========================================================================== exact border fills
def where_border(g: GraphBuilder, padded: str, shape, p: int, value) -> str:
    """Exported-style border writes with one-axis masks: ``Where(rows, ., v)`` then ``Where(cols, ., v)``
    on ``padded`` of static ``shape = (N, C, H+2p, W+2p)`` (H+2p + W+2p mask elements, not H'W')."""
    n, c, hp, wp = shape
    v = g.init(np.asarray(value, g.dtype).reshape(1, c, 1, 1))
    rows = np.zeros((1, 1, hp, 1), bool)
    rows[..., p:hp - p, :] = True
    cols = np.zeros((1, 1, 1, wp), bool)
    cols[..., p:wp - p] = True
    for mask in (rows, cols):
        padded = g.node("Where", [g.init(mask), padded, v])
    return padded


@pytest.mark.parametrize("one_value", [False, True])
def test_fp16_border_fill_that_is_not_merged_stays_exact(one_value):
    """A proven border fill whose value is not the producer's value at zero stays, and bit for bit:
    ``Where(inside, Pad(y), v)`` (or ``Pad(y, p, v)`` for one value), never ``Pad(y - v) + v``, which
    computed ``y - v + v`` in float16 (up to half an ulp of ``|v|`` per element: fp16-border-roundtrip)."""
    g = GraphBuilder(57, dtype=np.float16)
    y0, v = bn_with_zero(g, g.conv(X, 4, 5, 1, bias=False), 5)
    fill = np.full(5, 24.0) if one_value else v + 24.0  # |v| >> |y|: y - v + v would round y to 1/64
    q = scatter_border(g, pad4(g, y0, 1), (1, 5, 10, 10), 1, fill)
    g.conv(q, 5, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, ["y"])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 1
    assert op_histogram(out) == ({"Conv": 2, "Pad": 1} if one_value else {"Conv": 2, "Pad": 1, "Where": 1})
    assert any("value at zero" in r for r in reasons(rep, COLLAPSE)), reasons(rep, COLLAPSE)
    x = {X: np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float16)}
    padded, y = tensor_values(out, [q, y0], x)
    assert np.array_equal(padded[..., 1:-1, 1:-1].view(np.uint16), y.view(np.uint16))  # y, bit for bit
    border = np.ones((10, 10), bool)
    border[1:-1, 1:-1] = False
    assert np.array_equal(padded[..., border], np.broadcast_to(fill.astype(np.float16)[None, :, None], (1, 5, 36)))


@pytest.mark.parametrize("after", ["input", "bn"])
def test_border_fill_is_rewritten_where_it_adds_no_parameters_or_can_merge(after):
    """The exact form of a per-channel fill has an H'xW' mask. Written by one-axis masks (H' + W') on
    the graph input, it cannot merge and would only add parameters: left as it is, with the reason.
    After a 1x1 + BN with v = BN(0) it merges into the KxK conv, and the mask with it."""
    g = GraphBuilder(58)
    if after == "input":
        y0, v = X, np.array([0.3, -0.2, 0.1, 0.7])
    else:
        y0, v = bn_with_zero(g, g.conv(X, 4, 4, 1, bias=False), 4)
    q = where_border(g, pad4(g, y0, 1), (1, 4, 10, 10), 1, v)
    g.conv(q, 4, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, ["y"])
    out, rep = run_opt(m)
    assert rep.after.params <= rep.before.params
    if after == "input":  # mask 100 + v 4 + pads 8, for rows 10 + cols 10 + v 4 + pads 8
        assert rule(rep, BORDER).rewrites == 0
        assert any("would add 80 parameters" in r for r in reasons(rep, BORDER)), reasons(rep, BORDER)
        assert op_histogram(out) == {"Pad": 1, "Where": 2, "Conv": 1}
    else:
        assert rule(rep, BORDER).rewrites == 1
        assert_one_conv(out, 3, 1, 1, [1, 1, 1, 1])
    assert_verifies(m, out)


@pytest.mark.parametrize("mask", ["inside", "not-inside"])
def test_where_of_a_zero_pad_is_read_as_one_pad_by_v(mask):
    """``Where(inside, Pad(y, p, 0), v) = pad(y, p, v)``: with v = BN(0) of the 1x1 + BN it merges like
    DBB's border (no proof needed, nothing to canonicalize); a mask that is not exactly the unpadded
    area is another function, and stays."""
    g = GraphBuilder(59)
    y0, v = bn_with_zero(g, g.conv(X, 4, 5, 1, bias=False), 5)
    inside = np.zeros((1, 1, 10, 10), bool)
    inside[..., 1:9, 1:9] = True
    if mask == "not-inside":
        inside[..., 1, 1] = False
    q = g.node("Where", [g.init(inside), pad4(g, y0, 1), g.init(v.astype(np.float32).reshape(1, 5, 1, 1))])
    g.conv(q, 5, 6, 3, output="y")
    m = g.model({X: (1, 4, 8, 8)}, ["y"])
    out, rep = run_opt(m)
    assert rule(rep, BORDER).rewrites == 0
    if mask == "inside":
        assert_one_conv(out, 3, 1, 1, [1, 1, 1, 1])
    else:
        assert op_histogram(out) == {"Conv": 2, "Pad": 1, "Where": 1}, node_ops(out)
    assert_verifies(m, out)


# =========================================================================== AveragePool refusals
def _avg_branch_model(seed, **pool_attrs):
    """x -> bias-free 1x1 -> AveragePool(**attrs) -> BN, plus a 3x3-BN branch with matching output.
    (No BN before the pool: its zero padding then pads a map whose value at zero is 0.)"""
    g = GraphBuilder(seed)
    a = g.conv(X, 4, 6, 1, bias=False)
    a = g.bn(g.node("AveragePool", [a], kernel_shape=[3, 3], **pool_attrs), 6)
    s = pool_attrs.get("strides", [1, 1])[0]
    b = g.bn(g.conv(X, 4, 6, 3, pads=1, strides=s, bias=False), 6)
    y = g.add(a, b, output="y")
    return g.model({X: (1, 4, 8, 8)}, [y])


def test_avgpool_count_include_pad_0_with_pads_is_not_merged():
    m = _avg_branch_model(60, pads=[1] * 4, count_include_pad=0)
    out, rep = run_opt(m)
    hist = op_histogram(out)
    assert hist["AveragePool"] == 1 and hist["Conv"] == 2, hist
    assert any("count_include_pad" in r for r in reasons(rep, COLLAPSE)), reasons(rep, COLLAPSE)
    assert_verifies(m, out)


def test_avgpool_count_include_pad_1_with_pads_merges():
    """Control for the test above: the same graph with count_include_pad=1 is one conv."""
    m = _avg_branch_model(60, pads=[1] * 4, count_include_pad=1)
    out, rep = run_opt(m)
    assert_one_conv(out, 3, 1, 1, [1, 1, 1, 1])
    assert_verifies(m, out)


@pytest.mark.parametrize("size,out_size", [(8, 4), (9, 4)])
def test_avgpool_ceil_mode_is_not_merged(size, out_size):
    """1x1 -> BN -> AveragePool(3, stride 2, ceil_mode=1) -> BN. On 8x8 the ceil adds a (partial)
    window, on 9x9 it does not; both are declined (ceil_mode is not read as a conv)."""
    g = GraphBuilder(61)
    a = g.bn(g.conv(X, 4, 6, 1), 6)
    a = g.node("AveragePool", [a], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    y = g.bn(a, 6, output="y")
    m = g.model({X: (1, 4, size, size)}, [y])
    out, rep = run_opt(m)
    assert [d.dim_value for d in out.graph.output[0].type.tensor_type.shape.dim] == [1, 6, out_size, out_size]
    hist = op_histogram(out)
    assert hist == {"Conv": 1, "AveragePool": 1, "BatchNormalization": 1}, hist
    assert any("ceil_mode" in r for r in reasons(rep, COLLAPSE)), reasons(rep, COLLAPSE)
    assert_verifies(m, out)


def test_avgpool_on_graph_input_count_include_pad_0_is_left_alone():
    g = GraphBuilder(62)
    a = g.bn(g.node("AveragePool", [X], kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=0), 4)
    y = g.add(a, g.bn(g.conv(X, 4, 4, 3, pads=1, bias=False), 4), output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    hist = op_histogram(out)
    assert hist["AveragePool"] == 1 and hist["Conv"] == 1, hist
    assert_verifies(m, out)


# =========================================================================== sequential convs in a graph
def test_bias_free_1x1_then_padded_kxk_is_one_conv():
    """1x1 without bias (value 0 at zero) then a zero-padding 3x3: exact, one Conv."""
    g = GraphBuilder(63)
    y = g.conv(g.conv(X, 4, 8, 1, group=2, bias=False), 8, 6, 3, pads=1, strides=2, group=2, output="y")
    m = g.model({X: (1, 4, 9, 9)}, [y])
    out, rep = run_opt(m)
    assert_one_conv(out, 3, 2, 2, [1, 1, 1, 1])
    assert_verifies(m, out)


def test_1x1_bn_then_zero_padded_kxk_is_not_merged():
    """The DBB pitfall: without the BN(0) border the KxK's zero padding is not the merged conv's."""
    g = GraphBuilder(64)
    y = g.conv(g.bn(g.conv(X, 4, 5, 1), 5), 5, 6, 3, pads=1, output="y")
    m = g.model({X: (1, 4, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Conv": 2}
    assert any("border value" in r for r in reasons(rep, COLLAPSE)), reasons(rep, COLLAPSE)
    assert_verifies(m, out)


def test_kxk_bn_then_1x1_compactor_is_one_conv():
    g = GraphBuilder(65)
    h = g.bn(g.conv(X, 4, 6, 3, pads=1, strides=2, bias=False), 6)
    y = g.conv(h, 6, 6, 1, bias=False, output="y")  # ResRep's compactor
    m = g.model({X: (1, 4, 9, 9)}, [y])
    out, rep = run_opt(m)
    assert_one_conv(out, 3, 2, 1, [1, 1, 1, 1])
    assert_verifies(m, out)


# =========================================================================== real exports
EXPORT_MODES = {
    "legacy": dict(dynamo=False, constant_folding=True),
    "legacy_nofold": dict(dynamo=False, constant_folding=False),
    "dynamo": dict(dynamo=True, constant_folding=True),
}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dbb_exports")


@pytest.mark.slow  # a whole network through the torch exporters
@pytest.mark.parametrize("mode", list(EXPORT_MODES))
def test_dbb_tiny_export_reaches_deploy_parity(mode, export_dir):
    pytest.importorskip("torch")
    from models.export import export_pair

    train_path, deploy_path = export_pair("dbb_tiny", export_dir / mode, **EXPORT_MODES[mode])
    train, deploy = onnx.load(train_path), onnx.load(deploy_path)
    out, rep = optimize(train)
    onnx.checker.check_model(out)
    train_ops, deploy_ops, out_ops = (op_histogram(mm) for mm in (train, deploy, out))
    assert train_ops["Conv"] > deploy_ops["Conv"]
    assert out_ops["Conv"] == deploy_ops["Conv"] == 5
    assert len(out.graph.node) <= len(deploy.graph.node)
    assert "ScatterND" not in out_ops and "Pad" not in out_ops and "BatchNormalization" not in out_ops
    # 3 dense / grouped blocks x 2 BNAndPad borders + 2 depthwise blocks x 1
    border = rule(rep, BORDER)
    assert border.rewrites == 8 and not border.declines
    assert rep.before.nodes - rep.after.nodes == sum(r.nodes_removed for r in rep.rules)
    for batch in (1, 3):
        assert_verifies(train, out, input_shapes={"input": (batch, 3, 64, 64)})
    assert_verifies(deploy, out)  # the optimized model computes the authors' deploy form


# --------------------------------------------------------------------------- decline table
def _decline_case(case: str):
    g = GraphBuilder(400)
    shape, outputs = (1, 4, 8, 8), ["y"]
    if case == "three-borders":
        kxk_branch(g, sides=("top", "bottom", "left"))
    elif case == "data-dependent":
        kxk_branch(g, data_dependent=True)
    elif case == "dynamic-spatial":
        kxk_branch(g)
        shape = (1, 4, "H", "W")
    elif case == "pad-output-is-graph-output":
        outputs.append(kxk_branch(g)[1])
    else:
        raise AssertionError(case)
    return g.model({X: shape}, outputs)


DECLINES = [  # (case, the reason's beginning)
    ("three-borders", "border values are not one constant per channel"),
    ("data-dependent", "border region reads another tensor"),
    ("dynamic-spatial", "border fill after Pad: spatial size is dynamic, its semantics cannot be proven"),
    ("pad-output-is-graph-output", "border region has 2 exits"),
]


@pytest.mark.parametrize("case,reason", DECLINES, ids=[d[0] for d in DECLINES])
def test_declines(case, reason):
    m = _decline_case(case)
    out, _, d = declined_once(m, BORDER)
    assert d.kind == "check" and d.reason.startswith(reason), d
    assert_verifies(m, out, input_shapes={X: (1, 4, 8, 8)})
