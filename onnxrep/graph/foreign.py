"""Ops ONNX does not define: TensorRT plugins in the default domain, custom-domain ops.

They load, pass through every rule untouched (rules match ONNX ops only) and are listed in the
report. The checker cannot validate a default-domain op it has no schema for, so the model is
checked with those nodes moved for the moment to a private domain: everything else is still
validated (custom domains are not checked by ONNX either).
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import onnx
from onnx import defs

from .convert import default_opset
from .walk import all_nodes

#: the domain unknown default-domain nodes are checked under
STUB_DOMAIN = "onnxrep.unregistered"
ONNX_DOMAINS = ("", "ai.onnx")


def _is_defined(node: onnx.NodeProto, opset: int) -> bool:
    try:
        defs.get_schema(node.op_type, opset, "")
        return True
    except Exception:  # no schema, or none at or below this opset
        return False


def unregistered_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Default-domain nodes ONNX has no schema for at the model's opset (e.g. ``EfficientNMS_TRT``)."""
    opset = default_opset(model)
    defined: dict[str, bool] = {}  # by op type: one schema lookup each
    found = []
    for n in all_nodes(model.graph):
        if n.domain in ONNX_DOMAINS:
            if n.op_type not in defined:
                defined[n.op_type] = _is_defined(n, opset)
            if not defined[n.op_type]:
                found.append(n)
    return found


def foreign_ops(model: onnx.ModelProto) -> Counter:
    """``{"op (domain)": count}`` of nodes that are not ONNX ops: unregistered default-domain ones
    and every node of a custom domain (``ai.onnx.ml`` is ONNX's)."""
    found = Counter()
    for n in unregistered_nodes(model):
        found[f"{n.op_type} (default domain, not an ONNX op)"] += 1
    for n in all_nodes(model.graph):
        if n.domain not in ONNX_DOMAINS + ("ai.onnx.ml",) and n.domain != STUB_DOMAIN:
            found[f"{n.domain}.{n.op_type}"] += 1
    return found


def describe(found: Counter) -> str:
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(found.items()))


@contextmanager
def stubbed(model: onnx.ModelProto) -> Iterator[onnx.ModelProto]:
    """``model`` with its unregistered default-domain nodes in ``STUB_DOMAIN`` (restored on exit)."""
    nodes = unregistered_nodes(model)
    saved = [n.domain for n in nodes]
    added = False
    try:
        for n in nodes:
            n.domain = STUB_DOMAIN
        if nodes and not any(i.domain == STUB_DOMAIN for i in model.opset_import):
            model.opset_import.add(domain=STUB_DOMAIN, version=1)
            added = True
        yield model
    finally:
        for n, d in zip(nodes, saved):
            n.domain = d
        if added:
            keep = [i for i in model.opset_import if i.domain != STUB_DOMAIN]
            del model.opset_import[:]
            model.opset_import.extend(keep)
