"""The public rule API (``onnxrep.PatternRule`` / ``op`` / ``var`` / ``const`` / ``Rule``), used the
way a user would: complete rules written only with the public names, passed to ``optimize``."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_builders import GraphBuilder, initializer, node_ops, op_histogram
from onnxrep import NotRepresentable, Pass, PatternRule, RuleError, const, op, optimize, var, verify

X = "x"


# --------------------------------------------------------------------------- user rules
class FoldScaleIntoGemm(PatternRule):
    """Mul(Gemm(A, B, C), s) with a scalar s  =>  Gemm(A, s B, s C):
    ``s (alpha A op(B) + beta C) = alpha A op(sB) + beta (sC)``."""

    name = "fold-scale-into-gemm"
    pattern = op("Mul", op("Gemm", var("a"), const("b"), const("c", optional=True), name="gemm"),
                 const("s"), commutative=True)

    def check(self, m):
        s = m["s"]
        if s.size != 1:
            return "scale is not a scalar"
        if s.ndim > 2:
            return "scale would broadcast the Gemm output up"
        return None

    def rewrite(self, m, b):
        s = float(np.asarray(m["s"], np.float64).reshape(()))
        inputs = [m["a"], b.const("B", (m["b"].astype(np.float64) * s).astype(m["b"].dtype))]
        if m["c"] is not None:
            inputs.append(b.const("C", (m["c"].astype(np.float64) * s).astype(m["c"].dtype)))
        b.op("Gemm", inputs, outputs=[m.output], attrs=m.node("gemm").attrs)


class FoldScaleIntoGemmOrdered(FoldScaleIntoGemm):
    """The same rule, not commutative: only ``Mul(Gemm, s)`` matches."""

    name = "fold-scale-into-gemm-ordered"
    pattern = op("Mul", op("Gemm", var("a"), const("b"), const("c", optional=True), name="gemm"),
                 const("s"))


class DropMulByOneAfterRelu(PatternRule):
    """Mul(Relu(x), 1)  =>  Relu(x)."""

    name = "drop-mul-by-one"
    pattern = op("Mul", op("Relu", var("x")), const("one"), commutative=True)

    def check(self, m):
        one = m["one"]
        if one.ndim > 1 or not np.all(one == 1):
            return "multiplier is not 1"
        return None

    def rewrite(self, m, b):
        b.op("Relu", [m["x"]], outputs=[m.output])


def gemm_model(seed=0, *, scale=0.75, scale_first=False, with_c=True, trans_b=1, extra_outputs=(),
               gemm_output=None, scale_from_constant_node=False, opset=17):
    g = GraphBuilder(seed)
    k, n = 6, 5
    inputs = [X, g.init(g.randn(*((n, k) if trans_b else (k, n))), "B")]
    if with_c:
        inputs.append(g.init(g.randn(n), "C"))
    h = g.node("Gemm", inputs, gemm_output, name="gemm", alpha=0.5, beta=2.0, transB=trans_b)
    if scale_from_constant_node:
        g.nodes.append(helper.make_node("Constant", [], ["s_const"], name="s_node",
                                        value=numpy_helper.from_array(np.asarray(scale, np.float32), "s_value")))
        s = "s_const"
    else:
        s = g.init(np.asarray(scale, np.float32), "s")
    y = g.node("Mul", [s, h] if scale_first else [h, s], "y", name="scale_mul")
    outs = [y] + list(extra_outputs)
    return g, g.model({X: (3, k)}, outs, opset=opset)


def run(model, rules, **kw):
    before = model.SerializeToString()
    out, rep = optimize(model, rules=rules, **kw)
    assert model.SerializeToString() == before
    onnx.checker.check_model(out, full_check=True)
    return out, rep


def rule_report(rep, name):
    (r,) = [r for r in rep.rules if r.name == name]
    return r


def assert_verifies(ref, cand):
    res = verify(ref, cand)
    for d in res.outputs:
        assert d.ref_max_abs > 0
        assert d.max_abs <= 1e-4 * d.ref_max_abs, (d.name, d.max_abs, d.ref_max_abs)
    assert res.passed


# --------------------------------------------------------------------------- a complete rule
@pytest.mark.parametrize("include_defaults", [True, False])
def test_custom_rule_rewrites_once_and_verifies(include_defaults):
    _, m = gemm_model()
    out, rep = run(m, [FoldScaleIntoGemm()], include_defaults=include_defaults)
    assert node_ops(out) == ["Gemm"]
    r = rule_report(rep, "fold-scale-into-gemm")
    assert (r.rewrites, r.nodes_removed, r.declines) == (1, 1, [])
    assert rep.rewrites == 1
    assert rep.before.nodes == 2 and rep.after.nodes == 1
    names = [x.name for x in rep.rules]
    assert ("collapse-linear-regions" in names) == include_defaults
    gemm = out.graph.node[0]
    assert gemm.output[0] == "y"
    attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    assert attrs["alpha"] == pytest.approx(0.5) and attrs["beta"] == pytest.approx(2.0) and attrs["transB"] == 1
    # new constants, originals untouched (here unused, so removed)
    assert gemm.input[1] != "B" and gemm.input[2] != "C"
    np.testing.assert_allclose(initializer(out, gemm.input[1]), initializer(m, "B") * 0.75, rtol=1e-6)
    assert initializer(out, "B") is None and initializer(out, "s") is None
    assert_verifies(m, out)


def test_rule_class_is_accepted_as_well_as_an_instance():
    _, m = gemm_model()
    out, rep = run(m, [FoldScaleIntoGemm])
    assert node_ops(out) == ["Gemm"]
    assert rule_report(rep, "fold-scale-into-gemm").rewrites == 1


def test_commutative_pattern_matches_either_order():
    _, m = gemm_model(scale_first=True)
    out, rep = run(m, [FoldScaleIntoGemm()])
    assert node_ops(out) == ["Gemm"]
    assert rule_report(rep, "fold-scale-into-gemm").rewrites == 1
    assert_verifies(m, out)


@pytest.mark.parametrize("scale_first,expected", [(False, 1), (True, 0)])
def test_non_commutative_pattern_matches_only_its_order(scale_first, expected):
    _, m = gemm_model(scale_first=scale_first)
    out, rep = run(m, [FoldScaleIntoGemmOrdered()], include_defaults=False)
    assert rule_report(rep, "fold-scale-into-gemm-ordered").rewrites == expected
    assert len(out.graph.node) == 2 - expected
    assert_verifies(m, out)


@pytest.mark.parametrize("with_c", [True, False], ids=["C", "no-C"])
def test_optional_const(with_c):
    _, m = gemm_model(with_c=with_c, trans_b=0)
    out, rep = run(m, [FoldScaleIntoGemm()])
    assert node_ops(out) == ["Gemm"]
    assert len(out.graph.node[0].input) == (3 if with_c else 2)
    assert rule_report(rep, "fold-scale-into-gemm").rewrites == 1
    assert_verifies(m, out)


def test_check_declining_records_the_rules_reason():
    _, m = gemm_model(scale=np.linspace(0.5, 1.5, 5).astype(np.float32))
    out, rep = run(m, [FoldScaleIntoGemm()])
    assert node_ops(out) == ["Gemm", "Mul"]
    r = rule_report(rep, "fold-scale-into-gemm")
    assert r.rewrites == 0
    assert len(r.declines) == 1
    d = r.declines[0]
    assert (d.rule, d.node, d.reason) == ("fold-scale-into-gemm", "scale_mul", "scale is not a scalar")
    assert d in rep.declines()
    assert_verifies(m, out)


def test_intermediate_graph_output_does_not_match():
    _, m = gemm_model(gemm_output="h", extra_outputs=["h"])
    out, rep = run(m, [FoldScaleIntoGemm()])
    assert node_ops(out) == ["Gemm", "Mul"]
    r = rule_report(rep, "fold-scale-into-gemm")
    assert r.rewrites == 0
    assert [(d.kind, d.reason) for d in r.declines] == [("privacy", "tensor 'h' inside the match is a graph output")]
    assert_verifies(m, out)


def test_intermediate_read_by_another_node_does_not_match():
    g, _ = gemm_model(gemm_output="h")
    z = g.node("Relu", ["h"], "z")
    m = g.model({X: (3, 6)}, ["y", z])
    out, rep = run(m, [FoldScaleIntoGemm()])
    assert node_ops(out) == ["Gemm", "Mul", "Relu"]
    assert rule_report(rep, "fold-scale-into-gemm").rewrites == 0
    assert_verifies(m, out)


def test_root_output_may_be_a_graph_output_and_keeps_its_name():
    _, m = gemm_model()
    assert m.graph.output[0].name == "y"
    out, _ = run(m, [FoldScaleIntoGemm()])
    assert [o.name for o in out.graph.output] == ["y"] and out.graph.node[0].output[0] == "y"


def test_const_matches_a_constant_node():
    _, m = gemm_model(scale_from_constant_node=True)
    assert node_ops(m) == ["Gemm", "Constant", "Mul"]
    out, rep = run(m, [FoldScaleIntoGemm()])
    assert node_ops(out) == ["Gemm"]          # the orphaned Constant node is cleaned up
    assert_verifies(m, out)


def test_const_does_not_match_a_graph_input():
    g, _ = gemm_model()
    g.inits = [t for t in g.inits if t.name != "s"]
    m = g.model({X: (3, 6), "s": ()}, ["y"])
    out, rep = run(m, [FoldScaleIntoGemm()])
    assert node_ops(out) == ["Gemm", "Mul"]
    assert rule_report(rep, "fold-scale-into-gemm").rewrites == 0
    assert_verifies(m, out)


@pytest.mark.parametrize("exposed", ["s", "B"])
def test_const_does_not_match_an_initializer_that_is_also_a_graph_input(exposed):
    g, _ = gemm_model()
    m = g.model({X: (3, 6)}, ["y"], graph_inputs_from_inits=[exposed])
    out, rep = run(m, [FoldScaleIntoGemm()])
    assert node_ops(out) == ["Gemm", "Mul"]
    assert rule_report(rep, "fold-scale-into-gemm").rewrites == 0
    assert exposed in [i.name for i in out.graph.input]
    assert_verifies(m, out)


def test_custom_domain_node_is_not_matched():
    g, _ = gemm_model()
    for n in g.nodes:
        if n.op_type == "Mul":
            n.domain = "com.example"
    m = g.model({X: (3, 6)}, [("y", (3, 5))], extra_opsets={"com.example": 1})
    out, rep = optimize(m, rules=[FoldScaleIntoGemm()])
    assert [(n.op_type, n.domain) for n in out.graph.node] == [("Gemm", ""), ("Mul", "com.example")]
    assert rule_report(rep, "fold-scale-into-gemm").rewrites == 0


def test_nested_rule_removes_a_node():
    g = GraphBuilder(3)
    r = g.node("Relu", [X])
    y = g.node("Mul", [g.init(np.ones(1, np.float32)), r], "y")    # const first: commutative
    m = g.model({X: (1, 4, 3, 3)}, [y])
    out, rep = run(m, [DropMulByOneAfterRelu()])
    assert node_ops(out) == ["Relu"]
    r = rule_report(rep, "drop-mul-by-one")
    assert (r.rewrites, r.nodes_removed) == (1, 1)
    assert_verifies(m, out)


def test_nested_rule_declines_a_non_one_multiplier():
    g = GraphBuilder(3)
    y = g.node("Mul", [g.node("Relu", [X]), g.init(np.float32(2.0))], "y")
    m = g.model({X: (1, 4, 3, 3)}, [y])
    out, rep = run(m, [DropMulByOneAfterRelu()])
    assert node_ops(out) == ["Relu", "Mul"]
    assert [d.reason for d in rule_report(rep, "drop-mul-by-one").declines] == ["multiplier is not 1"]


def test_several_matches_and_chains_reach_a_fixed_point():
    g, _ = gemm_model()
    y2 = g.node("Mul", ["y", g.init(np.float32(-2.0))], "y2")             # Gemm -> Mul -> Mul
    h = g.node("Gemm", [X, g.init(g.randn(6, 4))])                         # a second, independent pair
    y3 = g.node("Mul", [h, g.init(np.float32(3.0))], "y3")
    m = g.model({X: (3, 6)}, [y2, y3])
    out, rep = run(m, [FoldScaleIntoGemm()])
    assert node_ops(out) == ["Gemm", "Gemm"]
    assert rule_report(rep, "fold-scale-into-gemm").rewrites == 3
    assert_verifies(m, out)


def test_rewrite_raising_not_representable_is_a_decline():
    class Refuses(FoldScaleIntoGemm):
        name = "refuses"

        def rewrite(self, m, b):
            b.const("unused", np.zeros(3, np.float32))
            raise NotRepresentable("refused late")

    _, m = gemm_model()
    out, rep = run(m, [Refuses()])
    assert node_ops(out) == ["Gemm", "Mul"]
    r = rule_report(rep, "refuses")
    assert r.rewrites == 0 and [d.reason for d in r.declines] == ["refused late"]
    assert len(out.graph.initializer) == len(m.graph.initializer)
    assert_verifies(m, out)


def test_rewrite_that_does_not_produce_the_output_is_an_error_that_says_so():
    class Forgetful(FoldScaleIntoGemm):
        name = "forgetful"

        def rewrite(self, m, b):
            b.op("Gemm", [m["a"], b.const("B", m["b"])], attrs=m.node("gemm").attrs)  # fresh output

    _, m = gemm_model()
    before = m.SerializeToString()
    with pytest.raises(RuleError) as err:
        run(m, [Forgetful()])
    assert err.value.rule == "forgetful" and err.value.node == "scale_mul" and not err.value.builtin
    assert "does not produce the matched output 'y'" in str(err.value) and "outputs=[m.output]" in str(err.value)
    assert m.SerializeToString() == before


def test_same_var_twice_binds_one_tensor():
    class DoubleToMul(PatternRule):
        name = "add-self"
        pattern = op("Add", var("t"), var("t"))

        def rewrite(self, m, b):
            b.op("Mul", [m["t"], b.const("two", np.float32(2.0))], outputs=[m.output])

    g = GraphBuilder(4)
    y = g.add(X, X, "y")
    z = g.add(X, "x2", "z")
    m = g.model({X: (2, 3), "x2": (2, 3)}, [y, z])
    out, rep = run(m, [DoubleToMul()])
    assert sorted(node_ops(out)) == ["Add", "Mul"]
    assert rule_report(rep, "add-self").rewrites == 1
    assert_verifies(m, out)


def test_producer_with_several_outputs_is_not_matched():
    class DropDropout(PatternRule):
        name = "drop-dropout"
        pattern = op("Mul", op("Dropout", var("x")), const("s"))

        def rewrite(self, m, b):
            b.op("Mul", [m["x"], m.tensor("s")], outputs=[m.output])

    for mask in (False, True):
        g = GraphBuilder(5)
        d = g.fresh("drop")
        g.nodes.append(helper.make_node("Dropout", [X], [d] + (["mask"] if mask else []), name="do"))
        y = g.node("Mul", [d, g.init(np.float32(3.0))], "y")
        m = g.model({X: (2, 3)}, [y], opset=13)
        out, rep = run(m, [DropDropout()], include_defaults=False)
        assert rule_report(rep, "drop-dropout").rewrites == (0 if mask else 1)
        assert node_ops(out) == (["Dropout", "Mul"] if mask else ["Mul"])
        assert_verifies(m, out)


def test_unnamed_rule_reports_under_its_class_name():
    class Anonymous(FoldScaleIntoGemm):
        name = ""

    _, m = gemm_model()
    _, rep = run(m, [Anonymous()])
    assert rule_report(rep, "Anonymous").rewrites == 1


# --------------------------------------------------------------------------- priorities, opsets, Rule
class FoldBNIntoConvTagged(PatternRule):
    """Conv -> BN, folded by a user rule (tags the new node so the winner is visible)."""

    name = "user-conv-bn"
    pattern = op("BatchNormalization", op("Conv", var("x"), const("w"), const("bias", optional=True), name="conv"),
                 const("g"), const("beta"), const("mean"), const("var"), name="bn")

    def rewrite(self, m, b):
        eps = float(m.node("bn").attrs.get("epsilon", 1e-5))
        s = m["g"].astype(np.float64) / np.sqrt(m["var"].astype(np.float64) + eps)
        bias = np.zeros(len(s)) if m["bias"] is None else m["bias"].astype(np.float64)
        w = m["w"].astype(np.float64) * s.reshape(-1, *([1] * (m["w"].ndim - 1)))
        new_b = (bias - m["mean"]) * s + m["beta"]
        b.op("Conv", [m["x"], b.const("w", w.astype(np.float32)), b.const("b", new_b.astype(np.float32))],
             outputs=[m.output], attrs=m.node("conv").attrs, name="user_folded")


def conv_bn_model(opset=17):
    g = GraphBuilder(6)
    y = g.bn(g.conv(X, 3, 4, 3, pads=1), 4, output="y")
    return g.model({X: (1, 3, 6, 6)}, [y], opset=opset)


@pytest.mark.parametrize("priority,user_wins", [(1, True), (100, False)])
def test_priority_decides_which_rule_takes_a_match(priority, user_wins):
    rule = FoldBNIntoConvTagged()
    rule.priority = priority
    m = conv_bn_model()
    out, rep = run(m, [rule])
    assert node_ops(out) == ["Conv"]
    assert rule_report(rep, "user-conv-bn").rewrites == int(user_wins)
    assert rule_report(rep, "collapse-linear-regions").rewrites == int(not user_wins)
    assert out.graph.node[0].name.startswith("user_folded") == user_wins
    assert_verifies(m, out)


@pytest.mark.parametrize("opset,applies", [(17, False), (18, True)])
def test_opset_range(opset, applies):
    rule = FoldBNIntoConvTagged()
    rule.min_opset = 18
    m = conv_bn_model(opset)
    out, rep = run(m, [rule], include_defaults=False)
    assert rule_report(rep, "user-conv-bn").rewrites == int(applies)
    assert len(out.graph.node) == (1 if applies else 2)
    assert_verifies(m, out)


def test_max_opset():
    rule = FoldBNIntoConvTagged()
    rule.max_opset = 13
    out, rep = run(conv_bn_model(17), [rule], include_defaults=False)
    assert rule_report(rep, "user-conv-bn").rewrites == 0 and len(out.graph.node) == 2


def test_low_level_rule_sees_the_context_and_can_decline():
    class Inspect(Pass):
        name = "inspect-relu"
        seen: list

        def run(self, ctx):
            for node in ctx.nodes("Relu"):
                ctx.decline(node, f"opset {ctx.opset}: relu reads '{node.inputs[0].name}'")

    g = GraphBuilder(7)
    y = g.node("Relu", [X], "y", name="the_relu")
    m = g.model({X: (2, 3)}, [y], opset=13)
    out, rep = run(m, [Inspect()])
    (d,) = rule_report(rep, "inspect-relu").declines
    assert (d.rule, d.node, d.reason) == ("inspect-relu", "the_relu", "opset 13: relu reads 'x'")
    assert node_ops(out) == ["Relu"] and rep.sweeps == 1


# --------------------------------------------------------------------------- optional var
class DropUnitScaleAfterGemm(PatternRule):
    """Mul(Gemm(a, b, [c]), 1) => Gemm(a, b, [c]) for any (even non-constant) b and c."""

    name = "drop-unit-scale"
    pattern = op("Mul", op("Gemm", var("a"), var("b"), var("c", optional=True), name="gemm"), const("one"))

    def check(self, m):
        return None if m["one"].size == 1 and m["one"].ndim <= 2 and float(m["one"].reshape(())) == 1.0 \
            else "not a unit scale"

    def rewrite(self, m, b):
        inputs = [m["a"], m["b"]] + ([m["c"]] if m["c"] is not None else [])
        b.op("Gemm", inputs, outputs=[m.output], attrs=m.node("gemm").attrs)


@pytest.mark.parametrize("with_c", [True, False], ids=["C", "no-C"])
def test_optional_var_matches_present_and_absent_inputs(with_c):
    g = GraphBuilder(8)
    ins = {X: (3, 6), "B": (6, 5)}            # B is a graph input: var() matches it, const() would not
    gemm_inputs = [X, "B"]
    if with_c:
        ins["C"] = (5,)
        gemm_inputs.append("C")
    h = g.node("Gemm", gemm_inputs, alpha=0.5)
    y = g.node("Mul", [h, g.init(np.float32(1.0))], "y")
    m = g.model(ins, [y])
    out, rep = run(m, [DropUnitScaleAfterGemm()])
    assert node_ops(out) == ["Gemm"]
    assert list(out.graph.node[0].input) == gemm_inputs
    assert rule_report(rep, "drop-unit-scale").rewrites == 1
    assert_verifies(m, out)


# --------------------------------------------------------------------------- removal: rewrite returns a tensor
class MulByOneIsX(PatternRule):
    """Mul(x, 1) = x: the Mul goes, its readers read x (the README's example)."""

    name = "mul-by-one-is-x"
    pattern = op("Mul", var("x"), const("one", value=1), commutative=True)

    def check(self, m):
        one, x = m["one"], m["x"]
        if one.size != 1 or (one.ndim and (x.shape is None or one.ndim > len(x.shape))):
            return f"a 1 of shape {one.shape} may broadcast x to a larger shape"
        return None

    def rewrite(self, m, b):
        return m.tensor("x")


def _ort(model, feeds):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def assert_same_outputs(ref, cand, shape):
    feeds = {X: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    want, got = _ort(ref, feeds), _ort(cand, feeds)
    assert list(got) == list(want)
    for name in want:
        assert np.abs(want[name]).max() > 0
        np.testing.assert_array_equal(got[name], want[name])  # Mul by 1 is exact


def mul_by_one_chain():
    """x -> Relu -> Mul(r, 1) -> Mul(Constant 1, .) -> {Sigmoid, Tanh} -> Add -> y."""
    g = GraphBuilder(9)
    r = g.node("Relu", [X], "r")
    a = g.node("Mul", [r, g.init(np.float32(1.0), "one")], "a", name="mul_a")
    g.nodes.append(helper.make_node("Constant", [], ["k1"], name="k1_node",
                                    value=numpy_helper.from_array(np.ones(1, np.float32), "k1_value")))
    c = g.node("Mul", ["k1", a], "c", name="mul_c")                        # 1 first: commutative
    y = g.add(g.node("Sigmoid", [c], "s", name="sig"), g.node("Tanh", [c], "t", name="tanh"), "y")
    return g, y


def test_rewrite_returning_a_tensor_removes_the_matched_nodes():
    g, y = mul_by_one_chain()
    m = g.model({X: (2, 3)}, [y])
    out, rep = run(m, [MulByOneIsX()], include_defaults=False)
    assert node_ops(m) == ["Relu", "Mul", "Constant", "Mul", "Sigmoid", "Tanh", "Add"]
    assert node_ops(out) == ["Relu", "Sigmoid", "Tanh", "Add"]
    r = rule_report(rep, "mul-by-one-is-x")
    assert (r.rewrites, r.nodes_removed, r.declines) == (2, 3, [])   # two Muls and the dead Constant
    assert rep.before.nodes - rep.after.nodes == 3
    assert [i.name for i in out.graph.initializer] == []
    assert_same_outputs(m, out, (2, 3))


def test_removed_output_read_by_two_nodes_both_read_x():
    g, y = mul_by_one_chain()
    m = g.model({X: (2, 3)}, [y])
    out, _ = run(m, [MulByOneIsX()], include_defaults=False)
    readers = {n.name: list(n.input) for n in out.graph.node if n.op_type in ("Sigmoid", "Tanh")}
    assert readers == {"sig": ["r"], "tanh": ["r"]}


def test_removal_of_a_graph_output_producer_is_declined_with_the_reason():
    g, y = mul_by_one_chain()
    z = g.node("Mul", [y, "one"], "z", name="mul_z")   # writes a graph output: it stays
    m = g.model({X: (2, 3)}, [y, z])
    out, rep = run(m, [MulByOneIsX()], include_defaults=False)
    assert op_histogram(out) == {"Relu": 1, "Sigmoid": 1, "Tanh": 1, "Add": 1, "Mul": 1}
    r = rule_report(rep, "mul-by-one-is-x")
    assert (r.rewrites, r.nodes_removed) == (2, 3)
    assert [(d.node, d.kind, d.reason) for d in r.declines] == [
        ("mul_z", "privacy", "its output 'z' is a graph output (the model's interface keeps its producer)")]
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert_same_outputs(m, out, (2, 3))


def test_only_a_graph_output_mul_changes_nothing():
    g = GraphBuilder(10)
    y = g.node("Mul", [g.node("Relu", [X]), g.init(np.float32(1.0))], "y", name="mul")
    m = g.model({X: (2, 3)}, [y])
    out, rep = run(m, [MulByOneIsX()], include_defaults=False)
    assert node_ops(out) == ["Relu", "Mul"] and rep.rewrites == 0 and rep.sweeps == 1
    assert [d.kind for d in rule_report(rep, "mul-by-one-is-x").declines] == ["privacy"]


class DoubleNegIsX(PatternRule):
    """Neg(Neg(x)) = x: both Negs go."""
    name = "double-neg"
    pattern = op("Neg", op("Neg", var("x"), name="inner"))

    def rewrite(self, m, b):
        return m.tensor("x")


@pytest.mark.parametrize("inner_read_elsewhere", [False, True])
def test_removal_of_a_nested_match_and_the_inner_privacy_rule(inner_read_elsewhere):
    g = GraphBuilder(11)
    n1 = g.node("Neg", [g.node("Relu", [X], "r")], "n1", name="neg1")
    y = g.node("Sigmoid", [g.node("Neg", [n1], "n2", name="neg2")], "y")
    outs = [y] + ([g.node("Tanh", [n1], "t", name="tanh")] if inner_read_elsewhere else [])
    m = g.model({X: (2, 3)}, outs)
    out, rep = run(m, [DoubleNegIsX()], include_defaults=False)
    r = rule_report(rep, "double-neg")
    if inner_read_elsewhere:
        assert op_histogram(out) == {"Relu": 1, "Neg": 2, "Sigmoid": 1, "Tanh": 1} and r.rewrites == 0
        assert [(d.node, d.kind, d.reason) for d in r.declines] == [
            ("neg2", "privacy", "tensor 'n1' inside the match is also read by 'tanh'")]
    else:
        assert node_ops(out) == ["Relu", "Sigmoid"] and (r.rewrites, r.nodes_removed) == (1, 2)
        assert list(out.graph.node[1].input) == ["r"]
    assert_same_outputs(m, out, (2, 3))


def test_removal_redirects_readers_inside_an_if_body():
    """An If branch reads the outer Mul's output by name: after the removal it reads x."""
    g = GraphBuilder(12)
    a = g.node("Mul", [g.node("Relu", [X], "r"), g.init(np.float32(1.0))], "a", name="mul_a")
    then_g = helper.make_graph([helper.make_node("Sigmoid", [a], ["t_out"], name="body_sig")], "then", [],
                               [helper.make_tensor_value_info("t_out", onnx.TensorProto.FLOAT, [2, 3])])
    else_g = helper.make_graph([helper.make_node("Neg", [a], ["e_out"], name="body_neg")], "else", [],
                               [helper.make_tensor_value_info("e_out", onnx.TensorProto.FLOAT, [2, 3])])
    g.nodes.append(helper.make_node("ReduceSum", [X], ["sum"], keepdims=0, name="sum"))
    g.nodes.append(helper.make_node("Greater", ["sum", g.init(np.float32(0.0))], ["cond"], name="gt"))
    g.nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="if"))
    m = g.model({X: (2, 3)}, [("y", (2, 3))])
    out, rep = run(m, [MulByOneIsX()], include_defaults=False)
    assert "Mul" not in node_ops(out) and rule_report(rep, "mul-by-one-is-x").rewrites == 1
    (if_node,) = [n for n in out.graph.node if n.op_type == "If"]
    assert [list(a.g.node[0].input) for a in if_node.attribute] == [["r"], ["r"]]
    for sign in (1.0, -1.0):   # both branches
        feeds = {X: sign * np.abs(np.random.default_rng(1).standard_normal((2, 3))).astype(np.float32)}
        np.testing.assert_array_equal(_ort(out, feeds)["y"], _ort(m, feeds)["y"])


