"""fold-static-dims: Shape / Gather / Slice of dims that ONNX shape inference finds static become constants
(with the size arithmetic after them), while dynamic and data-dependent dims stay; verified at two batch
sizes. Legacy-export-like graphs, torch exports, and what stays (the table of declines)."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from checks import assert_verifies, rule, run_opt
from onnx_builders import GraphBuilder, make_model, op_histogram

STATIC = "fold-static-dims"
X = "x"


def _i64(g: GraphBuilder, *values, scalar=False) -> str:
    return g.init(np.asarray(values[0] if scalar else list(values), dtype=np.int64))


def _legacy_chain():
    """x (N, 4, 6, 6) -> Conv (8) -> y; y.reshape(b, c, h * w) as the legacy exporter writes it without constant
    folding: Shape -> Gather(i) (Constant index) -> Unsqueeze (Constant axes) -> Concat -> Reshape."""
    g = GraphBuilder(1)
    y = g.conv(X, 4, 8, 3, pads=1)
    s = g.node("Shape", [y])

    def constant(value, shape=()):
        return g.node("Constant", [], value=helper.make_tensor("v", TensorProto.INT64, list(shape), np.ravel(value)))

    def dim(i):
        return g.node("Gather", [s, constant(i)], axis=0)

    def unsqueeze(t):
        return g.node("Unsqueeze", [t, constant([0], (1,))])

    shape = g.node("Concat", [unsqueeze(dim(0)), unsqueeze(dim(1)), unsqueeze(g.node("Mul", [dim(2), dim(3)]))], axis=0)
    g.node("Reshape", [y, shape], "out")
    return g.model({X: ("N", 4, 6, 6)}, ["out"])


def _verify_two_batches(m, out, dims, batches=(1, 3)):
    for batch in batches:
        res = assert_verifies(m, out, input_shapes={X: (batch, *dims)})
        assert res.outputs[0].shape[0] == batch


def test_the_static_dims_of_a_legacy_chain_fold_and_the_batch_stays():
    m = _legacy_chain()
    assert op_histogram(m) == {"Conv": 1, "Shape": 1, "Constant": 7, "Gather": 4, "Unsqueeze": 3, "Mul": 1,
                               "Concat": 1, "Reshape": 1}
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Conv": 1, "Shape": 1, "Gather": 1, "Unsqueeze": 1, "Concat": 1, "Reshape": 1}
    concat = next(n for n in out.graph.node if n.op_type == "Concat")
    inits = {t.name: numpy_helper.to_array(t).tolist() for t in out.graph.initializer}
    assert [inits.get(i) for i in concat.input] == [None, [8], [36]]  # the batch part stays computed
    record = rule(rep, STATIC)
    # Gather(1) -> Unsqueeze; Gather(2) alone (the Mul waits for Gather(3)); Gather(3) -> Mul -> Unsqueeze
    assert record.rewrites == 3 and record.nodes_removed == 11
    assert [(d.node, d.reason) for d in record.declines] == [("Gather_1", "selects dynamic dim(s) 0 (N) of 'conv1'")]
    _verify_two_batches(m, out, (4, 6, 6))


def test_a_slice_of_the_shape_folds_when_it_selects_static_dims():
    """torch.flatten(x, 1) as Reshape(x, Concat(Gather(Shape, 0), ReduceProd(Slice(Shape, 1, 4)))): the Slice and
    the ReduceProd fold to [C*H*W] = [96]; Gather(0) stays."""
    g = GraphBuilder(2)
    s = g.node("Shape", [X])
    batch = g.node("Unsqueeze", [g.node("Gather", [s, _i64(g, 0, scalar=True)], axis=0), _i64(g, 0)])
    rest = g.node("ReduceProd", [g.node("Slice", [s, _i64(g, 1), _i64(g, 4)])], keepdims=1)
    g.node("Reshape", [X, g.node("Concat", [batch, rest], axis=0)], "y")
    m = g.model({X: ("N", 4, 4, 6)}, ["y"])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Shape": 1, "Gather": 1, "Unsqueeze": 1, "Concat": 1, "Reshape": 1}
    assert rule(rep, STATIC).rewrites == 1 and rule(rep, STATIC).nodes_removed == 2
    concat = next(n for n in out.graph.node if n.op_type == "Concat")
    inits = {t.name: numpy_helper.to_array(t).tolist() for t in out.graph.initializer}
    assert [inits.get(i) for i in concat.input] == [None, [96]]
    _verify_two_batches(m, out, (4, 4, 6))


def test_a_shape_index_shared_with_slice_axes_folds_with_the_arithmetic_after_it():
    """x.chunk(2, 1) from the legacy exporter: Gather(Shape(x), [1]) -> Add(1) -> Div(2) -> Mul(1) gives the Slices'
    bounds, and the index [1] is also their axes. The Gather alone would add an element (the index stays, read by
    the Slices); with the arithmetic it frees more than it adds, and folds."""
    g = GraphBuilder(3)
    axis = _i64(g, 1)
    c = g.node("Gather", [g.node("Shape", [X]), axis], axis=0)
    half = g.node("Mul", [g.node("Div", [g.node("Add", [c, _i64(g, 1)]), _i64(g, 2)]), _i64(g, 1)])
    a = g.node("Slice", [X, _i64(g, 0), half, axis])
    b = g.node("Slice", [X, half, _i64(g, 1 << 30), axis])
    g.node("Sub", [a, b], "y")
    m = g.model({X: ("N", 8, 5)}, ["y"])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Slice": 2, "Sub": 1}
    assert rule(rep, STATIC).rewrites == 1 and rule(rep, STATIC).declines == []
    _verify_two_batches(m, out, (8, 5))


def test_a_data_dependent_dim_stays_and_a_static_one_of_the_same_tensor_folds():
    """NonZero(x) for x (N, 4) is (2, nnz): dim 0 is the rank of x (static), dim 1 the number of non-zeros (only
    known at run time). y = Reshape(Cast(NonZero(x)), [nnz, 2])."""
    g = GraphBuilder(4)
    nz = g.node("NonZero", [X])
    s = g.node("Shape", [nz])
    count = g.node("Unsqueeze", [g.node("Gather", [s, _i64(g, 1, scalar=True)], axis=0, name="nnz"), _i64(g, 0)])
    rank = g.node("Unsqueeze", [g.node("Gather", [s, _i64(g, 0, scalar=True)], axis=0, name="rank"), _i64(g, 0)])
    g.node("Reshape", [g.node("Cast", [nz], to=TensorProto.FLOAT), g.node("Concat", [count, rank], axis=0)], "y")
    m = g.model({X: ("N", 4)}, ["y"])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"NonZero": 1, "Shape": 1, "Gather": 1, "Unsqueeze": 1, "Cast": 1, "Concat": 1,
                                 "Reshape": 1}
    record = rule(rep, STATIC)
    assert record.rewrites == 1
    assert [(d.node, d.reason) for d in record.declines] == [("nnz", "selects dynamic dim(s) 1 of 'nonzero1'")]
    for batch in (1, 3):
        res = assert_verifies(m, out, input_shapes={X: (batch, 4)})
        assert res.outputs[0].shape == (4 * batch, 2)  # random inputs: no zero


def test_dims_only_known_at_run_time_stay():
    """x (N, 4, H, W): only the channel count folds; H and W stay (and so does their product)."""
    g = GraphBuilder(5)
    s = g.node("Shape", [X])
    dims = [g.node("Gather", [s, _i64(g, i, scalar=True)], axis=0, name=f"dim{i}") for i in range(4)]
    parts = [g.node("Unsqueeze", [d, _i64(g, 0)]) for d in (dims[0], dims[1], g.node("Mul", [dims[2], dims[3]]))]
    g.node("Reshape", [X, g.node("Concat", parts, axis=0)], "y")
    m = g.model({X: ("N", 4, "H", "W")}, ["y"])
    out, rep = run_opt(m)
    assert op_histogram(out)["Gather"] == 3 and op_histogram(out)["Mul"] == 1
    record = rule(rep, STATIC)
    assert record.rewrites == 1
    assert sorted(d.node for d in record.declines) == ["dim0", "dim2", "dim3"]
    for shape in ((1, 4, 5, 7), (3, 4, 6, 2)):
        assert_verifies(m, out, input_shapes={X: shape})


def test_a_declared_size_is_not_taken_for_a_static_dim():
    """An exporter declares r = Relu(x) as (1, 4) while x is (N, 4): the batch of r is dynamic for inference on
    the graph alone, and its Shape -> Gather(0) stays."""
    g = GraphBuilder(6)
    r = g.node("Relu", [X])
    b = g.node("Cast", [g.node("Gather", [g.node("Shape", [r]), _i64(g, 0, scalar=True)], axis=0, name="batch")],
               to=TensorProto.FLOAT)
    g.node("Mul", [r, b], "y")
    m = g.model({X: ("N", 4)}, [("y", ("N", 4))])
    m.graph.value_info.append(helper.make_tensor_value_info(r, TensorProto.FLOAT, [1, 4]))
    out, rep = run_opt(m)
    assert op_histogram(out) == op_histogram(m)
    assert [d.node for d in rule(rep, STATIC).declines] == ["batch"]


def test_a_loop_state_is_not_read_inside_the_body():
    """A Loop state that doubles each iteration, declared (2, 4) in the body: inference types the body once, so no
    dim of a Loop body's own tensors is read, and its Shape -> Gather stays."""
    z = numpy_helper.from_array(np.array(0, np.int64), "z")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Concat", ["s_in", "s_in"], ["s_out"], axis=0),
         helper.make_node("Shape", ["s_in"], ["sh"]), helper.make_node("Constant", [], ["zero"], value=z),
         helper.make_node("Gather", ["sh", "zero"], ["rows"]),
         helper.make_node("Cast", ["rows"], ["rows_f"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["rows_f", "axes"], ["rows_v"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [None, 4]),
         helper.make_tensor_value_info("rows_v", TensorProto.FLOAT, [1])],
        initializer=[numpy_helper.from_array(np.array([0], np.int64), "axes")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "c", X], ["y", "rows_all"], body=body)], "g",
        [helper.make_tensor_value_info(X, TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4]),
         helper.make_tensor_value_info("rows_all", TensorProto.FLOAT, [3, 1])],
        initializer=[numpy_helper.from_array(np.array(3, np.int64), "n"), numpy_helper.from_array(np.array(True), "c")])
    m = make_model(graph, [helper.make_opsetid("", 17)])
    out, rep = run_opt(m)
    body_ops = [n.op_type for n in out.graph.node[0].attribute[0].g.node]
    assert "Shape" in body_ops and "Gather" in body_ops
    assert rule(rep, STATIC).rewrites == 0
    assert_verifies(m, out)


