"""merge-reshapes: a Reshape of a view is one Reshape of the view's input."""
from __future__ import annotations

import numpy as np

from checks import assert_verifies, declined_once, rewrites, run_opt
from onnx_builders import GraphBuilder, op_histogram
from repmlp_graphs import shape

MERGE = "merge-reshapes"


def test_chain_becomes_one_reshape():
    g = GraphBuilder(30)
    t = g.node("Flatten", ["x"], axis=1)
    t = g.node("Reshape", [t, shape(g, -1, 4, 6)])
    t = g.node("Unsqueeze", [t, g.init(np.array([1], np.int64))])
    y = g.node("Reshape", [t, shape(g, -1, 2, 12)], "y")
    m = g.model({"x": ("N", 3, 2, 4)}, [y])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Reshape": 1}
    assert rewrites(rep)[MERGE] == 3
    res = assert_verifies(m, out, input_shapes={"x": (5, 3, 2, 4)})
    assert res.outputs[0].shape == (5, 2, 12)


def test_zero_in_the_target_copies_a_dim_declined():
    g = GraphBuilder(31)
    t = g.node("Reshape", ["x", shape(g, 6, 4)])
    y = g.node("Reshape", [t, shape(g, 0, 2, 2)], "y")
    m = g.model({"x": (2, 3, 4)}, [y])
    out, _, d = declined_once(m, MERGE)
    assert "copies a dim (0)" in d.reason and op_histogram(out) == {"Reshape": 2}
    assert_verifies(m, out)


def test_shared_view_stays():
    g = GraphBuilder(32)
    t = g.node("Reshape", ["x", shape(g, -1, 12)], "t")
    y = g.node("Reshape", [t, shape(g, -1, 3, 4)], "y")
    m = g.model({"x": ("N", 3, 4)}, [y, "t"])
    out, rep = run_opt(m)
    assert op_histogram(out) == {"Reshape": 2} and MERGE not in rewrites(rep)
    assert_verifies(m, out, input_shapes={"x": (2, 3, 4)})
