"""What an optimization did: one record per rule, its declines and merged convs, and the summary table."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np

from .stats import GraphStats


@dataclass
class Decline:
    """A candidate a rule did not rewrite, and why.

    ``kind``: ``check`` (the rule's check said no), ``privacy`` (a tensor inside the match is read
    elsewhere or is a graph output), ``opset`` (the rule does not support the model's opset; found
    by matching only) or ``rewrite`` (the rewrite raised ``NotRepresentable``). The last three are
    the near-misses ``--explain`` lists: the structure matched.
    """
    rule: str
    node: str
    reason: str
    kind: str = "check"


@dataclass
class MergedConv:
    """Per-output-channel weight range of a conv a rule wrote (``outlier_ratio`` = max / median
    channel |w|: merged branches can leave a few channels far larger, which per-tensor INT8 crushes)."""
    conv: str
    out_channels: int
    kernel: list[int]
    groups: int
    weight_absmax: float
    channel_absmax_min: float
    channel_absmax_median: float
    outlier_ratio: float

    @classmethod
    def of(cls, name: str, weight, groups: int = 1) -> "MergedConv":
        """The range of ``weight`` (``(C_out, C_in / groups, *kernel)``), per output channel."""
        w = np.abs(np.asarray(weight, dtype=np.float64))
        absmax = w.reshape(w.shape[0], -1).max(axis=1) if w.size else np.zeros(0)
        positive = absmax[absmax > 0]
        return cls(name, int(w.shape[0]), list(w.shape[2:]), int(groups),
                   float(absmax.max()) if absmax.size else 0.0, float(absmax.min()) if absmax.size else 0.0,
                   float(np.median(absmax)) if absmax.size else 0.0,
                   float(positive.max() / np.median(positive)) if positive.size else 0.0)


@dataclass
class ChannelCut:
    """A layer that lost output channels (dead or pruned ones), and its channel counts."""
    node: str
    before: int
    after: int


@dataclass
class RuleRecord:
    """Everything one rule did in one optimization. The driver hands it to the rule through the
    context (``ctx.decline``, ``ctx.replace``, ``ctx.remove``, ``ctx.memory``): rules never pass names."""
    name: str
    rewrites: int = 0
    nodes_removed: int = 0
    #: declines of the last sweep (earlier sweeps' declines may have been rewritten since)
    declines: list[Decline] = field(default_factory=list)
    merged: list[MergedConv] = field(default_factory=list)
    #: layers whose output channels the rule removed
    channels: list[ChannelCut] = field(default_factory=list)
    #: why cost-gated rewrites fired, ``(node, why)``
    fired: list[tuple[str, str]] = field(default_factory=list)
    #: why the rule did not run (its opset range), or None
    skipped: str | None = None
    #: what a rule remembers from sweep to sweep, per graph (``ctx.memory``)
    memory: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "rewrites": self.rewrites, "nodes_removed": self.nodes_removed,
                "skipped": self.skipped, "channels_removed": [asdict(c) for c in self.channels],
                "fired": [{"node": n, "why": w} for n, w in self.fired],
                "declined": [{"node": d.node, "reason": d.reason, "kind": d.kind} for d in self.declines]}


@dataclass
class Report:
    before: GraphStats
    after: GraphStats
    rules: list[RuleRecord]
    sweeps: int
    seconds: float
    opset: int
    verification: object | None = None  # a VerifyResult once checked
    notes: list[str] = field(default_factory=list)
    merged_convs: list[MergedConv] = field(default_factory=list)
    #: every edit in order, ``(rule, node)`` (``GraphContext.edits``)
    edits: list[tuple[str, str]] = field(default_factory=list, repr=False)
    #: the edit that broke verification, when it failed: ``{"rule", "node", "edit", "edits"}``
    culprit: dict | None = None
    #: ``--equalize`` / ``--int8-report``: the measured W8A8 errors (``onnxrep.equalization.Int8Report``)
    int8: object | None = None
    #: the rules that still edited the graph in the last sweep when ``max_sweeps`` stopped the run
    still_rewriting: list[str] = field(default_factory=list)

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
            "rules": [r.to_dict() for r in self.rules],
            "verification": self.verification.to_dict() if self.verification is not None else None,
            "int8": self.int8.to_dict() if self.int8 is not None else None,
            "notes": list(self.notes),
            "still_rewriting": list(self.still_rewriting),
            "merged_convs": [asdict(c) for c in self.merged_convs],
            "culprit": self.culprit,
        }


# --------------------------------------------------------------------------- text

def text_table(rows: list[list[str]], right: Iterable[int] = ()) -> list[str]:
    """Rows as aligned text lines; the first row is the header, underlined; ``right``: right-aligned columns."""
    right = set(right)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _delta(a: int, b: int) -> str:
    return "" if a == 0 else f"{(b - a) / a * 100:+.1f}%"


def format_report(report: Report, src: str = "", dest: str | None = None, explain: bool = False) -> str:
    from .verification import format_result

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
        from .int8 import format_int8
        lines += ["", "INT8 (onnxruntime static quantization, QDQ W8A8 symmetric, MinMax; error against the float model)",
                  format_int8(report.int8.rows)]
        if report.int8.note:
            lines.append(report.int8.note)
    if report.verification is not None:
        v = report.verification
        shapes = ", ".join(f"{k}:{'x'.join(map(str, s))}" for k, s in v.input_shapes.items())
        lines += ["", f"verification (onnxruntime, seed {v.seed}, inputs {shapes})", format_result(v)]
    if report.culprit:
        c = report.culprit
        lines.append(f"the first failing edit: rule '{c['rule']}' at node '{c['node']}' (edit {c['edit']} of {c['edits']})")
    return "\n".join(lines)


def _reason(d: Decline) -> str:
    return d.reason if d.kind == "check" else f"[{d.kind}] {d.reason}"
