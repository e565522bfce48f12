"""Tolerance by precision (onnxrep.verification.precision) and its use in verify()."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from onnxrep import verify
from onnxrep.verification.precision import Precision, output_precisions, widened


def _model(dtype=T.FLOAT16, cast_to=None, scale=1.0):
    """x (dtype) -> Mul(w) [-> Cast(cast_to)] -> y; and x -> Relu -> z (dtype)."""
    np_t = helper.tensor_dtype_to_np_dtype(dtype)
    w = numpy_helper.from_array(np.full((1, 4), scale, np_t), "w")
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("Relu", ["x"], ["z"])]
    out_t = dtype
    if cast_to is not None:
        nodes.append(helper.make_node("Cast", ["m"], ["y"], to=cast_to))
        out_t = cast_to
    else:
        nodes[0].output[0] = "y"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, [2, 4])],
                          [helper.make_tensor_value_info("y", out_t, [2, 4]),
                           helper.make_tensor_value_info("z", dtype, [2, 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_output_precisions_follow_the_path():
    p = output_precisions(_model(T.FLOAT16, cast_to=T.FLOAT))
    assert p["y"].label == "mixed (float32, float16)" and (p["y"].rtol, p["y"].atol) == (2.5e-3, 2.5e-3)
    assert p["z"].label == "float16" and p["z"].reduced
    p32 = output_precisions(_model(T.FLOAT))
    assert p32["y"].label == "float32" and (p32["y"].rtol, p32["y"].atol) == (1e-4, 1e-5) and not p32["y"].reduced
    assert output_precisions(_model(T.BFLOAT16))["z"].rtol == 2e-2
    assert Precision(frozenset()).label == "float32"


def test_widened_computes_in_float32_and_keeps_the_input_model():
    m = _model(T.FLOAT16, cast_to=T.FLOAT16)
    before = m.SerializeToString()
    w = widened(m)
    assert m.SerializeToString() == before
    assert w.graph.initializer[0].data_type == T.FLOAT and w.graph.input[0].type.tensor_type.elem_type == T.FLOAT
    assert [a.i for n in w.graph.node for a in n.attribute if a.name == "to"] == [T.FLOAT]
    onnx.checker.check_model(w, full_check=True)


def test_float16_tolerance_and_noise_in_verify():
    """A float16 candidate one ulp off passes by precision, fails at float32's tolerance; the noise term is
    the reference's distance to its float32 evaluation (here a scale that is not a float16 number)."""
    ref = _model(T.FLOAT16, scale=0.1)       # 0.1 rounds in float16: x*w differs from x*0.1 in float32
    cand = _model(T.FLOAT16, scale=float(np.nextafter(np.float16(0.1), np.float16(1))))
    r = verify(ref, cand)
    y = next(o for o in r.outputs if o.name == "y")
    assert r.passed and y.precision == "float16" and y.max_abs > 0
    assert 0 < y.noise < 1e-3 and y.allowed == pytest.approx(2.5e-3 * y.ref_max_abs + 2.5e-3 + 2 * y.noise)
    assert not verify(ref, cand, rtol=1e-4, atol=1e-5).passed
    # given tolerances replace the rule: no noise term, both values reported
    g = verify(ref, cand, rtol=1.0)
    assert g.rtol == 1.0 and g.atol == 1e-5 and all(o.noise == 0 and o.precision == "given" for o in g.outputs)
