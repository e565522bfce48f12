"""What an optimization did, as data: the model sizes before and after, one record per rule with its declines,
merged convs and removed channels, and the run's ``Report`` (``onnxrep.summary`` prints it).

Nothing here imports the rest of onnxrep: the graph layer and the rules write these records."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class GraphStats:
    nodes: int
    convs: int
    params: int
    ops: dict[str, int] = field(default_factory=dict)
    #: multiply-accumulates per inference (``onnxrep.cost`` convention) and how many nodes with
    #: MACs had shapes that inference could not give (counted as 0)
    macs: int = 0
    macs_unknown: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


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
    #: ``--equalize`` / ``--int8-report``: the measured W8A8 errors (``onnxrep.int8.equalization.Int8Report``)
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
