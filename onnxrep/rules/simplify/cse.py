"""Common subexpressions: two nodes that compute the same thing from the same inputs are one node.

Two nodes of the default domain with the same op, the same attributes, the same outputs asked for and
the same inputs compute the same outputs; the later one goes and its readers read the earlier one's
outputs (``GraphContext.bypass``: one rewrite). When the later one writes a graph output, the earlier
one goes instead (if it writes none); when both do, both stay (declined: the interface keeps both).

*The same inputs* are the same tensors, or constants equal by value: the same dtype, shape and bytes.
Constants of at most ``VALUE_MAX_BYTES`` are compared by value, larger ones by identity (a large
weight is never loaded or hashed just to look for a twin). Constants are indexed by
``(dtype, shape)`` and hashed only when a second one of that dtype and shape turns up, once each
(blake2b of the bytes, confirmed byte for byte against the one kept): never compared pairwise.
Duplicates are merged themselves too: a Constant node equal to an earlier constant goes (one rewrite),
and the readers of an initializer equal to an earlier one read that one (not counted as a rewrite:
no node goes; ``fired`` says which), so ``Conv(x, W)`` and ``Conv(x, W')`` with ``W == W'`` become
one Conv, and ``Conv(y, W')`` shares ``W``. Initializers that are graph inputs (the caller may feed
them) and graph outputs are never merged; in an If / Loop / Scan body, an initializer the outer
graph reads too is left to the outer graph's run.

One pass in graph (topological) order with a dict keyed by ``(op, outputs asked for, attributes,
inputs)``: linear in the graph's size. ``Add`` / ``Mul`` / ``And`` / ``Or`` / ``Xor`` / ``Equal``
/ ``BitwiseAnd|Or|Xor`` of two inputs are keyed with their inputs in either order (IEEE addition and
multiplication commute exactly).

Never merged (declined when a twin turns up): random ops (``RandomNormal*``, ``RandomUniform*``,
``Bernoulli``, ``Multinomial``: each node draws its own values) and ``Dropout`` in training mode;
ops of other domains (onnxrep cannot know whether a custom op is free of side effects or state, so it
never assumes it; ``com.microsoft`` included); nodes with a subgraph (If / Loop / Scan: not compared);
nodes with no input (a Constant is compared by value instead).
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import GraphContext, is_onnx_op
from ...graph.convert import subgraphs
from ...graph.evaluate import RANDOM_OPS
from ...rule import Pass

#: constants of at most this many bytes are compared by value; larger ones by identity
VALUE_MAX_BYTES = 1 << 20
#: two-input ops whose inputs may be swapped
COMMUTATIVE = {"Add", "Mul", "And", "Or", "Xor", "Equal", "BitwiseAnd", "BitwiseOr", "BitwiseXor"}


class ConstantIndex:
    """The constant kept for each value: ``canonical(t)`` is the first constant seen with ``t``'s value
    that is still read (``t`` itself if it is that one, or if it is compared by identity)."""

    def __init__(self, ctx: GraphContext):
        self.ctx = ctx
        self._keys: dict[int, tuple | None] = {}   # id(constant) -> its value's key (None: by identity)
        self._kept: dict[tuple, tuple] = {}        # key -> (the constant kept, its value or None)
        self._hashed: set[tuple] = set()           # the (dtype, shape) indexed by value (two seen)
        self._alive: list[gs.Tensor] = []          # keeps the ids above meaning their tensors

    def is_constant(self, t: gs.Tensor) -> bool:
        """An initializer (not a graph input) or a Constant node's output with a value onnxrep reads."""
        if t.name in self.ctx.overridable:
            return False
        if isinstance(t, gs.Constant):
            return True
        p = self.ctx.producer(t)
        return p is not None and p.op == "Constant" and is_onnx_op(p) and self.ctx.constant(t) is not None

    def canonical(self, t: gs.Tensor) -> gs.Tensor:
        if id(t) not in self._keys:
            self._alive.append(t)
            self._keys[id(t)] = self._index(t)
        key = self._keys[id(t)]
        if key is None:
            return t
        kept, value = self._kept[key]
        if kept is not t and not kept.outputs:  # the one kept lost its readers (its values may be gone)
            self._kept[key] = (t, self._value(t) if key[0] == "value" else None)
            return t
        return kept

    def _value(self, t: gs.Tensor) -> np.ndarray:
        return np.ascontiguousarray(self.ctx.constant(t))

    def _index(self, t: gs.Tensor) -> tuple | None:
        shape, dtype = self.ctx.constant_info(t)
        dtype = np.dtype(dtype)
        if dtype.kind == "O" or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > VALUE_MAX_BYTES:
            return None
        sig = (dtype.str, tuple(int(d) for d in shape))
        if sig not in self._hashed:
            first = self._kept.get(("first", sig))
            if first is None or not first[0].outputs:  # the first of its dtype and shape: not hashed yet
                self._kept[("first", sig)] = (t, None)
                return ("first", sig)
            self._hashed.add(sig)  # a second one: both are indexed by value, and so is every later one
            del self._kept[("first", sig)]
            self._keys[id(first[0])] = self._hash(sig, first[0])
        return self._hash(sig, t)

    def _hash(self, sig: tuple, t: gs.Tensor) -> tuple:
        value = self._value(t)
        digest = hashlib.blake2b(_bytes(value).data, digest_size=16).digest()
        key = ("value", sig, digest)
        kept = self._kept.get(key)
        if kept is not None and kept[0] is not t and kept[0].outputs and not np.array_equal(_bytes(kept[1]),
                                                                                           _bytes(value)):
            key = ("value", sig, digest, id(t))  # a blake2b collision: the two stay apart
            kept = None
        if kept is None or not kept[0].outputs:
            self._kept[key] = (t, value)
        return key


