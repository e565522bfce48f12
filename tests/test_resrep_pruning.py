"""ResRep end to end: the trainer's masked rows left near zero (not zeroed), pruned by --prune-threshold."""
from __future__ import annotations

import json

import onnx
import pytest

torch = pytest.importorskip("torch")

from models.export import export_onnx  # noqa: E402
from models.resrep import (CONVERSION_EPSILON, ResRepConfig, compactor_layers, count_params_macs,  # noqa: E402
                           resrep_convert, resrep_kept_channels, train_resrep)
from onnxrep import cli  # noqa: E402
from onnxrep.graph.stats import graph_stats  # noqa: E402

pytestmark = pytest.mark.slow  # trains the network (~15 s)


@pytest.fixture(scope="module")
def near_zero(tmp_path_factory):
    """The trained network with its masked rows left at their final norms (~5e-6), exported."""
    result = train_resrep(ResRepConfig(zero_masked=False))
    model = result.model.eval()
    path = tmp_path_factory.mktemp("resrep") / "train.onnx"
    export_onnx(model, path, (1, 3, 32, 32))
    return result, model, path


def test_prune_threshold_removes_the_rows_the_trainer_drove_down(near_zero, tmp_path, capsys):
    result, model, src = near_zero
    layers = compactor_layers(model)
    assert sum(map(len, result.masked.values())) == 132 and not any(result.zeroed.values())
    norms = {n: [float(v) for v in layer.compactor.row_norms()] for n, layer in layers.items()}
    low = [norms[n][r] for n in layers for r in result.masked[n]]
    assert 0 < min(low) and max(low) == result.max_masked_norm < CONVERSION_EPSILON
    # the threshold: the largest masked norm (a hair above it, so that a last-bit difference between the two
    # norm computations cannot drop that row). Every masked row goes; an unmasked row under it (the training
    # is chaotic in float32; none here on AMD EPYC) goes too, in both onnxrep and the authors' conversion
    threshold = result.max_masked_norm * (1 + 1e-9)
    kept = resrep_kept_channels(model, threshold)
    removed = {n: layer.compactor.num_features - len(kept[n]) for n, layer in layers.items()}
    assert all(set(result.masked[n]).isdisjoint(kept[n]) for n in layers)
    assert sum(removed.values()) >= 132

    out, js = tmp_path / "pruned.onnx", tmp_path / "r.json"
    # exact elimination alone finds no dead channel: the rows are small, not zero
    assert cli.main(["optimize", str(src), str(out), "-q", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["after"]["params"] > 150_000
    code = cli.main(["optimize", str(src), str(out), "--prune-threshold", repr(threshold), "--prune-tolerance",
                     "1e-3", "--json", str(js)])
    text = capsys.readouterr().out
    layer_count = sum(1 for r in removed.values() if r)
    assert code == 0
    assert f"rows pruned (not exact: the model changed): {sum(removed.values())} in {layer_count} layer(s)" in text
    report = json.loads(js.read_text())
    pruned = [c for r in report["rules"] if r["name"] == "prune-compactor-rows" for c in r["channels_removed"]]
    assert sorted(c["before"] - c["after"] for c in pruned) == sorted(r for r in removed.values() if r)
    v = report["verification"]
    assert v["passed"] and 0 < v["max_rel"] < 1e-4  # the rows had norms ~5e-6: the change is that small
    # the result is the authors' conversion at the same threshold, in size (graph_stats also counts the
    # pooling, count_params_macs only Conv and Linear)
    deploy = resrep_convert(model, threshold=threshold)
    ref = graph_stats(onnx.load(export_onnx(deploy, tmp_path / "deploy.onnx", (1, 3, 32, 32))))
    stats = graph_stats(onnx.load(out))
    assert (stats.params, stats.macs, stats.convs) == (ref.params, ref.macs, ref.convs)
    assert stats.params == count_params_macs(deploy, (1, 3, 32, 32))[0] and stats.convs == 16
