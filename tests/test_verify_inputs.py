"""Verification inputs that fit the model (issue 22): scalar inputs the graph branches on take each
constant it compares them with, sizes the reference cannot run at are replaced by sizes it can, and
``--inputs FILE.npz`` / ``--input-value NAME=V`` give them by hand. Every test asserts numbers."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import onnxrep.verification.runs as runs_module
from onnxrep import cli
from onnxrep.pipeline import VerificationFailed, optimize_file
from onnxrep.verification import format_result, make_inputs, verify
from onnxrep.verification.choices import branch_values, size_constraints
from onnxrep.verification.given import parse_input_values, value_array
from onnxrep.verification.inputs import InputShapeError

OPSET = [helper.make_opsetid("", 17)]


def _model(nodes, inputs, outputs, inits=()):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits)),
                          opset_imports=OPSET)
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _body(name, scale=None):
    """An If branch: ``x * scale``, or (``scale=None``) a Reshape to (7, 7) that onnxruntime refuses."""
    out = helper.make_tensor_value_info(f"{name}_y", T.FLOAT, [None, None])
    if scale is None:
        nodes = [_const(f"{name}_s", np.array([7, 7], np.int64)), helper.make_node("Reshape", ["x", f"{name}_s"],
                                                                                     [f"{name}_y"])]
    else:
        nodes = [_const(f"{name}_c", np.array(scale, np.float32)), helper.make_node("Mul", ["x", f"{name}_c"],
                                                                                      [f"{name}_y"])]
    return helper.make_graph(nodes, name, [], [out])


def sample_rate_model(b_scale=2.0, else_scale=None):
    """``y = x`` if sr == 16000, ``x * b_scale`` if sr == 8000, else an error (or ``x * else_scale``)."""
    inner = helper.make_graph(
        [helper.make_node("If", ["is8"], ["inner_y"], then_branch=_body("B", b_scale),
                          else_branch=_body("E", else_scale))],
        "not16", [], [helper.make_tensor_value_info("inner_y", T.FLOAT, [None, None])])
    nodes = [_const("k16", np.array(16000, np.int64)), _const("k8", np.array(8000, np.int64)),
             helper.make_node("Equal", ["sr", "k16"], ["is16"]), helper.make_node("Equal", ["sr", "k8"], ["is8"]),
             helper.make_node("If", ["is16"], ["y"], then_branch=_body("A", 1.0), else_branch=inner)]
    return _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, ["N", 4]),
                          helper.make_tensor_value_info("sr", T.INT64, [])],
                  [helper.make_tensor_value_info("y", T.FLOAT, [None, None])])


def reflect_pad_model(pads_from_shape=False):
    """``y = Pad(x, 40 on both sides of axis 1, reflect)``: onnxruntime needs more than 40 elements there.
    ``pads_from_shape``: the pads are computed from Shape(x) (0 * size + 40), which the graph reading
    does not evaluate."""
    nodes = []
    if pads_from_shape:
        nodes += [helper.make_node("Shape", ["x"], ["s"]), _const("zero", np.zeros(2, np.int64)),
                  helper.make_node("Mul", ["s", "zero"], ["s0"]), _const("p", np.array([0, 40], np.int64)),
                  helper.make_node("Add", ["s0", "p"], ["half"]), helper.make_node("Concat", ["half", "half"],
                                                                                   ["pads"], axis=0)]
    else:
        nodes.append(_const("pads", np.array([0, 40, 0, 40], np.int64)))
    nodes.append(helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect"))
    return _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [1, "L"])],
                  [helper.make_tensor_value_info("y", T.FLOAT, [1, None])])


@pytest.fixture
def reference_runs(monkeypatch):
    """How many times the reference (the model the fixture is given) runs in onnxruntime."""
    calls = []
    real = runs_module.run

    def counting(model, feeds, **kw):
        calls.append({k: np.shape(v) for k, v in feeds.items()})
        return real(model, feeds, **kw)
    monkeypatch.setattr(runs_module, "run", counting)
    return calls


def _cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ branch values
def test_the_graph_reading_finds_the_constants_a_scalar_input_is_compared_with():
    assert branch_values(sample_rate_model(), ["sr"]) == {"sr": [16000, 8000]}
    ordered = _model([_const("two", np.array(2, np.int32)), helper.make_node("Greater", ["mode", "two"], ["g"]),
                      helper.make_node("Where", ["g", "x", "x"], ["y"])],
                     [helper.make_tensor_value_info("x", T.FLOAT, [3]),
                      helper.make_tensor_value_info("mode", T.INT32, [1])],
                     [helper.make_tensor_value_info("y", T.FLOAT, [3])])
    assert branch_values(ordered, ["mode"]) == {"mode": [1, 2, 3]}
    flag = _model([helper.make_node("Not", ["on"], ["off"]),
                   helper.make_node("If", ["off"], ["y"], then_branch=_body("A", 1.0), else_branch=_body("B", 2.0))],
                  [helper.make_tensor_value_info("x", T.FLOAT, [2, 2]), helper.make_tensor_value_info("on", T.BOOL, [])],
                  [helper.make_tensor_value_info("y", T.FLOAT, [None, None])])
    assert branch_values(flag, ["on"]) == {"on": [False, True]}
    assert branch_values(reflect_pad_model(), ["x"]) == {}


def test_each_branch_is_verified_and_a_branch_the_reference_refuses_is_left_out(reference_runs):
    model = sample_rate_model()
    drawn = int(make_inputs(model)["sr"])  # the seeded draw: none of the constants, and its branch fails
    assert drawn not in (16000, 8000)
    result = verify(model, model)
    assert result.passed and result.max_abs == 0.0
    assert result.runs == [{"values": {"sr": 16000}}, {"values": {"sr": 8000}}]
    assert list(result.skipped) == [f"sr={drawn}"]
    assert "cannot be reshaped to the requested shape" in result.skipped[f"sr={drawn}"]
    assert [int(s["sr"]) for s in result.samples] == [16000, 8000]
    assert len(reference_runs) == 3  # one per value; no size retry since two of them ran
    text = format_result(result).splitlines()
    assert text[0].split()[-2:] == ["worst", "run"] and text[2].split()[-1] == "sr=16000"
    assert text[3:5] == ["2 runs: sr=16000; sr=8000 (each output's row is its worst run)",
                         f"not run: sr={drawn} (the reference cannot run it: The input tensor cannot be reshaped to "
                         f"the requested shape. Input shape:{{1,4}}, requested shape:{{7,7}})"]
    # only one branch runs: the report says which value it was
    alone = verify(sample_rate_model(b_scale=None), sample_rate_model(b_scale=None))
    assert alone.runs == [{"values": {"sr": 16000}}] and list(alone.skipped) == ["sr=8000", f"sr={drawn}"]
    assert format_result(alone).splitlines()[3] == "1 run: sr=16000"
    d = result.to_dict()
    assert [r["label"] for r in d["runs"]] == ["sr=16000", "sr=8000"] and d["outputs"][0]["run"] == 0


def test_the_value_that_is_none_of_the_constants_is_verified_when_its_branch_runs():
    model = sample_rate_model(else_scale=3.0)
    drawn = int(make_inputs(model)["sr"])
    result = verify(model, sample_rate_model(else_scale=3.5))
    assert [r["values"]["sr"] for r in result.runs] == [16000, 8000, drawn]
    assert not result.passed and result.outputs[0].run == 2
    x = result.samples[2]["x"]
    assert result.max_abs == pytest.approx(0.5 * float(np.abs(x).max()), rel=1e-6)


def test_a_candidate_broken_only_in_branch_b_is_caught(tmp_path, capsys):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(sample_rate_model(), a)
    onnx.save(sample_rate_model(b_scale=2.5), b)
    result = verify(str(a), str(b))
    assert not result.passed and result.outputs[0].run == 1 and result.runs[1] == {"values": {"sr": 8000}}
    x = result.samples[1]["x"]
    assert result.max_abs == pytest.approx(0.5 * float(np.abs(x).max()), rel=1e-6)
    code, out, err = _cli(["compare", a, b], capsys)
    assert code == cli.EXIT_VERIFY, err
    row = next(line for line in out.splitlines() if line.startswith("y "))
    assert row.split()[-2:] == ["FAIL", "sr=8000"]
    assert "2 runs: sr=16000; sr=8000 (each output's row is its worst run)" in out
    # given one value, only that branch runs: branch A alone cannot tell them apart
    code, out, _ = _cli(["compare", a, b, "--input-value", "sr=16000"], capsys)
    assert code == 0 and "runs:" not in out and "worst run" not in out


def test_optimize_names_the_rule_and_the_value_that_broke_branch_b(tmp_path, capsys):
    src = tmp_path / "a.onnx"
    onnx.save(sample_rate_model(), src)
    rules = tmp_path / "bad_rule.py"
    rules.write_text(
        "import numpy as np\n"
        "from onnxrep import PatternRule, op, var, const\n"
        "class BreakDoubling(PatternRule):\n"
        "    '''A deliberately wrong rule: x * 2 -> x * 2.5.'''\n"
        "    name = 'break-doubling'\n"
        "    pattern = op('Mul', var('x'), const('k'))\n"
        "    def check(self, m):\n"
        "        return None if float(m['k']) == 2.0 else 'not 2'\n"
        "    def rewrite(self, m, b):\n"
        "        b.op('Mul', [m['x'], b.const('k', np.array(2.5, np.float32))], outputs=[m.output])\n")
    out = tmp_path / "out.onnx"
    code, _, err = _cli(["optimize", src, out, "--rules-from", rules, "--no-default-rules"], capsys)
    assert code == cli.EXIT_VERIFY and not out.exists()
    assert err.startswith("onnxrep: error: verification failed: rule 'break-doubling' at node ")
    assert "on 'y' at sr=8000, allowed" in err and err.count("\n") == 1


# ------------------------------------------------------------------ sizes
def test_an_ordinary_model_runs_the_reference_once(reference_runs):
    x = helper.make_tensor_value_info("x", T.FLOAT, ["N", 3, "H", "W"])
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [x],
                   [helper.make_tensor_value_info("y", T.FLOAT, ["N", 3, "H", "W"])])
    result = verify(model, model)
    assert reference_runs == [{"x": (1, 3, 32, 32)}]
    assert result.runs == [{"values": {}}] and result.notes == [] and result.skipped == {}


def test_a_reflect_pad_the_default_size_cannot_take_gets_the_size_it_needs(reference_runs):
    model = reflect_pad_model()
    assert size_constraints(model)["x"].min == {1: 41}
    result = verify(model, model)
    assert result.passed and result.input_shapes == {"x": (1, 41)}
    assert reference_runs == [{"x": (1, 32)}, {"x": (1, 41)}]
    assert result.notes == ["the reference cannot run at x:1x32 (Pad reflect: pre-pad (40) exceeds maximum "
                            "allowed (31) for axis 1. Input shape:{1,32}); verified at x:1x41"]
    assert result.to_dict()["notes"] == result.notes


def test_without_a_size_from_the_graph_the_sizes_grow(reference_runs):
    model = reflect_pad_model(pads_from_shape=True)
    assert "x" not in size_constraints(model)
    result = verify(model, model)
    assert result.passed and result.input_shapes == {"x": (1, 64)}
    assert [c["x"] for c in reference_runs] == [(1, 32), (1, 64)]


def test_a_recurrent_state_gets_the_batch_of_one_in_the_second_try(reference_runs):
    """``state (2, ?, 8)``'s dynamic dim is its batch: the input's batch (1) must match it."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),  # (N, 1)
             _const("zero", np.array(0, np.int64)), helper.make_node("Gather", ["state", "zero"], ["s0"]),  # (S, 8)
             helper.make_node("Concat", ["m", "s0"], ["y"], axis=1)]  # N == S
    model = _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [None, None]),
                           helper.make_tensor_value_info("state", T.FLOAT, [2, None, 8])],
                   [helper.make_tensor_value_info("y", T.FLOAT, [None, 9])])
    result = verify(model, model)
    assert result.passed and result.input_shapes == {"x": (1, 32), "state": (2, 1, 8)}
    assert [tuple(c.values()) for c in reference_runs] == [((1, 32), (2, 32, 8)), ((1, 32), (2, 1, 8))]


