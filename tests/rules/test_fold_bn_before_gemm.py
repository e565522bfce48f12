"""fold-bn-before-gemm: BatchNormalization on the 2-D input of a Gemm / MatMul (RepViT's BN_Linear head)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from checks import assert_verifies, declined_once, reasons, rewrites, run_opt
from onnx_builders import GraphBuilder, node_ops

X = "x"
BEFORE = "fold-bn-before-gemm"


@pytest.mark.parametrize("fc", ["gemm", "gemm-transB-alpha-beta", "matmul"])
def test_bn_before_gemm_folds_into_it(fc):
    """BN_Linear (RepViT's classifier): Gemm(BN(x)) -> one Gemm with B and C carrying the BN."""
    k, n = 6, 4
    g = GraphBuilder(115)
    h = g.bn(X, k)
    if fc == "matmul":
        y = g.node("MatMul", [h, g.init(g.randn(k, n))], "y")
    elif fc == "gemm":
        y = g.node("Gemm", [h, g.init(g.randn(k, n)), g.init(g.randn(n))], "y")
    else:
        y = g.node("Gemm", [h, g.init(g.randn(n, k)), g.init(g.randn(1, n))], "y", transB=1, alpha=0.7, beta=1.3)
    m = g.model({X: (5, k)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Gemm"] and out.graph.node[0].input[0] == X
    assert rewrites(rep) == {"fold-bn-before-gemm": 1}
    assert rep.after.params < rep.before.params
    assert_verifies(m, out)


def test_bn_before_gemm_reading_transposed_input_is_declined():
    k, n = 6, 4
    g = GraphBuilder(116)
    y = g.node("Gemm", [g.bn(X, k), g.init(g.randn(5, n))], "y", transA=1)
    m = g.model({X: (5, k)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["BatchNormalization", "Gemm"] and rewrites(rep) == {}
    assert any("transposed" in r for r in reasons(rep, "fold-bn-before-gemm"))
    assert_verifies(m, out)


# --------------------------------------------------------------------------- decline table
def _decline_case(case: str):
    g = GraphBuilder(152)
    if case == "transposed-input":
        t = g.bn(X, 3)
        return g.model({X: (6, 3)}, [g.node("Gemm", [t, g.init(g.randn(6, 5))], "y", transA=1)])
    if case == "input-rank-unknown":  # a Reshape to a shape of unknown length: rank unknown
        t = g.bn(g.node("Reshape", [X, "shape"]), 6)
        m = g.model({X: (3, 6), "shape": ("k",)}, [g.node("Gemm", [t, g.init(g.randn(6, 5))], "y")])
        m.graph.input[1].type.tensor_type.elem_type = onnx.TensorProto.INT64
        return m
    raise AssertionError(case)


DECLINES = [
    ("transposed-input", "check", "Gemm reads its input transposed (BN normalizes the other axis)"),
    ("input-rank-unknown", "check",
     "BatchNormalization input is not known to be 2-D (its channels are not the Gemm's features)"),
]


@pytest.mark.parametrize("case,kind,reason", DECLINES, ids=[d[0] for d in DECLINES])
def test_declines(case, kind, reason):
    m = _decline_case(case)
    out, _, d = declined_once(m, BEFORE)
    assert (d.kind, d.reason) == (kind, reason)
    feeds = {X: np.random.default_rng(0).standard_normal((6, 3) if case == "transposed-input" else (3, 6))
             .astype(np.float32)}
    if case == "input-rank-unknown":
        feeds["shape"] = np.array([3, 6], np.int64)
    assert_verifies(m, out, inputs=feeds)
