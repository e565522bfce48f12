"""fold-bn-into-gemm: BatchNormalization after a Gemm / MatMul with a constant 2-D weight."""
from __future__ import annotations

import pytest

from checks import assert_verifies, attr, reasons, rewrites, declined_once, rule, run_opt
from onnx_builders import GraphBuilder, dims, initializer, node_ops

X = "x"
GEMM = "fold-bn-into-gemm"


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [True, False], ids=["C", "noC"])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.7, 1.3)])
def test_gemm_bn_fold(trans_b, with_c, alpha, beta):
    k, n = 6, 5
    g = GraphBuilder(110)
    bw = g.init(g.randn(*((n, k) if trans_b else (k, n))))
    inputs = [X, bw] + ([g.init(g.randn(n))] if with_c else [])
    h = g.node("Gemm", inputs, alpha=alpha, beta=beta, transB=trans_b, name="fc")
    y = g.bn(h, n, output="y")
    m = g.model({X: (3, k)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Gemm"]
    assert rewrites(rep) == {GEMM: 1}
    assert rule(rep, GEMM).nodes_removed == 1
    gemm = out.graph.node[0]
    assert attr(gemm, "alpha") == pytest.approx(alpha)
    assert attr(gemm, "beta", 1.0) == pytest.approx(1.0)
    assert attr(gemm, "transB", 0) == trans_b
    assert len(gemm.input) == 3 and initializer(out, gemm.input[2]).shape == (n,)
    assert_verifies(m, out)


def test_gemm_bn_fold_with_transA():
    k, n = 4, 3
    g = GraphBuilder(111)
    h = g.node("Gemm", [X, g.init(g.randn(k, n)), g.init(g.randn(n))], transA=1, alpha=0.5)
    y = g.bn(h, n, output="y")
    m = g.model({X: (k, 7)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Gemm"] and attr(out.graph.node[0], "transA") == 1
    assert_verifies(m, out)


def test_matmul_const_bn_2d_becomes_one_gemm():
    k, n = 6, 4
    g = GraphBuilder(112)
    h = g.node("MatMul", [X, g.init(g.randn(k, n))])
    y = g.bn(h, n, output="y")
    m = g.model({X: (5, k)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Gemm"]
    assert rewrites(rep) == {GEMM: 1}
    assert_verifies(m, out)


def test_matmul_bn_3d_input_is_declined():
    k, n = 4, 3
    g = GraphBuilder(113)
    h = g.node("MatMul", [X, g.init(g.randn(k, n))])
    y = g.bn(h, 2, output="y")     # BN over axis 1 (length 2) of a (1, 2, 3) tensor
    m = g.model({X: (1, 2, k)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["MatMul", "BatchNormalization"]
    assert rewrites(rep) == {}
    assert any("2-D" in r for r in reasons(rep, GEMM)), reasons(rep, GEMM)
    assert_verifies(m, out)


@pytest.mark.parametrize("cshape", [(1,), (), (1, 5), (3, 5), (3, 1)])
def test_gemm_bn_fold_broadcast_c(cshape):
    g = GraphBuilder(140)
    h = g.node("Gemm", [X, g.init(g.randn(6, 5)), g.init(g.randn(*cshape))], beta=0.5)
    y = g.bn(h, 5, output="y")
    m = g.model({X: (3, 6)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Gemm"] and rewrites(rep) == {GEMM: 1}
    assert_verifies(m, out)


def test_matmul_with_dynamic_batch_folds():
    g = GraphBuilder(141)
    y = g.bn(g.node("MatMul", [X, g.init(g.randn(6, 5))]), 5, output="y")
    m = g.model({X: ("N", 6)}, [y])
    out, rep = run_opt(m)
    assert node_ops(out) == ["Gemm"]
    assert dims(out.graph.input[0]) == ["N", 6]
    assert_verifies(m, out, input_shapes={X: (7, 6)})


@pytest.mark.parametrize("case", ["matmul-const-first", "gemm-const-A", "gemm-B-is-graph-input",
                                  "gemm-output-is-graph-output"])
def test_gemm_bn_not_folded(case):
    g = GraphBuilder(142)
    outs, ins, exposed = ["y"], {X: (3, 6)}, []
    if case == "matmul-const-first":
        ins = {X: (6, 4)}
        h = g.node("MatMul", [g.init(g.randn(5, 6)), X])   # (5, 4): BN over the 4 columns
        c = 4
    elif case == "gemm-const-A":
        ins = {X: (6, 5)}
        h = g.node("Gemm", [g.init(g.randn(3, 6)), X])     # (3, 5)
        c = 5
    else:
        h = g.node("Gemm", [X, g.init(g.randn(6, 5), "B")], "h")
        c = 5
        if case == "gemm-B-is-graph-input":
            exposed = ["B"]
        else:
            outs.append("h")
    g.bn(h, c, output="y")
    m = g.model(ins, outs, graph_inputs_from_inits=exposed)
    out, rep = run_opt(m)
    assert sorted(node_ops(out)) == sorted(node_ops(m))
    assert rewrites(rep) == {}
    assert_verifies(m, out)


# --------------------------------------------------------------------------- decline table
def _decline_case(case: str):
    g = GraphBuilder(151)
    if case == "matmul-3d-input":
        h = g.node("MatMul", [X, g.init(g.randn(6, 5))])
        return g.model({X: (2, 5, 6)}, [g.bn(h, 5, output="y")])
    if case == "bn-training-mode":
        h = g.node("Gemm", [X, g.init(g.randn(6, 5))])
        y = g.bn(h, 5, output="y", training_mode=1, extra_outputs=["running_mean", "running_var"])
        return g.model({X: (3, 6)}, [y], opset=15)
    raise AssertionError(case)


DECLINES = [
    ("matmul-3d-input", "check", "MatMul input is not known to be 2-D (BN would normalize another axis)"),
    ("bn-training-mode", "rewrite", "BatchNormalization has training_mode=1 (model exported in training mode?)"),
]


@pytest.mark.parametrize("case,kind,reason", DECLINES, ids=[d[0] for d in DECLINES])
def test_declines(case, kind, reason):
    m = _decline_case(case)
    out, _, d = declined_once(m, GEMM)
    assert (d.kind, d.reason) == (kind, reason)
    assert_verifies(m, out)
