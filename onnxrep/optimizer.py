"""The driver: run the rule set over a graph to a fixed point, bounded number of sweeps."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graph import Decline, GraphContext
from .graph.shapes import inferred_shapes
from .pattern import Rule
from .stats import GraphStats, graph_stats


@dataclass
class RuleReport:
    name: str
    rewrites: int = 0
    nodes_removed: int = 0
    declines: list[Decline] = field(default_factory=list)


@dataclass
class Report:
    before: GraphStats
    after: GraphStats
    rules: list[RuleReport]
    sweeps: int
    seconds: float
    opset: int
    verification: object | None = None  # a verify.VerifyResult once checked
    notes: list[str] = field(default_factory=list)
    #: per merged conv: per-output-channel weight ranges (``outlier_ratio`` = max / median channel absmax)
    merged_convs: list[dict] = field(default_factory=list)

    @property
    def rewrites(self) -> int:
        return sum(r.rewrites for r in self.rules)

    def declines(self) -> list[Decline]:
        return [d for r in self.rules for d in r.declines]

    def to_dict(self) -> dict:
        return {
            "opset": self.opset,
            "sweeps": self.sweeps,
            "seconds": round(self.seconds, 4),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "rules": [{"name": r.name, "rewrites": r.rewrites, "nodes_removed": r.nodes_removed,
                       "declined": [{"node": d.node, "reason": d.reason} for d in r.declines]} for r in self.rules],
            "verification": self.verification.to_dict() if self.verification is not None else None,
            "notes": list(self.notes),
            "merged_convs": list(self.merged_convs),
        }


#: the report's row for nodes removed because nothing reads their outputs any more
CLEANUP = "cleanup (unused nodes)"


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


def resolve_rules(rules: Iterable[Rule] | None, include_defaults: bool) -> list[Rule]:
    from .rules import default_rules
    chosen = list(default_rules()) if include_defaults else []
    for r in rules or ():
        chosen.append(r() if isinstance(r, type) else r)
    return sorted(chosen, key=lambda r: r.priority)


def optimize(model: onnx.ModelProto, rules: Iterable[Rule] | None = None, *, include_defaults: bool = True,
             max_sweeps: int = 8, progress: Callable[[str], None] | None = None) -> tuple[onnx.ModelProto, Report]:
    """Rewrite ``model`` with the built-in rules plus ``rules``; return the new model and a report.

    ``model`` itself is not modified. Rules run in priority order, sweep after sweep, until a
    sweep changes nothing (at most ``max_sweeps``). Verification is separate: see
    ``onnxrep.verify`` or ``onnxrep.optimize_file``.
    """
    start = time.perf_counter()
    rule_list = resolve_rules(rules, include_defaults)
    opset = default_opset(model)
    before = graph_stats(model)
    notes = []
    if opset < 11:
        notes.append(f"opset {opset} is older than 11: no rule ran")
    overridable = overridable_initializers(model)
    graph = import_graph(model)
    totals = {r.name or type(r).__name__: RuleReport(r.name or type(r).__name__) for r in rule_list}
    sweeps = 0
    created: list[dict] = []
    state: dict = {}
    last_declines: dict[str, list[Decline]] = {}
    changed = True
    for sweep in range(max_sweeps if opset >= 11 else 0):
        sweeps += 1
        graph.toposort()
        ctx = GraphContext(graph, opset, overridable, state)
        contexts = [ctx] + [GraphContext(body, opset, overridable, state.setdefault(id(body), {}), ctx._names)
                            for body in subgraphs(graph)]
        for rule in rule_list:
            if rule.applies_to(opset):
                if progress:
                    progress(f"sweep {sweep + 1}: {rule.name or type(rule).__name__}")
                for c in contexts if not rule.whole_model else contexts[:1]:
                    rule.run(c)
        last_declines = {}
        for c in contexts:
            for name, st in c.stats.items():
                rep = totals.setdefault(name, RuleReport(name))
                rep.rewrites += st.rewrites
                rep.nodes_removed += st.nodes_removed if c is ctx else 0  # counts are of the main graph
                last_declines.setdefault(name, []).extend(st.declines)
            created += c.created
        changed = any(c.changed for c in contexts)
        live = sum(1 for n in graph.nodes if n.outputs)
        graph.cleanup(remove_unused_graph_inputs=False)
        if live != len(graph.nodes):  # nodes whose outputs nobody reads any more
            rep = totals.setdefault(CLEANUP, RuleReport(CLEANUP))
            rep.nodes_removed += live - len(graph.nodes)
        if not changed:
            break
    else:
        if opset >= 11 and max_sweeps > 0:
            notes.append(f"stopped after {max_sweeps} sweeps with rewrites still happening (--max-sweeps)")
    for name, declines in last_declines.items():
        totals[name].declines = declines
    if sweeps and changed:  # the sweep limit stopped a changing graph: sort it once more
        graph.toposort()
    out = export(graph, model, overridable)
    final = {n.name for n in out.graph.node}
    report = Report(before, graph_stats(out), list(totals.values()), sweeps, time.perf_counter() - start, opset,
                    notes=notes, merged_convs=[c for c in created if c["conv"] in final])
    return out, report


def export(graph: gs.Graph, original: onnx.ModelProto, overridable: set[str]) -> onnx.ModelProto:
    """Export ``graph`` keeping the original model's header, metadata and overridable inputs.

    Large new weights are moved into the output one at a time (gs would first copy every one
    into a TensorProto list and then again into the graph), so export needs about one extra
    copy of the new weights, not two. ``graph`` must not be used afterwards.
    """
    stash = {}
    for t in graph.tensors().values():
        if (isinstance(t, gs.Constant) and isinstance(t._values, np.ndarray) and t._values.nbytes > 1 << 20
                and t._values.dtype.kind in "fiub"):
            stash[t.name] = t._values
            t._values = np.zeros((), dtype=t._values.dtype)  # placeholder: dtype only
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
    out.opset_import.extend(original.opset_import)
    for attr in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, attr, getattr(original, attr))
    del out.metadata_props[:]
    out.metadata_props.extend(original.metadata_props)
    if len(original.functions) and not len(out.functions):
        out.functions.extend(original.functions)
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
    return out
