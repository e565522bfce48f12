"""merge-transposes: Transpose(Transpose(x, p), q) is Transpose(x, p[q]), or x itself when p[q] is the identity;
what stays, and why."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest

from checks import assert_verifies, rule, run_opt
from onnx_builders import GraphBuilder, op_histogram
from onnxrep.rules.simplify.merge_transposes import MergeTransposes, composed

MERGE = "merge-transposes"
X = "x"


def only(model: onnx.ModelProto):
    return run_opt(model, rules=[MergeTransposes()], include_defaults=False)


def _pair(p, q, shape=("N", 3, 4, 5), shared: bool = False, name: str = "second") -> onnx.ModelProto:
    g = GraphBuilder(4)
    kw_p = {} if p is None else {"perm": list(p)}
    kw_q = {} if q is None else {"perm": list(q)}
    t = g.node("Transpose", [X], "t", name="first", **kw_p)
    u = g.node("Transpose", [t], "u", name=name, **kw_q)
    outputs = [g.node("Relu", [u], "y")] + ([g.node("Neg", [t], "z")] if shared else [])
    return g.model({X: shape}, outputs)


def test_composition_is_numpys():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5))
    for p in itertools.permutations(range(4)):
        for q in itertools.permutations(range(4)):
            assert np.array_equal(np.transpose(np.transpose(x, p), q), np.transpose(x, composed(list(p), list(q))))


def test_an_nchw_nhwc_round_trip_goes():
    m = _pair([0, 2, 3, 1], [0, 3, 1, 2])
    out, rep = only(m)
    assert op_histogram(out) == {"Relu": 1}
    assert (rule(rep, MERGE).rewrites, rule(rep, MERGE).nodes_removed) == (1, 2)
    assert_verifies(m, out)


def test_two_transposes_become_one():
    m = _pair([0, 2, 3, 1], [0, 2, 1, 3])
    out, rep = only(m)
    assert op_histogram(out) == {"Transpose": 1, "Relu": 1}
    assert [list(a.ints) for a in out.graph.node[0].attribute] == [[0, 3, 2, 1]]
    assert (rule(rep, MERGE).rewrites, rule(rep, MERGE).nodes_removed) == (1, 1)
    assert_verifies(m, out)


def test_reversals_without_perm_cancel_at_a_known_rank():
    m = _pair(None, None)
    out, rep = only(m)
    assert op_histogram(out) == {"Relu": 1}
    assert_verifies(m, out)


def test_a_reversal_takes_its_rank_from_the_other_perm():
    m = _pair([3, 2, 1, 0], None, shape=None)  # x of unknown rank: perm's length tells
    m.graph.input[0].type.tensor_type.ClearField("shape")
    out, rep = _unchecked(m)
    assert op_histogram(out) == {"Relu": 1}
    assert_verifies(m, out, input_shapes={X: (2, 3, 4, 5)})


def test_an_inverse_pair_whose_middle_is_read_elsewhere_loses_its_second_node():
    m = _pair([0, 2, 3, 1], [0, 3, 1, 2], shared=True)
    out, rep = only(m)
    assert op_histogram(out) == {"Transpose": 1, "Relu": 1, "Neg": 1}
    assert (rule(rep, MERGE).rewrites, rule(rep, MERGE).nodes_removed) == (1, 1)
    assert_verifies(m, out)


KEPT = [  # case: the decline reason
    ("middle-read-elsewhere", "the first Transpose's output 't' is read elsewhere too: one Transpose for both would "
                              "not remove a node"),
    ("reversals-of-unknown-rank", "two Transposes without perm (reversals) and the rank is unknown"),
    ("second-is-a-graph-output", "its output 'u' is a graph output (the model's interface keeps its producer)"),
]


@pytest.mark.parametrize("case,reason", KEPT, ids=[c for c, _ in KEPT])
def test_what_merge_transposes_keeps(case, reason):
    if case == "middle-read-elsewhere":
        m = _pair([0, 2, 3, 1], [0, 2, 1, 3], shared=True)
    elif case == "reversals-of-unknown-rank":
        m = _pair(None, None)
        for v in list(m.graph.input) + list(m.graph.output):
            v.type.tensor_type.ClearField("shape")
    else:
        g = GraphBuilder(5)
        t = g.node("Transpose", [X], "t", name="first", perm=[1, 0])
        m = g.model({X: (3, 4)}, [g.node("Transpose", [t], "u", name="second", perm=[1, 0])])
    out, rep = run_opt(m, rules=[MergeTransposes()], include_defaults=False) if case != "reversals-of-unknown-rank" \
        else _unchecked(m)
    assert op_histogram(out)["Transpose"] == 2
    assert [(d.node, d.reason) for d in rule(rep, MERGE).declines] == [("second", reason)]


def _unchecked(m: onnx.ModelProto):
    """A model whose outputs have no shape (the checker wants one): optimized without run_opt's checks."""
    from onnxrep import optimize
    return optimize(m, rules=[MergeTransposes()], include_defaults=False)


def test_with_every_default_rule_jax_style_round_trips_between_convs_go():
    """conv -> NHWC -> NCHW -> conv (a layout round trip between layers): the pair goes and the two convs stay
    convs with nothing between them."""
    g = GraphBuilder(6)
    c = g.conv(X, 3, 4, 3, pads=1)
    t = g.node("Transpose", [g.node("Transpose", [g.node("Relu", [c])], perm=[0, 2, 3, 1])], perm=[0, 3, 1, 2])
    y = g.conv(t, 4, 2, 1, output="y")
    m = g.model({X: ("N", 3, 8, 8)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Conv": 2, "Relu": 1}
    assert_verifies(m, out)
