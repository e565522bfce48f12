"""A failing verification names the rule and node of the first failing edit (onnxrep.verification.culprit)."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxrep
from onnxrep import cli
from onnxrep.verification.culprit import find_culprit

#: a user rule that is wrong at one node only: Relu(x) => x where x feeds a node named 'relu_b'
WRONG_RULE = textwrap.dedent('''
    from onnxrep import PatternRule, op, var

    class DropSecondRelu(PatternRule):
        """Relu(x) => x, but only at the node named relu_b (wrong: Relu is not the identity)."""
        name = "drop-second-relu"
        pattern = op("Relu", var("x"))

        def check(self, m):
            return None if m.root.name == "relu_b" else "not the one"

        def rewrite(self, m, b):
            b.op("Identity", [m.tensor("x")], outputs=[m.output])
''')


def _two_blocks(path):
    """conv+BN -> relu_a -> conv+BN -> relu_b -> y: the default rules merge both conv+BN pairs."""
    rng = np.random.default_rng(0)
    inits, nodes, t = [], [], "x"
    for i, relu in enumerate(("relu_a", "relu_b")):
        w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}")] + [
            numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), f"{k}{i}") for k in ("g", "b", "m", "v")]
        nodes += [helper.make_node("Conv", [t, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"],
                                   name=f"bn{i}"),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}" if i == 0 else "y"], name=relu)]
        t = f"r{i}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_wrong_user_rule_is_named(tmp_path, capsys):
    src, out, rules, js = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "wrong.py", tmp_path / "r.json"
    _two_blocks(src)
    rules.write_text(WRONG_RULE)
    code = cli.main(["optimize", str(src), str(out), "-q", "--rules-from", str(rules), "--json", str(js)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_VERIFY and not out.exists()
    assert err.count("\n") == 1
    assert "verification failed: rule 'drop-second-relu' at node 'relu_b' (max abs error" in err
    report = json.loads(js.read_text())
    assert report["culprit"]["rule"] == "drop-second-relu" and report["culprit"]["node"] == "relu_b"
    assert 1 <= report["culprit"]["edit"] <= report["culprit"]["edits"] == report["rules"][-1]["rewrites"] + sum(
        r["rewrites"] for r in report["rules"][:-1])
    # without the wrong rule the same model verifies and both blocks merge
    assert cli.main(["optimize", str(src), str(out), "-q"]) == 0
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Conv", "Relu", "Conv", "Relu"]


def test_bisection_finds_the_first_failing_edit(tmp_path):
    """find_culprit calls the check about log2(edits) + 1 times and returns the first failing edit."""
    src = tmp_path / "m.onnx"
    _two_blocks(src)
    model = onnx.load(src)
    _, report = onnxrep.optimize(model)
    assert len(report.edits) == 2 and [r for r, _ in report.edits] == ["collapse-linear-regions"] * 2
    calls = []

    def fails_from_second(out: onnx.ModelProto) -> bool:
        calls.append(sum(n.op_type == "BatchNormalization" for n in out.graph.node))
        return calls[-1] >= 1  # "passes" while a BN is left: the second edit "breaks" it

    culprit = find_culprit(model, report.edits, fails_from_second)
    assert culprit == {"rule": "collapse-linear-regions", "node": report.edits[1][1], "edit": 2, "edits": 2}
    assert calls == [2, 1]  # 0 edits, then 1; 2 edits (the full run) is known to fail: not rerun
    assert find_culprit(model, report.edits, lambda out: False) is None  # fails with no edit: nobody to blame
