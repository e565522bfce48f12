"""Tests for onnxrep.verify: every test asserts numbers or exact behaviour."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import onnxrep.graph.io as io
import onnxrep.verification.sessions as runtime
import onnxrep.verification.compare as V
from onnxrep.verification.inputs import InputShapeError
from onnxrep.verification import (
    OutputDiff,
    VerifyError,
    VerifyResult,
    format_result,
    make_inputs,
    parse_input_shapes,
    run,
    verify,
)

OPSET = [helper.make_opsetid("", 17)]


# --------------------------------------------------------------------------- builders


def _model(nodes, inputs, outputs, inits=(), name="g"):
    g = helper.make_graph(nodes, name, list(inputs), list(outputs), initializer=list(inits))
    m = helper.make_model(g, opset_imports=OPSET)
    m.ir_version = 8
    return m


def conv_model(w: np.ndarray, b: np.ndarray, x_shape=(1, 3, 8, 8)):
    """y = Conv(x, W, B): 3x3 kernel, pad 1, stride 1 (spatial size preserved)."""
    out_shape = [x_shape[0], w.shape[0], x_shape[2], x_shape[3]]
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1] * 4)
    return _model(
        [node],
        [helper.make_tensor_value_info("x", T.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", T.FLOAT, out_shape)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )


def add_model(b: np.ndarray, shape=(2, 4, 5), dtype=T.FLOAT):
    return _model(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        [helper.make_tensor_value_info("x", dtype, list(shape))],
        [helper.make_tensor_value_info("y", dtype, list(shape))],
        [numpy_helper.from_array(b, "b")],
    )


def two_output_model(b1: np.ndarray, w2: np.ndarray):
    shape = [3, 6]
    return _model(
        [helper.make_node("Add", ["x", "b1"], ["y1"]), helper.make_node("Mul", ["x", "w2"], ["y2"])],
        [helper.make_tensor_value_info("x", T.FLOAT, shape)],
        [
            helper.make_tensor_value_info("y1", T.FLOAT, shape),
            helper.make_tensor_value_info("y2", T.FLOAT, shape),
        ],
        [numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")],
    )


def unary_model(op: str, shape=(4, 16)):
    return _model(
        [helper.make_node(op, ["x"], ["y"])],
        [helper.make_tensor_value_info("x", T.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", T.FLOAT, list(shape))],
    )


def _rng_weights(seed=1):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    return w, b


# --------------------------------------------------------------------------- verify: numbers


def test_identical_models_zero_error_and_pass():
    w, b = _rng_weights()
    ref = conv_model(w, b)
    cand = conv_model(w.copy(), b.copy())
    r = verify(ref, cand, rtol=0.0, atol=0.0)
    assert r.passed is True
    assert r.max_abs == 0.0 and r.max_rel == 0.0
    assert [o.name for o in r.outputs] == ["y"]
    assert r.outputs[0].shape == (1, 4, 8, 8)
    assert r.outputs[0].ref_max_abs > 0.0
    assert r.input_shapes == {"x": (1, 3, 8, 8)}
    assert (r.rtol, r.atol, r.seed) == (0.0, 0.0, 0)


def test_conv_weight_perturbation_matches_analytic_error():
    # Perturbing the centre tap W[o, c, 1, 1] by d (pad 1) changes y[:, o] by
    # exactly d * x[:, c] everywhere, so max_abs == |d| * max|x[:, c]|.
    w, b = _rng_weights()
    d, o, c = 0.01, 2, 1
    w2 = w.copy()
    w2[o, c, 1, 1] += d
    ref, cand = conv_model(w, b), conv_model(w2, b)
    x = make_inputs(ref, seed=3)["x"]
    expected = abs(d) * float(np.max(np.abs(x[:, c].astype(np.float64))))

    r = verify(ref, cand, seed=3, rtol=0.0, atol=1e-5)
    assert r.max_abs == pytest.approx(expected, rel=1e-3)
    assert r.passed is False
    y_ref = run(ref, {"x": x})["y"]
    assert r.outputs[0].ref_max_abs == pytest.approx(float(np.max(np.abs(y_ref))), rel=1e-7)
    assert r.max_rel == pytest.approx(r.max_abs / r.outputs[0].ref_max_abs, rel=1e-12)
    # loose enough tolerance passes
    assert verify(ref, cand, seed=3, rtol=0.0, atol=2 * expected).passed is True


def test_pass_threshold_is_rtol_times_ref_max_plus_atol():
    b = np.linspace(-1, 1, 5, dtype=np.float32)
    d = np.float32(1e-3)
    ref, cand = add_model(b), add_model(b + d)
    r = verify(ref, cand, rtol=0.0, atol=0.0)
    diff = r.outputs[0]
    assert diff.max_abs == pytest.approx(1e-3, rel=1e-3)
    R = diff.ref_max_abs
    assert R > 1.0
    assert verify(ref, cand, rtol=1.01 * diff.max_abs / R, atol=0.0).passed is True
    assert verify(ref, cand, rtol=0.99 * diff.max_abs / R, atol=0.0).passed is False
    assert verify(ref, cand, rtol=0.0, atol=1.01 * diff.max_abs).passed is True
    assert verify(ref, cand, rtol=0.0, atol=0.99 * diff.max_abs).passed is False
    assert diff.passes(0.0, diff.max_abs) is True


def test_batchnorm_folded_into_mul_add_passes_default_tolerance():
    rng = np.random.default_rng(7)
    C = 6
    scale, bias = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    mean = rng.standard_normal(C).astype(np.float32)
    var = rng.uniform(0.5, 2.0, C).astype(np.float32)
    eps = 1e-5
    shape = [2, C, 5, 5]
    xi = helper.make_tensor_value_info("x", T.FLOAT, shape)
    yo = helper.make_tensor_value_info("y", T.FLOAT, shape)
    ref = _model(
        [helper.make_node("BatchNormalization", ["x", "s", "bb", "m", "v"], ["y"], epsilon=eps)],
        [xi],
        [yo],
        [numpy_helper.from_array(a, n) for a, n in [(scale, "s"), (bias, "bb"), (mean, "m"), (var, "v")]],
    )
    k = (scale / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
    sh = (bias - mean * k).astype(np.float32)
    cand = _model(
        [helper.make_node("Mul", ["x", "k"], ["t"]), helper.make_node("Add", ["t", "sh"], ["y"])],
        [xi],
        [yo],
        [numpy_helper.from_array(k.reshape(C, 1, 1), "k"), numpy_helper.from_array(sh.reshape(C, 1, 1), "sh")],
    )
    r = verify(ref, cand)
    assert r.passed is True
    assert 0.0 <= r.max_abs < 1e-5
    # a wrong fold (scale / var instead of scale / sqrt(var + eps)) is caught
    bad = _model(
        [helper.make_node("Mul", ["x", "k"], ["t"]), helper.make_node("Add", ["t", "sh"], ["y"])],
        [xi],
        [yo],
        [numpy_helper.from_array((scale / var).reshape(C, 1, 1), "k"), numpy_helper.from_array(sh.reshape(C, 1, 1), "sh")],
    )
    rb = verify(ref, bad)
    assert rb.passed is False and rb.max_abs > 1e-2


def test_two_outputs_only_perturbed_output_differs():
    rng = np.random.default_rng(0)
    b1 = rng.standard_normal(6).astype(np.float32)
    w2 = rng.standard_normal(6).astype(np.float32)
    d = 0.25
    b1p = b1.copy()
    b1p[4] += d
    r = verify(two_output_model(b1, w2), two_output_model(b1p, w2), rtol=1e-4, atol=1e-5)
    assert [o.name for o in r.outputs] == ["y1", "y2"]
    y1, y2 = r.outputs
    assert y1.max_abs == pytest.approx(d, rel=1e-5)
    assert y2.max_abs == 0.0 and y2.max_rel == 0.0
    assert r.max_abs == y1.max_abs
    assert r.max_rel == pytest.approx(d / y1.ref_max_abs, rel=1e-5)
    assert r.passed is False
    assert y2.passes(r.rtol, r.atol) is True and y1.passes(r.rtol, r.atol) is False


def test_nan_inf_handling():
    # identical NaN positions (sqrt of negatives) count as equal
    r = verify(unary_model("Sqrt"), unary_model("Sqrt"), rtol=0.0, atol=0.0)
    x = make_inputs(unary_model("Sqrt"))["x"]
    assert (x < 0).any()
    assert r.max_abs == 0.0 and r.passed is True
    assert r.outputs[0].ref_max_abs == pytest.approx(float(np.sqrt(x[x >= 0].max())), rel=1e-6)

    # candidate NaN where the reference is finite -> infinite error
    sqrt_abs = _model(
        [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Sqrt", ["a"], ["y"])],
        [helper.make_tensor_value_info("x", T.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", T.FLOAT, [4, 16])],
    )
    r2 = verify(sqrt_abs, unary_model("Sqrt"), rtol=1.0, atol=1.0)
    assert r2.max_abs == float("inf") and r2.max_rel == float("inf")
    assert r2.passed is False
    d = r2.to_dict()
    json.dumps(d, allow_nan=False)  # strict JSON
    assert d["max_abs"] == "inf" and d["outputs"][0]["max_abs"] == "inf"
    assert d["passed"] is False

    # candidate inf where the reference is finite
    b = np.zeros(5, np.float32)
    binf = b.copy()
    binf[2] = np.inf
    r3 = verify(add_model(b), add_model(binf), rtol=1.0, atol=1.0)
    assert r3.max_abs == float("inf") and r3.passed is False


def test_compare_zero_reference():
    z = np.zeros((2, 2), np.float32)
    assert V._compare("z", z, z) == OutputDiff("z", (2, 2), 0.0, 0.0, 0.0)
    o = V._compare("z", z, z + np.float32(0.5))
    assert (o.max_abs, o.max_rel, o.ref_max_abs) == (0.5, float("inf"), 0.0)
    inf = np.array([np.inf, -np.inf, np.nan])
    assert V._compare("i", inf, inf.copy()).max_abs == 0.0
    assert V._compare("i", inf, inf[[1, 0, 2]]).max_abs == float("inf")


def test_to_dict_is_json_and_numbers():
    w, b = _rng_weights()
    r = verify(conv_model(w, b), conv_model(w, b + np.float32(0.5)), seed=5, rtol=1e-3, atol=1e-4)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["passed"] is False
    assert d["seed"] == 5 and d["rtol"] == 1e-3 and d["atol"] == 1e-4
    assert d["input_shapes"] == {"x": [1, 3, 8, 8]}
    assert d["max_abs"] == pytest.approx(0.5, rel=1e-5)
    assert d["outputs"][0]["name"] == "y" and d["outputs"][0]["shape"] == [1, 4, 8, 8]
    assert d["outputs"][0]["ref_max_abs"] == r.outputs[0].ref_max_abs


def test_explicit_inputs_used_and_candidate_may_drop_unused_input():
    ref = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", T.FLOAT, [2, 3]), helper.make_tensor_value_info("u", T.FLOAT, [1])],
        [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])],
    )
    cand = unary_model("Relu", shape=(2, 3))
    feeds = {"x": np.array([[-1, 2, -3], [4, -5, 6]], np.float32), "u": np.zeros(1, np.float32)}
    r = verify(ref, cand, inputs=feeds, rtol=0, atol=0)
    assert r.passed and r.max_abs == 0.0
    assert r.outputs[0].ref_max_abs == 6.0
    assert r.input_shapes == {"x": (2, 3), "u": (1,)}
    # candidate requiring an input the reference does not have
    with pytest.raises(VerifyError, match="needs input"):
        verify(cand, ref, inputs={"x": feeds["x"]})


# --------------------------------------------------------------------------- verify: mismatches


def test_output_name_mismatch_raises():
    ref = unary_model("Relu")
    cand = _model(
        [helper.make_node("Relu", ["x"], ["z"])],
        [helper.make_tensor_value_info("x", T.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("z", T.FLOAT, [4, 16])],
    )
    with pytest.raises(VerifyError) as ei:
        verify(ref, cand)
    assert str(ei.value) == "output names differ: missing in candidate: y; extra in candidate: z"


def test_output_shape_mismatch_raises():
    w, b = _rng_weights()
    ref = conv_model(w, b)
    cand = conv_model(w[:2].copy(), b[:2].copy())
    with pytest.raises(VerifyError) as ei:
        verify(ref, cand)
    assert str(ei.value) == "output 'y': shape (1, 2, 8, 8) in candidate != (1, 4, 8, 8) in reference"


# --------------------------------------------------------------------------- ORT failures


def _bad_op_model():
    # unknown op in the ai.onnx domain; built without the checker
    return _model(
        [helper.make_node("NoSuchOpXyz", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", T.FLOAT, [2])],
        [helper.make_tensor_value_info("y", T.FLOAT, [2])],
    )


def test_ort_session_failure_is_one_line_verify_error():
    with pytest.raises(VerifyError) as ei:
        run(_bad_op_model(), {"x": np.zeros(2, np.float32)})
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith("onnxruntime could not create a session: ")
    assert "NoSuchOpXyz" in msg

    with pytest.raises(VerifyError) as ei2:
        verify(unary_model("Relu", shape=(2,)), _bad_op_model())
    assert "\n" not in str(ei2.value)
    assert str(ei2.value).startswith("candidate model: onnxruntime could not create a session: ")


def test_ort_run_failure_is_one_line_verify_error():
    with pytest.raises(VerifyError) as ei:
        run(unary_model("Relu", shape=(2, 3)), {"x": np.zeros((5, 7), np.float32)})
    assert "\n" not in str(ei.value)
    assert str(ei.value).startswith("onnxruntime run failed: ")


def test_verify_error_message_is_first_line():
    assert str(VerifyError("first line\nsecond line\n")) == "first line"
    assert str(VerifyError("\n  \n  real\nmore")) == "real"


# --------------------------------------------------------------------------- make_inputs


def test_make_inputs_static_and_deterministic():
    w, b = _rng_weights()
    m = conv_model(w, b)
    a, a2, c = make_inputs(m, seed=0), make_inputs(m, seed=0), make_inputs(m, seed=1)
    assert list(a) == ["x"]  # initializers W, B are not inputs
    assert a["x"].shape == (1, 3, 8, 8) and a["x"].dtype == np.float32
    np.testing.assert_array_equal(a["x"], a2["x"])
    assert not np.array_equal(a["x"], c["x"])
    expected = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(a["x"], expected)


def test_initializer_listed_in_graph_input_is_not_an_input():
    m = add_model(np.ones(5, np.float32))
    m.graph.input.append(helper.make_tensor_value_info("b", T.FLOAT, [5]))  # IR<4 style
    assert list(make_inputs(m)) == ["x"]


def test_dynamic_dims_defaults_and_user_shapes():
    w, b = _rng_weights()
    m = conv_model(w, b, x_shape=("N", 3, "H", "W"))
    assert make_inputs(m)["x"].shape == (1, 3, 32, 32)
    assert make_inputs(m, {"x": (2, 3, 8, 9)})["x"].shape == (2, 3, 8, 9)
    assert make_inputs(m, {"": (4, 3, 5, 5)})["x"].shape == (4, 3, 5, 5)
    r = verify(m, m, input_shapes={"x": (2, 3, 8, 8)})
    assert r.input_shapes == {"x": (2, 3, 8, 8)}
    assert r.outputs[0].shape == (2, 4, 8, 8)
    assert r.max_abs == 0.0
    r2 = verify(m, m)
    assert r2.outputs[0].shape == (1, 4, 32, 32)

    # dims with neither dim_value nor dim_param are dynamic too
    m2 = unary_model("Relu", shape=(4, 16))
    for d in m2.graph.input[0].type.tensor_type.shape.dim:
        d.Clear()
    assert make_inputs(m2)["x"].shape == (1, 32)


def test_shared_dim_param_follows_user_shape():
    m = _model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [helper.make_tensor_value_info("a", T.FLOAT, ["N", 4]), helper.make_tensor_value_info("b", T.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", 4])],
    )
    f = make_inputs(m, {"a": (5, 4)})
    assert f["a"].shape == (5, 4) and f["b"].shape == (5, 4)
    assert make_inputs(m)["b"].shape == (1, 4)


def test_bad_user_shapes_raise_value_error():
    w, b = _rng_weights()
    m = conv_model(w, b, x_shape=("N", 3, "H", "W"))
    cases = [
        ({"x": (1, 4, 8, 8)}, "conflicts with model shape (N,3,H,W) at axis 1 (fixed to 3)"),
        ({"x": (1, 3, 8)}, "has rank 3 but the model declares rank 4"),
        ({"nope": (1, 3, 8, 8)}, "unknown input"),
    ]
    for shapes, text in cases:
        with pytest.raises(InputShapeError) as ei:
            make_inputs(m, shapes)
        assert text in str(ei.value)
        assert "\n" not in str(ei.value)
    two = two_output_model(np.zeros(6, np.float32), np.zeros(6, np.float32))
    two_in = _model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [helper.make_tensor_value_info("a", T.FLOAT, [2]), helper.make_tensor_value_info("b", T.FLOAT, [2])],
        [helper.make_tensor_value_info("y", T.FLOAT, [2])],
    )
    assert list(make_inputs(two, {"": (3, 6)})) == ["x"]
    with pytest.raises(ValueError, match="exactly one input"):
        make_inputs(two_in, {"": (2,)})


def test_shapeless_input_requires_user_shape():
    m = unary_model("Relu")
    m.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(ValueError, match="no shape information"):
        make_inputs(m)
    assert make_inputs(m, {"x": (3, 2)})["x"].shape == (3, 2)


def test_fp16_model():
    c = np.full((2, 4, 5), 0.5, np.float16)
    m = add_model(c, dtype=T.FLOAT16)
    f = make_inputs(m, seed=2)
    assert f["x"].dtype == np.float16
    expected_x = np.random.default_rng(2).standard_normal((2, 4, 5)).astype(np.float16)
    np.testing.assert_array_equal(f["x"], expected_x)
    y = run(m, f)["y"]
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), (f["x"] + c).astype(np.float32), rtol=0, atol=1e-3)
    r = verify(m, m, seed=2, rtol=0, atol=0)
    assert r.max_abs == 0.0 and r.passed


def test_bfloat16_input_and_output():
    m = _model(
        [helper.make_node("Identity", ["x"], ["z"]), helper.make_node("Cast", ["x"], ["y"], to=T.FLOAT)],
        [helper.make_tensor_value_info("x", T.BFLOAT16, [3, 4])],
        [helper.make_tensor_value_info("z", T.BFLOAT16, [3, 4]), helper.make_tensor_value_info("y", T.FLOAT, [3, 4])],
    )
    f = make_inputs(m, seed=4)
    assert f["x"].dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(
        f["x"], np.random.default_rng(4).standard_normal((3, 4)).astype(ml_dtypes.bfloat16)
    )
    out = run(m, f)
    assert out["z"].dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(out["z"].view(np.uint16), f["x"].view(np.uint16))
    np.testing.assert_array_equal(out["y"], f["x"].astype(np.float32))
    r = verify(m, m, rtol=0, atol=0)
    assert r.max_abs == 0.0 and r.passed


def test_int64_and_bool_inputs():
    c = np.arange(64, dtype=np.int64).reshape(8, 8)
    m = _model(
        [helper.make_node("Add", ["i", "c"], ["y"]), helper.make_node("Not", ["flag"], ["nf"])],
        [helper.make_tensor_value_info("i", T.INT64, [8, 8]), helper.make_tensor_value_info("flag", T.BOOL, [16])],
        [helper.make_tensor_value_info("y", T.INT64, [8, 8]), helper.make_tensor_value_info("nf", T.BOOL, [16])],
        [numpy_helper.from_array(c, "c")],
    )
    f = make_inputs(m, seed=0)
    assert f["i"].dtype == np.int64 and f["flag"].dtype == np.bool_
    assert set(np.unique(f["i"]).tolist()) == {0, 1, 2, 3}
    assert set(np.unique(f["flag"]).tolist()) == {False, True}
    out = run(m, f)
    np.testing.assert_array_equal(out["y"], f["i"] + c)
    np.testing.assert_array_equal(out["nf"], ~f["flag"])
    r = verify(m, m, rtol=0, atol=0)
    assert r.passed and r.max_abs == 0.0
    c2 = c.copy()
    c2[3, 3] += 7
    m2 = _model(list(m.graph.node), list(m.graph.input), list(m.graph.output), [numpy_helper.from_array(c2, "c")])
    r2 = verify(m, m2)
    assert r2.outputs[0].max_abs == 7.0 and r2.outputs[1].max_abs == 0.0 and not r2.passed


def test_unsupported_input_dtype():
    m = _model(
        [helper.make_node("Identity", ["s"], ["y"])],
        [helper.make_tensor_value_info("s", T.STRING, [2])],
        [helper.make_tensor_value_info("y", T.STRING, [2])],
    )
    with pytest.raises(ValueError, match="unsupported dtype STRING"):
        make_inputs(m)


# --------------------------------------------------------------------------- parse_input_shapes


def test_parse_input_shapes_valid():
    assert parse_input_shapes(["x:1,3,224,224"]) == {"x": (1, 3, 224, 224)}
    assert parse_input_shapes(["1,3,224,224"]) == {"": (1, 3, 224, 224)}
    assert parse_input_shapes(["a:1,2", "b:3"]) == {"a": (1, 2), "b": (3,)}
    assert parse_input_shapes(["input:0:1,3"]) == {"input:0": (1, 3)}
    assert parse_input_shapes([" x : 2 , 5 "]) == {"x": (2, 5)}
    assert parse_input_shapes([]) == {}
    # the form reports print (``input:1x3x64x64``), with a name, bare, or mixed with commas
    assert parse_input_shapes(["x:1x3x224x224"]) == {"x": (1, 3, 224, 224)}
    assert parse_input_shapes(["1x3x224x224"]) == {"": (1, 3, 224, 224)}
    assert parse_input_shapes(["input:0:1X3", "b:7"]) == {"input:0": (1, 3), "b": (7,)}
    assert parse_input_shapes(["x:2x5,6"]) == {"x": (2, 5, 6)}


@pytest.mark.parametrize(
    "specs, text",
    [
        (["x:"], "expected NAME:D1,D2,... or NAME:D1xD2x..."),
        ([""], "expected NAME:D1,D2,... or NAME:D1xD2x..."),
        (["x:1x3,"], "dimension '' is not an integer"),
        (["x:1x3xH"], "dimension 'H' is not an integer"),
        (["x:1,a"], "dimension 'a' is not an integer"),
        (["x:1,,2"], "dimension '' is not an integer"),
        (["x:1,0"], "dimension 0 must be >= 1"),
        (["x:-1,3"], "dimension -1 must be >= 1"),
        ([":1,2"], "empty input name"),
        (["x:1", "x:2"], "input 'x' given more than once"),
        (["1,2", "x:3"], "unnamed shape is only allowed as the single shape spec"),
        (["1,2", "3"], "the unnamed input given more than once"),
    ],
)
def test_parse_input_shapes_errors(specs, text):
    with pytest.raises(ValueError) as ei:
        parse_input_shapes(specs)
    assert text in str(ei.value)
    assert "\n" not in str(ei.value)


# --------------------------------------------------------------------------- paths & external data


def test_path_models_match_in_memory(tmp_path):
    w, b = _rng_weights()
    m = conv_model(w, b)
    p = tmp_path / "m.onnx"
    onnx.save_model(m, str(p))
    f = make_inputs(m)
    np.testing.assert_array_equal(make_inputs(p)["x"], f["x"])
    np.testing.assert_array_equal(run(p, f)["y"], run(m, f)["y"])
    r = verify(str(p), m, rtol=0, atol=0)
    assert r.max_abs == 0.0 and r.passed


def test_path_with_external_data_and_unloaded_proto(tmp_path):
    w, b = _rng_weights()
    w = np.tile(w, (8, 1, 1, 1))  # 32x3x3x3 floats > 1 KiB, goes external
    b = np.tile(b, 8)
    m = conv_model(w, b)
    p = tmp_path / "ext.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(m)  # save_model(save_as_external_data=True) mutates its argument
    onnx.save_model(saved, str(p), save_as_external_data=True, location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").stat().st_size >= w.nbytes
    f = make_inputs(p)
    np.testing.assert_array_equal(run(p, f)["y"], run(m, f)["y"])
    unloaded = onnx.load(str(p), load_external_data=False)
    with pytest.raises(VerifyError, match="external data that is not loaded"):
        run(unloaded, f)


def test_large_model_route_via_external_data(monkeypatch):
    w, b = _rng_weights()
    w = np.tile(w, (8, 1, 1, 1))
    b = np.tile(b, 8)
    m = conv_model(w, b)
    f = make_inputs(m, seed=9)
    in_memory = run(m, f)["y"]
    before = m.SerializeToString()

    seen = []
    real_session = ort.InferenceSession

    def spy(source, *args, **kwargs):
        entry = {"source": source}
        if isinstance(source, str):
            d = os.path.dirname(source)
            entry["dir"] = d
            entry["files"] = {n: os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)}
        seen.append(entry)
        return real_session(source, *args, **kwargs)

    monkeypatch.setattr(runtime.ort, "InferenceSession", spy)
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 100)
    assert m.ByteSize() > 100
    external = run(m, f)["y"]

    assert len(seen) == 1 and isinstance(seen[0]["source"], str)
    files = seen[0]["files"]
    assert set(files) == {"model.onnx", "model.onnx.data"}
    assert files["model.onnx.data"] >= w.nbytes
    assert files["model.onnx"] < w.nbytes  # weights really are external
    assert not os.path.exists(seen[0]["dir"])  # temp dir cleaned up
    np.testing.assert_array_equal(external, in_memory)
    assert m.SerializeToString() == before  # caller's model untouched

    # verify() through the same route agrees exactly with in-memory numbers
    r_ext = verify(m, m, seed=9, rtol=0, atol=0)
    monkeypatch.undo()
    r_mem = verify(m, m, seed=9, rtol=0, atol=0)
    assert r_ext.outputs == r_mem.outputs and r_ext.max_abs == 0.0


def test_intra_op_threads_same_numbers():
    w, b = _rng_weights()
    m = conv_model(w, b)
    f = make_inputs(m)
    np.testing.assert_array_equal(run(m, f, intra_op_threads=1)["y"], run(m, f)["y"])


# --------------------------------------------------------------------------- format_result


def test_format_result_exact():
    res = VerifyResult(
        outputs=[
            OutputDiff("y", (1, 4, 8, 8), 0.0, 0.0, 3.0, 1e-4, 1e-5, 0.0, "given"),
            OutputDiff("logits_long", (2, 10), 1.5e-3, 5e-4, 3.0, 1e-4, 1e-5, 0.0, "given"),
        ],
        input_shapes={"x": (1, 3, 8, 8)},
        rtol=1e-4,
        atol=1e-5,
        seed=0,
    )
    assert res.passed is False
    assert format_result(res) == (
        "tensor       shape      max abs err    allowed  max rel err  precision  status\n"
        "-----------  ---------  -----------  ---------  -----------  ---------  ------\n"
        "y            (1,4,8,8)    0.000e+00  3.100e-04    0.000e+00  given      ok\n"
        "logits_long  (2,10)       1.500e-03  3.100e-04    5.000e-04  given      FAIL\n"
        "FAILED (tolerance given: 0.0001*max|ref| + 1e-05; seed=0)"
    )
    res.outputs.pop()
    assert format_result(res).splitlines()[-1] == "PASSED (tolerance given: 0.0001*max|ref| + 1e-05; seed=0)"


def test_format_result_partial_and_noise():
    res = VerifyResult(
        outputs=[OutputDiff("boxes", (2, 10), 1.5e-3, 5e-4, 3.0, 2.5e-3, 2.5e-3, 1e-4, "float16",
                            "input of EfficientNMS_TRT 'nms'")],
        input_shapes={"x": (1, 3, 8, 8)}, rtol=None, atol=None, seed=0,
        unverifiable={"num_dets": "computed from an op onnxruntime cannot run"}, blocked=["EfficientNMS_TRT 'nms'"])
    assert res.outputs[0].allowed == pytest.approx(2.5e-3 * 3 + 2.5e-3 + 2e-4)
    text = format_result(res).splitlines()
    assert text[2].split()[-3:] == ["+noise", "1.0e-04", "ok"]
    assert text[3] == "not verified: num_dets (computed from an op onnxruntime cannot run)"
    assert text[-1].startswith("PASSED (part of the model; tolerance by each path's precision")
    d = res.to_dict()
    assert d["partial"] is True and d["unverifiable"] == {"num_dets": "computed from an op onnxruntime cannot run"}
    assert d["outputs"][0]["what"] == "input of EfficientNMS_TRT 'nms'" and d["tolerance"] == "by precision"


def test_a_scalar_input_is_fed_as_a_scalar():
    """A 0-d input reaches onnxruntime 0-d (np.ascontiguousarray would make it shape (1,), which onnxruntime
    accepts with a warning and then computes (1,)-shaped outputs the model does not declare)."""
    g = helper.make_graph([helper.make_node("Add", ["s", "s"], ["y"])], "g",
                          [helper.make_tensor_value_info("s", T.INT64, [])],
                          [helper.make_tensor_value_info("y", T.INT64, [])])
    m = helper.make_model(g, opset_imports=OPSET)
    out = run(m, {"s": np.array(3, np.int64)})["y"]
    assert out.shape == () and int(out) == 6
