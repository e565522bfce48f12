"""Real deployment models: a YOLO detector ending in TensorRT's EfficientNMS_TRT (default domain) and a
RepVGG network with a custom-domain op between two blocks, from every torch export mode.

They load (the ONNX checker has no schema for the plugin), the blocks merge as in the deploy form,
the plugin / custom node passes through with its attributes and opset import, and verification checks
what onnxruntime can run: the tensors feeding the node, and past a custom op with a float output
what follows it (fed the same random values); the outputs it cannot check are reported.
"""
from __future__ import annotations

import json

import onnx
import pytest

torch = pytest.importorskip("torch")

from models.export import export_pair  # noqa: E402
from models.plugins import add_efficient_nms, custom_op_between_blocks  # noqa: E402
from onnxrep import cli  # noqa: E402
from onnxrep.graph.stats import graph_stats  # noqa: E402

pytestmark = pytest.mark.slow  # torch exports of whole networks

MODES = {
    "legacy": dict(dynamo=False),
    "dynamo": dict(dynamo=True),
    "legacy-nofold": dict(dynamo=False, constant_folding=False),
}
NMS_OUTPUTS = ["num_dets", "det_boxes", "det_scores", "det_classes"]


def _signature(node: onnx.NodeProto):
    return (node.op_type, node.domain, list(node.input), list(node.output),
            sorted((a.name, a.SerializeToString()) for a in node.attribute))


def _optimize(src, tmp_path, capsys):
    out, js = tmp_path / "out.onnx", tmp_path / "report.json"
    code = cli.main(["optimize", str(src), str(out), "--json", str(js)])
    stdout = capsys.readouterr().out
    return code, onnx.load(out) if out.exists() else None, json.loads(js.read_text()), stdout


@pytest.fixture(scope="module", params=list(MODES))
def yolo(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"yolo-{request.param}")
    train, deploy = export_pair("yolov6_repconv", folder, seed=1, **MODES[request.param])
    src = folder / "train_nms.onnx"
    onnx.save(add_efficient_nms(onnx.load(train), 80), src)
    return src, onnx.load(deploy)


@pytest.fixture(scope="module", params=list(MODES))
def repvgg(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"repvgg-{request.param}")
    train, deploy = export_pair("repvgg_tiny", folder, seed=1, **MODES[request.param])
    src = folder / "train_custom.onnx"
    onnx.save(custom_op_between_blocks(onnx.load(train)), src)
    return src, onnx.load(deploy)


def test_yolo_with_efficient_nms(yolo, tmp_path, capsys):
    src, deploy = yolo
    model = onnx.load(src)
    with pytest.raises(onnx.checker.ValidationError, match="EfficientNMS_TRT"):
        onnx.checker.check_model(model)
    code, out, report, stdout = _optimize(src, tmp_path, capsys)
    assert code == cli.EXIT_OK
    # merged like the deploy form (the end-to-end head adds no Conv)
    assert graph_stats(out).convs <= graph_stats(deploy).convs < graph_stats(model).convs
    assert graph_stats(out).ops.get("BatchNormalization", 0) == 0
    nms = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    kept = [n for n in out.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert len(nms) == len(kept) == 1 and _signature(kept[0]) == _signature(nms[0])
    assert [(i.domain, i.version) for i in out.opset_import] == [(i.domain, i.version) for i in model.opset_import]
    assert [o.name for o in out.graph.output] == NMS_OUTPUTS
    v = report["verification"]
    assert v["passed"] and v["partial"]
    assert sorted(o["name"] for o in v["outputs"]) == sorted(i for i in nms[0].input if i)
    assert all(o["what"].startswith("input of EfficientNMS_TRT") for o in v["outputs"])
    assert all(o["max_abs"] <= 1e-4 * max(1.0, o["ref_max_abs"]) for o in v["outputs"])
    assert sorted(v["unverifiable"]) == sorted(NMS_OUTPUTS)
    assert "not verified: num_dets" in stdout and "EfficientNMS_TRT (default domain, not an ONNX op)" in stdout


def test_custom_op_between_blocks(repvgg, tmp_path, capsys):
    src, deploy = repvgg
    model = onnx.load(src)
    code, out, report, stdout = _optimize(src, tmp_path, capsys)
    assert code == cli.EXIT_OK
    assert graph_stats(out).convs <= graph_stats(deploy).convs < graph_stats(model).convs
    custom = [n for n in model.graph.node if n.domain == "com.example"]
    kept = [n for n in out.graph.node if n.domain == "com.example"]
    assert len(custom) == len(kept) == 1 and _signature(kept[0]) == _signature(custom[0])
    assert ("com.example", 1) in [(i.domain, i.version) for i in out.opset_import]
    v = report["verification"]
    assert v["passed"] and v["partial"]
    # the tensor feeding the custom op, and past it (its output fed with the same random values to both
    # models, shaped like its input) the merged blocks up to the graph output
    compared = {o["name"]: o for o in v["outputs"]}
    assert compared[custom[0].input[0]]["what"] == f"input of ChannelShuffleX '{custom[0].name}'"
    assert compared[model.graph.output[0].name]["what"] == "graph output"
    assert len(compared) == 2 and v["fed"] == list(custom[0].output) and v["unverifiable"] == {}
    assert all(o["max_abs"] <= 1e-4 * max(1.0, o["ref_max_abs"]) for o in v["outputs"])
    assert "com.example.ChannelShuffleX" in stdout and "fed with the same random values" in stdout


def test_float16_yolo_with_efficient_nms(tmp_path, capsys):
    """The float16 export (``model.half()``) of the same detector with the plugin: merged, the plugin kept,
    the tensors feeding it verified at the float16 tolerance and within 5e-3 * max(1, max|y|)."""
    from models.export import MODELS, export_onnx

    spec = MODELS["yolov6_repconv"]
    path = export_onnx(spec.build(seed=1).half(), tmp_path / "y16.onnx", spec.input_shape)
    train = onnx.load(path)
    assert train.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    src = tmp_path / "y16_nms.onnx"
    onnx.save(add_efficient_nms(train, 80), src)
    code, out, report, _ = _optimize(src, tmp_path, capsys)
    assert code == cli.EXIT_OK
    assert graph_stats(out).ops.get("BatchNormalization", 0) == 0
    assert graph_stats(out).convs < graph_stats(train).convs
    assert [n.op_type for n in out.graph.node].count("EfficientNMS_TRT") == 1
    v = report["verification"]
    assert v["passed"] and v["partial"] and sorted(v["unverifiable"]) == sorted(NMS_OUTPUTS)
    assert {o["precision"] for o in v["outputs"]} == {"float16"}
    assert all(o["max_abs"] <= 5e-3 * max(1.0, o["ref_max_abs"]) for o in v["outputs"])
