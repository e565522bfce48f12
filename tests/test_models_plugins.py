"""Tests of the graph-editing helpers in models/plugins.py themselves (structure of the edited
graphs; how onnxrep treats them is tested elsewhere): the EfficientNMS_TRT end-to-end head on
the YOLOv6-n-like export and a custom-domain node between two RepVGG blocks, for every torch
export mode. The tests on exported networks are marked slow; the small synthetic ones are not.
"""
from __future__ import annotations

import collections
import functools

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper

torch = pytest.importorskip("torch")

from models.export import MODELS, export_onnx  # noqa: E402
from models.plugins import (DEFAULT_CUSTOM_ATTRS, NMS_OUTPUTS, add_efficient_nms, block_output,  # noqa: E402
                            custom_op_between_blocks, insert_custom_op)

slow = pytest.mark.slow  # torch exports of whole networks: `pytest -m 'not slow'` skips them

MODES = {
    "legacy": dict(dynamo=False),
    "legacy-nofold": dict(dynamo=False, constant_folding=False),
    "dynamo": dict(dynamo=True),
    "dynamo-nofold": dict(dynamo=True, constant_folding=False),
}
NUM_CLASSES = 80  # yolov6_repconv's default
NUM_ANCHORS = 8 * 8 + 4 * 4 + 2 * 2  # 64x64 input, strides 8, 16, 32 (= 4 + NUM_CLASSES, by chance)
#: nodes appended by add_efficient_nms, per box_coding
APPENDED = {
    1: collections.Counter(Split=1, Sub=2, Add=2, Mul=2, Concat=1, EfficientNMS_TRT=1),
    0: collections.Counter(Split=1, Sub=1, Add=1, Mul=1, Concat=1, EfficientNMS_TRT=1),
}
#: the tensor custom_op_between_blocks picks in repvgg_tiny (output of stage2.0, input of stage2.1)
BETWEEN_BLOCKS = {"legacy": "/stage2.0/nonlinearity/Relu_output_0",
                  "legacy-nofold": "/stage2.0/nonlinearity/Relu_output_0",
                  "dynamo": "relu_2", "dynamo-nofold": "relu_2"}


@functools.lru_cache(maxsize=None)
def _train_model(name: str):
    """Seeded training-form model, built once per name (yolov6_repconv's LSUV scaling takes seconds)."""
    return MODELS[name].build(seed=0)


def _export(name: str, mode: str, out_dir) -> onnx.ModelProto:
    path = export_onnx(_train_model(name), out_dir / f"{name}-{mode}.onnx", MODELS[name].input_shape,
                       **MODES[mode])
    return onnx.load(path)


@pytest.fixture(scope="module", params=list(MODES))
def yolo(request, tmp_path_factory):
    """(mode, yolov6_repconv training-form export)"""
    return request.param, _export("yolov6_repconv", request.param, tmp_path_factory.mktemp("yolo"))


@pytest.fixture(scope="module", params=list(MODES))
def repvgg(request, tmp_path_factory):
    """(mode, repvgg_tiny training-form export)"""
    return request.param, _export("repvgg_tiny", request.param, tmp_path_factory.mktemp("repvgg"))


def _ops(nodes) -> collections.Counter:
    return collections.Counter(n.op_type for n in nodes)


def _dims(type_proto) -> list:
    return [d.dim_param or d.dim_value for d in type_proto.tensor_type.shape.dim]


def _value_infos(model) -> dict:
    return {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}


def _attrs(node) -> dict:
    return {a.name: (a.type, helper.get_attribute_value(a)) for a in node.attribute}


# ---------------------------------------------------------------------------- EfficientNMS_TRT
@slow
def test_nms_appends_the_decode_and_one_plugin_node(yolo):
    _, model = yolo
    before = model.SerializeToString()
    e2e = add_efficient_nms(model, NUM_CLASSES)
    assert model.SerializeToString() == before  # the argument is left alone
    n = len(model.graph.node)
    assert len(e2e.graph.node) == n + sum(APPENDED[1].values()) == n + 9
    assert [x.SerializeToString() for x in e2e.graph.node[:n]] == [
        x.SerializeToString() for x in model.graph.node]
    assert _ops(e2e.graph.node[n:]) == APPENDED[1]
    assert _ops(e2e.graph.node) - _ops(model.graph.node) == APPENDED[1]
    assert e2e.graph.node[n].op_type == "Split" and e2e.graph.node[n].input[0] == "output"
    assert [(o.domain, o.version) for o in e2e.opset_import] == [
        (o.domain, o.version) for o in model.opset_import]
    assert len(e2e.graph.initializer) == len(model.graph.initializer) + 4  # split sizes, anchors, strides, 0.5


