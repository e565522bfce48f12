"""The command line: reports, JSON, exit codes, hostile inputs, atomic output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxrep import cli
from onnxrep.graph.stats import graph_stats

C = 8


def _repvgg_block(path: Path, opset: int = 17) -> Path:
    """Conv3x3 + Conv1x1 + BN(x) summed, then Relu: the legacy exporter's RepVGG block."""
    rng = np.random.default_rng(0)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    inits = [f("w3", rng.normal(size=(C, C, 3, 3))), f("b3", rng.normal(size=C)),
             f("w1", rng.normal(size=(C, C, 1, 1))), f("b1", rng.normal(size=C)),
             f("g", rng.uniform(0.5, 1.5, C)), f("be", rng.normal(size=C)), f("m", rng.normal(size=C)),
             f("v", rng.uniform(0.5, 2.0, C))]
    nodes = [helper.make_node("Conv", ["x", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
             helper.make_node("Add", ["c3", "c1"], ["s1"], name="add1"),
             helper.make_node("BatchNormalization", ["x", "g", "be", "m", "v"], ["bn"], name="bn_id"),
             helper.make_node("Add", ["s1", "bn"], ["s2"], name="add2"),
             helper.make_node("Relu", ["s2"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def block(tmp_path):
    return _repvgg_block(tmp_path / "block.onnx")


def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_optimize_writes_verified_model_and_reports(block, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    report = tmp_path / "report.json"
    code, stdout, err = _run(["optimize", block, out, "--json", report], capsys)
    assert code == 0, err
    model = onnx.load(out)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]
    data = json.loads(report.read_text())
    assert data["before"]["nodes"] == 6 and data["after"]["nodes"] == 2
    assert data["before"]["convs"] == 2 and data["after"]["convs"] == 1
    # MACs per image at 16x16 (the batch is dynamic: counted as 1): 3x3 + 1x1 before, one 3x3 after
    assert data["before"]["macs"] == 256 * C * C * 10 and data["after"]["macs"] == 256 * C * C * 9
    assert data["before"]["macs_unknown"] == data["after"]["macs_unknown"] == 0
    assert data["after"]["params"] == C * C * 9 + C < data["before"]["params"]
    macs_row = next(line for line in stdout.splitlines() if line.startswith("MACs"))
    assert macs_row.split()[1:] == [f"{256 * C * C * 10:,}", f"{256 * C * C * 9:,}", "-10.0%"]
    assert data["written"] is True
    rule = next(r for r in data["rules"] if r["name"] == "collapse-linear-regions")
    assert rule["rewrites"] == 1 and rule["nodes_removed"] == 4
    v = data["verification"]
    assert v["passed"] is True and v["max_abs"] <= 1e-4 * v["outputs"][0]["ref_max_abs"]
    assert "nodes" in stdout and "max abs err" in stdout and "wrote" in stdout
    # no temporary folders left beside the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block.onnx", "out.onnx", "report.json"]


def test_inspect_writes_nothing_and_explains(tmp_path, capsys):
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(size=(C, C, 3, 3)).astype(np.float32), "w")
    conv_s2 = numpy_helper.from_array(rng.normal(size=(C, C, 1, 1)).astype(np.float32), "w1")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1], name="conv3"),
             helper.make_node("Conv", ["x", "w1"], ["b"], strides=[2, 2], name="conv1_s2"),
             helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
             helper.make_node("Add", ["a", "c"], ["y"], name="sum"),
             helper.make_node("Identity", ["b"], ["z"], name="id")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 8, 8]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, C, 4, 4])], [w, conv_s2])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    code, stdout, _ = _run(["inspect", path, "--explain", "--json", "-"], capsys)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    data = json.loads(stdout[stdout.index("{"):])
    assert data["written"] is False and data["output"] is None
    assert data["after"]["convs"] == 2  # conv3 + conv1 merged, the shared-weight stride-2 conv kept
    # the sum, and the stride-2 conv with its Identity
    collapse = next(r for r in data["rules"] if r["name"] == "collapse-linear-regions")
    assert collapse["rewrites"] == 2 and data["after"]["nodes"] == 2


def test_explain_lists_decline_reason(tmp_path, capsys):
    # BN(x) -> Conv with zero padding: the shifted affine cannot enter a padding conv
    rng = np.random.default_rng(2)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    inits = [f("w", rng.normal(size=(C, C, 3, 3))), f("g", rng.uniform(0.5, 1.5, C)), f("be", rng.normal(size=C)),
             f("m", rng.normal(size=C)), f("v", rng.uniform(0.5, 2.0, C))]
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "be", "m", "v"], ["n"], name="pre_bn"),
             helper.make_node("Conv", ["n", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 8, 8])], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, stdout, _ = _run(["inspect", path, "--explain"], capsys)
    assert code == 0
    assert "declined candidates:" in stdout
    line = next(l for l in stdout.splitlines() if "conv" in l and "padding" in l)
    assert "zero-padding conv" in line


