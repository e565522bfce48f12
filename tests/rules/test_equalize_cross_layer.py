"""equalize-cross-layer (opt-in, ``--equalize``): conv -> homogeneous op -> conv / FC pairs rescaled, exact."""
from __future__ import annotations

import numpy as np
import pytest

from checks import assert_verifies, rewrites, rule, run_opt
from onnx_builders import GraphBuilder, initializer, op_histogram
from onnxrep import verify
from onnxrep.algebra.equalize import output_ranges, spread
from onnxrep.rules import EqualizeCrossLayer

RULE = "equalize-cross-layer"
C = 8


def conv1_spread(model) -> float:
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    return spread(output_ranges(initializer(model, conv.input[1])))


def pair(between=("Relu",), *, seed=0, dtype=np.float32, big=50.0, head=None, group2=1, output_too=False):
    """``conv3x3 (channel 0 x big) -> between -> conv`` (or ``-> GAP -> Flatten -> Gemm/MatMul``)."""
    g = GraphBuilder(seed, dtype)
    w = g.randn(C, 4, 3, 3, scale=0.3)
    w[0] *= big
    y = g.conv("x", 4, C, 3, pads=1, weight=g.init(w))
    first = y
    for op in between:
        if op == "PRelu":
            y = g.node("PRelu", [y, g.init(g.uniform(0.0, 0.3, C, 1, 1))])
        elif op == "LeakyRelu":
            y = g.node("LeakyRelu", [y], alpha=0.1)
        elif op == "MaxPool":
            y = g.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
        elif op == "AveragePool":
            y = g.node("AveragePool", [y], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
        elif op in ("Pad", "Pad1"):
            y = g.node("Pad", [y, g.init(np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64)),
                               g.init(np.array(0.0 if op == "Pad" else 1.0, dtype))])
        elif op == "Clip":
            y = g.node("Clip", [y, g.init(np.array(0.0, dtype)), g.init(np.array(6.0, dtype))])
        else:
            y = g.node(op, [y])
    if head is None:  # a 1x1 (a 3x3 straight after the conv: a 1x1 would merge into it), or a depthwise 3x3
        k2 = 3 if group2 > 1 or not between else 1
        out = g.conv(y, C, 6 if group2 == 1 else C, k2, pads=k2 // 2, group=group2, output="y")
    else:
        y = g.node("Flatten", [g.node("GlobalAveragePool", [y])])
        fc = g.randn(C, 5) if head == "MatMul" else g.randn(5, C)
        out = (g.node("MatMul", [y, g.init(fc)], "y") if head == "MatMul" else
               g.node("Gemm", [y, g.init(fc), g.init(g.randn(5))], "y", transB=1))
    outputs = [out, first] if output_too else [out]
    return g.model({"x": ["N", 4, 8, 8]}, outputs)


def run(model, **kw):
    out, report = run_opt(model, rules=[EqualizeCrossLayer()], **kw)
    assert_verifies(model, out, input_shapes={"x": (2, 4, 8, 8)}, rtol=1e-4)
    return out, report


@pytest.mark.parametrize("between", [(), ("Relu",), ("LeakyRelu",), ("PRelu",), ("Relu", "MaxPool"),
                                     ("AveragePool", "Relu"), ("Relu", "Pad")])
def test_pairs_through_homogeneous_ops(between):
    model = pair(between)
    out, report = run(model)
    assert rewrites(report)[RULE] == 2  # both layers rewritten
    assert op_histogram(out)["Conv"] == 2  # nothing merges (a zero Pad goes into the second conv's pads)
    assert conv1_spread(out) < conv1_spread(model) / 3
    assert len(rule(report, RULE).fired) == 1


@pytest.mark.parametrize("head", ["Gemm", "MatMul"])
def test_fully_connected_head(head):
    model = pair(head=head)
    out, report = run(model)
    assert rewrites(report)[RULE] == 2
    assert conv1_spread(out) < conv1_spread(model) / 3


def test_depthwise_second_layer():
    model = pair(group2=C)
    out, report = run(model)
    assert rewrites(report)[RULE] == 2


@pytest.mark.parametrize("between,why", [(("Clip",), "relu6 moves its bound"), (("Sigmoid",), "not homogeneous"),
                                         (("Relu", "Pad1"), "pads by 1")])
def test_not_pairs(between, why):
    out, report = run(pair(between))
    assert RULE not in rewrites(report), why


def test_a_tensor_read_outside_the_pair_is_left():
    out, report = run(pair(output_too=True))
    assert RULE not in rewrites(report)


def test_runs_once_and_is_idempotent():
    out, report = run(pair())
    again, report2 = run_opt(out, rules=[EqualizeCrossLayer()])
    assert rewrites(report)[RULE] == 2 and RULE not in rewrites(report2)


def test_float16():
    model = pair(dtype=np.float16, big=20.0)
    out, report = run_opt(model, rules=[EqualizeCrossLayer()])
    assert rewrites(report)[RULE] == 2
    result = verify(model, out, input_shapes={"x": (2, 4, 8, 8)})  # tolerance by float16 precision
    assert result.passed and result.outputs[0].max_abs <= 5e-3 * result.outputs[0].ref_max_abs
    assert initializer(out, next(n for n in out.graph.node if n.op_type == "Conv").input[1]).dtype == np.float16


def test_a_chain_stays_exact_to_float_rounding():
    """Five convs in a chain: pairs converge at different rounds; a pair left unscaled is left on both
    sides (a scale within the tolerance of 1 on one side only would change the function by as much)."""
    g = GraphBuilder(11)
    y = "x"
    for i in range(5):
        w = g.randn(C, C if i else 4, 3, 3, scale=0.3)
        w[i % C] *= 10.0 ** (i % 3)
        y = g.conv(y, C if i else 4, C, 3, pads=1, weight=g.init(w))
        if i < 4:
            y = g.node("Relu", [y])
    model = g.model({"x": ["N", 4, 8, 8]}, [g.node("Identity", [y], "y")])
    out, report = run_opt(model, rules=[EqualizeCrossLayer()])
    assert rewrites(report)[RULE] == 5
    result = verify(model, out, input_shapes={"x": (2, 4, 8, 8)})
    assert result.outputs[0].max_abs <= 2e-6 * result.outputs[0].ref_max_abs