def _bytes(value: np.ndarray) -> np.ndarray:
    return value.reshape(-1).view(np.uint8)


def _freeze(value):
    """An attribute value as a hashable key; ``None`` if it cannot be compared (a subgraph, an unknown type)."""
    if isinstance(value, (bool, int, float, str)):
        return (type(value).__name__, value)
    if isinstance(value, (list, tuple)):
        items = tuple(_freeze(v) for v in value)
        return None if any(i is None for i in items) else ("list", items)
    if isinstance(value, gs.Constant):
        v = np.ascontiguousarray(value.values)
        return None if v.dtype.kind == "O" else ("tensor", v.dtype.str, v.shape, v.tobytes())
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return ("dtype", np.dtype(value).str)
    if isinstance(value, np.generic):
        return _freeze(value.item())
    return None


def _why_kept(ctx: GraphContext, node: gs.Node) -> str | None:
    """Why ``node`` must stay even beside a twin, or ``None`` when it computes a function of its inputs."""
    if not is_onnx_op(node):
        return (f"an op of domain '{node.domain}': onnxrep cannot know that a custom op is free of side "
                f"effects or state, so it never merges one")
    if node.op in RANDOM_OPS:
        return f"{node.op} draws new values at each node"
    if node.op == "Dropout" and len(node.inputs) > 2 and not ctx.is_absent(node.inputs[2]):
        mode = ctx.constant(node.inputs[2])
        if mode is None or np.asarray(mode).any():
            return "Dropout in training mode draws a new mask at each node"
    return None


