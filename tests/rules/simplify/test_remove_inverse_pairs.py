"""remove-inverse-pairs: Cast round trips through a type that holds every value, and Squeeze / Unsqueeze on the same
axes, go (the table of what cancels); what stays, with the decline reason (the table of what is kept); the table
of exact round trips checked value by value in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T, helper

from checks import assert_verifies, rule, run_opt
from onnx_builders import GraphBuilder, make_model, op_histogram
from onnxrep.rules.simplify.remove_inverse_pairs import WIDENS, RemoveInversePairs

PAIRS = "remove-inverse-pairs"
X = "x"


def only(model: onnx.ModelProto):
    return run_opt(model, rules=[RemoveInversePairs()], include_defaults=False)


def _cast_model(a: int, b: int, c: int, shared: bool = False) -> onnx.ModelProto:
    """x (type a) -> Cast(b) -> Cast(c) -> Abs -> y; ``shared``: the first Cast is a graph output too."""
    nodes = [helper.make_node("Cast", ["x"], ["m"], to=b, name="first"),
             helper.make_node("Cast", ["m"], ["back"], to=c, name="second"),
             helper.make_node("Abs", ["back"], ["y"], name="abs")]
    outputs = [helper.make_tensor_value_info("y", c, [2, 3])]
    if shared:
        outputs.append(helper.make_tensor_value_info("m", b, [2, 3]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", a, [2, 3])], outputs)
    return make_model(graph, [helper.make_opsetid("", 17)])


CANCEL = [(T.FLOAT16, T.FLOAT), (T.FLOAT, T.DOUBLE), (T.INT32, T.INT64), (T.UINT8, T.FLOAT16), (T.INT16, T.FLOAT),
          (T.INT32, T.DOUBLE), (T.BOOL, T.FLOAT)]


@pytest.mark.parametrize("a,b", CANCEL, ids=[f"{T.DataType.Name(a)}-{T.DataType.Name(b)}" for a, b in CANCEL])
def test_cast_round_trips_that_are_exact_go(a, b):
    m = _cast_model(a, b, a) if a != T.BOOL else _bool_round_trip()
    out, rep = only(m)
    assert "Cast" not in op_histogram(out)
    assert (rule(rep, PAIRS).rewrites, rule(rep, PAIRS).declines) == (1, [])
    assert_verifies(m, out, allow_zero=True)


def _bool_round_trip() -> onnx.ModelProto:
    """x > 0 -> Cast(float) -> Cast(bool) -> Not -> y (float inputs, a bool in the middle)."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["p"], name="gt"),
             helper.make_node("Cast", ["p"], ["m"], to=T.FLOAT, name="first"),
             helper.make_node("Cast", ["m"], ["back"], to=T.BOOL, name="second"),
             helper.make_node("Not", ["back"], ["n"], name="not"),
             helper.make_node("Where", ["n", "x", "zero"], ["y"], name="where")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])],
                              [onnx.numpy_helper.from_array(np.float32(0), "zero")])
    return make_model(graph, [helper.make_opsetid("", 17)])


CAST_KEPT = [  # (a, b, c): the decline reason (None: not a round trip, nothing to say)
    ((T.FLOAT, T.FLOAT16, T.FLOAT), "float32 -> float16 -> float32 is not exact: float16 does not hold every float32"),
    ((T.INT64, T.INT32, T.INT64), "int64 -> int32 -> int64 is not exact: int32 does not hold every int64"),
    ((T.FLOAT, T.INT32, T.FLOAT), "float32 -> int32 -> float32 is not exact: int32 does not hold every float32"),
    ((T.INT32, T.FLOAT, T.INT32), "int32 -> float32 -> int32 is not exact: float32 does not hold every int32"),
    ((T.FLOAT16, T.BFLOAT16, T.FLOAT16), "float16 -> bfloat16 -> float16 is not exact: bfloat16 does not hold every "
                                         "float16"),
    ((T.FLOAT16, T.FLOAT, T.DOUBLE), None),
]


