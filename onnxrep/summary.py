"""Human-readable summary tables of a ``Report``."""
from __future__ import annotations

from .optimizer import Report
from .verification import format_result


def _table(rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _delta(a: int, b: int) -> str:
    if a == 0:
        return ""
    return f"{(b - a) / a * 100:+.1f}%"


def format_report(report: Report, src: str = "", dest: str | None = None, explain: bool = False) -> str:
    lines = []
    target = f" -> {dest}" if dest else " (dry run)"
    lines.append(f"onnxrep: {src}{target}  (opset {report.opset}, {report.sweeps} sweep(s), {report.seconds:.2f} s)")
    lines.append("")
    b, a = report.before, report.after
    lines += _table([["", "before", "after", "change"],
                     ["nodes", f"{b.nodes:,}", f"{a.nodes:,}", _delta(b.nodes, a.nodes)],
                     ["Conv", f"{b.convs:,}", f"{a.convs:,}", _delta(b.convs, a.convs)],
                     ["parameters", f"{b.params:,}", f"{a.params:,}", _delta(b.params, a.params)],
                     ["MACs", f"{b.macs:,}", f"{a.macs:,}", _delta(b.macs, a.macs)]], right={1, 2, 3})
    if b.macs_unknown or a.macs_unknown:
        lines.append(f"(MACs leave out {max(b.macs_unknown, a.macs_unknown)} node(s) whose shapes are unknown)")
    lines.append("")
    rows = [["rule", "rewrites", "nodes removed", "declined"]]
    for r in report.rules:
        rows.append([r.name, str(r.rewrites), str(r.nodes_removed), str(len(r.declines))])
    lines += _table(rows, right={1, 2, 3})
    if explain:
        declines = report.declines()
        lines.append("")
        if declines:
            lines.append("declined candidates:")
            lines += ["  " + l for l in _table([["rule", "node", "reason"]] +
                                               [[d.rule, d.node, d.reason] for d in declines])]
        else:
            lines.append("declined candidates: none")
    if report.merged_convs:
        worst = max(report.merged_convs, key=lambda c: c["outlier_ratio"])
        lines.append("")
        lines.append(f"merged convs: {len(report.merged_convs)}; widest per-channel weight range: "
                     f"max/median channel |w| = {worst['outlier_ratio']:.1f} in '{worst['conv']}'"
                     + ("  (consider per-channel INT8 quantization)" if worst["outlier_ratio"] > 10 else ""))
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.verification is not None:
        v = report.verification
        shapes = ", ".join(f"{k}:{'x'.join(map(str, s))}" for k, s in v.input_shapes.items())
        lines.append("")
        lines.append(f"verification (onnxruntime, seed {v.seed}, inputs {shapes}; "
                     f"pass if max abs err <= {v.rtol:g}*max|ref| + {v.atol:g})")
        lines.append(format_result(v))
    return "\n".join(lines)