def test_in_an_if_branch_the_outer_tensors_dims_fold():
    """A branch of an If on a graph input reads x (N, 4, 6) and reshapes it with x.shape[1] * x.shape[2]: the
    dims fold inside the branch, the batch stays."""
    def branch(name, op):
        nodes = [helper.make_node("Shape", [X], [f"{name}_s"]),
                 helper.make_node("Constant", [], [f"{name}_i"], value=numpy_helper.from_array(np.array([1, 2]), "i")),
                 helper.make_node("Gather", [f"{name}_s", f"{name}_i"], [f"{name}_g"]),
                 helper.make_node("ReduceProd", [f"{name}_g"], [f"{name}_p"], keepdims=1),
                 helper.make_node("Constant", [], [f"{name}_m"], value=numpy_helper.from_array(np.array([-1]), "m")),
                 helper.make_node("Concat", [f"{name}_m", f"{name}_p"], [f"{name}_shape"], axis=0),
                 helper.make_node("Reshape", [X, f"{name}_shape"], [f"{name}_r"]),
                 helper.make_node(op, [f"{name}_r"], [f"{name}_y"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT,
                                                                                  None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch("a", "Relu"), else_branch=branch("b", "Neg"))],
        "g", [helper.make_tensor_value_info(X, TensorProto.FLOAT, ["N", 4, 6]),
              helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 24])])
    m = make_model(graph, [helper.make_opsetid("", 17)])
    out, rep = run_opt(m)
    for a in out.graph.node[0].attribute:
        assert [n.op_type for n in a.g.node] == ["Reshape", a.g.node[-1].op_type], [n.op_type for n in a.g.node]
    assert rule(rep, STATIC).rewrites == 2  # one fold in each branch (Shape, Gather, ReduceProd, Concat)
    for batch in (1, 3):
        assert_verifies(m, out, input_shapes={X: (batch, 4, 6)})