def test_when_no_size_works_the_message_names_the_inputs_and_the_flags(tmp_path, capsys):
    """Pads of 1000 behind a Sin (not followed by the graph reading): no size up to 512 runs."""
    nodes = [helper.make_node("Sin", ["x"], ["s"]), _const("pads", np.array([0, 1000, 0, 1000], np.int64)),
             helper.make_node("Pad", ["s", "pads"], ["p"], mode="reflect"),
             _const("k", np.array(3, np.int64)), helper.make_node("Equal", ["mode", "k"], ["is3"]),
             helper.make_node("Where", ["is3", "p", "p"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [1, None]),
                           helper.make_tensor_value_info("mode", T.INT64, [])],
                   [helper.make_tensor_value_info("y", T.FLOAT, [1, None])])
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    code, _, err = _cli(["optimize", src, tmp_path / "out.onnx"], capsys)
    assert code == cli.EXIT_VERIFY and err.count("\n") == 1
    assert err == ("onnxrep: error: verification could not run (reference model: cannot run at x:1x32, mode:scalar, "
                   "then with the dynamic dims not given at 32 to 512 (Pad reflect: pre-pad (1000) exceeds maximum "
                   "allowed (31) for axis 1. Input shape:{1,32}); give the sizes of x (1,?) with --input-shape "
                   "NAME:D1xD2..., the values of mode () int64 with --input-value NAME=V, or samples with --inputs "
                   "FILE.npz); nothing written (--no-verify skips the check)\n")
    code, out, err = _cli(["optimize", src, tmp_path / "out.onnx", "--input-shape", "x:1x1001"], capsys)
    assert code == 0, err
    assert "inputs x:1x1001, mode:scalar" in out and "2 runs: mode=3; mode=" in out