@pytest.mark.parametrize("types,reason", CAST_KEPT, ids=["-".join(T.DataType.Name(t) for t in c) for c, _ in CAST_KEPT])
def test_cast_round_trips_that_round_stay(types, reason):
    m = _cast_model(*types)
    out, rep = only(m)
    assert op_histogram(out)["Cast"] == 2
    assert [d.reason for d in rule(rep, PAIRS).declines] == ([reason] if reason else [])


def test_a_first_cast_read_elsewhere_stays_and_the_second_goes():
    m = _cast_model(T.FLOAT16, T.FLOAT, T.FLOAT16, shared=True)
    out, rep = only(m)
    assert op_histogram(out) == {"Cast": 1, "Abs": 1}
    assert (rule(rep, PAIRS).rewrites, rule(rep, PAIRS).nodes_removed) == (1, 1)
    assert_verifies(m, out)


def _round_trip_values(a: int) -> np.ndarray:
    """Every value for 8-bit types and bool; else the extremes, zero, ones and random values (NaN and infinities
    for floats)."""
    dtype = helper.tensor_dtype_to_np_dtype(a)
    if a == T.BOOL:
        return np.array([False, True])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if info.bits == 8:
            return np.arange(info.min, info.max + 1).astype(dtype)
        rng = np.random.default_rng(0).integers(info.min, info.max, size=1000, dtype=dtype)
        return np.concatenate([np.array([info.min, info.max, 0, 1, info.max - 1], dtype), rng])
    info = np.finfo(dtype)
    rng = (np.random.default_rng(0).standard_normal(1000) * 10.0 ** np.random.default_rng(1).integers(-8, 8, 1000))
    special = [info.max, info.min, info.tiny, info.smallest_subnormal, -0.0, 0.0, np.inf, -np.inf, np.nan]
    with np.errstate(over="ignore"):  # large draws are infinities in float16
        return np.concatenate([np.array(special), rng]).astype(dtype)


def _run(nodes: list, x: np.ndarray, out_type: int) -> np.ndarray:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype),
                                                                         [len(x)])],
                              [helper.make_tensor_value_info("y", out_type, [len(x)])])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = make_model(graph, [helper.make_opsetid("", 17)]).SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("a", sorted(WIDENS), ids=lambda a: T.DataType.Name(a))
def test_every_round_trip_of_the_table_is_exact_in_onnxruntime(a):
    """x -> Cast(b) -> Cast(a) returns x bit for bit (NaN as NaN) for every b that WIDENS lists for a. numpy feeds
    no bfloat16: its values are float32 ones cast to bfloat16 in the graph, and compared back in float32."""
    x = _round_trip_values(T.FLOAT if a == T.BFLOAT16 else a)
    lead = [helper.make_node("Cast", ["x"], ["xa"], to=a)] if a == T.BFLOAT16 else []
    tail = [helper.make_node("Cast", ["ya"], ["y"], to=T.FLOAT)] if a == T.BFLOAT16 else []
    start, end, out_type = ("xa", "ya", T.FLOAT) if a == T.BFLOAT16 else ("x", "y", a)
    expected = _run(lead + [helper.make_node("Identity", [start], [end])] + tail, x, out_type)
    for b in sorted(WIDENS[a]):
        trip = [helper.make_node("Cast", [start], ["m"], to=b), helper.make_node("Cast", ["m"], [end], to=a)]
        y = _run(lead + trip + tail, x, out_type)
        same = (y == expected) | (np.isnan(y) & np.isnan(expected)) if y.dtype.kind == "f" else (y == expected)
        assert same.all(), (T.DataType.Name(a), T.DataType.Name(b), expected[~same][:5], y[~same][:5])


