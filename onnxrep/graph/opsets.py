"""The opset imports an exported model still needs: those of a domain some node uses.

A model imports each operator-set domain its nodes use (``""`` for ONNX, ``ai.onnx.ml``,
``com.microsoft``, a plugin's). Once the rules and the cleanup have removed every node of a domain
(a custom op whose output nothing read, a Cast the ML exporter wrote with ``ai.onnx.ml`` listed), its
import is a declaration of nothing: tf2onnx lists ``ai.onnx.ml`` whether it writes an ML op or not, and
``onnx.compose.merge_models`` repeats every import of both models. Whether a domain is still used is a
property of the whole model after every rule and the last cleanup, which only export sees (rules see one
graph, or one body, at a time, and no header), so export drops them here.

Kept: the default domain always, every domain of a node in any graph (If / Loop / Scan bodies
included) or in a model-local function, and the domain of every local function. Dropped: the rest,
and an import listed twice (same domain, same version) the second time.
"""
from __future__ import annotations

import onnx

from .walk import all_nodes, inner_nodes

_DEFAULT = ("", "ai.onnx")


def _domain(d: str) -> str:
    return "" if d in _DEFAULT else d


def used_domains(model: onnx.ModelProto) -> set[str]:
    """Domains of the nodes of every graph and local function, and of the functions themselves."""
    used = {""}
    used.update(_domain(n.domain) for n in all_nodes(model.graph))
    for f in model.functions:
        used.add(_domain(f.domain))
        used.update(_domain(n.domain) for node in f.node for n in inner_nodes(node))
    return used


def needed_opset_imports(imports, model: onnx.ModelProto) -> tuple[list[onnx.OperatorSetIdProto], list[str]]:
    """``imports`` (the original model's) less those of domains ``model`` no longer uses and repeated ones;
    and the dropped ones as ``domain vN`` (repeats say ``(repeated)``)."""
    used = used_domains(model)
    kept, seen, dropped = [], set(), []
    for imp in imports:
        key = (_domain(imp.domain), imp.version)
        if key in seen:
            dropped.append(f"{imp.domain or 'ai.onnx'} v{imp.version} (repeated)")
        elif key[0] in used:
            kept.append(imp)
            seen.add(key)
        else:
            dropped.append(f"{imp.domain} v{imp.version}")
    return kept, dropped