# ------------------------------------------------------------------ --inputs and --input-value
def test_inputs_file_every_sample_is_a_run(tmp_path, capsys):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(sample_rate_model(), a)
    onnx.save(sample_rate_model(b_scale=2.5), b)
    xs = np.random.default_rng(5).standard_normal((3, 2, 4)).astype(np.float32)
    npz = tmp_path / "in.npz"
    np.savez(npz, x=xs, sr=np.array([16000, 16000, 8000]))
    result = verify(str(a), str(b), inputs=str(npz))
    assert [r["sample"] for r in result.runs] == [0, 1, 2] and result.outputs[0].run == 2
    assert result.max_abs == pytest.approx(0.5 * float(np.abs(xs[2]).max()), rel=1e-6)
    np.testing.assert_array_equal(result.samples[1]["x"], xs[1])
    code, out, _ = _cli(["compare", a, b, "--inputs", npz, "--json", tmp_path / "r.json"], capsys)
    assert code == cli.EXIT_VERIFY and "3 runs: sample 0; sample 1; sample 2" in out
    assert [r["label"] for r in json.loads((tmp_path / "r.json").read_text())["runs"]] == \
        ["sample 0", "sample 1", "sample 2"]
    # a file may leave inputs out: sr then comes from --input-value (x keeps the file's samples)
    np.savez(npz, x=xs)
    code, out, err = _cli(["compare", a, b, "--inputs", npz, "--input-value", "sr=16000"], capsys)
    assert code == 0, err
    assert "inputs" not in out and "3 runs: sample 0, sr=16000; sample 1, sr=16000; sample 2, sr=16000" in out


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((2, 2, 4), np.float32), "rate": np.zeros(2)},
     "--inputs {npz}: array(s) 'rate' name no model input (the model's inputs: x (N,4) float, sr () int64)"),
    ({"x": np.zeros((2, 2, 5), np.float32)},
     "--inputs {npz}: input 'x': array of shape (2, 2, 5) does not match the model's (S, ?, 4) at axis 2"),
    ({"x": np.zeros((2, 2, 4), np.float32), "sr": np.zeros(3, np.int64)},
     "--inputs {npz}: inputs have different sample counts: 'x': 2, 'sr': 3"),
    ({"sr": np.zeros(2, np.float32)}, "--inputs {npz}: input 'sr': array of dtype float32 for a INT64 input"),
])
def test_a_bad_inputs_file_is_exit_2_naming_the_input(tmp_path, capsys, arrays, message):
    src, npz = tmp_path / "a.onnx", tmp_path / "in.npz"
    onnx.save(sample_rate_model(), src)
    np.savez(npz, **arrays)
    for command in (["compare", src, src], ["optimize", src, tmp_path / "out.onnx"], ["inspect", src, "--verify"]):
        code, out, err = _cli(command + ["--inputs", npz], capsys)
        assert (code, out, err) == (cli.EXIT_USAGE, "", f"onnxrep: error: {message.format(npz=npz)}\n")
    code, _, err = _cli(["compare", src, src, "--inputs", tmp_path / "missing.npz"], capsys)
    assert code == cli.EXIT_USAGE and err.endswith("missing.npz: no such file\n")