def _declined(case: str):
    g = GraphBuilder(7)
    if case == "whole-shape-read-as-a-whole":  # Expand(a, Shape(b)): 4 new elements, nothing freed
        e = g.node("Expand", [g.init(g.randn(1, 4, 1, 1)), g.node("Shape", [X], name="whole")])
        return g.model({X: (2, 4, 3, 3)}, [g.node("Add", [X, e], "y")]), "whole", "would add 4 parameters"
    if case == "start-end-of-static-dims":  # Shape(x, start=1): [4, 3, 3] read by a Reshape, nothing freed
        shape = g.node("Concat", [g.init(np.array([-1], np.int64)), g.node("Shape", [X], name="tail", start=1)], axis=0)
        return g.model({X: ("N", 4, 3, 3)}, [g.node("Reshape", [X, shape], "y")]), "tail", "would add 3 parameters"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["whole-shape-read-as-a-whole", "start-end-of-static-dims"])
def test_a_fold_that_would_only_add_parameters_is_declined(case):
    m, node, reason = _declined(case)
    out, rep = run_opt(m)
    assert op_histogram(out)["Shape"] == 1
    declines = [(d.node, d.reason[:len(reason)]) for d in rule(rep, STATIC).declines]
    assert declines == [(node, reason)], declines
    assert rep.after.params <= rep.before.params


