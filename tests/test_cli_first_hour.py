"""The command line as a new user meets it: input shapes in the form the report prints them, wrong
shapes as command-line errors, a closed stdout, the full rules listing, every argument described,
integer and bool outputs verified exactly."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxrep import cli
from onnxrep.rules import default_rules, opt_in_rules

from test_cli import _repvgg_block, _run

ROOT = Path(__file__).parents[1]


@pytest.fixture
def block(tmp_path):
    return _repvgg_block(tmp_path / "block.onnx")  # input x: (N, 8, 16, 16)


# ---------------------------------------------------------------------------------------------- --input-shape
@pytest.mark.parametrize("spec", ["x:2x8x16x16", "x:2,8,16,16", "2x8x16x16", "2,8,16,16", "x:2X8x16x16"])
def test_input_shape_forms(spec, block, tmp_path, capsys):
    """The report prints ``x:2x8x16x16``; that, the comma form and the bare form (one input) are taken."""
    code, out, err = _run(["inspect", block, "--verify", "--input-shape", spec], capsys)
    assert code == cli.EXIT_OK, err
    assert "inputs x:2x8x16x16" in out and "y       (2,8,16,16)" in out


@pytest.mark.parametrize("spec, words", [
    ("z:1x8x16x16", "unknown input(s) 'z'"),
    ("x:1x9x16x16", "conflicts with model shape (N,8,16,16) at axis 1 (fixed to 8)"),
    ("x:1x8x16", "has rank 3 but the model declares rank 4"),
])
@pytest.mark.parametrize("command", ["optimize", "inspect", "compare"])
def test_input_shape_that_does_not_fit_is_a_usage_error(command, spec, words, block, tmp_path, capsys):
    """Exit 2, one line, naming the model's inputs and their shapes; nothing written."""
    out = tmp_path / "out.onnx"
    argv = {"optimize": ["optimize", block, out], "inspect": ["inspect", block, "--verify"],
            "compare": ["compare", block, block]}[command]
    code, stdout, err = _run(argv + ["--input-shape", spec], capsys)
    assert code == cli.EXIT_USAGE
    assert err.count("\n") == 1 and words in err and "the model's inputs: x (N,8,16,16)" in err
    assert stdout == "" and not out.exists()


def test_unnamed_shape_on_a_model_with_two_inputs_names_them(tmp_path, capsys):
    x = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])
    z = helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "g", [x, y], [z]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "two.onnx")
    code, _, err = _run(["inspect", tmp_path / "two.onnx", "--input-shape", "3x4"], capsys)
    assert code == cli.EXIT_USAGE and "the model's inputs: a (N,4), b (1,4)" in err
    code, out, err = _run(["inspect", tmp_path / "two.onnx", "--verify", "--input-shape", "a:3x4"], capsys)
    assert code == cli.EXIT_OK and "inputs a:3x4, b:1x4" in out, err


def test_missing_model_is_still_an_input_error_with_a_shape_given(tmp_path, capsys):
    code, _, err = _run(["inspect", tmp_path / "none.onnx", "--input-shape", "x:1x2"], capsys)
    assert code == cli.EXIT_INPUT and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- closed stdout