def test_removal_is_declined_when_x_has_another_shape():
    """No check: Mul(x, ones(2, 3)) with x (3,) is (2, 3); x cannot stand for it."""
    class Careless(MulByOneIsX):
        name = "careless"

        def check(self, m):
            return None

    g = GraphBuilder(13)
    y = g.node("Sigmoid", [g.node("Mul", [X, g.init(np.ones((2, 3), np.float32))], "a", name="mul")], "y")
    m = g.model({X: (3,)}, [y])
    out, rep = run(m, [Careless()], include_defaults=False)
    assert node_ops(out) == ["Mul", "Sigmoid"]
    (d,) = rule_report(rep, "careless").declines
    assert (d.node, d.kind, d.reason) == ("mul", "rewrite", "'x' has shape [3], the output 'a' has shape [2, 3]")
    (d,) = rule_report(run(m, [MulByOneIsX()], include_defaults=False)[1], "mul-by-one-is-x").declines
    assert (d.kind, d.reason) == ("check", "a 1 of shape (2, 3) may broadcast x to a larger shape")


def _misuse(rewrite):
    class Misuse(MulByOneIsX):
        name = "misuse"

    Misuse.rewrite = rewrite
    g, y = mul_by_one_chain()
    m = g.model({X: (2, 3)}, [y])
    before = m.SerializeToString()
    with pytest.raises(RuleError) as err:
        optimize(m, rules=[Misuse()], include_defaults=False)
    assert m.SerializeToString() == before
    assert type(err.value.cause).__name__ == "RuleUsageError" and err.value.rule == "misuse"
    return str(err.value)