@slow
def test_nms_plugin_node(yolo):
    _, model = yolo
    e2e = add_efficient_nms(model, NUM_CLASSES)
    nms = e2e.graph.node[-1]
    assert (nms.op_type, nms.domain) == ("EfficientNMS_TRT", "")
    assert list(nms.output) == list(NMS_OUTPUTS) == ["num_dets", "det_boxes", "det_scores", "det_classes"]
    assert _attrs(nms) == {
        "background_class": (AttributeProto.INT, -1),
        "box_coding": (AttributeProto.INT, 1),
        "iou_threshold": (AttributeProto.FLOAT, pytest.approx(0.45)),
        "max_output_boxes": (AttributeProto.INT, 100),
        "plugin_version": (AttributeProto.STRING, b"1"),
        "score_activation": (AttributeProto.INT, 0),
        "score_threshold": (AttributeProto.FLOAT, pytest.approx(0.25)),
    }
    vi = _value_infos(e2e)
    boxes, scores = nms.input
    assert _dims(vi[boxes].type) == ["batch", NUM_ANCHORS, 4]
    assert _dims(vi[scores].type) == ["batch", NUM_ANCHORS, NUM_CLASSES]
    assert _dims(vi["output"].type) == ["batch", NUM_ANCHORS, 4 + NUM_CLASSES]  # the old output, now internal
    assert len({v.name for v in e2e.graph.value_info}) == len(e2e.graph.value_info)


@slow
def test_nms_graph_outputs(yolo):
    _, model = yolo
    e2e = add_efficient_nms(model, NUM_CLASSES)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert batch == "batch"
    got = [(o.name, o.type.tensor_type.elem_type, _dims(o.type)) for o in e2e.graph.output]
    assert got == [("num_dets", TensorProto.INT32, [batch, 1]),
                   ("det_boxes", TensorProto.FLOAT, [batch, 100, 4]),
                   ("det_scores", TensorProto.FLOAT, [batch, 100]),
                   ("det_classes", TensorProto.INT32, [batch, 100])]
    assert [i.SerializeToString() for i in e2e.graph.input] == [i.SerializeToString() for i in model.graph.input]


@slow
def test_nms_fails_the_onnx_checker(yolo):
    _, model = yolo
    onnx.checker.check_model(model)
    with pytest.raises(onnx.checker.ValidationError, match="No Op registered for EfficientNMS_TRT"):
        onnx.checker.check_model(add_efficient_nms(model, NUM_CLASSES))


@slow
def test_nms_box_corners_in_the_trt_domain(yolo):
    """box_coding=0 drops the center-size arithmetic; domain "TRT" (what YOLOv6's torch export
    writes) adds the opset import and then passes the checker (custom domains are not checked)."""
    _, model = yolo
    e2e = add_efficient_nms(model, NUM_CLASSES, box_coding=0, domain="TRT", max_output_boxes=50,
                            iou_threshold=0.6)
    n = len(model.graph.node)
    assert _ops(e2e.graph.node[n:]) == APPENDED[0]
    nms = e2e.graph.node[-1]
    assert nms.domain == "TRT"
    attrs = _attrs(nms)
    assert attrs["box_coding"] == (AttributeProto.INT, 0)
    assert attrs["max_output_boxes"] == (AttributeProto.INT, 50)
    assert attrs["iou_threshold"][1] == pytest.approx(0.6)
    assert ("TRT", 1) in [(o.domain, o.version) for o in e2e.opset_import]
    assert _dims(e2e.graph.output[1].type) == ["batch", 50, 4]
    onnx.checker.check_model(e2e)


def _nms_inputs_model(e2e: onnx.ModelProto) -> onnx.ModelProto:
    """``e2e`` without its NMS node; the graph outputs are the two NMS inputs."""
    cut = onnx.ModelProto()
    cut.CopyFrom(e2e)
    nms = cut.graph.node.pop()
    vi = _value_infos(cut)
    del cut.graph.output[:]
    cut.graph.output.extend([vi[name] for name in nms.input])
    return cut