class EliminateCommonSubexpressions(Pass):
    name = "eliminate-common-subexpressions"
    priority = 40  # after a sweep's merges: folded branches may leave twins, and sharing a weight earlier
    # would make the folds that copy it cost more

    def run(self, ctx: GraphContext) -> None:
        index = ConstantIndex(ctx)
        seen: dict[tuple, gs.Node] = {}
        pinned = {t.name for g in subgraphs(ctx.graph) for t in g.outputs}  # a body may output an outer tensor
        local: set[int] | None = None  # ids of this graph's nodes and its bodies' (when an initializer is shared)
        moved = False
        for node in ctx.nodes():
            if node.op == "Constant" and is_onnx_op(node):
                self._constant_node(ctx, index, node, pinned)
                continue
            inputs = []
            for t in node.inputs:
                if ctx.is_absent(t):
                    inputs.append(None)
                    continue
                if index.is_constant(t):
                    rep = index.canonical(t)
                    if rep is not t and isinstance(t, gs.Constant) and not ctx.is_graph_output(t):
                        if local is None and not ctx.main:
                            local = {id(n) for g in [ctx.graph, *subgraphs(ctx.graph)] for n in g.nodes}
                        if (ctx.main or all(id(c) in local for c in t.outputs)) and ctx.substitute(t, rep):
                            ctx.fired(node, f"initializer '{t.name}' equals '{rep.name}': its readers read that one")
                    inputs.append(("c", id(rep)))
                else:
                    inputs.append(("t", id(t)))
            key = self._key(node, inputs)
            if key is None:
                continue
            first = seen.get(key)
            if first is None or not ctx.is_live(first):
                seen[key] = node
                continue
            why = _why_kept(ctx, node)
            if why is not None:
                ctx.decline(node, f"same inputs and attributes as '{first.name or first.op}', but {why}")
                continue
            kept = self._merge(ctx, first, node, pinned)
            if kept is node:
                seen[key], moved = node, True
        if moved:  # the kept node comes after readers of the one that went
            ctx.graph.toposort(recurse_subgraphs=False)

    @staticmethod
    def _key(node: gs.Node, inputs: list) -> tuple | None:
        if not node.outputs or (all(i is None for i in inputs) and node.op not in RANDOM_OPS):
            return None  # a node of no input: a Constant is compared by value, a random op only declined
        attrs = []
        for name in sorted(node.attrs):
            frozen = _freeze(node.attrs[name])
            if frozen is None:
                return None  # a subgraph or an attribute not compared
            attrs.append((name, frozen))
        if node.op in COMMUTATIVE and len(inputs) == 2 and None not in inputs:
            inputs = sorted(inputs)
        domain = "" if is_onnx_op(node) else node.domain
        asked = tuple(not t.is_empty() for t in node.outputs)
        return node.op, domain, asked, tuple(attrs), tuple(inputs)

    @staticmethod
    def _constant_node(ctx: GraphContext, index: ConstantIndex, node: gs.Node, pinned: set[str]) -> None:
        out = node.outputs[0]
        if len(node.outputs) != 1 or not index.is_constant(out):
            return
        rep = index.canonical(out)
        if rep is out:
            return
        if ctx.is_graph_output(out) or out.name in pinned:
            ctx.decline(node, f"equals '{rep.name}', but its output '{out.name}' is a graph output", kind="privacy")
            return
        ctx.bypass([node], out, rep, at=node)

    @staticmethod
    def _merge(ctx: GraphContext, first: gs.Node, second: gs.Node, pinned: set[str]) -> gs.Node | None:
        """The later node goes (its readers read the earlier one's outputs), or the earlier one when the
        later writes a graph output; returns the node kept, ``None`` when both stay."""
        def interface(n):
            return [t.name for t in n.outputs if ctx.is_graph_output(t) or t.name in pinned]

        gone, kept = second, first
        if interface(second):
            if interface(first):
                ctx.decline(second, f"same inputs and attributes as '{first.name or first.op}', but both write "
                                    f"graph outputs ({', '.join(interface(first) + interface(second))}): the "
                                    f"model's interface keeps both", kind="privacy")
                return None
            gone, kept = first, second
        pairs = [(a, b) for a, b in zip(gone.outputs, kept.outputs) if not a.is_empty()]
        if not pairs:
            return None
        for a, b in pairs[1:]:  # a node of several outputs: all but the first are redirected first
            if a.outputs and not ctx.substitute(a, b):
                return None
        if ctx.bypass([gone], pairs[0][0], pairs[0][1], at=second):
            return kept
        return None
