"""The rewrite context: one onnx-graphsurgeon graph under rewrite, as a pass sees it.

gs keeps, for each tensor, its producers (``tensor.inputs``) and consumers (``tensor.outputs``) up
to date as nodes are connected and disconnected, so that is the consumer index: built once at
import and kept up to date by the edits below. Nothing here rescans the graph per match.

Queries: ``nodes``, ``producer``, ``consumers``, ``is_live``, ``is_graph_output``, ``is_private``,
``is_absent``, ``constant``, ``constant_info``, ``opset``, ``graph``.
Edits (each counted in the running rule's record): ``replace`` (a region by new nodes),
``bypass`` (a region whose output equals an existing tensor: its readers read that tensor),
``remove`` (a node that passes its input through), ``substitute`` (readers of one tensor read
another), ``decline``, ``merged``; ``make_constant`` / ``unique_name`` for fresh objects, and
``memory``, a dict the running rule keeps from sweep to sweep.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from ..report import Decline, MergedConv, RuleRecord
from . import gs_shim
from .builder import PendingNode, RuleUsageError
from .constants import ConstantQueries, is_onnx_op


def all_names(graph: gs.Graph) -> set[str]:
    """Tensor and node names of ``graph`` and of every subgraph (If / Loop / Scan bodies)."""
    names: set[str] = set()
    stack = [graph]
    while stack:
        g = stack.pop()
        names.update(g.tensors().keys())
        for node in g.nodes:
            if node.name:
                names.add(node.name)
            for value in node.attrs.values():
                if isinstance(value, gs.Graph):
                    stack.append(value)
                elif isinstance(value, (list, tuple)):
                    stack.extend(v for v in value if isinstance(v, gs.Graph))
    return names


class EditLog:
    """Every edit of one optimization run, in order: ``(rule, node)``; with ``limit``, edits past
    the first ``limit`` are refused (the graph stays as it is), which is how a failing run is
    bisected down to the one edit that broke it (``onnxrep.verification.culprit``)."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.entries: list[tuple[str, str]] = []

    def admit(self, rule: str, node: str) -> bool:
        if self.limit is not None and len(self.entries) >= self.limit:
            return False
        self.entries.append((rule, node))
        return True


