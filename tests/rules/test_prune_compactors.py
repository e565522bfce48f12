"""prune-compactor-rows (opt-in, --prune-threshold): small compactor rows zeroed, then the channels removed."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from checks import rule, run_opt
from onnxrep import cli
from onnxrep.rules import PruneCompactorRows
from onnxrep.rules.prune_compactors import compactor_rows

RNG = np.random.default_rng(1)


def _resrep_block(path=None, small=(1, 4, 6), scale=1e-3):
    """conv 3x3 (8) -> BN -> compactor 1x1 (identity, rows ``small`` scaled by ``scale``) -> Relu -> conv 1x1 (5)."""
    q = np.eye(8, dtype=np.float32)
    q += RNG.standard_normal((8, 8)).astype(np.float32) * 0.05
    q[list(small)] *= scale
    inits = [numpy_helper.from_array(RNG.standard_normal((8, 4, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(q.reshape(8, 8, 1, 1), "q"),
             numpy_helper.from_array(RNG.standard_normal((5, 8, 1, 1)).astype(np.float32), "w2")]
    inits += [numpy_helper.from_array(RNG.uniform(0.5, 2, 8).astype(np.float32), n) for n in ("g", "b", "m", "v")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Conv", ["n", "q"], ["k"], name="compactor"),
             helper.make_node("Relu", ["k"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="head")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", T.FLOAT, [1, 5, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    if path is not None:
        onnx.save(m, path)
    return m


def test_compactor_rows_keep_one():
    w = np.diag([0.5, 0.001, 0.002]).reshape(3, 3, 1, 1)
    assert compactor_rows(w, 0.01) == [1, 2]
    assert compactor_rows(w * 0.001, 0.01) == [1, 2]  # every row is small: the largest stays


def test_pruned_rows_become_removed_channels():
    m = _resrep_block()
    out, rep = run_opt(m, rules=[PruneCompactorRows(0.01)])
    assert [(c.node, c.before, c.after) for c in rule(rep, "prune-compactor-rows").channels] == [("compactor", 8, 5)]
    assert sum(c.before - c.after for c in rule(rep, "eliminate-dead-channels").channels) == 3
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert [inits[n.input[1]].shape for n in convs] == [(5, 4, 3, 3), (5, 5, 1, 1)]
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu", "Conv"]
    # without the option: merged, every channel kept
    plain, rep2 = run_opt(m)
    assert [numpy_helper.to_array(t).shape for t in plain.graph.initializer if t.name.endswith("weight")][0][0] == 8


def test_cli_reports_the_change_and_the_error(tmp_path, capsys):
    src, out, js = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    _resrep_block(src, scale=0.05)  # rows of norm ~0.05: pruning them changes the output measurably
    code = cli.main(["optimize", str(src), str(out), "-q", "--prune-threshold", "0.1"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_VERIFY and "rule 'prune-compactor-rows' at node 'compactor'" in err and not out.exists()
    code = cli.main(["optimize", str(src), str(out), "--prune-threshold", "0.1", "--prune-tolerance", "0.2",
                     "--json", str(js)])
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "rows pruned (not exact: the model changed): 3 in 1 layer(s): 'compactor' 8->5" in text
    v = json.loads(js.read_text())["verification"]
    assert v["tolerance"] == "given" and v["rtol"] == 0.2 and 0 < v["max_rel"] <= 0.2
    assert cli.main(["optimize", str(src), str(out), "--prune-tolerance", "0.2"]) == cli.EXIT_USAGE
