"""The text report of a run: sizes before and after, what each rule did, merged convs and removed channels,
notes, the INT8 table and the verification table (``--json`` writes ``Report.to_dict()`` instead)."""
from __future__ import annotations

from .int8.measure import format_int8
from .report import Decline, Report
from .tables import text_table
from .verification.compare import format_result


def _delta(a: int, b: int) -> str:
    return "" if a == 0 else f"{(b - a) / a * 100:+.1f}%"


def format_report(report: Report, src: str = "", dest: str | None = None, explain: bool = False) -> str:
    lines = [f"onnxrep: {src}{f' -> {dest}' if dest else ' (dry run)'}  "
             f"(opset {report.opset}, {report.sweeps} sweep(s), {report.seconds:.2f} s)", ""]
    b, a = report.before, report.after
    lines += text_table([["", "before", "after", "change"],
                         ["nodes", f"{b.nodes:,}", f"{a.nodes:,}", _delta(b.nodes, a.nodes)],
                         ["Conv", f"{b.convs:,}", f"{a.convs:,}", _delta(b.convs, a.convs)],
                         ["parameters", f"{b.params:,}", f"{a.params:,}", _delta(b.params, a.params)],
                         ["MACs", f"{b.macs:,}", f"{a.macs:,}", _delta(b.macs, a.macs)]], right={1, 2, 3})
    if b.macs_unknown or a.macs_unknown:
        lines.append(f"(MACs leave out {max(b.macs_unknown, a.macs_unknown)} node(s) whose shapes are unknown)")
    lines.append("")
    rows = [["rule", "rewrites", "nodes removed", "declined"]]
    for r in report.rules:
        rows.append([r.name, str(r.rewrites), str(r.nodes_removed), "skipped" if r.skipped else str(len(r.declines))])
    lines += text_table(rows, right={1, 2, 3})
    if explain:
        declines = report.declines()
        lines.append("")
        if declines:
            lines.append("declined candidates:")
            lines += ["  " + line for line in text_table([["rule", "node", "reason"]] +
                                                         [[d.rule, d.node, _reason(d)] for d in declines])]
        else:
            lines.append("declined candidates: none")
    if report.merged_convs:
        worst = max(report.merged_convs, key=lambda c: c.outlier_ratio)
        lines += ["", f"merged convs: {len(report.merged_convs)}; widest per-channel weight range: "
                      f"max/median channel |w| = {worst.outlier_ratio:.1f} in '{worst.conv}'"
                      + ("  (consider per-channel INT8 quantization)" if worst.outlier_ratio > 10 else "")]
    for r in report.rules:
        if r.channels:
            what = ("rows pruned (not exact: the model changed)" if r.name == "prune-compactor-rows"
                    else "dead channels removed")
            removed = sum(c.before - c.after for c in r.channels)
            lines += ["", f"{what}: {removed} in {len(r.channels)} layer(s): "
                          + ", ".join(f"'{c.node}' {c.before}->{c.after}" for c in r.channels[:12])
                          + (f", ... ({len(r.channels) - 12} more)" if len(r.channels) > 12 else "")]
    for r in report.rules:
        for node, why in r.fired[:8]:
            lines.append(f"{r.name} at '{node}': {why}")
        if len(r.fired) > 8:
            lines.append(f"{r.name}: ... ({len(r.fired) - 8} more)")
    for r in report.rules:
        if r.skipped:
            lines.append(f"note: rule '{r.name}' skipped: {r.skipped}")
    lines += [f"note: {note}" for note in report.notes]
    if report.int8 is not None:
        lines += ["", "INT8 (onnxruntime static quantization, QDQ W8A8 symmetric, MinMax; error against the float model)",
                  format_int8(report.int8.rows)]
        if report.int8.note:
            lines.append(report.int8.note)
    if report.verification is not None:
        v = report.verification
        shapes = ", ".join(f"{k}:{'x'.join(map(str, s)) or 'scalar'}" for k, s in v.input_shapes.items())
        lines += ["", f"verification (onnxruntime, seed {v.seed}, inputs {shapes})", format_result(v)]
    if report.culprit:
        c = report.culprit
        lines.append(f"the first failing edit: rule '{c['rule']}' at node '{c['node']}' (edit {c['edit']} of {c['edits']})")
    return "\n".join(lines)


def _reason(d: Decline) -> str:
    return d.reason if d.kind == "check" else f"[{d.kind}] {d.reason}"
