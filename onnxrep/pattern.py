"""Patterns written as ops, and the matcher.

    op(types, *inputs, name=None, commutative=False, attrs=None)   a node (of one of ``types``)
    var(name, optional=False)                                      any tensor
    const(name, optional=False, value=None)                        an initializer or Constant output
    any_of(p1, p2, ...)                                            the first alternative that matches

* A nested ``op`` matches the producer of that input; its output must be *private* to the match
  (read once, by the node above, and not a graph output), so a rewrite never deletes a tensor
  someone else still reads. The root's output may be read anywhere: the rewrite produces it again.
* A name used twice binds one tensor: ``op("Mul", var("x"), op("Sigmoid", var("x")))`` is
  ``x * sigmoid(x)`` and nothing else.
* ``commutative=True`` on a two-input op also tries the inputs swapped.
* ``attrs={"alpha": approx(1/6), "mode": "constant"}``: each attribute equals the value, or
  satisfies the predicate (a callable); an attribute the node leaves out has its ONNX default.
* ``const(..., value=v)``: every element equals ``v`` (within ``approx``'s default tolerance).
* ``var(..., optional=True)`` / ``const(..., optional=True)`` also match an omitted input (an
  empty name or a missing trailing input); ``m[name]`` and ``m.tensor(name)`` are then ``None``.
* In a match ``m``: ``m[name]`` is a tensor for ``var``, a numpy array for ``const``;
  ``m.tensor(name)`` is the graph tensor in both cases (what ``b.op`` takes, and what ``rewrite``
  may return to remove the match: the readers of ``m.output`` then read it). ``m.node(name)`` is
  the ``gs.Node`` of a named ``op`` (``.op``, ``.name``, ``.attrs``: the attributes the node sets,
  ``.inputs``, ``.outputs``, ``.domain``: ``None`` for ONNX ops); ``m.output`` is the root's first
  output and ``m.nodes`` every matched node. A tensor has ``.name``, ``.shape`` (``None`` when
  unknown) and ``.dtype``; an initializer is a ``gs.Constant`` with ``.values``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graph import GraphContext, is_onnx_op


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
    value: float | None = None


@dataclass(frozen=True)
class OpPattern(Pattern):
    op_types: tuple[str, ...]
    inputs: tuple[Pattern, ...]
    name: str | None = None
    commutative: bool = False
    attrs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class AnyOf(Pattern):
    alternatives: tuple[Pattern, ...]

    @property
    def op_types(self) -> tuple[str, ...]:
        """Root op types of every alternative (when they are ops)."""
        return tuple(dict.fromkeys(t for a in self.alternatives for t in getattr(a, "op_types", ())))


def op(op_type: str | tuple[str, ...], *inputs: Pattern, name: str | None = None, commutative: bool = False,
       attrs: dict[str, Any] | None = None) -> OpPattern:
    types = (op_type,) if isinstance(op_type, str) else tuple(op_type)
    for i, p in enumerate(inputs):
        if not isinstance(p, Pattern):
            raise TypeError(f"input {i} of op({types[0]!r}) is {p!r}: use var(...), const(...), op(...) or any_of(...)")
    return OpPattern(types, tuple(inputs), name, commutative, tuple(sorted((attrs or {}).items())))


def var(name: str, optional: bool = False) -> VarPattern:
    return VarPattern(name, optional)


def const(name: str, optional: bool = False, value: float | None = None) -> ConstPattern:
    return ConstPattern(name, optional, value)


def any_of(*alternatives: Pattern) -> AnyOf:
    if len(alternatives) < 2 or not all(isinstance(a, Pattern) for a in alternatives):
        raise TypeError("any_of(...) takes two or more patterns")
    return AnyOf(tuple(alternatives))


@dataclass(frozen=True)
class approx:
    """An attribute / constant predicate: ``|x - value| <= rel * |value| + abs``."""
    value: float
    rel: float = 1e-6
    abs: float = 1e-12

    def __call__(self, x) -> bool:
        try:
            return bool(np.all(np.abs(np.asarray(x, dtype=np.float64) - self.value)
                               <= self.rel * abs(self.value) + self.abs))
        except (TypeError, ValueError):
            return False


# --------------------------------------------------------------------------- matches
@dataclass
class Match:
    ctx: GraphContext
    root: gs.Node | None = None
    values: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, gs.Tensor | None] = field(default_factory=dict)
    named_nodes: dict[str, gs.Node] = field(default_factory=dict)
    nodes: list[gs.Node] = field(default_factory=list)
    #: inner tensors that must be private to the match
    inner: list[gs.Tensor] = field(default_factory=list)
    #: refuse inner tensors that are not private while matching (off: match the structure only)
    strict: bool = True

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

    def name_of(self, value) -> str | None:
        """The pattern name bound to ``value`` (by identity), if any."""
        return next((k for k, v in self.values.items() if v is value), None)

    def _state(self):
        return dict(self.values), dict(self.tensors), dict(self.named_nodes), list(self.nodes), list(self.inner)

    def _restore(self, state) -> None:
        self.values, self.tensors, self.named_nodes, self.nodes, self.inner = (dict(state[0]), dict(state[1]),
                                                                               dict(state[2]), list(state[3]),
                                                                               list(state[4]))


def _bind(m: Match, name: str, tensor, value) -> bool:
    if name in m.tensors:
        return m.tensors[name] is tensor
    m.tensors[name] = tensor
    m.values[name] = value
    return True


def _match_tensor(pat: Pattern, t: gs.Tensor | None, m: Match) -> bool:
    ctx = m.ctx
    if isinstance(pat, AnyOf):
        return _first(pat.alternatives, lambda p: _match_tensor(p, t, m), m)
    if isinstance(pat, VarPattern):
        if ctx.is_absent(t):
            return pat.optional and _bind(m, pat.name, None, None)
        return _bind(m, pat.name, t, t)
    if isinstance(pat, ConstPattern):
        if ctx.is_absent(t):
            return pat.optional and _bind(m, pat.name, None, None)
        value = ctx.constant(t)
        if value is None or (pat.value is not None and not approx(pat.value)(value)):
            return False
        return _bind(m, pat.name, t, value)
    if isinstance(pat, OpPattern):
        if ctx.is_absent(t) or (m.strict and not ctx.is_private(t)):
            return False
        producer = ctx.producer(t)
        if producer is None or len(producer.outputs) != 1 or not _match_op(pat, producer, m):
            return False
        m.inner.append(t)
        return True
    raise TypeError(f"not a pattern: {pat!r}")


def _first(alternatives, attempt: Callable[[Pattern], bool], m: Match) -> bool:
    for alt in alternatives:
        state = m._state()
        if attempt(alt):
            return True
        m._restore(state)
    return False


def attr_value(node: gs.Node, key: str, opset: int):
    """``node.attrs[key]``, or the ONNX default of that attribute at ``opset`` (``None`` if it has none)."""
    if key in node.attrs:
        v = node.attrs[key]
        return v.decode() if isinstance(v, bytes) else v
    try:
        schema = onnx.defs.get_schema(node.op, opset, "")
    except Exception:  # noqa: BLE001  (an op ONNX does not define)
        return None
    a = schema.attributes.get(key)
    if a is None or not a.default_value.name:
        return None
    v = onnx.helper.get_attribute_value(a.default_value)
    return v.decode() if isinstance(v, bytes) else v


def _attrs_match(pat: OpPattern, node: gs.Node, opset: int) -> bool:
    for key, want in pat.attrs:
        got = attr_value(node, key, opset)
        if callable(want):
            if not want(got):
                return False
        elif isinstance(want, float) and isinstance(got, (int, float)):
            if not math.isclose(got, want, rel_tol=1e-6):
                return False
        elif got != want:
            return False
    return True


def _match_op(pat: OpPattern, node: gs.Node, m: Match) -> bool:
    if node.op not in pat.op_types or not is_onnx_op(node) or not _attrs_match(pat, node, m.ctx.opset):
        return False
    inputs = list(node.inputs)
    if len(inputs) > len(pat.inputs):
        return False
    inputs += [None] * (len(pat.inputs) - len(inputs))
    orders = [inputs] + ([inputs[::-1]] if pat.commutative and len(inputs) == 2 else [])

    def attempt(order) -> bool:
        if not all(_match_tensor(p, t, m) for p, t in zip(pat.inputs, order)):
            return False
        if pat.name is not None:
            m.named_nodes[pat.name] = node
        m.nodes.append(node)
        return True

    return _first(orders, attempt, m)


def match_node(pat: Pattern, node: gs.Node, m: Match) -> bool:
    """Match ``pat`` rooted at ``node``, extending ``m`` (restored on failure). With ``m.strict``
    off only the structure is matched; ``private_problem`` then says what is not private."""
    if isinstance(pat, AnyOf):
        return _first(pat.alternatives, lambda p: match_node(p, node, m), m)
    return _match_op(pat, node, m)


def private_problem(m: Match) -> str | None:
    """Why an inner tensor of the match is not private to it, or ``None``."""
    ctx = m.ctx
    for t in m.inner:
        if ctx.is_graph_output(t):
            return f"tensor '{t.name}' inside the match is a graph output"
        if not ctx.is_private(t):
            outside = [c for c in t.outputs if all(c is not n for n in m.nodes)]  # by identity
            readers = ", ".join(f"'{c.name or c.op}'" for c in outside) or "twice"
            return f"tensor '{t.name}' inside the match is also read by {readers}"
    return None
