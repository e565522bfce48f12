"""The cost model (onnxrep/cost.py): the counting convention per op, whole models, ordering."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxrep.algebra import AffineForm, ConvForm, compose, conv_then_affine
from onnxrep.cost import PIN_OTHER, Cost, conv_cost, op_macs
from onnxrep.graph.stats import model_macs


def test_conv_macs_are_output_elements_times_reduction():
    # 2 images, 8 -> 6 channels, groups 2, 3x5 kernel, 10x7 output: each output element reads 4*3*5 inputs
    assert op_macs("Conv", {}, [[2, 8, 12, 11], [6, 4, 3, 5]], [[2, 6, 10, 7]]) == 2 * 6 * 10 * 7 * 4 * 3 * 5
    assert op_macs("Conv", {}, [[1, 8, 12, 11], [6, 4, 3, 5]], [None]) is None


def test_convtranspose_gemm_matmul_pool_macs():
    # ConvTranspose: every input element is spread over (O/g) * k outputs
    assert op_macs("ConvTranspose", {}, [[1, 4, 5, 5], [4, 3, 2, 2]], [[1, 3, 10, 10]]) == 100 * 3 * 4
    assert op_macs("Gemm", {"transB": 1}, [[3, 16], [10, 16]], [[3, 10]]) == 3 * 10 * 16
    assert op_macs("Gemm", {}, [None, [16, 10]], [[3, 10]]) == 3 * 10 * 16   # K from B when A is unknown
    assert op_macs("MatMul", {}, [[2, 5, 16], [16, 4]], [[2, 5, 4]]) == 40 * 16
    assert op_macs("AveragePool", {"kernel_shape": [3, 3]}, [[1, 4, 8, 8]], [[1, 4, 6, 6]]) == 144 * 9
    assert op_macs("GlobalAveragePool", {}, [[1, 4, 8, 8]], [[1, 4, 1, 1]]) == 256
    for op in ("BatchNormalization", "Add", "Relu", "Pad", "Reshape"):
        assert op_macs(op, {}, [[1, 4, 8, 8]], [[1, 4, 8, 8]]) == 0


def test_cost_orders_by_macs_then_params_then_nodes():
    assert Cost(10, 99, 9) < Cost(11, 0, 0)
    assert Cost(10, 5, 9) < Cost(10, 6, 0)
    assert Cost(10, 5, 1) < Cost(10, 5, 2)
    assert Cost(1, 2, 3) + Cost(4, 5, 6) == Cost(5, 7, 9)
    assert conv_cost((6, 4, 3, 3), 100) == Cost(100 * 216, 216 + 6, 1)
    assert conv_cost((6, 4, 3, 3), 100, bias=False).params == 216
    assert Cost(1_520_000_000, 4_000_000, 3).describe() == "1.52 GMACs, 4 M params, 3 node(s)"


def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_model_macs_pins_dynamic_dims_and_reads_no_weights():
    w = np.zeros((8, 3, 3, 3), np.float32)
    fc = np.zeros((8, 5), np.float32)
    m = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "fc"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], {"w": w, "fc": fc})
    r = model_macs(m)
    out = (PIN_OTHER // 2) ** 2  # stride 2, pad 1, 3x3 on 32x32: 16x16
    assert r.unknown == 0
    assert r.macs == out * 8 * 27 + out * 8 + 8 * 5


def test_model_macs_counts_unknown_shapes():
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"]), ],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"w": np.zeros((2, 3, 1, 1), np.float32)})
    assert model_macs(m).unknown == 1 and model_macs(m).macs == 0


def test_merged_weights_are_computed_only_when_read():
    """The collapse weighs merges it never makes: their geometry and bias are exact at once, their
    (possibly huge) weight is computed on first read and equals the eager result."""
    rng = np.random.default_rng(0)
    dw = ConvForm.make(rng.normal(size=(16, 1, 7, 7)), rng.normal(size=16), pads=(3, 3, 3, 3), groups=16)
    pw = ConvForm.make(rng.normal(size=(64, 16, 1, 1)), rng.normal(size=64))
    bn = AffineForm(rng.uniform(0.5, 1.5, 16), rng.normal(size=16))
    merged = compose(conv_then_affine(dw, bn), pw)
    assert merged.weight_shape == (64, 16, 7, 7) and merged.groups == 1
    assert not merged.raw_weight.computed
    ref_w = np.einsum("om,mkl->omkl", pw.weight[:, :, 0, 0], dw.weight[:, 0] * bn.scale[:, None, None])
    np.testing.assert_allclose(merged.weight, ref_w, rtol=1e-12)
    assert merged.raw_weight.computed
    ref_b = pw.bias + pw.weight[:, :, 0, 0] @ (dw.bias * bn.scale + bn.shift)
    np.testing.assert_allclose(merged.bias, ref_b, rtol=1e-12)


@pytest.mark.parametrize("op", ["Conv", "Gemm"])
def test_op_macs_unknown_weight_shape_is_none(op):
    assert op_macs(op, {}, [[1, 2, 3, 3], None], [None]) is None


def test_model_macs_resolve_sizes_computed_at_run_time():
    """Legacy exports compute chunk sizes at run time (Shape -> Gather -> Div -> Slice): with the
    input dims pinned, that arithmetic is evaluated and the conv after it is counted."""
    def i64(*v):
        return np.asarray(v, np.int64)
    m = _model(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Gather", ["s", "one"], ["c"], axis=0),
         helper.make_node("Div", ["c", "two"], ["half"]),
         helper.make_node("Unsqueeze", ["half", "zero"], ["end"]),
         helper.make_node("Slice", ["x", "zero", "end", "one"], ["a"]),
         helper.make_node("Conv", ["a", "w"], ["y"], pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        {"w": np.zeros((6, 4, 3, 3), np.float32), "one": i64(1), "two": i64(2), "zero": i64(0)})
    r = model_macs(m)
    assert r.unknown == 0 and r.macs == PIN_OTHER ** 2 * 6 * 4 * 9


def test_poly_orders_sizes_by_their_value_for_large_inputs():
    from fractions import Fraction
    from onnxrep.cost import Poly, SpatialSize
    n = SpatialSize.of("H")
    assert n.poly().c == (0, 1)
    s2 = n.window(kernel=3, stride=2, pad=2, dilation=1)        # 3x3 stride 2 pad 1: n/2 + 1/2
    assert (s2.scale, s2.offset) == (Fraction(1, 2), Fraction(1, 2))
    padded = SpatialSize(n.scale, n.offset + 2)
    assert padded.poly() * padded.poly() > n.poly() * n.poly()    # (n+2)^2 > n^2: the border counts
    assert n.poly() * n.poly() * 4 > (padded.poly() * padded.poly()) * 3  # but degree 2 dominates
    assert Poly([5, 0]) == 5 and Poly([0, 1]) > 10 ** 9 and Cost(Poly([0, 3]), 1, 1) > Cost(7, 0, 0)
    assert float(Poly([1, 2])) == 1 + 2 * PIN_OTHER


def test_graph_stats_counts_the_parameters_of_every_graph():
    """An If whose branches store their own weights (an export moves an initializer only a body reads into
    that body): the parameters are the model's; nodes and MACs are the main graph's."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxrep.graph.stats import estimated_size, graph_stats

    def branch(name, n):
        w = numpy_helper.from_array(np.ones((n,), np.float32), f"{name}_w")
        const = helper.make_node("Constant", [], [f"{name}_c"], value=numpy_helper.from_array(np.ones(3, np.float32)))
        return helper.make_graph([const, helper.make_node("Mul", ["x", f"{name}_w"], [f"{name}_y"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [n])], [w])

    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch("a", 5),
                                                else_branch=branch("b", 5))], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])],
                              [numpy_helper.from_array(np.zeros(7, np.float32), "unused")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    stats = graph_stats(model)
    assert (stats.nodes, stats.params, stats.macs) == (1, 7 + 2 * (5 + 3), 0)
    assert estimated_size(model) == 4 * (7 + 2 * (5 + 3))