def _yolov6_reference(raw: np.ndarray, box_coding: int) -> tuple[np.ndarray, np.ndarray]:
    """YOLOv6's generate_anchors(is_eval=True, mode='af') + dist2bbox + ``* stride``, in loops."""
    points, strides = [], []
    for s in (8, 16, 32):
        for y in range(64 // s):
            for x in range(64 // s):
                points.append((x + 0.5, y + 0.5))
                strides.append(s)
    points = np.array(points, dtype=np.float64)
    strides = np.array(strides, dtype=np.float64)[:, None]
    raw = raw.astype(np.float64)
    x1y1, x2y2 = points - raw[..., 0:2], points + raw[..., 2:4]
    if box_coding == 1:
        boxes = np.concatenate([(x1y1 + x2y2) / 2, x2y2 - x1y1], -1)
    else:
        boxes = np.concatenate([x1y1, x2y2], -1)
    return boxes * strides, raw[..., 4:]


@pytest.fixture(scope="module")
def yolo_legacy(tmp_path_factory):
    return _export("yolov6_repconv", "legacy", tmp_path_factory.mktemp("yolo-legacy"))


@slow
@pytest.mark.parametrize("box_coding", [1, 0])
def test_nms_decode_matches_yolov6(yolo_legacy, box_coding):
    """The decoded NMS inputs, run on onnxruntime, against YOLOv6's decode of the raw head output
    (numerics once, on the legacy export)."""
    ort = pytest.importorskip("onnxruntime")
    model = yolo_legacy
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)

    def run(m):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"input": x})

    (raw,) = run(model)
    assert raw.shape == (2, NUM_ANCHORS, 4 + NUM_CLASSES)
    boxes, scores = run(_nms_inputs_model(add_efficient_nms(model, NUM_CLASSES, box_coding=box_coding)))
    ref_boxes, ref_scores = _yolov6_reference(raw, box_coding)
    assert boxes.shape == (2, NUM_ANCHORS, 4) and scores.shape == (2, NUM_ANCHORS, NUM_CLASSES)
    np.testing.assert_allclose(boxes, ref_boxes, rtol=1e-5, atol=1e-5 * np.abs(ref_boxes).max())
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


def _toy_detector(hw=(64, 64), anchors=NUM_ANCHORS, channels=4 + NUM_CLASSES, outputs=1) -> onnx.ModelProto:
    """Image input, a constant head output per graph output (enough for the argument checks)."""
    nodes, outs, inits = [], [], []
    for i in range(outputs):
        inits.append(helper.make_tensor(f"c{i}", TensorProto.FLOAT, [1, anchors, channels],
                                         np.zeros(anchors * channels, np.float32)))
        nodes.append(helper.make_node("Identity", [f"c{i}"], [f"out{i}"]))
        outs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, ["batch", anchors, channels]))
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["batch", 3, *hw])], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_nms_argument_checks():
    add_efficient_nms(_toy_detector(), NUM_CLASSES)
    with pytest.raises(ValueError, match="expected"):
        add_efficient_nms(_toy_detector(), NUM_CLASSES - 1)
    with pytest.raises(ValueError, match="not a multiple of stride"):
        add_efficient_nms(_toy_detector(hw=(64, 48)), NUM_CLASSES)
    with pytest.raises(ValueError, match="output="):
        add_efficient_nms(_toy_detector(outputs=2), NUM_CLASSES)
    two = add_efficient_nms(_toy_detector(outputs=2), NUM_CLASSES, output="out1")
    assert two.graph.node[-1].op_type == "EfficientNMS_TRT"
    assert [o.name for o in two.graph.output] == list(NMS_OUTPUTS)
    with pytest.raises(ValueError, match="box_coding"):
        add_efficient_nms(_toy_detector(), NUM_CLASSES, box_coding=2)


