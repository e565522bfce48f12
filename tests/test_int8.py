"""The measured W8A8 INT8 report (onnxrep.int8.measure): onnxruntime's static quantizer, per-tensor and
per-channel weights, errors against the float model, calibration samples, the text table."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxrep.graph.io import InputError
from onnxrep.verification.inputs import make_inputs
from onnxrep.int8.measure import Int8Error, calibration_inputs, format_int8, int8_errors


def _model(nodes, inits, x_shape=(1, 4, 8, 8), opset=17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def conv_relu_conv(big: float = 100.0, seed: int = 0) -> onnx.ModelProto:
    """x -> Concat(x, x) -> Conv 3x3 (8->4) -> Relu -> Conv 3x3 (4->4). Output channel 0 of the first
    conv has weights ``big`` x the others, (k, -k) on the two copies of x: its output is 0, like a
    folded-BN channel on a direction the data does not vary in. (A channel whose *outputs* are big
    crushes the others in the per-tensor activation scale under both schemes.)"""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((4, 8, 3, 3)) * 0.2
    k = rng.standard_normal((4, 3, 3)) * 0.2 * big
    w1[0, :4], w1[0, 4:] = k, -k
    w2 = rng.standard_normal((4, 4, 3, 3)) * 0.2
    nodes = [helper.make_node("Concat", ["x", "x"], ["xx"], axis=1),
             helper.make_node("Conv", ["xx", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    return _model(nodes, {"w1": w1, "w2": w2})


def identity_conv() -> onnx.ModelProto:
    """A single 1x1 Conv with identity weights."""
    return _model([helper.make_node("Conv", ["x", "w"], ["y"])], {"w": np.eye(4).reshape(4, 4, 1, 1)})


def by_scheme(errors: list[Int8Error]) -> dict[str, Int8Error]:
    return {e.scheme: e for e in errors}


def test_per_channel_beats_per_tensor_on_a_channel_with_huge_weights():
    model = conv_relu_conv()
    errs = by_scheme(int8_errors(model, calibration_inputs(model, count=4)))
    pt, pc = errs["per-tensor"], errs["per-channel"]
    assert pt.rel > 0.1          # the big channel's scale rounds the other channels' weights away
    assert 0 < pc.rel < 0.05
    assert pc.rel < 0.2 * pt.rel
    assert 0 < pc.mean_abs < 0.2 * pt.mean_abs
    assert pt.max_abs >= pt.mean_abs > 0


def test_errors_are_deterministic():
    model = conv_relu_conv(seed=1)
    cal = calibration_inputs(model, count=3, seed=7)
    first = int8_errors(model, cal)
    assert [e.scheme for e in first] == ["per-tensor", "per-channel"]
    assert first == int8_errors(model, calibration_inputs(model, count=3, seed=7))


def test_identity_conv_error_is_small():
    model = identity_conv()
    for e in int8_errors(model, calibration_inputs(model, count=4)):
        assert 0 < e.rel < 0.02, e
        assert e.mean_abs <= e.max_abs


def test_evaluation_samples_differ_from_calibration():
    model = identity_conv()
    cal = calibration_inputs(model, count=2)
    # samples 10x the calibration range are clipped: the error is most of the signal
    wide = [{"x": s["x"] * 10} for s in cal]
    (clipped,) = int8_errors(model, cal, wide, schemes=("per-tensor",))
    assert clipped.rel > 0.5
    with pytest.raises(InputError, match="unknown INT8 scheme"):
        int8_errors(model, cal, schemes=("per-row",))


def test_random_calibration_is_make_inputs_with_successive_seeds():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    samples = calibration_inputs(model, count=3, seed=5, input_shapes={"x": (2, 3, 4, 5)})
    assert len(samples) == 3
    for i, s in enumerate(samples):
        assert s["x"].shape == (2, 3, 4, 5)
        np.testing.assert_array_equal(s["x"], make_inputs(model, {"x": (2, 3, 4, 5)}, 5 + i)["x"])
    assert not np.array_equal(samples[0]["x"], samples[1]["x"])


def test_npz_calibration_equals_the_same_arrays(tmp_path):
    model = conv_relu_conv(seed=2)
    arrays = np.random.default_rng(3).standard_normal((5, 1, 4, 8, 8)).astype(np.float64)
    path = tmp_path / "cal.npz"
    np.savez(path, x=arrays)
    samples = calibration_inputs(model, path=str(path))
    assert len(samples) == 5
    assert samples[2]["x"].dtype == np.float32 and samples[2]["x"].shape == (1, 4, 8, 8)
    direct = [{"x": a.astype(np.float32)} for a in arrays]
    np.testing.assert_array_equal(samples[4]["x"], direct[4]["x"])
    assert int8_errors(model, samples) == int8_errors(model, direct)


@pytest.mark.parametrize("arrays, message", [
    ({"image": np.zeros((2, 1, 4, 8, 8))}, r"no array for input\(s\) 'x'"),
    ({"x": np.zeros((2, 1, 4, 8, 8)), "mask": np.zeros(2)}, r"'mask' name no model input"),
    ({"x": np.zeros((2, 1, 4, 8, 9))}, r"input 'x'.*\(2, 1, 4, 8, 9\).*axis 4"),
    ({"x": np.zeros((1, 4, 8, 8))}, r"input 'x'.*rank 4, expected \(S, 1, 4, 8, 8\)"),
    ({"x": np.zeros((2, 1, 4, 8, 8), np.int32)}, r"input 'x'.*dtype int32 for a FLOAT input"),
])
def test_bad_npz_is_a_one_line_error_naming_the_input(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message) as info:
        calibration_inputs(identity_conv(), path=str(path))
    assert "\n" not in str(info.value)


def test_unreadable_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(InputError, match="bad.npz: cannot read"):
        calibration_inputs(identity_conv(), path=str(bad))
    with pytest.raises(InputError, match="no such file"):
        calibration_inputs(identity_conv(), path=str(tmp_path / "missing.npz"))


def test_models_it_cannot_quantize(monkeypatch):
    cal = [{"x": np.zeros((1, 4, 8, 8), np.float32)}]
    custom = identity_conv()
    custom.graph.node.append(helper.make_node("Swizzle", ["y"], ["z"], domain="my.ops"))
    custom.graph.output[0].name = "z"
    custom.opset_import.append(helper.make_opsetid("my.ops", 1))
    with pytest.raises(InputError, match=r"onnxruntime can run; it cannot run my\.ops\.Swizzle"):
        int8_errors(custom, cal)

    external = identity_conv()
    onnx.external_data_helper.set_external_data(external.graph.initializer[0], "w.bin")
    external.graph.initializer[0].ClearField("raw_data")
    with pytest.raises(InputError, match="--int8 needs a model under 2 GB"):
        int8_errors(external, cal)

    monkeypatch.setattr("onnxrep.graph.io.PROTOBUF_LIMIT", 16)
    with pytest.raises(InputError, match="--int8 needs a model under 2 GB"):
        int8_errors(identity_conv(), cal)


def test_format_int8_rows_and_change():
    optimized = [Int8Error("per-tensor", 2.0, 0.5, 0.4), Int8Error("per-channel", 0.1, 0.02, 0.01)]
    equalized = [Int8Error("per-tensor", 0.5, 0.125, 0.1), Int8Error("per-channel", 0.12, 0.025, 0.012)]
    text = format_int8([("optimized", optimized), ("equalized", equalized)])
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["model", "scheme"] and lines[0].rstrip().endswith("change")
    rows = [line.split() for line in lines[2:]]
    assert [r[:2] for r in rows] == [["optimized", "per-tensor"], ["optimized", "per-channel"],
                                     ["equalized", "per-tensor"], ["equalized", "per-channel"]]
    assert len(rows[0]) == len(rows[1]) == 5            # no change for the first label
    assert rows[2][2:] == ["5.000e-01", "1.250e-01", "1.000e-01", "-75.0%"]
    assert rows[3][-1] == "+25.0%"
    assert optimized[0].to_dict() == {"scheme": "per-tensor", "max_abs": 2.0, "rel": 0.5, "mean_abs": 0.4}
