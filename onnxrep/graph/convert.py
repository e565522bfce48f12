"""Between onnx and onnx-graphsurgeon: import a model for rewriting, export it back with its interface."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import gs_shim
from .opsets import needed_opset_imports
from .shapes import consistent_declarations, inferred_shapes


def subgraphs(graph: gs.Graph) -> list[gs.Graph]:
    """Bodies of If / Loop / Scan nodes, nested ones included."""
    found, stack = [], [graph]
    while stack:
        g = stack.pop()
        for node in g.nodes:
            for value in node.attrs.values():
                bodies = value if isinstance(value, (list, tuple)) else [value]
                for body in bodies:
                    if isinstance(body, gs.Graph):
                        found.append(body)
                        stack.append(body)
    return found


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def overridable_initializers(model: onnx.ModelProto) -> set[str]:
    """Initializers also listed as graph inputs: the caller may feed them, so never fold them."""
    inits = {t.name for t in model.graph.initializer}
    return {i.name for i in model.graph.input if i.name in inits}


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """The gs graph of ``model`` (weights not copied) with inferred shapes where the model has none."""
    shapes = inferred_shapes(model)
    graph = gs.import_onnx(model)
    for name, tensor in graph.tensors().items():
        info = shapes.get(name)
        if info is None or not isinstance(tensor, gs.Variable) or tensor.shape is not None:
            continue
        tt = info.type.tensor_type
        if not tt.HasField("shape"):
            continue
        tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        if tensor.dtype is None and tt.elem_type:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    return graph


def export(graph: gs.Graph, original: onnx.ModelProto, overridable: set[str],
           notes: list[str] | None = None) -> onnx.ModelProto:
    """Export ``graph`` keeping the original model's header, metadata and overridable inputs.

    Declared types that shape inference contradicts after the rewrites (value_info, and the inputs
    and outputs of If / Loop / Scan bodies) are updated (``shapes.consistent_declarations``), and
    listed in ``notes``: onnxruntime refuses a model whose declared rank disagrees with inference.

    Large new weights are moved into the output one at a time (gs would first copy every one
    into a TensorProto list and then again into the graph), so export needs about one extra
    copy of the new weights, not two. ``graph`` must not be used afterwards.
    """
    stash = {}
    for t in graph.tensors().values():
        values = gs_shim.loaded_values(t) if isinstance(t, gs.Constant) else None
        if values is not None and values.nbytes > 1 << 20 and values.dtype.kind in "fiub":
            stash[t.name] = gs_shim.stash_values(t)
    out = gs.export_onnx(graph, do_type_check=False)
    for init in out.graph.initializer:
        values = stash.pop(init.name, None)
        if values is not None:
            del init.dims[:]
            init.dims.extend(values.shape)
            init.raw_data = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
            del values
    out.ir_version = original.ir_version
    del out.opset_import[:]
    if len(original.functions) and not len(out.functions):
        out.functions.extend(original.functions)
    imports, dropped = needed_opset_imports(original.opset_import, out)  # domains no node uses any more go
    out.opset_import.extend(imports)
    if dropped and notes is not None:
        notes.append(f"opset import(s) no node uses dropped: {', '.join(dropped)}")
    for attr in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, attr, getattr(original, attr))
    del out.metadata_props[:]
    out.metadata_props.extend(original.metadata_props)
    # gs turns initializers that are graph inputs into plain constants: list them again, in order.
    present = {t.name for t in out.graph.initializer}
    for t in original.graph.initializer:  # gs drops unused ones; the caller may still feed them
        if t.name in overridable and t.name not in present:
            out.graph.initializer.append(t)
            present.add(t.name)
    exported = {i.name: i for i in out.graph.input}
    inputs = []
    for i in original.graph.input:
        if i.name in exported:
            inputs.append(exported.pop(i.name))
        elif i.name in overridable and i.name in present:
            inputs.append(i)
    inputs.extend(exported.values())
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    # the interface is the original's, declarations included (gs re-derives them from tensors)
    declared = {o.name: o for o in original.graph.output}
    for o in out.graph.output:
        if o.name in declared:
            o.CopyFrom(declared[o.name])
    # shapes inferred for the rules' benefit are not ours to add to the output
    known = {v.name for v in original.graph.value_info}
    kept = [v for v in out.graph.value_info if v.name in known]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept)
    updated = consistent_declarations(out)
    if updated and notes is not None:
        more = f"; and {len(updated) - MAX_LISTED} more" if len(updated) > MAX_LISTED else ""
        notes.append(f"declared type(s) updated to what ONNX shape inference finds: {'; '.join(updated[:MAX_LISTED])}{more}")
    return out


#: stale declarations listed by name in the report's note at most
MAX_LISTED = 5