def test_returning_a_tensor_after_building_nodes_is_an_error():
    def rewrite(self, m, b):
        b.op("Identity", [m.tensor("x")], outputs=[m.output])
        return m.tensor("x")

    msg = _misuse(rewrite)
    assert "rule 'misuse' failed on node 'mul_a'" in msg
    assert "built 1 node(s) with b.op(...) and also returned tensor 'r'" in msg and "return nothing" in msg


def test_returning_what_b_op_built_is_the_same_as_returning_nothing():
    """``return b.op(..., outputs=[m.output])`` (a habit) builds the replacement; nothing is bypassed."""
    class MulToIdentity(MulByOneIsX):
        name = "mul-to-identity"

        def rewrite(self, m, b):
            return b.op("Identity", [m.tensor("x")], outputs=[m.output])

    g, y = mul_by_one_chain()
    m = g.model({X: (2, 3)}, [y])
    out, rep = optimize(m, rules=[MulToIdentity()], include_defaults=False)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Identity") == ops.count("Mul") + 2 == 2  # both Muls became Identities, none bypassed
    assert rule_report(rep, "mul-to-identity").rewrites == 2


@pytest.mark.parametrize("returned,says", [
    (lambda m, b: m["one"], "m['one'] is its value: return m.tensor('one')"),
    (lambda m, b: m.output, "returned tensor 'a', not a tensor the match reads; that is the output that goes"),
    (lambda m, b: b.const("new", np.ones(1, np.float32)), "not a tensor the match reads; return a tensor the match"),
    (lambda m, b: True, "returned True, not a tensor the match reads"),
], ids=["array", "output", "new-const", "bool"])
def test_returning_what_is_not_a_tensor_the_match_reads_is_an_error(returned, says):
    assert says in _misuse(lambda self, m, b: returned(m, b))