@pytest.mark.parametrize("args, message", [
    (["rate=3"], "--input-value: value given for unknown input(s) 'rate'; the model's inputs: x (N,4) float, "
                 "sr () int64"),
    (["sr=16k"], "--input-value: input 'sr': '16k' is not an integer (the model's inputs: x (N,4) float, "
                 "sr () int64)"),
    (["sr=1e30"], "--input-value: input 'sr': '1e30' is not an integer (the model's inputs: x (N,4) float, "
                  "sr () int64)"),
    (["sr"], "--input-value: bad input value 'sr': expected NAME=V (e.g. sr=16000)"),
    (["sr=1", "sr=2"], "--input-value: bad input values: input 'sr' given more than once"),
    (["x=yes"], "--input-value: input 'x': 'yes' is not a number (the model's inputs: x (N,4) float, "
                "sr () int64)"),
])
def test_a_bad_input_value_is_exit_2_naming_the_inputs(tmp_path, capsys, args, message):
    src = tmp_path / "a.onnx"
    onnx.save(sample_rate_model(), src)
    argv = [a for v in args for a in ("--input-value", v)]
    for command in (["compare", src, src], ["optimize", src, tmp_path / "out.onnx"]):
        assert _cli(command + argv, capsys) == (cli.EXIT_USAGE, "", f"onnxrep: error: {message}\n")