def test_freed_parameters_pay_for_a_whole_shape_later():
    """The budget runs over the optimization: x.reshape(b, c, h * w)'s Gather folds free their Constant indices
    and axes (net -2), which then pays for Shape(x, start=2) read whole by a Concat (+2)."""
    g = GraphBuilder(8)
    s = g.node("Shape", [X])
    dims = [g.node("Gather", [s, _i64(g, i, scalar=True)], axis=0) for i in (1, 2, 3)]
    c, hw = (g.node("Unsqueeze", [t, _i64(g, 0)]) for t in (dims[0], g.node("Mul", dims[1:])))
    y = g.node("Reshape", [X, g.node("Concat", [_i64(g, -1), c, hw], axis=0)], "y")
    tail = g.node("Concat", [_i64(g, -1), g.node("Shape", [X], start=2)], axis=0)
    g.node("Reshape", [X, tail], "z")
    m = g.model({X: ("N", 4, 3, 5)}, [y, "z"])
    out, rep = run_opt(m)
    assert "Shape" not in op_histogram(out) and "Gather" not in op_histogram(out)
    assert rule(rep, STATIC).declines == [] and rep.after.params < rep.before.params
    _verify_two_batches(m, out, (4, 3, 5))


# ------------------------------------------------------------------ torch exports
torch = pytest.importorskip("torch")


class _Heads(torch.nn.Module):
    """A conv, then x.view(x.shape[0], -1) (the batch only: nothing to fold) and x.reshape(b, c, h * w) (the
    exporter reads each dim from its own Shape, and the view's batch from the reshape's)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        b, c, h, w = y.shape
        return y.view(y.shape[0], -1), y.reshape(b, c, h * w).transpose(1, 2)


def _export(constant_folding: bool) -> onnx.ModelProto:
    torch.manual_seed(0)
    f = io.BytesIO()
    torch.onnx.export(_Heads().eval(), (torch.randn(2, 3, 8, 8),), f, dynamo=False, opset_version=17,
                      do_constant_folding=constant_folding, input_names=[X], output_names=["flat", "tokens"],
                      dynamic_axes={X: {0: "batch"}, "flat": {0: "batch"}, "tokens": {0: "batch"}})
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("constant_folding", [False, True])
def test_torch_export_with_a_dynamic_batch(constant_folding):
    m = _export(constant_folding)
    before = op_histogram(m)
    assert (before["Shape"], before["Gather"], before["Mul"], before["Reshape"]) == (4, 4, 1, 2)
    out, rep = run_opt(m)
    after = op_histogram(out)
    # one Shape -> Gather(0) stays, read by both Reshapes' targets: the batch is dynamic
    assert (after["Shape"], after["Gather"], after.get("Mul", 0), after["Reshape"]) == (1, 1, 0, 2)
    assert rule(rep, STATIC).rewrites == 3  # c; h (alone); w with h * w
    assert [d.reason for d in rule(rep, STATIC).declines] == ["selects dynamic dim(s) 0 (batch) of '/conv/Conv_output_0'"]
    _verify_two_batches(m, out, (3, 8, 8))
