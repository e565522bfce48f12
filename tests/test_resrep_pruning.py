"""ResRep end to end: the trainer's rows left near zero (not zeroed), pruned by --prune-threshold."""
from __future__ import annotations

import json

import onnx
import pytest

torch = pytest.importorskip("torch")

from models.export import export_onnx  # noqa: E402
from models.resrep import (ResRepConfig, compactor_layers, count_params_macs, resrep_convert,  # noqa: E402
                           train_resrep)
from onnxrep import cli  # noqa: E402
from onnxrep.stats import graph_stats  # noqa: E402

pytestmark = pytest.mark.slow  # trains the network (~15 s)


@pytest.fixture(scope="module")
def near_zero(tmp_path_factory):
    """The trained network with its masked rows left at their final norms (~5e-6), exported."""
    result = train_resrep(ResRepConfig(zero_threshold=0.0), strict=False)
    model = result.model.eval()
    path = tmp_path_factory.mktemp("resrep") / "train.onnx"
    export_onnx(model, path, (1, 3, 32, 32))
    return result, model, path


def test_prune_threshold_removes_the_rows_the_trainer_drove_down(near_zero, tmp_path, capsys):
    result, model, src = near_zero
    masked = sum(len(v) for v in result.masked.values())
    norms = {n: [float(v) for v in layer.compactor.row_norms()] for n, layer in compactor_layers(model).items()}
    low = [v for n, vs in norms.items() for r, v in enumerate(vs) if r in result.masked[n]]
    high = [v for n, vs in norms.items() for r, v in enumerate(vs) if r not in result.masked[n]]
    assert masked == 132 and 0 < max(low) < 1e-5 < min(high)
    out, js = tmp_path / "pruned.onnx", tmp_path / "r.json"
    # exact elimination alone finds no dead channel: the rows are small, not zero
    assert cli.main(["optimize", str(src), str(out), "-q", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["after"]["params"] > 150_000
    code = cli.main(["optimize", str(src), str(out), "--prune-threshold", "1e-5", "--prune-tolerance", "1e-3",
                     "--json", str(js)])
    text = capsys.readouterr().out
    assert code == 0 and "rows pruned (not exact: the model changed): 132 in 7 layer(s)" in text
    report = json.loads(js.read_text())
    pruned = [c for r in report["rules"] if r["name"] == "prune-compactor-rows" for c in r["channels_removed"]]
    assert sum(c["before"] - c["after"] for c in pruned) == masked
    v = report["verification"]
    assert v["passed"] and 0 < v["max_rel"] < 1e-4  # the rows had norms ~5e-6: the change is that small
    # the result is the authors' pruned deploy form's size
    deploy_params, deploy_macs = count_params_macs(resrep_convert(model, threshold=1e-5), (1, 3, 32, 32))
    stats = graph_stats(onnx.load(out))
    assert stats.params <= deploy_params * 1.001 and stats.macs <= deploy_macs * 1.001
    assert stats.convs == 16
