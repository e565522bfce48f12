"""Graph edits that turn an exported training-form network into a deployment-style ONNX model
with TensorRT plugin / custom-domain nodes, as TensorRT users have them.

Only ``onnx`` (``helper`` / ``numpy_helper``) and numpy: nothing from onnxrep, no torch. Every
function returns a new ``ModelProto`` and leaves its argument untouched.

* :func:`add_efficient_nms` -- the end-to-end detection head of YOLOv6's TensorRT export
  (``yolov6/models/end2end.py``, ``End2End`` + ``ONNX_TRT8``; ``deploy/ONNX/export_onnx.py
  --end2end``): decode the raw head output of ``models.yolo.yolov6_repconv`` (``(N, A, 4 + nc)``,
  ltrb distances + sigmoid class scores) into boxes ``(N, A, 4)`` and scores ``(N, A, nc)``
  with plain ONNX ops (YOLOv6's ``generate_anchors`` + ``dist2bbox`` + ``* stride``), then one
  ``EfficientNMS_TRT`` node whose four outputs ``num_dets``, ``det_boxes``, ``det_scores``,
  ``det_classes`` replace the graph outputs. ``EfficientNMS_TRT`` is in the default domain
  ``""`` (as onnx-graphsurgeon and TensorRT's samples write it), so ``onnx.checker`` rejects
  the model ("No Op registered for EfficientNMS_TRT ..."): that is the point.
* :func:`insert_custom_op` -- a custom-domain node (default ``com.example::ChannelShuffleX``)
  spliced after one tensor: it reads the tensor and its output replaces the tensor for every
  previous consumer. Custom domains are not checked by ``onnx.checker``: the model still passes.
* :func:`custom_op_between_blocks` -- :func:`insert_custom_op` on a RepVGG-style network
  (``repvgg_tiny``) at :func:`block_output` (the Relu output of block ``block``, by default the
  one between ``stage2.0`` and ``stage2.1``: ``/stage2.0/nonlinearity/Relu_output_0`` in the
  legacy exports, ``relu_2`` in the dynamo ones).

Works on the exports of ``models.export.export_onnx`` with either torch exporter, with or
without constant folding (legacy graphs carry no ``value_info``; dynamo graphs do).
"""
from __future__ import annotations

import collections
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["add_efficient_nms", "insert_custom_op", "custom_op_between_blocks", "block_output",
           "yolov6_anchors", "NMS_OUTPUTS", "DEFAULT_CUSTOM_ATTRS"]

#: graph output names of YOLOv6's ``export_onnx.py --end2end`` (TensorRT 8 path)
NMS_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")

#: attributes of the default custom node: one of each type int, float, string, ints
DEFAULT_CUSTOM_ATTRS: Mapping[str, object] = {"groups": 2, "alpha": 0.5, "mode": "interleave",
                                              "axes": [1, 2]}


# ---------------------------------------------------------------------------- small helpers
def _dims(type_proto: onnx.TypeProto) -> list:
    """Dims of a tensor type: int, str (symbolic) or None (unknown); [] if no shape."""
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None)
            for d in tt.shape.dim]