def test_verification_failure_exits_5_and_writes_nothing(block, tmp_path, capsys):
    rules = tmp_path / "bad_rule.py"
    rules.write_text(
        "import numpy as np\n"
        "from onnxrep import PatternRule, op, var, const\n"
        "class BreakRelu(PatternRule):\n"
        "    '''A deliberately wrong rule: Relu(x) -> Relu(x * 1.5).'''\n"
        "    name = 'break-relu'\n"
        "    pattern = op('Relu', var('x'))\n"
        "    def rewrite(self, m, b):\n"
        "        (t,) = b.op('Mul', [m['x'], b.const('k', np.array(1.5, np.float32))])\n"
        "        b.op('Relu', [t], outputs=[m.output])\n")
    out = tmp_path / "out.onnx"
    code, stdout, err = _run(["optimize", block, out, "--rules-from", rules, "--no-default-rules"], capsys)
    assert code == cli.EXIT_VERIFY
    assert not out.exists()
    assert err.count("\n") == 1 and "verification failed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_rule.py", "block.onnx"]


def test_no_verify_skips_check(block, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, _ = _run(["optimize", block, out, "--no-verify", "-q"], capsys)
    assert code == 0 and stdout == "" and out.exists()
    assert graph_stats(onnx.load(out)).nodes == 2


def _invalid_graph(path: Path) -> Path:
    node = helper.make_node("Relu", ["missing"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("kind, code, words", [
    ("missing", cli.EXIT_INPUT, "no such file"),
    ("empty", cli.EXIT_INPUT, "empty file"),
    ("text", cli.EXIT_INPUT, "not an ONNX model"),
    ("truncated", cli.EXIT_INPUT, "not an ONNX model"),
    ("invalid", cli.EXIT_INPUT, "invalid ONNX model"),
    ("same", cli.EXIT_OUTPUT, "output path is the input path"),
    ("no-folder", cli.EXIT_OUTPUT, "does not exist"),
    ("bad-shape", cli.EXIT_USAGE, ""),
    ("bad-rules", cli.EXIT_RULES, "cannot import"),
])
def test_bad_input_one_line_error(kind, code, words, block, tmp_path, capsys):
    src, out, extra = block, tmp_path / "out.onnx", []
    if kind == "missing":
        src = tmp_path / "nope.onnx"
    elif kind == "empty":
        src = tmp_path / "empty.onnx"
        src.write_bytes(b"")
    elif kind == "text":
        src = tmp_path / "notes.onnx"
        src.write_text("this is not a model\n")
    elif kind == "truncated":
        src = tmp_path / "cut.onnx"
        src.write_bytes(block.read_bytes()[:-37])
    elif kind == "invalid":
        src = _invalid_graph(tmp_path / "invalid.onnx")
    elif kind == "same":
        out = block
    elif kind == "no-folder":
        out = tmp_path / "no" / "such" / "out.onnx"
    elif kind == "bad-shape":
        extra = ["--input-shape", "x:1,two,3"]
    elif kind == "bad-rules":
        bad = tmp_path / "rules.py"
        bad.write_text("raise RuntimeError('boom')\n")
        extra = ["--rules-from", bad]
    before = block.read_bytes()
    code_, stdout, err = _run(["optimize", src, out] + extra, capsys)
    assert code_ == code
    assert err.count("\n") == 1 and err.startswith("onnxrep: error:") and words in err
    assert "Traceback" not in err
    assert block.read_bytes() == before
    if kind != "same":
        assert not out.exists()
    assert not [p for p in tmp_path.rglob(".onnxrep-*")]


def test_disk_full_leaves_no_partial_output(block, tmp_path, capsys, monkeypatch):
    import onnxrep.graph.io as io

    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullDisk(f) if "w" in mode and str(path).endswith("out.onnx") else f

    monkeypatch.setattr(io, "open", fake_open, raising=False)
    out = tmp_path / "out.onnx"
    code, _, err = _run(["optimize", block, out], capsys)
    assert code == cli.EXIT_OUTPUT and "No space left on device" in err and err.count("\n") == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block.onnx"]


def test_console_script_subprocess(block, tmp_path):
    """The installed entry point (via python -m) runs end to end and fails cleanly."""
    out = tmp_path / "o.onnx"
    ok = subprocess.run([sys.executable, "-m", "onnxrep.cli", "optimize", str(block), str(out)],
                        capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert ok.returncode == 0, ok.stderr
    assert out.exists()
    bad = subprocess.run([sys.executable, "-m", "onnxrep.cli", "optimize", str(tmp_path / "x.onnx"), str(out)],
                         capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert bad.returncode == cli.EXIT_INPUT and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_help_lists_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["optimize", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for code in range(1, 7):
        assert f"  {code}  " in out


def test_compare_command(block, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert _run(["optimize", block, out, "-q"], capsys)[0] == 0
    code, stdout, _ = _run(["compare", block, out, "--input-shape", "x:2,8,16,16"], capsys)
    assert code == 0 and "(2,8,16,16)" in stdout


def test_report_flags_uneven_channel_ranges(tmp_path, capsys):
    """A BN that blows up one channel leaves a merged kernel that per-tensor INT8 would crush."""
    path = _repvgg_block(tmp_path / "block.onnx")
    model = onnx.load(path)
    gamma = next(t for t in model.graph.initializer if t.name == "g")
    g = numpy_helper.to_array(gamma).copy()
    g[3] = 500.0  # the identity branch's BN: channel 3 of the merged kernel grows ~500x
    gamma.CopyFrom(numpy_helper.from_array(g, "g"))
    onnx.save(model, path)
    code, stdout, _ = _run(["inspect", path, "--json", "-"], capsys)
    assert code == 0
    data = json.loads(stdout[stdout.index("{"):])
    (conv,) = data["merged_convs"]
    assert conv["out_channels"] == C and conv["kernel"] == [3, 3]
    assert conv["outlier_ratio"] > 50
    assert conv["weight_absmax"] == pytest.approx(conv["outlier_ratio"] * conv["channel_absmax_median"])
    assert "consider per-channel INT8 quantization" in stdout


def _custom_op_model(path, on_input: bool):
    """Conv -> MyOp (com.example); with ``on_input``, MyOp with an integer output (like NMS indices:
    not fed with random values) -> Cast -> Conv: nothing onnxruntime can check."""
    w = numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "W")
    if on_input:
        nodes = [helper.make_node("MyOp", ["x"], ["t"], domain="com.example", alpha=0.5),
                 helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
                 helper.make_node("Conv", ["tf", "W"], ["y"], pads=[1, 1, 1, 1])]
        out = "y"
    else:
        nodes = [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1]),
                 helper.make_node("MyOp", ["y"], ["z"], domain="com.example", alpha=0.5)]
        out = "z"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    if on_input:
        graph.value_info.append(helper.make_tensor_value_info("t", TensorProto.INT64, [1, 4, 8, 8]))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.example", 1)]), path)

def test_custom_op_model_verified_up_to_the_op(tmp_path, capsys):
    """onnxruntime cannot run a custom-domain op: the tensor feeding it is verified, exit 0."""
    src, out, js = tmp_path / "custom.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    _custom_op_model(src, on_input=False)
    code, stdout, _ = _run(["optimize", src, out, "--json", js], capsys)
    assert code == 0 and out.exists()
    v = json.loads(js.read_text())["verification"]
    assert v["partial"] is True and v["passed"] is True
    assert [(o["name"], o["what"]) for o in v["outputs"]] == [("y", "input of MyOp 'z'")]
    assert v["unverifiable"] == {"z": "computed from an op onnxruntime cannot run"}
    assert "not verified: z" in stdout and "com.example.MyOp" in stdout
    node = onnx.load(out).graph.node[1]
    assert (node.op_type, node.domain, node.attribute[0].f) == ("MyOp", "com.example", 0.5)


def test_custom_op_model_with_nothing_verifiable_needs_no_verify(tmp_path, capsys):
    """Every output and op input depends on an op onnxruntime cannot run: exit 5 with a hint, nothing
    written; --no-verify works."""
    src, out = tmp_path / "custom.onnx", tmp_path / "out.onnx"
    _custom_op_model(src, on_input=True)
    code, _, err = _run(["optimize", src, out, "-q"], capsys)
    assert code == cli.EXIT_VERIFY and "--no-verify" in err and err.count("\n") == 1
    assert not out.exists()
    code, _, _ = _run(["optimize", src, out, "-q", "--no-verify"], capsys)
    assert code == 0
    assert [n.op_type for n in onnx.load(out).graph.node] == ["MyOp", "Cast", "Conv"]


def test_max_sweeps_limit_is_reported(tmp_path, capsys):
    """A model needing two sweeps (border canonicalized, then collapsed) says when it was cut short."""
    from onnxrep import optimize
    g = _dbb_like_border_model()
    out1, rep1 = optimize(g, max_sweeps=1)
    out3, rep3 = optimize(g)
    assert rep1.notes == ["stopped after 1 sweeps with rewrites still happening (--max-sweeps)",
                          "rule 'canonicalize-border-fill' still rewriting after 1 sweeps (1 edit(s) in the last one)"]
    assert rep1.still_rewriting == ["canonicalize-border-fill"] and rep3.still_rewriting == []
    assert rep3.notes == [] and rep3.after.nodes < rep1.after.nodes
    assert [n.op_type for n in out3.graph.node] == ["Conv"]
    from onnxrep import verify
    result = verify(g, out3)
    assert result.max_abs <= 1e-4 * result.outputs[0].ref_max_abs


def _dbb_like_border_model():
    """x -> Conv1x1 -> Pad -> two border writes (Where) with the conv's bias -> Conv3x3."""
    rng = np.random.default_rng(5)
    c, h = 4, 6
    b1 = rng.normal(size=c).astype(np.float32)
    inside = np.zeros((1, 1, h + 2, h + 2), bool)
    inside[..., 1:-1, 1:-1] = True
    rows = np.zeros_like(inside)
    rows[..., 1:-1, :] = True
    f = lambda name, a: numpy_helper.from_array(np.asarray(a), name)  # noqa: E731
    inits = [f("w1", rng.normal(size=(c, c, 1, 1)).astype(np.float32)), f("b1", b1),
             f("w3", rng.normal(size=(c, c, 3, 3)).astype(np.float32)),
             f("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
             f("rows", rows), f("inside", inside), f("v", b1.reshape(1, c, 1, 1))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["y"]),
             helper.make_node("Pad", ["y", "pads"], ["p"], mode="constant"),
             helper.make_node("Where", ["rows", "p", "v"], ["q1"]),
             helper.make_node("Where", ["inside", "q1", "v"], ["q"]),
             helper.make_node("Conv", ["q", "w3"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, h])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, c, h, h])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _two_blocks(tmp_path: Path) -> Path:
    """Two RepVGG blocks in a row (one conv -> ReLU -> conv pair once merged), channel 0 of the first x 30."""
    rng = np.random.default_rng(3)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    w = rng.normal(size=(C, C, 3, 3)) * 0.3
    w[0] *= 30
    inits = [f("wa", w), f("ba", rng.normal(size=C)), f("wb", rng.normal(size=(C, C, 3, 3)) * 0.3)]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wb"], ["y"], pads=[1, 1, 1, 1], name="conv_b")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "two.onnx"
    onnx.save(model, path)
    return path


def test_equalize_measures_and_reports(tmp_path, capsys):
    src, out, js = _two_blocks(tmp_path), tmp_path / "eq.onnx", tmp_path / "r.json"
    code, stdout, err = _run(["optimize", src, out, "--equalize", "--json", js], capsys)
    assert code == 0, err
    assert "INT8 (onnxruntime static quantization" in stdout and "equalization kept at strength" in stdout
    int8 = json.loads(js.read_text())["int8"]
    labels = [r["model"] for r in int8["rows"]]
    assert labels[0] == "optimized" and labels[1] == "equalized (strength 1)"
    base, eq = ({e["scheme"]: e["rel"] for e in r["errors"]} for r in int8["rows"][:2])
    assert eq["per-tensor"] < 0.75 * base["per-tensor"] and eq["per-channel"] <= base["per-channel"]
    w = numpy_helper.to_array(next(t for t in onnx.load(out).graph.initializer if t.dims[0] == C and len(t.dims) == 4))
    assert np.abs(w).reshape(C, -1).max(axis=1).max() < 10  # channel 0 no longer 30x the others


def test_inspect_int8_and_calibration_file(tmp_path, capsys):
    src = _two_blocks(tmp_path)
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=np.random.default_rng(0).normal(size=(4, 1, C, 8, 8)).astype(np.float32))
    code, stdout, err = _run(["inspect", src, "--int8", "--calibration", cal], capsys)
    assert code == 0, err
    assert "per-tensor" in stdout and "per-channel" in stdout and not list(tmp_path.glob("*.onnx.*"))
    bad = tmp_path / "bad.npz"
    np.savez(bad, y=np.zeros((2, 1, C, 8, 8), np.float32))
    code, stdout, err = _run(["inspect", src, "--int8", "--calibration", bad], capsys)
    assert code == 3 and len(err.strip().splitlines()) == 1
    assert "no array for input(s) 'x'" in err
