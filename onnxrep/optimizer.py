"""The driver: run the rule set over a graph to a fixed point, in a bounded number of sweeps."""
from __future__ import annotations

import time
from typing import Callable, Iterable

import onnx

from .graph import GraphContext
from .graph.context import EditLog
from .graph.foreign import describe, foreign_ops
from .graph.convert import default_opset, export, import_graph, overridable_initializers, subgraphs
from .report import Report, RuleRecord
from .rule import Rule, RuleError
from .graph.stats import graph_stats

#: the report's row for nodes removed because nothing reads their outputs any more
CLEANUP = "cleanup (unused nodes)"


class RuleSetError(ValueError):
    """The rules cannot run together (two with one name, or something that is not a rule)."""


def resolve_rules(rules: Iterable[Rule] | None, include_defaults: bool) -> list[Rule]:
    """The built-in rules (if ``include_defaults``) and ``rules`` (classes or instances), by priority.

    Names must be unique among the rules that run: a user rule named like a built-in one is refused
    (not merged into its row) unless ``include_defaults`` is False, when no built-in runs and the
    name is the user rule's alone.
    """
    from .rules import default_rules
    chosen = list(default_rules()) if include_defaults else []
    builtin = {r.rule_name for r in chosen}
    for r in rules or ():
        r = r() if isinstance(r, type) else r
        if not isinstance(r, Rule):
            raise RuleSetError(f"{r!r} is not an onnxrep rule (subclass onnxrep.PatternRule or onnxrep.Pass)")
        if r.rule_name in {c.rule_name for c in chosen}:
            whose = "a built-in rule" if r.rule_name in builtin else "another rule"
            raise RuleSetError(f"rule name '{r.rule_name}' ({type(r).__name__}) is already used by {whose}: "
                               f"give it another name")
        chosen.append(r)
    return sorted(chosen, key=lambda r: r.priority)


def _is_builtin(rule: Rule) -> bool:
    return type(rule).__module__.startswith("onnxrep.")


def _run(rule: Rule, ctx: GraphContext, record: RuleRecord, applies: bool) -> None:
    with ctx.running(record):
        try:
            rule.run(ctx) if applies else rule.near_misses(ctx)
        except Exception as exc:  # noqa: BLE001  (named, with its node, for the user)
            at = ctx.at.name or ctx.at.op if ctx.at is not None else None
            raise RuleError(record.name, at, exc, builtin=_is_builtin(rule)) from exc


def optimize(model: onnx.ModelProto, rules: Iterable[Rule] | None = None, *, include_defaults: bool = True,
             max_sweeps: int = 8, progress: Callable[[str], None] | None = None,
             edit_limit: int | None = None) -> tuple[onnx.ModelProto, Report]:
    """Rewrite ``model`` with the built-in rules plus ``rules``; return the new model and a report.

    ``model`` itself is not modified. Rules run in priority order, sweep after sweep, until a
    sweep changes nothing (at most ``max_sweeps``; stopped there, ``report.still_rewriting`` names
    the rules that edited in the last sweep). A rule outside its opset range only looks for
    near-misses. ``include_defaults=False``: only ``rules`` run (one may then take a built-in's
    name). Raises ``RuleSetError`` for a bad rule set and ``RuleError`` when a rule raises.
    Verification is separate: see ``onnxrep.verify`` or ``onnxrep.optimize_file``.
    ``edit_limit``: make only the first N edits (``report.edits`` lists them: rule and node).
    """
    start = time.perf_counter()
    rule_list = resolve_rules(rules, include_defaults)
    opset = default_opset(model)
    before = graph_stats(model)
    notes = []
    if opset < 11:
        notes.append(f"opset {opset} is older than 11: no rule ran")
    foreign = foreign_ops(model)
    if foreign:
        notes.append(f"ops that are not ONNX ops, passed through untouched: {describe(foreign)}")
    edits = EditLog(edit_limit)
    overridable = overridable_initializers(model)
    graph = import_graph(model)
    records = {id(r): RuleRecord(r.rule_name) for r in rule_list}
    for r in rule_list:
        if not r.applies_to(opset):
            records[id(r)].skipped = f"it supports opsets {r.opset_range()}, the model has opset {opset}"
    cleanup = RuleRecord(CLEANUP)
    sweeps, changed, still_rewriting = 0, True, []
    edited: dict[str, int] = {}  # per rule that edited the graph in the last sweep: how many edits
    for sweep in range(max_sweeps if opset >= 11 else 0):
        sweeps += 1
        graph.toposort()
        ctx = GraphContext(graph, opset, overridable, edits=edits)
        contexts = [ctx] + [GraphContext(body, opset, overridable, ctx._names, main=False, edits=edits)
                            for body in subgraphs(graph)]
        edited = {}
        for rule in rule_list:
            record = records[id(rule)]
            record.declines = []  # the report keeps the last sweep's
            if progress:
                progress(f"sweep {sweep + 1}: {record.name}")
            first = len(edits.entries)  # every edit that changes the graph is admitted there
            for c in contexts if not rule.whole_model else contexts[:1]:
                _run(rule, c, record, record.skipped is None)
            if len(edits.entries) > first:
                edited[record.name] = len(edits.entries) - first
        changed = any(c.changed for c in contexts)
        live = sum(1 for n in graph.nodes if n.outputs)
        graph.cleanup(remove_unused_graph_inputs=False)
        cleanup.nodes_removed += live - len(graph.nodes)  # nodes whose outputs nobody reads any more
        if not changed:
            break
    else:
        if opset >= 11 and max_sweeps > 0:
            notes.append(f"stopped after {max_sweeps} sweeps with rewrites still happening (--max-sweeps)")
            still_rewriting = list(edited)
            notes += [f"rule '{name}' still rewriting after {max_sweeps} sweeps ({n} edit(s) in the last one)"
                      for name, n in edited.items()]
    if sweeps and changed:  # the sweep limit stopped a changing graph: sort it once more
        graph.toposort()
    out = export(graph, model, overridable, notes)
    final = {n.name for n in out.graph.node}
    report_rules = [records[id(r)] for r in rule_list] + ([cleanup] if cleanup.nodes_removed else [])
    merged = [c for r in report_rules for c in r.merged if c.conv in final]
    return out, Report(before, graph_stats(out), report_rules, sweeps, time.perf_counter() - start, opset,
                       notes=notes, merged_convs=merged, edits=edits.entries, still_rewriting=still_rewriting)