def _squeeze_model(case: str, opset: int = 17):
    """x -> first -> second -> Neg -> y, the axes as inputs (opset 13+) or attributes (11)."""
    g = GraphBuilder(3)

    def sq(op, t, axes):
        if axes is None:
            return g.node(op, [t])
        if opset >= 13:
            return g.node(op, [t, g.init(np.array(axes, np.int64))])
        return g.node(op, [t], axes=axes)

    shape = {"squeeze-unsqueeze": (2, 1, 4), "squeeze-unsqueeze-negative": ("N", 1, 4, 1),
             "unsqueeze-squeeze": ("N", 3), "unsqueeze-squeeze-negative": ("N", 3),
             "squeeze-all-static": (2, 1, 4, 1), "squeeze-all-dynamic": ("N", 1, 4),
             "different-axes": (2, 1, 1, 4), "unsqueeze-squeeze-all": (2, 3)}[case]
    first, second, a, b = {"squeeze-unsqueeze": ("Squeeze", "Unsqueeze", [1], [1]),
                           "squeeze-unsqueeze-negative": ("Squeeze", "Unsqueeze", [-1, 1], [1, 3]),
                           "unsqueeze-squeeze": ("Unsqueeze", "Squeeze", [0, 3], [0, 3]),
                           "unsqueeze-squeeze-negative": ("Unsqueeze", "Squeeze", [-1], [2]),
                           "squeeze-all-static": ("Squeeze", "Unsqueeze", None, [1, 3]),
                           "squeeze-all-dynamic": ("Squeeze", "Unsqueeze", None, [1]),
                           "different-axes": ("Squeeze", "Unsqueeze", [1], [2]),
                           "unsqueeze-squeeze-all": ("Unsqueeze", "Squeeze", [1, 2], None)}[case]
    t = sq(second, sq(first, X, a), b)
    return g.model({X: shape}, [(g.node("Neg", [t], "y"), shape)], opset=opset)  # y is x's shape in every case


SQUEEZES = [  # case: removed (True) or the decline reason (None: they do not cancel, nothing to say)
    ("squeeze-unsqueeze", True), ("squeeze-unsqueeze-negative", True), ("unsqueeze-squeeze", True),
    ("unsqueeze-squeeze-negative", True), ("squeeze-all-static", True), ("unsqueeze-squeeze-all", True),
    ("squeeze-all-dynamic", "not proven to cancel: a Squeeze without axes on dims that are not all static"),
    ("different-axes", None),
]


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("case,expect", SQUEEZES, ids=[c for c, _ in SQUEEZES])
def test_squeeze_unsqueeze_pairs(case, expect, opset):
    m = _squeeze_model(case, opset)
    out, rep = only(m)
    record = rule(rep, PAIRS)
    if expect is True:
        assert op_histogram(out) == {"Neg": 1} and (record.rewrites, record.declines) == (1, [])
    else:
        assert len(out.graph.node) == 3 and record.rewrites == 0
        assert [d.reason for d in record.declines] == ([expect] if expect else [])
    assert_verifies(m, out, input_shapes={X: (2, 1, 4)} if case == "squeeze-all-dynamic" else None)


def test_a_pair_across_scopes_stays():
    """x (float16) -> Cast(float) in the main graph, Cast(float16) of it inside an If branch: the first node is the
    main graph's (a body's rewrite does not remove it), so nothing changes."""
    def branch(name):
        return helper.make_graph([helper.make_node("Cast", ["m"], [f"{name}_h"], to=T.FLOAT16, name=f"{name}_cast"),
                                  helper.make_node("Neg", [f"{name}_h"], [f"{name}_y"], name=f"{name}_neg")], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", T.FLOAT16, [2, 3])])
    nodes = [helper.make_node("Cast", ["x"], ["m"], to=T.FLOAT, name="first"),
             helper.make_node("ReduceSum", ["m"], ["s"], keepdims=0, name="sum"),
             helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
             helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch("a"), else_branch=branch("b"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT16, [2, 3])],
                              [helper.make_tensor_value_info("y", T.FLOAT16, [2, 3])],
                              [onnx.numpy_helper.from_array(np.float32(0), "zero")])
    m = make_model(graph, [helper.make_opsetid("", 17)])
    out, rep = only(m)
    assert rule(rep, PAIRS).rewrites == 0 and out.graph.node[0].op_type == "Cast"
    assert_verifies(m, out)
