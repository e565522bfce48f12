"""The rewrite context: one onnx-graphsurgeon graph plus the bookkeeping every rule needs.

gs keeps, for each tensor, its producers (``tensor.inputs``) and consumers
(``tensor.outputs``) up to date as nodes are connected and disconnected, so that is the
consumer index: built once at import and maintained incrementally by ``replace``. Nothing
here rescans the graph per match.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from ..algebra import NotRepresentable
from .evaluate import CONTROL_FLOW, RANDOM_OPS, evaluate

#: computed constants (``GraphContext.computed``): at most this many elements (inputs, output) and
#: this many producers up from the tensor asked about
COMPUTED_MAX_ELEMENTS = 1 << 16
COMPUTED_MAX_DEPTH = 8


def is_onnx_op(node: gs.Node) -> bool:
    """True for nodes of the default (ai.onnx) domain; rules never touch other domains."""
    return node.domain in ("", "ai.onnx", None)


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


class _Released:
    """Stands in for the values of an initializer that a rewrite made unused (shape and dtype kept)."""

    def __init__(self, tensor: gs.Constant):
        self.name, self.shape, self.dtype = tensor.name, tuple(tensor.shape), tensor.dtype

    def __array__(self, *args, **kwargs):
        raise RuntimeError(f"initializer '{self.name}' was released after a rewrite and must not be read")


class RegionNotPrivate(NotRepresentable):
    """A tensor inside the region is a graph output or is read outside the region."""


@dataclass
class Decline:
    rule: str
    node: str
    reason: str


@dataclass
class RuleStats:
    rewrites: int = 0
    nodes_removed: int = 0
    declines: list[Decline] = field(default_factory=list)


class GraphContext:
    """A gs graph under rewrite.

    ``overridable`` names initializers that are also graph inputs: the user may feed them, so
    they are never read as constants.
    """

    def __init__(self, graph: gs.Graph, opset: int, overridable: Iterable[str] = (), state: dict | None = None,
                 names: set[str] | None = None):
        self.graph = graph
        #: kept from sweep to sweep by the driver (rules may remember decisions there)
        self.state = {} if state is None else state
        self.opset = opset
        self.overridable = frozenset(overridable)
        self.stats: dict[str, RuleStats] = defaultdict(RuleStats)
        #: every name in the model (a subgraph's context shares its model's set)
        self._names: set[str] = all_names(graph) if names is None else names
        self._output_names = {t.name for t in graph.outputs}
        self._counter = Counter()
        self.changed = False
        #: one record per conv a rule created, for the report (e.g. per-channel weight ranges)
        self.created: list[dict] = []
        self._maybe_unused: dict[int, gs.Constant] = {}
        self._computed: dict[int, tuple[gs.Tensor, np.ndarray | None]] = {}

    # ----------------------------------------------------------------- queries
    @staticmethod
    def is_live(node: gs.Node) -> bool:
        """A node removed by ``replace`` has no inputs or outputs left."""
        return bool(node.outputs)

    def nodes(self, *op_types: str) -> list[gs.Node]:
        """Live nodes, optionally only of the given op types (ai.onnx domain), in graph order."""
        wanted = set(op_types)
        return [n for n in self.graph.nodes
                if n.outputs and (not wanted or (n.op in wanted and is_onnx_op(n)))]

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

    def constant_info(self, tensor: gs.Tensor | None) -> tuple[tuple[int, ...], np.dtype] | None:
        """``(shape, dtype)`` of a constant without loading its values (``None`` if not a constant)."""
        if tensor is None or tensor.name in self.overridable:
            return None
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.shape), np.dtype(tensor.dtype)
        value = self.constant(tensor)  # Constant nodes: small, already in memory
        return None if value is None else (value.shape, value.dtype)

    def stored_constant_info(self, tensor: gs.Tensor | None) -> tuple[tuple[int, ...], np.dtype] | None:
        """``constant_info`` of an initializer or a Constant-node output only: the tensors that count as
        parameters (a computed constant is counted by the stored ones it is computed from)."""
        producer = self.producer(tensor) if tensor is not None else None
        if isinstance(tensor, gs.Constant) or (producer is not None and producer.op == "Constant"):
            return self.constant_info(tensor)
        return None

    def constant(self, tensor: gs.Tensor | None) -> np.ndarray | None:
        """The value of an initializer, a Constant-node output, or a small tensor computed from
        those alone (``computed``); ``None`` for anything else.

        Initializers exposed as graph inputs are not constants: the caller may override them.
        """
        return self._value(tensor, 0)

    def _value(self, tensor: gs.Tensor | None, depth: int) -> np.ndarray | None:
        if tensor is None or tensor.name in self.overridable:
            return None
        if isinstance(tensor, gs.Constant):
            return tensor.values
        node = self.producer(tensor)
        if node is not None and node.op == "Constant" and is_onnx_op(node):
            a = node.attrs
            if "value" in a and isinstance(a["value"], gs.Constant):
                return a["value"].values
            for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                               ("value_int", np.int64), ("value_ints", np.int64)):
                if key in a:
                    return np.asarray(a[key], dtype=dtype)
            return None
        return self.computed(tensor, depth)

    def computed(self, tensor: gs.Tensor, depth: int = 0) -> np.ndarray | None:
        """The value of a tensor that small nodes compute from constants alone (evaluated once).

        Exports without constant folding write a zero bias as ``Expand(CastLike(0, W), [C])``: such a
        tensor is a constant to every rule, while the nodes stay in the graph until a rewrite
        leaves them unread (folding them all up front would turn one scalar into C parameters).
        Looks at most ``COMPUTED_MAX_DEPTH`` producers up.
        """
        cached = self._computed.get(id(tensor))
        if cached is not None and cached[0] is tensor:
            return cached[1]
        node = self.producer(tensor)
        if (node is None or not is_onnx_op(node) or len(node.outputs) != 1 or not node.inputs
                or node.op in RANDOM_OPS | CONTROL_FLOW | {"Constant"}
                or any(isinstance(v, gs.Graph) for v in node.attrs.values())):
            value = None
        elif depth >= COMPUTED_MAX_DEPTH:
            return None  # not remembered: a shallower question may still find it
        else:
            value = self._evaluate(node, depth)
        self._computed[id(tensor)] = (tensor, value)
        return value

    def _evaluate(self, node: gs.Node, depth: int) -> np.ndarray | None:
        """``node``'s output if every input is a small constant; sizes are read before any value is
        loaded (a weight in external data stays on disk)."""
        size = 0
        for t in node.inputs:
            if self.is_absent(t):
                continue
            if isinstance(t, gs.Constant):
                if t.name in self.overridable:
                    return None
                size += int(np.prod(t.shape, dtype=np.int64))
            else:
                v = self._value(t, depth + 1)
                if v is None:
                    return None
                size += v.size
            if size > COMPUTED_MAX_ELEMENTS:
                return None
        values = [None if self.is_absent(t) else self._value(t, depth + 1) for t in node.inputs]
        try:
            value = evaluate(node, values, self.opset)[0]
        except Exception:  # an op the reference implementation cannot run
            return None
        return value if value.size <= COMPUTED_MAX_ELEMENTS else None

    # --------------------------------------------------------------- mutation
    def unique_name(self, hint: str) -> str:
        hint = hint or "onnxrep"
        name = hint
        while name in self._names:
            self._counter[hint] += 1
            name = f"{hint}_{self._counter[hint]}"
        self._names.add(name)
        return name

    def make_constant(self, hint: str, values: np.ndarray) -> gs.Constant:
        """A new initializer with a fresh name (existing, possibly shared, ones are never edited)."""
        return gs.Constant(self.unique_name(hint), np.ascontiguousarray(values))

    def check_private(self, region: Iterable[gs.Node], keeps: Iterable[gs.Tensor]) -> None:
        """Raise ``RegionNotPrivate`` if a tensor made inside ``region`` escapes it.

        A tensor escapes when it is a graph output or is read by a node outside the region;
        such a tensor must be one of ``keeps`` (produced again by the replacement).
        """
        region = list(region)
        ids = {id(n) for n in region}
        kept = {id(t) for t in keeps}
        for node in region:
            for t in node.outputs:
                if id(t) in kept:
                    continue
                if self.is_graph_output(t):
                    raise RegionNotPrivate(f"tensor '{t.name}' inside the region is a graph output")
                for c in t.outputs:
                    if id(c) not in ids:
                        raise RegionNotPrivate(f"tensor '{t.name}' inside the region is also read by '{c.name}'")

    def replace(self, rule: str, region: list[gs.Node], new_nodes: list["PendingNode"]) -> list[gs.Node]:
        """Replace ``region`` by ``new_nodes`` (built with a ``Builder``), atomically.

        Every tensor the region produced that is still needed must be an output of a new node.
        """
        outputs = [t for p in new_nodes for t in p.outputs]
        self.check_private(region, outputs)
        feeders = self.disconnect(region)
        made = []
        for p in new_nodes:
            node = gs.Node(p.op, name=self.unique_name(p.name), attrs=p.attrs, inputs=p.inputs, outputs=p.outputs)
            if p.domain:
                node.domain = p.domain
            self.graph.nodes.append(node)
            made.append(node)
        dead = self.drop_dead_constants(feeders)
        self.release_unused()
        st = self.stats[rule]
        st.rewrites += 1
        st.nodes_removed += len(region) + dead - len(made)
        self.changed = True
        return made

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
            if not t.outputs and not self.is_graph_output(t) and not isinstance(t._values, _Released):
                t._values = _Released(t)
        self._maybe_unused.clear()

    def drop_dead_constants(self, feeders: Iterable[gs.Node]) -> int:
        """Detach Constant nodes nobody reads any more; return how many."""
        dead = 0
        for p in feeders:
            if p.outputs and all(not t.outputs and not self.is_graph_output(t) for t in p.outputs):
                p.outputs.clear()
                dead += 1
        return dead

    def substitute(self, rule: str, tensor: gs.Tensor, replacement: gs.Tensor) -> None:
        """Make every reader of ``tensor`` read ``replacement`` instead (not for graph outputs)."""
        if self.is_graph_output(tensor):
            raise RegionNotPrivate(f"tensor '{tensor.name}' is a graph output")
        for consumer in list(tensor.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is tensor:
                    consumer.inputs[i] = replacement
        self.changed = True

    def decline(self, rule: str, node: gs.Node | str, reason: str) -> None:
        name = node if isinstance(node, str) else (node.name or node.op)
        self.stats[rule].declines.append(Decline(rule, name, str(reason)))


@dataclass
class PendingNode:
    """A node a rewrite wants to create; connected only when the rewrite is committed."""
    op: str
    inputs: list
    outputs: list
    attrs: dict
    name: str
    domain: str = ""


class Builder:
    """What a rule's ``rewrite`` uses to describe its replacement nodes and constants."""

    def __init__(self, ctx: GraphContext, hint: str):
        self.ctx = ctx
        self.hint = hint
        self.nodes: list[PendingNode] = []

    def const(self, suffix: str, values: np.ndarray) -> gs.Constant:
        return self.ctx.make_constant(f"{self.hint}_{suffix}", values)

    def tensor(self, suffix: str, dtype=None, shape=None) -> gs.Variable:
        return gs.Variable(self.ctx.unique_name(f"{self.hint}_{suffix}"), dtype=dtype, shape=shape)

    def op(self, op_type: str, inputs: list, outputs: list | None = None, attrs: dict | None = None,
           name: str | None = None, domain: str = "") -> list:
        """Add a node; returns its output tensors (fresh ones unless ``outputs`` is given).

        ``None`` inputs are omitted optional inputs (trailing ones are dropped).
        """
        inputs = list(inputs)
        while inputs and inputs[-1] is None:
            inputs.pop()
        inputs = [gs.Variable.empty() if t is None else t for t in inputs]
        outputs = list(outputs) if outputs is not None else [self.tensor(op_type.lower())]
        self.nodes.append(PendingNode(op_type, list(inputs), outputs, dict(attrs or {}), name or self.hint, domain))
        return outputs
