"""The rule contract as a user meets it: the three example rules (examples/), run through
``--rules-from`` and through ``onnxrep.optimize(..., rules=...)``, and every friction point of
issue 9 (errors that name the rule, name clashes, API misuse, opset skips, near-misses)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxrep.cli as cli
from onnx_builders import GraphBuilder, node_ops, op_histogram
from onnxrep import (Pass, PatternRule, RuleError, RuleSetError, const, load_rules_from, op, optimize, var,
                     verify)

EXAMPLES = Path(__file__).parents[1] / "examples"
X = "x"


def _cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _record(report, name):
    return next(r for r in report.rules if r.name == name)


def _both_ways(model, example, tmp_path, capsys, defaults: bool = True):
    """The example's rules through the Python API and through the CLI; the API's output and report
    (``defaults=False``: the example's rules alone, ``--no-default-rules``)."""
    rules = load_rules_from(EXAMPLES / example)
    out, report = optimize(model, rules=rules, include_defaults=defaults)
    src, dest = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    code, stdout, err = _cli(["optimize", src, dest, "--rules-from", EXAMPLES / example]
                             + ([] if defaults else ["--no-default-rules"]), capsys)
    assert code == 0, err
    assert node_ops(onnx.load(dest)) == node_ops(out)
    assert verify(model, out).passed
    return out, report


# --------------------------------------------------------------------------- the three examples
@pytest.mark.parametrize("example", ["remove_identity.py", "hardswish.py", "implicit_a.py"])
def test_examples_are_short(example):
    assert len((EXAMPLES / example).read_text().splitlines()) <= 35


def test_remove_identity_counts_its_removals_and_keeps_a_graph_output(tmp_path, capsys):
    g = GraphBuilder(0)
    a = g.node("Identity", [X], "a", name="id_a")
    r = g.node("Relu", [a], "r")
    b = g.node("Identity", [r], "b", name="id_b")
    y = g.node("Identity", [g.node("Sigmoid", [b])], "y", name="id_out")
    m = g.model({X: ("N", 4)}, [y])
    out, report = _both_ways(m, "remove_identity.py", tmp_path, capsys, defaults=False)  # else the built-in
    rec = _record(report, "remove-identity")  # remove-no-ops would take the Identities first
    assert (rec.rewrites, rec.nodes_removed) == (2, 2)
    assert [(d.node, d.kind) for d in rec.declines] == [("id_out", "privacy")]
    assert node_ops(out) == ["Relu", "Sigmoid", "Identity"]


def _hardswish_model(form: str, alpha=1 / 6, opset=14):
    g = GraphBuilder(1)
    x = g.node("Conv", [X, g.init(g.randn(4, 3, 1, 1))], "c")
    if form == "hardsigmoid":
        h = g.node("HardSigmoid", [x], alpha=alpha, beta=0.5)
        y = g.node("Mul", [h, x], "y")  # the other input order
    else:
        t = g.node("Add", [x, g.init(np.float32(3))])
        clip = g.node("Clip", [t, g.init(np.float32(0)), g.init(np.float32(6))])
        y = g.node("Div", [g.node("Mul", [x, clip]), g.init(np.float32(6))], "y")
    return g.model({X: ("N", 3, 5, 5)}, [y], opset=opset)


@pytest.mark.parametrize("form", ["hardsigmoid", "clip"])
def test_hardswish_fuses_both_spellings(form, tmp_path, capsys):
    m = _hardswish_model(form)
    out, report = _both_ways(m, "hardswish.py", tmp_path, capsys)
    assert op_histogram(out) == {"Conv": 1, "HardSwish": 1}
    assert _record(report, "fuse-hardswish").rewrites == 1


def test_hardswish_attribute_constraint_and_opset_range():
    rules = load_rules_from(EXAMPLES / "hardswish.py")
    out, report = optimize(_hardswish_model("hardsigmoid", alpha=0.2), rules=rules)
    assert "HardSwish" not in node_ops(out)  # alpha 0.2 is not HardSwish's 1/6
    out, report = optimize(_hardswish_model("clip", opset=13), rules=rules)
    rec = _record(report, "fuse-hardswish")
    assert "HardSwish" not in node_ops(out) and rec.skipped == "it supports opsets 14+, the model has opset 13"
    assert [d.kind for d in rec.declines] == ["opset"]  # the near-miss: it matched
    assert "matched, but the rule supports opsets 14+" in rec.declines[0].reason


def _implicit_model(pads=0):
    g = GraphBuilder(2)
    t = g.node("Add", [X, g.init(g.randn(1, 3, 1, 1))])
    y = g.conv(t, 3, 4, 3, pads=pads, output="y")
    return g.model({X: ("N", 3, 6, 6)}, [y])


def test_implicit_a_folds_into_the_conv_bias(tmp_path, capsys):
    m = _implicit_model()
    out, report = _both_ways(m, "implicit_a.py", tmp_path, capsys)
    assert node_ops(out) == ["Conv"] and _record(report, "fold-implicit-a").rewrites == 1
    res = verify(m, out)
    assert res.max_abs <= 1e-5 * res.outputs[0].ref_max_abs


def test_implicit_a_declines_a_padded_conv():
    _, report = optimize(_implicit_model(pads=1), rules=load_rules_from(EXAMPLES / "implicit_a.py"))
    (d,) = _record(report, "fold-implicit-a").declines
    assert d.kind == "check" and d.reason.startswith("conv pads its input")


# --------------------------------------------------------------------------- errors that name the rule
class Oops(PatternRule):
    name = "oops-rule"
    pattern = op("Relu", var("x"))

    def check(self, m):
        return {}["oops"]


def _relu_model():
    g = GraphBuilder(3)
    y = g.node("Relu", [X], "y", name="the_relu")
    return g.model({X: (2, 3)}, [y])


def test_an_exception_in_a_user_rule_names_rule_and_node():
    with pytest.raises(RuleError) as err:
        optimize(_relu_model(), rules=[Oops()])
    e = err.value
    assert (e.rule, e.node, type(e.cause), e.builtin) == ("oops-rule", "the_relu", KeyError, False)
    assert str(e) == "rule 'oops-rule' failed on node 'the_relu': KeyError: 'oops'"


def test_cli_reports_a_failing_user_rule_in_one_line_with_its_own_exit_code(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(_relu_model(), src)
    rules = tmp_path / "oops.py"
    rules.write_text("from onnxrep import PatternRule, op, var\n\n"
                     "class Oops(PatternRule):\n    name = 'oops-rule'\n    pattern = op('Relu', var('x'))\n\n"
                     "    def check(self, m):\n        return {}['oops']\n")
    code, out, err = _cli(["optimize", src, tmp_path / "o.onnx", "--rules-from", rules], capsys)
    assert code == cli.EXIT_RULE_FAILED == 7
    assert err.strip().splitlines() == [
        "onnxrep: error: rule 'oops-rule' failed on node 'the_relu': KeyError: 'oops' (--debug shows the traceback)"]
    assert not (tmp_path / "o.onnx").exists()


def test_a_user_rule_named_like_a_builtin_is_refused(tmp_path, capsys):
    class Clash(Oops):
        name = "collapse-linear-regions"

    with pytest.raises(RuleSetError, match="'collapse-linear-regions' .* already used by a built-in rule"):
        optimize(_relu_model(), rules=[Clash()])
    src, rules = tmp_path / "m.onnx", tmp_path / "clash.py"
    onnx.save(_relu_model(), src)
    rules.write_text("from onnxrep import Pass\n\nclass Clash(Pass):\n    name = 'fold-constants'\n\n"
                     "    def run(self, ctx):\n        pass\n")
    code, _, err = _cli(["optimize", src, tmp_path / "o.onnx", "--rules-from", rules], capsys)
    assert code == 6 and "rule name 'fold-constants'" in err and len(err.strip().splitlines()) == 1


def test_without_default_rules_a_user_rule_may_take_a_builtin_name(tmp_path, capsys):
    """No built-in runs then, so the name is the user rule's alone (README, "Errors")."""
    class Named(PatternRule):
        name = "collapse-linear-regions"
        pattern = op("Relu", op("Relu", var("x")))

        def rewrite(self, m, b):
            b.op("Relu", [m.tensor("x")], outputs=[m.output])

    g = GraphBuilder(3)
    m = g.model({X: (2, 3)}, [g.node("Relu", [g.node("Relu", [X])], "y")])
    with pytest.raises(RuleSetError, match="'collapse-linear-regions' .* already used by a built-in rule"):
        optimize(m, rules=[Named()])
    out, report = optimize(m, rules=[Named()], include_defaults=False)
    assert [(r.name, r.rewrites, r.nodes_removed) for r in report.rules] == [("collapse-linear-regions", 1, 1)]
    assert node_ops(out) == ["Relu"]
    src, rules = tmp_path / "m.onnx", tmp_path / "named.py"
    onnx.save(m, src)
    rules.write_text("from onnxrep import Pass\n\nclass Named(Pass):\n    name = 'fold-constants'\n\n"
                     "    def run(self, ctx):\n        for n in ctx.nodes('Relu'):\n"
                     "            ctx.decline(n, 'seen')\n")
    code, _, err = _cli(["optimize", src, tmp_path / "o.onnx", "--rules-from", rules, "--no-default-rules",
                         "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "r.json").read_text())
    assert [(r["name"], len(r["declined"])) for r in payload["rules"]] == [("fold-constants", 2)]
    two = [Named(), Named()]
    with pytest.raises(RuleSetError, match="already used by another rule"):
        optimize(m, rules=two, include_defaults=False)


class Remultiply(PatternRule):
    """Mul(x, k) => an equal Mul(x, k): rewrites forever (the pattern matches what it builds)."""
    name = "remultiply"
    pattern = op("Mul", var("x"), const("k", value=2))

    def rewrite(self, m, b):
        b.op("Mul", [m.tensor("x"), m.tensor("k")], outputs=[m.output])


class MulByOneIsX(PatternRule):
    name = "mul-by-one-is-x"
    pattern = op("Mul", var("x"), const("one", value=1))

    def rewrite(self, m, b):
        return m.tensor("x")


def _endless_model():
    g = GraphBuilder(8)
    a = g.node("Mul", [g.node("Mul", [X, g.init(np.float32(1.0))]), g.init(np.float32(2.0), "two")], "a")
    return g.model({X: (2, 3)}, [g.node("Mul", [g.node("Relu", [a]), "two"], "y")])


@pytest.mark.parametrize("max_sweeps", [3, 8])
def test_the_sweep_limit_names_the_rules_still_rewriting(max_sweeps):
    out, report = optimize(_endless_model(), rules=[Remultiply(), MulByOneIsX()], include_defaults=False,
                           max_sweeps=max_sweeps)
    assert report.sweeps == max_sweeps
    assert (_record(report, "remultiply").rewrites, _record(report, "mul-by-one-is-x").rewrites) == (2 * max_sweeps, 1)
    assert report.still_rewriting == ["remultiply"]  # mul-by-one-is-x rewrote in sweep 1 only
    assert report.to_dict()["still_rewriting"] == ["remultiply"]
    named = [n for n in report.notes if n.startswith("rule ")]
    assert named == [f"rule 'remultiply' still rewriting after {max_sweeps} sweeps (2 edit(s) in the last one)"]
    assert op_histogram(out) == {"Mul": 2, "Relu": 1}


def test_a_run_that_converges_names_no_rule():
    _, report = optimize(_endless_model(), rules=[MulByOneIsX()], include_defaults=False, max_sweeps=2)
    assert report.sweeps == 2 and report.rewrites == 1   # sweep 2 changed nothing
    assert report.still_rewriting == [] and report.notes == []
    assert report.to_dict()["still_rewriting"] == []


def test_cli_reports_the_rule_still_rewriting_in_text_and_json(tmp_path, capsys):
    src, rules, js = tmp_path / "m.onnx", tmp_path / "endless.py", tmp_path / "r.json"
    onnx.save(_endless_model(), src)
    rules.write_text("from onnxrep import PatternRule, const, op, var\n\nclass Remultiply(PatternRule):\n"
                     "    name = 'remultiply'\n    pattern = op('Mul', var('x'), const('k', value=2))\n\n"
                     "    def rewrite(self, m, b):\n"
                     "        b.op('Mul', [m.tensor('x'), m.tensor('k')], outputs=[m.output])\n")
    code, out, err = _cli(["optimize", src, tmp_path / "o.onnx", "--rules-from", rules, "--max-sweeps", "5",
                           "--json", js], capsys)
    assert code == 0, err
    assert "note: rule 'remultiply' still rewriting after 5 sweeps" in out
    payload = json.loads(js.read_text())
    assert payload["sweeps"] == 5 and payload["still_rewriting"] == ["remultiply"]
    assert _record_dict(payload, "remultiply")["rewrites"] == 10
    assert any(n.startswith("rule 'remultiply' still rewriting after 5 sweeps") for n in payload["notes"])


def _record_dict(payload, name):
    return next(r for r in payload["rules"] if r["name"] == name)


def test_remove_declines_a_node_whose_other_output_is_read():
    """ctx.remove(Dropout) with its mask read: the mask would lose its producer."""
    class DropDropout(Pass):
        name = "drop-dropout"

        def run(self, ctx):
            for node in ctx.nodes("Dropout"):
                ctx.remove(node)

    for mask in (False, True):
        g = GraphBuilder(9)
        g.nodes.append(onnx.helper.make_node("Dropout", [X], ["d"] + (["mask"] if mask else []), name="do"))
        y = g.node("Relu", ["d"], "y")
        outs = [y] + ([g.node("Cast", ["mask"], "mf", name="cast", to=onnx.TensorProto.FLOAT)] if mask else [])
        m = g.model({X: (2, 3)}, outs, opset=13)
        out, report = optimize(m, rules=[DropDropout()], include_defaults=False)
        rec = _record(report, "drop-dropout")
        if mask:
            assert node_ops(out) == ["Dropout", "Relu", "Cast"] and rec.rewrites == 0
            assert [(d.node, d.kind, d.reason) for d in rec.declines] == [
                ("do", "privacy", "tensor 'mask' inside the region is also read by 'cast'")]
        else:
            assert node_ops(out) == ["Relu"] and (rec.rewrites, rec.nodes_removed) == (1, 1)
        assert verify(m, out).passed


def _mul_model():
    g = GraphBuilder(4)
    y = g.node("Mul", [g.node("Relu", [X]), g.init(np.float32(2.0), "W")], "y", name="mul")
    return g.model({X: (2, 3)}, [y])


def test_an_array_passed_to_b_op_says_how_to_get_the_tensor():
    class ArrayInput(PatternRule):
        name = "array-input"
        pattern = op("Mul", op("Relu", var("x")), const("W"))

        def rewrite(self, m, b):
            b.op("Mul", [m["x"], m["W"]], outputs=[m.output])

    with pytest.raises(RuleError) as err:
        optimize(_mul_model(), rules=[ArrayInput()])
    assert "input 1 of b.op('Mul') is a ndarray, not a tensor; m['W'] is its value: pass m.tensor('W')" \
        in str(err.value)


@pytest.mark.parametrize("returned", [True, False, 0])
def test_check_must_return_a_reason_or_none(returned):
    class Truthy(PatternRule):
        name = "truthy"
        pattern = op("Relu", var("x"))

        def check(self, m):
            return returned

    with pytest.raises(RuleError, match=r"check\(\) returned .*: return None to accept the match, or a string"):
        optimize(_relu_model(), rules=[Truthy()])


def test_a_pass_whose_replace_is_not_private_gets_a_decline_not_a_crash():
    class Greedy(Pass):
        """Replaces Relu -> Mul by the Mul alone though the Relu's output is a graph output."""
        name = "greedy"

        def run(self, ctx):
            for mul in ctx.nodes("Mul"):
                relu = ctx.producer(mul.inputs[0])
                ctx.replace([relu, mul], [], at=mul)

    g = GraphBuilder(5)
    r = g.node("Relu", [X], "r")
    y = g.node("Mul", [r, g.init(np.float32(2.0))], "y", name="mul")
    out, report = optimize(g.model({X: (2, 3)}, [y, r]), rules=[Greedy()])
    (d,) = _record(report, "greedy").declines
    assert (d.node, d.kind, d.reason) == ("mul", "privacy", "tensor 'r' inside the region is a graph output")
    assert node_ops(out) == ["Relu", "Mul"]


def test_explain_lists_privacy_near_misses(tmp_path, capsys):
    g = GraphBuilder(6)
    r = g.node("Relu", [X], "r")
    y = g.node("Mul", [r, g.init(np.float32(1.0))], "y", name="mul")
    src = tmp_path / "m.onnx"
    onnx.save(g.model({X: (2, 3)}, [y, r]), src)
    rules = tmp_path / "one.py"
    rules.write_text("from onnxrep import PatternRule, const, op, var\n\nclass DropOne(PatternRule):\n"
                     "    name = 'drop-one'\n    pattern = op('Mul', op('Relu', var('x')), const('one', value=1))\n\n"
                     "    def rewrite(self, m, b):\n        b.op('Relu', [m.tensor('x')], outputs=[m.output])\n")
    code, out, err = _cli(["inspect", src, "--rules-from", rules, "--explain", "--no-default-rules"], capsys)
    assert code == 0, err
    assert "drop-one  mul   [privacy] tensor 'r' inside the match is a graph output" in out


def test_rules_command_lists_priority_and_opsets_of_builtin_and_user_rules(capsys):
    code, out, _ = _cli(["rules", "--rules-from", EXAMPLES / "hardswish.py"], capsys)
    assert code == 0
    rows = {line.split()[0]: line.split()[1:4] for line in out.splitlines()[2:] if line.strip()
            and not line.startswith("Lower")}
    assert rows["fold-constants"] == ["0", "11+", "pass"]
    assert rows["collapse-linear-regions"] == ["10", "11+", "pass"]
    assert rows["fold-bn-into-gemm"] == ["20", "11+", "pattern"]
    assert rows["fuse-hardswish"] == ["100", "14+", "pattern"]
