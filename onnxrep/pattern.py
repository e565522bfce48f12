"""The public rule API.

A rule is a class with a name. The low-level form, ``Rule``, gets the whole ``GraphContext``
in ``run`` (the built-in region collapse is written that way). The usual form,
``PatternRule``, is three parts side by side::

    class FoldScaleIntoGemm(PatternRule):
        '''Gemm -> Mul(c)  =>  Gemm with B and C scaled by c.'''
        pattern = op("Mul", op("Gemm", var("a"), const("b"), const("c", optional=True), name="gemm"),
                     const("s"), commutative=True)

        def check(self, m):           # None to accept, or the reason to decline
            return None if m["s"].size == 1 else "scale is not a scalar"

        def rewrite(self, m, b):      # describe the replacement with the Builder
            s = float(m["s"])
            gemm = m.node("gemm")
            b.op("Gemm", [m["a"], b.const("B", m["b"] * s), ...], outputs=[m.output], attrs=gemm.attrs)

Patterns are written as ops: ``op(type_or_types, *inputs, name=, commutative=)``, ``var(name)``
(any tensor), ``var(name, optional=True)`` (also an omitted input), ``const(name, optional=)`` (an initializer or Constant output, never a graph
input). A nested ``op`` matches the producer of that input, and the engine requires its
output to be private to the match (read once, not a graph output), so a user rule cannot
delete a tensor someone else still reads. ``m[name]`` is a tensor for ``var``, a numpy array
for ``const`` (``None`` for an absent optional one); ``m.tensor(name)``, ``m.node(name)``,
``m.output`` and ``m.nodes`` give the graph objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx_graphsurgeon as gs

from .algebra import NotRepresentable
from .graph import Builder, GraphContext, is_onnx_op


# ------------------------------------------------------------------ patterns
class Pattern:
    pass


@dataclass(frozen=True)
class VarPattern(Pattern):
    name: str
    optional: bool = False


@dataclass(frozen=True)
class ConstPattern(Pattern):
    name: str
    optional: bool = False


@dataclass(frozen=True)
class OpPattern(Pattern):
    op_types: tuple[str, ...]
    inputs: tuple[Pattern, ...]
    name: str | None = None
    commutative: bool = False


def op(op_type: str | tuple[str, ...], *inputs: Pattern, name: str | None = None,
       commutative: bool = False) -> OpPattern:
    types = (op_type,) if isinstance(op_type, str) else tuple(op_type)
    return OpPattern(types, tuple(inputs), name, commutative)


def var(name: str, optional: bool = False) -> VarPattern:
    return VarPattern(name, optional)


def const(name: str, optional: bool = False) -> ConstPattern:
    return ConstPattern(name, optional)


# ------------------------------------------------------------------- matches
@dataclass
class Match:
    ctx: GraphContext
    root: gs.Node | None = None
    values: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, gs.Tensor | None] = field(default_factory=dict)
    named_nodes: dict[str, gs.Node] = field(default_factory=dict)
    nodes: list[gs.Node] = field(default_factory=list)

    def __getitem__(self, name: str):
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def tensor(self, name: str) -> gs.Tensor | None:
        return self.tensors[name]

    def node(self, name: str) -> gs.Node:
        return self.named_nodes[name]

    @property
    def output(self) -> gs.Tensor:
        return self.root.outputs[0]

    def _state(self):
        return dict(self.values), dict(self.tensors), dict(self.named_nodes), list(self.nodes)

    def _restore(self, state) -> None:
        self.values, self.tensors, self.named_nodes, self.nodes = (
            state[0], state[1], state[2], state[3])


def _bind(m: Match, name: str, tensor, value) -> bool:
    if name in m.tensors:
        return m.tensors[name] is tensor
    m.tensors[name] = tensor
    m.values[name] = value
    return True


def _match_tensor(pat: Pattern, t: gs.Tensor | None, m: Match) -> bool:
    ctx = m.ctx
    if isinstance(pat, VarPattern):
        if ctx.is_absent(t):
            return pat.optional and _bind(m, pat.name, None, None)
        return _bind(m, pat.name, t, t)
    if isinstance(pat, ConstPattern):
        if ctx.is_absent(t):
            return pat.optional and _bind(m, pat.name, None, None)
        value = ctx.constant(t)
        return value is not None and _bind(m, pat.name, t, value)
    if isinstance(pat, OpPattern):
        if ctx.is_absent(t) or not ctx.is_private(t):
            return False
        producer = ctx.producer(t)
        return producer is not None and len(producer.outputs) == 1 and match_node(pat, producer, m)
    raise TypeError(f"not a pattern: {pat!r}")


def match_node(pat: OpPattern, node: gs.Node, m: Match) -> bool:
    """Match ``pat`` rooted at ``node``, extending ``m``; restores ``m`` on failure."""
    if node.op not in pat.op_types or not is_onnx_op(node):
        return False
    inputs = list(node.inputs)
    if len(inputs) > len(pat.inputs):
        return False
    inputs += [None] * (len(pat.inputs) - len(inputs))
    orders = [inputs]
    if pat.commutative and len(inputs) == 2:
        orders.append(inputs[::-1])
    for order in orders:
        state = m._state()
        if all(_match_tensor(p, t, m) for p, t in zip(pat.inputs, order)):
            if pat.name is not None:
                m.named_nodes[pat.name] = node
            m.nodes.append(node)
            return True
        m._restore(state)
    return False


# --------------------------------------------------------------------- rules
class Rule:
    """Base of every rule. Subclasses set ``name`` and implement ``run(ctx)``.

    ``priority``: lower runs first in a sweep. ``min_opset``/``max_opset``: the default-domain
    opsets the rule supports; outside them the driver skips it. Rules also run on the bodies of
    If / Loop / Scan nodes unless ``whole_model`` is set.
    """

    name: str = ""
    priority: int = 100
    min_opset: int = 11
    max_opset: int | None = None
    #: True for rules that need the whole model (they are not run inside If / Loop / Scan bodies)
    whole_model: bool = False

    def applies_to(self, opset: int) -> bool:
        return opset >= self.min_opset and (self.max_opset is None or opset <= self.max_opset)

    def run(self, ctx: GraphContext) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<rule {self.name or type(self).__name__}>"


class PatternRule(Rule):
    """A rule made of ``pattern`` + ``check`` + ``rewrite``; the engine does the rest."""

    pattern: OpPattern

    def check(self, m: Match) -> str | None:
        """Return ``None`` to accept the match, or a short reason to decline it."""
        return None

    def rewrite(self, m: Match, b: Builder) -> None:
        """Describe the replacement of ``m.nodes`` with ``b.op`` / ``b.const``.

        The replacement must produce ``m.output`` (pass ``outputs=[m.output]``). Raise
        ``NotRepresentable("why")`` to decline late.
        """
        raise NotImplementedError

    def run(self, ctx: GraphContext) -> None:
        name = self.name or type(self).__name__
        for node in ctx.nodes(*self.pattern.op_types):
            if not ctx.is_live(node):
                continue
            m = Match(ctx, root=node)
            if not match_node(self.pattern, node, m):
                continue
            if any(not ctx.is_live(n) for n in m.nodes):
                continue
            reason = self.check(m)
            if reason:
                ctx.decline(name, node, reason)
                continue
            builder = Builder(ctx, node.name or node.op)
            try:
                self.rewrite(m, builder)
                ctx.replace(name, m.nodes, builder.nodes)
            except NotRepresentable as exc:
                ctx.decline(name, node, str(exc))
