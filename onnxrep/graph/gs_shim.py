"""Every use of onnx-graphsurgeon's private fields, in one place (pyproject pins the tested range).

gs keeps a Constant's values in ``Constant._values``: a numpy array once loaded, or a lazy
reference to the TensorProto (external data stays on disk until read). Two memory tricks need it:
releasing the values of an initializer no rule reads any more, and moving large new weights into
the exported model one at a time. And one export helper: a single node as a NodeProto, without
building and exporting a whole graph around it (constant evaluation does that hundreds of times).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs


class Released:
    """Stands in for the values of an initializer that a rewrite made unused (shape and dtype kept)."""

    def __init__(self, tensor: gs.Constant):
        self.name, self.shape, self.dtype = tensor.name, tuple(tensor.shape), tensor.dtype

    def __array__(self, *args, **kwargs):
        raise RuntimeError(f"initializer '{self.name}' was released after a rewrite and must not be read")


def release_values(tensor: gs.Constant) -> None:
    """Drop the loaded values of an initializer nothing reads any more."""
    if not isinstance(tensor._values, Released):
        tensor._values = Released(tensor)


def loaded_values(tensor: gs.Constant) -> np.ndarray | None:
    """The values if they are an in-memory array (not lazily loaded, not released), else None."""
    return tensor._values if isinstance(tensor._values, np.ndarray) else None


def stash_values(tensor: gs.Constant) -> np.ndarray:
    """Take the in-memory values out of ``tensor``, leaving a 0-d placeholder of the same dtype."""
    values = tensor._values
    tensor._values = np.zeros((), dtype=values.dtype)
    return values


def node_proto(op: str, attrs: dict, inputs: list[str], outputs: list[str]) -> onnx.NodeProto:
    """A default-domain NodeProto of ``op`` with gs ``attrs`` (tensors and graphs included)."""
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    proto = onnx.helper.make_node(op, inputs=inputs, outputs=outputs)
    proto.attribute.extend(OnnxExporter.export_attributes(dict(attrs)))
    return proto