# ---------------------------------------------------------------------------- custom-domain node
@slow
def test_custom_op_between_blocks(repvgg):
    mode, model = repvgg
    tensor = block_output(model)
    assert tensor == BETWEEN_BLOCKS[mode]
    consumers = [n.name for n in model.graph.node if tensor in n.input]
    assert len(consumers) == (5 if mode == "dynamo-nofold" else 3)  # 3x3, 1x1, BN identity (+ 2 CastLike)
    before = model.SerializeToString()
    out = custom_op_between_blocks(model)
    assert model.SerializeToString() == before

    assert len(out.graph.node) == len(model.graph.node) + 1
    assert _ops(out.graph.node) - _ops(model.graph.node) == collections.Counter(ChannelShuffleX=1)
    assert _ops(model.graph.node) - _ops(out.graph.node) == collections.Counter()
    (custom,) = [n for n in out.graph.node if n.op_type == "ChannelShuffleX"]
    assert custom.domain == "com.example" and list(custom.input) == [tensor] and len(custom.output) == 1
    new = custom.output[0]
    # right after the producer: the node list stays topologically sorted
    idx = [n.name for n in out.graph.node].index(custom.name)
    assert tensor in out.graph.node[idx - 1].output
    # every previous consumer reads the new tensor, nobody else reads the old one
    assert sorted(n.name for n in out.graph.node if new in n.input) == sorted(consumers)
    assert [n.name for n in out.graph.node if tensor in n.input] == [custom.name]
    assert ("com.example", 1) in [(o.domain, o.version) for o in out.opset_import]
    assert len(out.opset_import) == len(model.opset_import) + 1


@slow
def test_custom_op_attributes_and_value_info(repvgg):
    mode, model = repvgg
    out = custom_op_between_blocks(model)
    (custom,) = [n for n in out.graph.node if n.domain == "com.example"]
    assert _attrs(custom) == {"groups": (AttributeProto.INT, 2), "alpha": (AttributeProto.FLOAT, 0.5),
                              "mode": (AttributeProto.STRING, b"interleave"),
                              "axes": (AttributeProto.INTS, [1, 2])}
    assert set(_attrs(custom)) == set(DEFAULT_CUSTOM_ATTRS)
    old_vi, new_vi = _value_infos(model).get(custom.input[0]), _value_infos(out).get(custom.output[0])
    if mode.startswith("dynamo"):  # the dynamo exporter writes value_info, the legacy one does not
        assert old_vi is not None and _dims(old_vi.type) == ["batch", 32, 8, 8]
        assert new_vi is not None and new_vi.type == old_vi.type
    else:
        assert old_vi is None and new_vi is None


@slow
def test_custom_op_passes_the_onnx_checker(repvgg):
    _, model = repvgg
    out = custom_op_between_blocks(model)
    onnx.checker.check_model(out)
    onnx.checker.check_model(out, full_check=True)


@slow
def test_custom_op_options(repvgg):
    """Own op / domain / attributes; a second node in the same domain; a graph input as target."""
    _, model = repvgg
    attrs = {"k": 3, "eps": 1e-3, "name": "x", "dims": [2, 3, 4]}
    one = insert_custom_op(model, block_output(model, 1), domain="org.test", op_type="Foo", attrs=attrs,
                           output_name="foo_out", node_name="foo")
    two = insert_custom_op(one, "input", domain="org.test", op_type="Bar", attrs={})
    assert two.graph.node[0].op_type == "Bar" and two.graph.node[0].input[0] == "input"
    assert [o.domain for o in two.opset_import].count("org.test") == 1
    foo = next(n for n in two.graph.node if n.name == "foo")
    assert list(foo.output) == ["foo_out"]
    assert {k: v[0] for k, v in _attrs(foo).items()} == {"k": AttributeProto.INT, "eps": AttributeProto.FLOAT,
                                                         "name": AttributeProto.STRING,
                                                         "dims": AttributeProto.INTS}
    bar_out = two.graph.node[0].output[0]
    assert _dims(_value_infos(two)[bar_out].type) == ["batch", 3, 64, 64]  # from the graph input
    onnx.checker.check_model(two)


def test_custom_op_argument_checks():
    model = _toy_detector()
    with pytest.raises(ValueError, match="graph output"):
        insert_custom_op(model, "out0")
    with pytest.raises(ValueError, match="no tensor"):
        insert_custom_op(model, "nope")
    with pytest.raises(ValueError, match="custom domains"):
        insert_custom_op(model, "c0", domain="")
    with pytest.raises(ValueError, match="Relus"):
        block_output(model)