def test_input_values_by_dtype_and_broadcast():
    def vi(t, shape):
        return helper.make_tensor_value_info("v", t, shape)
    assert value_array(vi(T.INT64, []), "16000").tolist() == 16000
    assert value_array(vi(T.BOOL, []), "True").dtype == np.bool_ and value_array(vi(T.BOOL, []), "0").tolist() is False
    half = value_array(vi(T.FLOAT16, [2, 3]), "0.5", (2, 3))
    assert half.dtype == np.float16 and half.shape == (2, 3) and float(half.sum()) == 3.0
    assert value_array(vi(T.INT32, []), 8000.0).tolist() == 8000  # an integral float from the Python API
    with pytest.raises(ValueError, match=r"'300' is out of uint8's range \(0 to 255\)"):
        value_array(vi(T.UINT8, []), "300")
    with pytest.raises(ValueError, match=r"a value of shape \(3,\) does not broadcast to the input's shape \(2, 2\)"):
        value_array(vi(T.FLOAT, [2, 2]), np.ones(3), (2, 2))
    assert parse_input_values(["a:b=1", "c==2"]) == {"a:b": "1", "c=": "2"}


def test_the_python_api_takes_inputs_and_input_values(tmp_path):
    src = tmp_path / "a.onnx"
    onnx.save(sample_rate_model(), src)
    report = optimize_file(src, tmp_path / "out.onnx", input_values={"sr": 8000}, input_shapes={"x": (3, 4)})
    v = report.verification
    assert v.passed and v.runs == [{"values": {"sr": 8000}}] and v.input_shapes == {"x": (3, 4), "sr": ()}
    assert float(v.outputs[0].ref_max_abs) == pytest.approx(2 * float(np.abs(v.samples[0]["x"]).max()))
    with pytest.raises(InputShapeError, match="unknown input"):
        verify(str(src), str(src), input_values={"rate": 1})
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((2, 1, 4), np.float32), sr=np.array([8000, 16000]))
    v = optimize_file(src, None, inputs=str(npz)).verification
    assert [r["sample"] for r in v.runs] == [0, 1] and v.outputs[0].ref_max_abs == 2.0
    with pytest.raises(VerificationFailed):  # the else branch, given: the reference cannot run it
        optimize_file(src, None, input_values={"sr": 1})


def test_integer_inputs_stay_inside_the_tables_they_index():
    """token_type_ids into a 2-row embedding (through a Cast) is drawn in [0, 2); an id into a 10-row table and
    an integer that indexes nothing keep [0, 4): the reference runs without flags (minilm-l6-int8)."""
    from onnxrep.verification.inputs import index_bounds, make_inputs

    table2 = onnx.numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "types")
    table10 = onnx.numpy_helper.from_array(np.arange(30, dtype=np.float32).reshape(10, 3), "words")
    nodes = [helper.make_node("Cast", ["tt"], ["tt64"], to=T.INT64),
             helper.make_node("Gather", ["types", "tt64"], ["e1"]),
             helper.make_node("Gather", ["words", "ids"], ["e2"]),
             helper.make_node("Add", ["e1", "e2"], ["y"]),
             helper.make_node("Cast", ["n"], ["nf"], to=T.FLOAT),
             helper.make_node("Unsqueeze", ["nf", "last"], ["nf3"]),
             helper.make_node("Mul", ["y", "nf3"], ["z"])]
    ints = [helper.make_tensor_value_info(k, t, [1, 64]) for k, t in (("tt", T.INT32),
                                                                     ("ids", T.INT64),
                                                                     ("n", T.INT64))]
    graph = helper.make_graph(nodes, "emb", ints, [helper.make_tensor_value_info("z", T.FLOAT, [1, 64, 3])],
                              [table2, table10, onnx.numpy_helper.from_array(np.array([2], np.int64), "last")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert index_bounds(m.graph, ["tt", "ids", "n"]) == {"tt": 2, "ids": 10}
    feeds = make_inputs(m)
    assert sorted(np.unique(feeds["tt"]).tolist()) == [0, 1]
    assert sorted(np.unique(feeds["ids"]).tolist()) == [0, 1, 2, 3] == sorted(np.unique(feeds["n"]).tolist())
    assert verify(m, m).passed