class _Names:
    """Fresh node / tensor names that collide with nothing already in the graph."""

    def __init__(self, graph: onnx.GraphProto, prefix: str):
        self.prefix = prefix
        self.used = {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
        self.used |= {t.name for t in graph.initializer} | {n.name for n in graph.node}
        for n in graph.node:
            self.used.update(n.input)
            self.used.update(n.output)
        self.counts: collections.Counter = collections.Counter()

    def __call__(self, base: str) -> str:
        while True:
            k = self.counts[base]
            self.counts[base] += 1
            name = f"{self.prefix}{base}" + (f"_{k}" if k else "")
            if name not in self.used:
                self.used.add(name)
                return name


def _producer_index(graph: onnx.GraphProto, tensor: str) -> int | None:
    for i, node in enumerate(graph.node):
        if tensor in node.output:
            return i
    return None


def _known_type(graph: onnx.GraphProto, tensor: str) -> onnx.TypeProto | None:
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.name == tensor and vi.type.HasField("tensor_type"):
            return vi.type
    return None


def _subgraph_uses(graph: onnx.GraphProto, tensor: str) -> bool:
    """True if a subgraph (If / Loop / Scan body) of ``graph`` reads ``tensor`` (by outer scope)."""
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                if any(tensor in n.input for n in sub.node) or _subgraph_uses(sub, tensor):
                    return True
    return False


# ---------------------------------------------------------------------------- EfficientNMS_TRT
def yolov6_anchors(height: int, width: int, strides: Sequence[int] = (8, 16, 32),
                   grid_cell_offset: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(anchor_points (A, 2), stride_tensor (A, 1))`` as YOLOv6's ``generate_anchors(...,
    is_eval=True, mode='af')``: per level, row-major cells ``(x + 0.5, y + 0.5)`` in grid units."""
    points, stride_rows = [], []
    for s in strides:
        if height % s or width % s:
            raise ValueError(f"input {height}x{width} is not a multiple of stride {s}")
        h, w = height // s, width // s
        sy, sx = np.meshgrid(np.arange(h) + grid_cell_offset, np.arange(w) + grid_cell_offset, indexing="ij")
        points.append(np.stack([sx, sy], axis=-1).reshape(-1, 2))
        stride_rows.append(np.full((h * w, 1), float(s)))
    return (np.concatenate(points).astype(np.float32), np.concatenate(stride_rows).astype(np.float32))


def add_efficient_nms(model: onnx.ModelProto, num_classes: int, *, output: str | None = None,
                      strides: Sequence[int] = (8, 16, 32), box_coding: int = 1,
                      iou_threshold: float = 0.45, score_threshold: float = 0.25,
                      max_output_boxes: int = 100, background_class: int = -1,
                      score_activation: int = 0, plugin_version: str = "1", domain: str = "",
                      output_names: Sequence[str] = NMS_OUTPUTS) -> onnx.ModelProto:
    """Append YOLOv6's TensorRT end-to-end head to a ``yolov6_repconv`` export.

    ``output`` (default: the only graph output) must be the raw head output ``(N, A, 4 +
    num_classes)``: per anchor the ltrb distances (in grid cells of its level) and the class
    scores, already sigmoid (hence ``score_activation=0``). ``A`` follows from the static
    ``H x W`` of the first graph input and ``strides``. Appended nodes (prefix ``/end2end/``):

    * ``Split`` (axis 2, ``[2, 2, num_classes]``) -> ``lt``, ``rb``, ``scores``
    * ``x1y1 = anchor_points - lt`` (``Sub``), ``x2y2 = anchor_points + rb`` (``Add``)
    * ``box_coding=1`` (center-size, YOLOv6's ``box_format='xywh'``):
      ``Concat((x1y1 + x2y2) * 0.5, x2y2 - x1y1)``; ``box_coding=0`` (corners):
      ``Concat(x1y1, x2y2)``
    * ``boxes = that * stride_tensor`` (``Mul``)
    * ``EfficientNMS_TRT(boxes, scores)`` in ``domain`` (default ``""``; YOLOv6's
      ``g.op("TRT::EfficientNMS_TRT")`` writes ``"TRT"``, pass ``domain="TRT"`` for that, which
      also adds the opset import ``TRT`` v1). Attributes: ``background_class``, ``box_coding``,
      ``iou_threshold``, ``max_output_boxes``, ``plugin_version``, ``score_activation``,
      ``score_threshold`` (YOLOv6's own export writes ``background_class`` / ``box_coding`` as
      1-element INTS through a trailing-comma slip; here they are INT as in the plugin docs).

    The graph outputs become ``output_names`` (``num_dets`` int32 ``[N, 1]``, ``det_boxes``
    ``[N, max, 4]``, ``det_scores`` ``[N, max]``, ``det_classes`` int32 ``[N, max]``; boxes and
    scores in the head's dtype), the batch dim copied from the first graph input (``batch`` in
    these exports). The old output's type moves to ``value_info``; ``boxes`` / ``scores`` get one.
    """
    if box_coding not in (0, 1):
        raise ValueError(f"box_coding must be 0 (corners) or 1 (center-size), got {box_coding}")
    if num_classes < 1 or len(output_names) != 4:
        raise ValueError("num_classes >= 1 and four output names are needed")
    model = _copy(model)
    g = model.graph
    if output is None:
        if len(g.output) != 1:
            raise ValueError(f"the model has {len(g.output)} outputs; name the head output with output=")
        output = g.output[0].name
    head = next((o for o in g.output if o.name == output), None)
    if head is None:
        raise ValueError(f"{output!r} is not a graph output")
    elem = head.type.tensor_type.elem_type
    if elem not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise ValueError(f"head output {output!r} has element type {TensorProto.DataType.Name(elem)}")
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)

    in_dims = _dims(g.input[0].type)
    if len(in_dims) != 4 or not all(isinstance(d, int) and d > 0 for d in in_dims[2:]):
        raise ValueError(f"need a static NCHW image input, got {g.input[0].name}: {in_dims}")
    batch = in_dims[0] if in_dims[0] is not None else "batch"
    anchor_points, stride_tensor = yolov6_anchors(in_dims[2], in_dims[3], strides)
    num_anchors = anchor_points.shape[0]
    head_dims = _dims(head.type)
    want = [None, num_anchors, 4 + num_classes]
    if head_dims and (len(head_dims) != 3 or any(isinstance(d, int) and isinstance(w, int) and d != w
                                                 for d, w in zip(head_dims[1:], want[1:]))):
        raise ValueError(f"head output {output!r} has shape {head_dims}; expected (N, {num_anchors}, "
                         f"{4 + num_classes})")

    name = _Names(g, "/end2end/")
    nodes: list[onnx.NodeProto] = []

    def const(base: str, value: np.ndarray) -> str:
        t = numpy_helper.from_array(np.asarray(value), name(base))
        g.initializer.append(t)
        return t.name

    def op(op_type: str, inputs: Iterable[str], n_out: int = 1, **attrs) -> list[str]:
        node_name = name(op_type)
        outs = [f"{node_name}_output_{i}" for i in range(n_out)]
        if name.used & set(outs):
            raise ValueError(f"tensor names {sorted(name.used & set(outs))} are taken")
        name.used.update(outs)
        nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs

    split = const("split", np.array([2, 2, num_classes], dtype=np.int64))
    points = const("anchor_points", anchor_points.astype(np_dtype))
    stride = const("stride_tensor", stride_tensor.astype(np_dtype))
    lt, rb, scores = op("Split", [output, split], 3, axis=2)
    (x1y1,) = op("Sub", [points, lt])
    (x2y2,) = op("Add", [points, rb])
    if box_coding == 1:
        (both,) = op("Add", [x1y1, x2y2])
        (c_xy,) = op("Mul", [both, const("half", np.array(0.5, dtype=np_dtype))])
        (wh,) = op("Sub", [x2y2, x1y1])
        (grid_boxes,) = op("Concat", [c_xy, wh], axis=-1)
    else:
        (grid_boxes,) = op("Concat", [x1y1, x2y2], axis=-1)
    (boxes,) = op("Mul", [grid_boxes, stride])

    nms_name = name("EfficientNMS_TRT")
    nodes.append(helper.make_node(
        "EfficientNMS_TRT", [boxes, scores], list(output_names), name=nms_name, domain=domain,
        background_class=int(background_class), box_coding=int(box_coding),
        iou_threshold=float(iou_threshold), max_output_boxes=int(max_output_boxes),
        plugin_version=str(plugin_version), score_activation=int(score_activation),
        score_threshold=float(score_threshold)))
    g.node.extend(nodes)

    g.value_info.append(helper.make_tensor_value_info(output, elem, [batch, num_anchors, 4 + num_classes]))
    g.value_info.append(helper.make_tensor_value_info(boxes, elem, [batch, num_anchors, 4]))
    g.value_info.append(helper.make_tensor_value_info(scores, elem, [batch, num_anchors, num_classes]))
    del g.output[:]
    n_det, det_boxes, det_scores, det_classes = output_names
    g.output.extend([
        helper.make_tensor_value_info(n_det, TensorProto.INT32, [batch, 1]),
        helper.make_tensor_value_info(det_boxes, elem, [batch, max_output_boxes, 4]),
        helper.make_tensor_value_info(det_scores, elem, [batch, max_output_boxes]),
        helper.make_tensor_value_info(det_classes, TensorProto.INT32, [batch, max_output_boxes]),
    ])
    if domain and domain not in {o.domain for o in model.opset_import}:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return model


# ---------------------------------------------------------------------------- custom-domain node
def insert_custom_op(model: onnx.ModelProto, after_tensor: str, domain: str = "com.example",
                     op_type: str = "ChannelShuffleX", attrs: Mapping[str, object] | None = None,
                     *, output_name: str | None = None, node_name: str | None = None) -> onnx.ModelProto:
    """Splice ``domain::op_type`` after ``after_tensor``: ``y = op_type(after_tensor)`` and every
    node that read ``after_tensor`` reads ``y`` instead.

    ``attrs`` (default :data:`DEFAULT_CUSTOM_ATTRS`: int ``groups``, float ``alpha``, string
    ``mode``, ints ``axes``) become node attributes with their Python types. The node goes right
    after the producer of ``after_tensor`` (or first, for a graph input / initializer), so the
    node list stays topologically sorted. ``y`` (default ``<after_tensor>/<op_type>``) gets a
    ``value_info`` with the type and shape of ``after_tensor`` when these are known (``value_info``
    or graph input). The opset import ``domain`` v1 is added if missing. A graph output cannot be
    the target (its consumers outside the graph would not see the op).
    """
    model = _copy(model)
    g = model.graph
    if not domain or domain in ("ai.onnx", "ai.onnx.ml"):
        raise ValueError(f"insert_custom_op is for custom domains, got {domain!r}")
    if any(o.name == after_tensor for o in g.output):
        raise ValueError(f"{after_tensor!r} is a graph output")
    producer = _producer_index(g, after_tensor)
    sources = {v.name for v in g.input} | {t.name for t in g.initializer}
    is_source = after_tensor in sources
    if producer is None and not is_source:
        raise ValueError(f"no tensor {after_tensor!r} in the graph")
    if _subgraph_uses(g, after_tensor):
        raise NotImplementedError(f"{after_tensor!r} is read inside a subgraph")
    consumers = [n for n in g.node if after_tensor in n.input]
    if not consumers:
        raise ValueError(f"{after_tensor!r} has no consumers")

    names = _Names(g, "")
    out = output_name or names(f"{after_tensor}/{op_type}")
    if output_name is not None:
        if output_name in names.used:
            raise ValueError(f"name {output_name!r} is taken")
        names.used.add(output_name)
    node = helper.make_node(op_type, [after_tensor], [out], name=node_name or names(f"/{op_type}"),
                            domain=domain)
    # make_attribute, not make_node(**attrs): attribute names such as "name" or "domain" are fine
    node.attribute.extend(helper.make_attribute(k, v)
                          for k, v in (DEFAULT_CUSTOM_ATTRS if attrs is None else attrs).items())
    for n in consumers:
        for i, x in enumerate(n.input):
            if x == after_tensor:
                n.input[i] = out
    g.node.insert(0 if producer is None else producer + 1, node)

    known = _known_type(g, after_tensor)
    if known is not None:
        vi = g.value_info.add()
        vi.name = out
        vi.type.CopyFrom(known)
    if domain not in {o.domain for o in model.opset_import}:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return model


def block_output(model: onnx.ModelProto, block: int = 2) -> str:
    """Output of the ``block``-th ``Relu`` (0-based, graph order) of a RepVGG-style export: each
    block ends in its one Relu, so this tensor lies between block ``block`` and the next.

    Checked: it feeds at least two Convs (the 3x3 and 1x1 branches of the next block). For
    ``repvgg_tiny`` and ``block=2``: the output of ``stage2.0``, read by ``stage2.1``'s dense
    3x3, 1x1 and BN-identity branches (``/stage2.0/nonlinearity/Relu_output_0`` in legacy
    exports, ``relu_2`` in dynamo exports).
    """
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    if not 0 <= block < len(relus) - 1:
        raise ValueError(f"block {block} is not between two blocks ({len(relus)} Relus)")
    tensor = relus[block].output[0]
    convs = sum(1 for n in model.graph.node if n.op_type == "Conv" and tensor in n.input)
    if convs < 2:
        raise ValueError(f"{tensor!r} feeds {convs} Conv(s): not the input of a multi-branch block")
    return tensor


def custom_op_between_blocks(model: onnx.ModelProto, block: int = 2, **kwargs) -> onnx.ModelProto:
    """:func:`insert_custom_op` at :func:`block_output` ``(model, block)`` (``kwargs`` go to
    :func:`insert_custom_op`)."""
    return insert_custom_op(model, block_output(model, block), **kwargs)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