class GraphContext(ConstantQueries):
    """A gs graph under rewrite.

    ``overridable`` names initializers that are also graph inputs: the user may feed them, so
    they are never read as constants. ``names``: the model's names (a subgraph's context shares
    its model's set, so fresh names are unique model-wide); ``main``: False for the body of an
    If / Loop / Scan.
    """

    def __init__(self, graph: gs.Graph, opset: int, overridable: Iterable[str] = (), names: set[str] | None = None,
                 main: bool = True, edits: EditLog | None = None):
        self.graph = graph
        #: the run's edits (shared by the contexts of one run)
        self.edits = edits if edits is not None else EditLog()
        #: False for the body of an If / Loop / Scan (node counts in the report are the main graph's)
        self.main = main
        self.opset = opset
        self.overridable = frozenset(overridable)
        self._names: set[str] = all_names(graph) if names is None else names
        self._output_names = {t.name for t in graph.outputs}
        self._counter = Counter()
        self._maybe_unused: dict[int, gs.Constant] = {}
        self._computed: dict[int, tuple[gs.Tensor, np.ndarray | None]] = {}
        #: True once an edit changed the graph (the driver sweeps again)
        self.changed = False
        #: the record of the rule that is running (``running``); edits are counted there
        self.record = RuleRecord("(no rule)")
        #: the node the running rule is at (the last one ``nodes`` gave or an edit named)
        self.at: gs.Node | None = None

    @contextmanager
    def running(self, record: RuleRecord):
        """Edits and declines inside the block are ``record``'s (the driver's hand-over to a rule)."""
        previous, self.record, self.at = self.record, record, None
        try:
            yield self
        finally:
            self.record = previous

    @property
    def memory(self) -> dict:
        """A dict of the running rule's for this graph, kept from sweep to sweep."""
        return self.record.memory.setdefault(id(self.graph), {})

    # ----------------------------------------------------------------- queries
    @staticmethod
    def is_live(node: gs.Node) -> bool:
        """A node removed by an edit has no inputs or outputs left."""
        return bool(node.outputs)

    def nodes(self, *op_types: str) -> Iterator[gs.Node]:
        """Live nodes, optionally only of the given op types (ai.onnx domain), in graph order.

        Nodes an edit removes on the way are skipped; nodes it adds are not visited.
        """
        wanted = set(op_types)
        for n in list(self.graph.nodes):
            if n.outputs and (not wanted or (n.op in wanted and is_onnx_op(n))):
                self.at = n
                yield n

    @staticmethod
    def producer(tensor: gs.Tensor) -> gs.Node | None:
        return tensor.inputs[0] if len(tensor.inputs) == 1 else None

    @staticmethod
    def consumers(tensor: gs.Tensor) -> list[gs.Node]:
        return list(tensor.outputs)

    def is_graph_output(self, tensor: gs.Tensor) -> bool:
        return tensor.name in self._output_names

    def is_private(self, tensor: gs.Tensor) -> bool:
        """True when exactly one node input reads ``tensor`` and it is not a graph output."""
        if self.is_graph_output(tensor) or len(tensor.outputs) != 1:
            return False
        return sum(1 for t in tensor.outputs[0].inputs if t is tensor) == 1

    @staticmethod
    def is_absent(tensor: gs.Tensor | None) -> bool:
        """An omitted optional input (empty name)."""
        return tensor is None or (tensor.name == "" and not isinstance(tensor, gs.Constant))

    # --------------------------------------------------------------- fresh objects
    def unique_name(self, hint: str) -> str:
        hint = hint or "onnxrep"
        name = hint
        while name in self._names:
            self._counter[hint] += 1
            name = f"{hint}_{self._counter[hint]}"
        self._names.add(name)
        return name

    def make_constant(self, hint: str, values: np.ndarray) -> gs.Constant:
        """A new initializer with a fresh name (existing, possibly shared, ones are never edited).

        Its shape is ``values``' own: a 0-d value stays a scalar (``np.ascontiguousarray`` would make it
        shape ``(1,)``, and a scalar Loop condition or Squeeze result of rank 1 is another tensor).
        """
        return gs.Constant(self.unique_name(hint), np.asarray(values, order="C"))

    # --------------------------------------------------------------- edits
    def decline(self, node: gs.Node | str, reason: str, kind: str = "check") -> None:
        """Record that the running rule did not rewrite at ``node``, and why."""
        name = node if isinstance(node, str) else (node.name or node.op)
        self.record.declines.append(Decline(self.record.name, name, str(reason), kind))

    def fired(self, node: gs.Node | str, why: str) -> None:
        """Record why the running rule rewrote at ``node`` (cost-gated rewrites say what they saved)."""
        self.record.fired.append((node if isinstance(node, str) else (node.name or node.op), why))

    def merged(self, conv: MergedConv) -> None:
        """Record a conv the running rule wrote (its per-channel weight range, for the report)."""
        self.record.merged.append(conv)

    def not_private(self, region: Iterable[gs.Node], keeps: Iterable[gs.Tensor]) -> str | None:
        """Why a tensor made inside ``region`` escapes it, or ``None``.

        A tensor escapes when it is a graph output or is read by a node outside the region; such a
        tensor must be one of ``keeps`` (produced again by the replacement).
        """
        region = list(region)
        ids = {id(n) for n in region}
        kept = {id(t) for t in keeps}
        for node in region:
            for t in node.outputs:
                if id(t) in kept:
                    continue
                if self.is_graph_output(t):
                    return f"tensor '{t.name}' inside the region is a graph output"
                for c in t.outputs:
                    if id(c) not in ids:
                        return f"tensor '{t.name}' inside the region is also read by '{c.name or c.op}'"
        return None

    def replace(self, region: list[gs.Node], new_nodes: list[PendingNode],
                at: gs.Node | None = None) -> list[gs.Node] | None:
        """Replace ``region`` by ``new_nodes`` (built with a ``Builder``), atomically; one rewrite.

        Every tensor the region produced that is still needed (a graph output, or read outside the
        region) must be an output of a new node; if not, nothing changes, the refusal is declined
        at ``at`` (default: the region's last node) and ``None`` is returned.
        """
        outputs = [t for p in new_nodes for t in p.outputs]
        problem = self.not_private(region, outputs)
        if problem is not None:
            self.decline(at if at is not None else region[-1], problem, kind="privacy")
            return None
        if not self._admit(at if at is not None else region[-1] if region else self.at):
            return None
        feeders = self.disconnect(region)
        made = []
        for p in new_nodes:
            node = gs.Node(p.op, name=self.unique_name(p.name), attrs=p.attrs, inputs=p.inputs, outputs=p.outputs)
            if p.domain:
                node.domain = p.domain
            self.graph.nodes.append(node)
            made.append(node)
        self._count(len(region) + self.drop_dead_constants(feeders) - len(made))
        return made

    def remove(self, node: gs.Node, keep: int = 0) -> bool:
        """Remove a node whose output equals its input ``keep`` (Identity, Dropout at inference):
        its readers read that input instead; one rewrite. A node whose output is a graph output
        stays (declined): the output name is the model's interface. ``bypass([node], ...)``."""
        return self.bypass([node], node.outputs[0], node.inputs[keep], at=node)

    def bypass(self, region: list[gs.Node], output: gs.Tensor, replacement: gs.Tensor,
               at: gs.Node | None = None) -> bool:
        """Remove ``region``, whose ``output`` equals the existing tensor ``replacement``: every
        reader of ``output`` (several nodes, nodes of If / Loop / Scan bodies included) reads
        ``replacement`` instead; one rewrite, Constant nodes left unread go too.

        Declined at ``at`` (default: the region's last node), nothing changed, and ``False``
        returned when ``output`` is a graph output (the model's interface keeps its producer),
        when another tensor made inside the region escapes it (``not_private``), or when the
        known shapes or types of ``output`` and ``replacement`` differ. ``replacement`` must not
        be made inside the region (a ``RuleUsageError``).
        """
        region = list(region)
        where = at if at is not None else region[-1] if region else self.at
        if not any(output is t for n in region for t in n.outputs):
            raise RuleUsageError(f"bypass: tensor '{output.name}' is not an output of the region")
        if any(replacement is t for n in region for t in n.outputs):
            raise RuleUsageError(f"bypass: the replacement '{replacement.name}' is made inside the region that goes")
        if self.is_graph_output(output):
            self.decline(where, f"its output '{output.name}' is a graph output (the model's interface keeps "
                                f"its producer)", kind="privacy")
            return False
        problem = self.not_private(region, [output])
        if problem is not None:
            self.decline(where, problem, kind="privacy")
            return False
        conflict = _conflict(output, replacement)
        if conflict is not None:
            self.decline(where, conflict, kind="rewrite")
            return False
        if not self._admit(where):
            return False
        self._redirect(output, replacement)
        self._count(len(region) + self.drop_dead_constants(self.disconnect(region)))
        return True

    def substitute(self, tensor: gs.Tensor, replacement: gs.Tensor) -> bool:
        """Make every reader of ``tensor`` read ``replacement`` instead (declined for a graph output).
        Not counted as a rewrite: the producer left unread goes with the end-of-sweep cleanup, or
        with a ``replace(region, [])`` of the caller's."""
        if self.is_graph_output(tensor):
            self.decline(self.producer(tensor) or tensor.name, f"tensor '{tensor.name}' is a graph output",
                         kind="privacy")
            return False
        if not self._admit(self.producer(tensor) or self.at):
            return False
        self._redirect(tensor, replacement)
        self.changed = True
        return True

    def _admit(self, node: gs.Node | None) -> bool:
        name = "" if node is None else (node.name or node.op)
        return self.edits.admit(self.record.name, name)

    def _redirect(self, tensor: gs.Tensor, replacement: gs.Tensor) -> None:
        for consumer in list(tensor.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is tensor:
                    consumer.inputs[i] = replacement

    def _count(self, nodes_removed: int) -> None:
        self.release_unused()
        self.record.rewrites += 1
        self.record.nodes_removed += nodes_removed if self.main else 0
        self.changed = True

    # --------------------------------------------------------------- bookkeeping
    def disconnect(self, nodes: Iterable[gs.Node]) -> list[gs.Node]:
        """Detach ``nodes``; return the Constant nodes that fed them.

        Initializers nobody reads any more drop their loaded values at once (a region's old
        weights would otherwise stay in memory until the end-of-sweep cleanup).
        """
        feeders = {}
        for node in nodes:
            for t in node.inputs:
                if isinstance(t, gs.Constant):
                    self._maybe_unused[id(t)] = t
                for p in t.inputs:
                    if p.op == "Constant":
                        feeders[id(p)] = p
            node.inputs.clear()
            node.outputs.clear()
        return list(feeders.values())

    def release_unused(self) -> None:
        """Free the loaded values of initializers that lost their last reader."""
        for t in self._maybe_unused.values():
            if not t.outputs and not self.is_graph_output(t):
                gs_shim.release_values(t)
        self._maybe_unused.clear()

    def drop_dead_constants(self, feeders: Iterable[gs.Node]) -> int:
        """Detach Constant nodes nobody reads any more; return how many."""
        dead = 0
        for p in feeders:
            if p.outputs and all(not t.outputs and not self.is_graph_output(t) for t in p.outputs):
                p.outputs.clear()
                dead += 1
        return dead


def _conflict(output: gs.Tensor, replacement: gs.Tensor) -> str | None:
    """Why ``replacement`` cannot stand for ``output``: known types or known dims that differ."""
    a, b = output.dtype, replacement.dtype
    try:
        differ = a is not None and b is not None and np.dtype(a) != np.dtype(b)
    except (TypeError, ValueError):  # a dtype numpy does not know
        differ = False
    if differ:
        return f"'{replacement.name}' is {np.dtype(b)}, the output '{output.name}' is {np.dtype(a)}"
    sa, sb = output.shape, replacement.shape
    if sa is None or sb is None:
        return None
    sa, sb = list(sa), list(sb)
    if len(sa) != len(sb) or any(isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(sa, sb)):
        return f"'{replacement.name}' has shape {sb}, the output '{output.name}' has shape {sa}"
    return None