def test_returning_a_const_tensor_removes_the_node():
    """Add(0, c) with c a constant: the readers read the initializer c."""
    class AddZero(PatternRule):
        name = "add-zero"
        pattern = op("Add", const("zero", value=0), const("c"))

        def rewrite(self, m, b):
            return m.tensor("c")

    g = GraphBuilder(14)
    c = g.init(g.randn(3), "C")
    y = g.node("Mul", [X, g.node("Add", [g.init(np.zeros(3, np.float32)), c])], "y")
    m = g.model({X: (2, 3)}, [y])
    out, rep = run(m, [AddZero()], include_defaults=False)
    assert node_ops(out) == ["Mul"] and list(out.graph.node[0].input) == [X, "C"]
    assert (rule_report(rep, "add-zero").rewrites, rule_report(rep, "add-zero").nodes_removed) == (1, 1)
    assert_same_outputs(m, out, (2, 3))


@pytest.mark.parametrize("limit", [0, 1, 2])
def test_removal_is_an_admitted_edit(limit):
    """Culprit bisection (``edit_limit``) counts and refuses removals like any edit."""
    g, y = mul_by_one_chain()
    m = g.model({X: (2, 3)}, [y])
    out, rep = optimize(m, rules=[MulByOneIsX()], include_defaults=False, edit_limit=limit)
    assert rep.edits == [("mul-by-one-is-x", "mul_a"), ("mul-by-one-is-x", "mul_c")][:limit]
    assert op_histogram(out).get("Mul", 0) == 2 - limit
    assert rule_report(rep, "mul-by-one-is-x").rewrites == limit
    assert_same_outputs(m, out, (2, 3))


def test_the_readmes_removal_example_is_this_rule():
    """README "Removing nodes": its MulByOne runs as shown and removes both Muls of the chain."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "class MulByOne(" in c]
    scope = {"PatternRule": PatternRule, "op": op, "var": var, "const": const}
    exec(code, scope)
    g, y = mul_by_one_chain()
    m = g.model({X: (2, 3)}, [y])
    out, rep = run(m, [scope["MulByOne"]()], include_defaults=False)
    assert node_ops(out) == ["Relu", "Sigmoid", "Tanh", "Add"]
    r = rule_report(rep, "remove-mul-by-one")
    assert (r.rewrites, r.nodes_removed) == (2, 3)
    assert_same_outputs(m, out, (2, 3))