class _ClosedPipe:
    """A stdout whose reader has gone: every write fails as a closed pipe does."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass


def test_closed_stdout_ends_quietly_in_process(block, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli.main(["inspect", str(block), "--explain"]) == cli.EXIT_OK
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv", [["inspect", "{block}", "--explain"], ["rules"], ["optimize", "--help"],
                                  ["optimize", "{block}", "{out}"]])
def test_closed_stdout_ends_quietly(argv, block, tmp_path):
    """``onnxrep ... | head``: the reader closes the pipe before onnxrep prints; exit 0, nothing on stderr
    (and optimize has written its output before it prints the report)."""
    out = tmp_path / "out.onnx"
    argv = [a.format(block=block, out=out) for a in argv]
    proc = subprocess.Popen([sys.executable, "-m", "onnxrep.cli", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the interpreter has imported onnxrep
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""
    if argv[0] == "optimize" and argv[1] != "--help":
        assert onnx.load(out).graph.node[0].op_type == "Conv"


# ---------------------------------------------------------------------------------------------- rules, --help
def test_rules_lists_every_rule_and_marks_the_opt_in_ones(capsys):
    code, out, _ = _run(["rules"], capsys)
    assert code == cli.EXIT_OK
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip() and " " in line
            and not line.startswith("Lower")}
    defaults, opt_in = default_rules(), opt_in_rules()
    assert len(rows) == len(defaults) + len(opt_in) == 21
    for r in defaults:
        assert " default " in rows[r.rule_name]
    assert "opt-in: --prune-threshold T" in rows["prune-compactor-rows"]
    assert "opt-in: --equalize" in rows["equalize-cross-layer"]
    assert {r.rule_name for r, _ in opt_in}.isdisjoint(r.rule_name for r in defaults)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_subcommand_describes_itself_and_every_argument():
    subs = _subcommands()
    assert sorted(subs) == ["compare", "inspect", "optimize", "rules"]
    for name, sp in subs.items():
        assert sp.description and len(sp.description) > 40, name
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help) > 10, f"{name}: {action.dest} has no help"


def test_help_shows_the_input_shape_forms(capsys):
    with pytest.raises(SystemExit):
        cli.main(["inspect", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "NAME:1x3x224x224 or NAME:1,3,224,224" in text and "bare 1x3x224x224" in text


# ---------------------------------------------------------------------------------------------- exact outputs
def _int_outputs_model(path: Path, offset: int) -> Path:
    """y = x * 2; cls = argmax(x) + offset (int64); pos = x > 0 (bool): three output types."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6]),
            helper.make_tensor_value_info("cls", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("pos", TensorProto.BOOL, [1, 6])]
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array([offset], np.int64), "off"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("Mul", ["x", "two"], ["y"]),
             helper.make_node("ArgMax", ["x"], ["am"], axis=1, keepdims=0),
             helper.make_node("Add", ["am", "off"], ["cls"]),
             helper.make_node("Greater", ["x", "zero"], ["pos"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_integer_and_bool_outputs_are_verified_exactly(tmp_path, capsys):
    a = _int_outputs_model(tmp_path / "a.onnx", 10 ** 6)
    code, out, err = _run(["compare", a, a, "--json", tmp_path / "same.json"], capsys)
    assert code == cli.EXIT_OK, err
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert "exact (int64)" in rows["cls"] and "exact (bool)" in rows["pos"] and "float32" in rows["y"]
    report = {o["name"]: o for o in json.loads((tmp_path / "same.json").read_text())["outputs"]}
    assert report["cls"]["precision"] == "exact (int64)" and report["cls"]["allowed"] == 0.0
    assert report["pos"]["precision"] == "exact (bool)" and report["pos"]["allowed"] == 0.0
    assert report["y"]["allowed"] > 0
    # off by one in a million: within float32's tolerance (1e-4 * 1e6 = 100), not equal: FAILED
    b = _int_outputs_model(tmp_path / "b.onnx", 10 ** 6 + 1)
    code, out, _ = _run(["compare", a, b, "--json", tmp_path / "diff.json"], capsys)
    report = {o["name"]: o for o in json.loads((tmp_path / "diff.json").read_text())["outputs"]}
    assert code == cli.EXIT_VERIFY and "FAILED" in out
    assert report["cls"]["max_abs"] == 1.0 and not report["cls"]["passed"] and report["y"]["passed"]
    # a tolerance the user gives applies to every output, as documented
    code, _, _ = _run(["compare", a, b, "--rtol", "1e-5", "--atol", "0"], capsys)
    assert code == cli.EXIT_OK


def test_rules_lists_a_user_rule_named_like_a_builtin_with_when_it_can_run(tmp_path, capsys):
    rules = tmp_path / "named.py"
    rules.write_text("from onnxrep import Pass\n\nclass Named(Pass):\n    '''Mine.'''\n    name = 'fold-constants'\n"
                     "\n    def run(self, ctx):\n        pass\n")
    code, out, err = _run(["rules", "--rules-from", rules], capsys)
    assert code == cli.EXIT_OK, err
    named = [line for line in out.splitlines() if line.startswith("fold-constants ")]
    assert len(named) == 2 and " default " in named[0]
    assert "--rules-from (only with --no-default-rules: a built-in's name)" in named[1] and "Mine." in named[1]
