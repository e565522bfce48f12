"""The rule contract: ``PatternRule`` for local rewrites, ``Pass`` for whole-graph analyses.

Both have a ``name`` (unique in a rule set), a ``priority`` (lower runs first in every sweep) and
an opset range (``min_opset`` .. ``max_opset`` of the default domain; outside it the rule is
skipped, and the report says so). The driver runs every rule on the main graph and on the bodies
of If / Loop / Scan nodes (unless ``whole_model``), sweep after sweep until nothing changes, and
hands each rule its own record through the context: ``ctx.decline``, ``ctx.replace``,
``ctx.remove`` and ``ctx.memory`` write to the rule that is running. A ``PatternRule``::

    class FoldScaleIntoGemm(PatternRule):
        '''Gemm -> Mul(c)  =>  Gemm with alpha and beta scaled by c.'''
        name = "fold-scale-into-gemm"
        pattern = op("Mul", op("Gemm", var("a"), var("b"), var("c", optional=True), name="gemm"),
                     const("s"), commutative=True)

        def check(self, m):           # None to accept, or the reason to decline (a string)
            return None if m["s"].size == 1 else "scale is not a scalar"

        def rewrite(self, m, b):      # describe the replacement with the Builder
            ...
            b.op("Gemm", [m["a"], m["b"], m["c"]], outputs=[m.output], attrs=attrs)

A ``rewrite`` that builds nothing and returns an existing tensor the match reads
(``return m.tensor("x")``) removes the matched nodes: the readers of ``m.output`` read that
tensor (``GraphContext.bypass``; declined when ``m.output`` is a graph output).
An exception in a rule stops the optimization with a ``RuleError`` naming the rule and the node.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from .algebra import NotRepresentable
from .graph import Builder, GraphContext
from .graph.builder import RuleUsageError
from .graph.io import first_line
from .pattern import Match, Pattern, match_node, private_problem


class RuleError(Exception):
    """A rule raised an exception (``cause``) at ``node``; ``builtin`` says whose code it was."""

    def __init__(self, rule: str, node: str | None, cause: BaseException, builtin: bool = False):
        self.rule, self.node, self.cause, self.builtin = rule, node, cause, builtin
        at = f" on node '{node}'" if node else ""
        detail = f": {first_line(cause)}" if str(cause).strip() else ""
        super().__init__(f"rule '{rule}' failed{at}: {type(cause).__name__}{detail}")


class Rule:
    """What every rule has. Subclass ``PatternRule`` or ``Pass``, not this."""

    name: str = ""
    priority: int = 100
    min_opset: int = 11
    max_opset: int | None = None
    #: True for rules that need the whole model (not run inside If / Loop / Scan bodies)
    whole_model: bool = False

    @property
    def rule_name(self) -> str:
        return self.name or type(self).__name__

    def applies_to(self, opset: int) -> bool:
        return opset >= self.min_opset and (self.max_opset is None or opset <= self.max_opset)

    def opset_range(self) -> str:
        return f"{self.min_opset}+" if self.max_opset is None else f"{self.min_opset}-{self.max_opset}"

    def run(self, ctx: GraphContext) -> None:
        raise NotImplementedError(f"{type(self).__name__} defines no run(ctx)")

    def near_misses(self, ctx: GraphContext) -> None:
        """Called instead of ``run`` when the model's opset is outside the rule's range: decline
        (kind ``opset``) what the rule would have looked at. Nothing by default."""

    def __repr__(self) -> str:
        return f"<rule {self.rule_name}>"


class Pass(Rule):
    """A whole-graph rule: implement ``run(ctx)`` with the ``GraphContext`` queries and edits."""


class PatternRule(Rule):
    """A rule made of ``pattern`` + ``check`` + ``rewrite``; the engine does the rest."""

    pattern: Pattern

    def check(self, m: Match) -> str | None:
        """Return ``None`` to accept the match, or a short reason (a string) to decline it."""
        return None

    def rewrite(self, m: Match, b: Builder) -> gs.Tensor | None:
        """Describe the replacement of ``m.nodes`` with ``b.op`` / ``b.const``, or return the
        existing tensor the matched output equals.

        Either build nodes that produce ``m.output`` (pass ``outputs=[m.output]``) and return
        ``None``; or build nothing and return a tensor the match reads (``m.tensor(name)``): the
        matched nodes go and the readers of ``m.output`` read that tensor (declined when
        ``m.output`` is a graph output). Raise ``NotRepresentable("why")`` to decline late.
        """
        raise NotImplementedError

    def _matches(self, ctx: GraphContext, strict: bool):
        pattern = getattr(type(self), "pattern", None)
        if not isinstance(pattern, Pattern):
            raise RuleUsageError(f"{type(self).__name__}.pattern is {pattern!r}: build it with op(...) or any_of(...)")
        for node in ctx.nodes(*pattern.op_types):
            m = Match(ctx, root=node, strict=strict)
            if match_node(pattern, node, m) and all(ctx.is_live(n) for n in m.nodes):
                yield node, m

    def run(self, ctx: GraphContext) -> None:
        for node, m in self._matches(ctx, strict=False):
            problem = private_problem(m)
            if problem is not None:
                strict = Match(ctx, root=node)  # another binding (commutative, any_of) may be private
                if not match_node(self.pattern, node, strict):
                    ctx.decline(node, problem, kind="privacy")
                    continue
                m = strict
            reason = self.check(m)
            if reason is not None and not isinstance(reason, str):
                raise RuleUsageError(f"check() returned {reason!r}: return None to accept the match, "
                                     f"or a string that says why it is declined")
            if reason:
                ctx.decline(node, reason)
                continue
            b = Builder(ctx, node.name or node.op, match=m)
            try:
                kept = self.rewrite(m, b)
            except NotRepresentable as exc:
                ctx.decline(node, str(exc), kind="rewrite")
                continue
            if kept is not None and not _built_here(b, kept):
                ctx.bypass(m.nodes, m.output, _existing_tensor(m, b, kept), at=node)
                continue
            if not any(t is m.output for p in b.nodes for t in p.outputs):
                raise RuleUsageError(f"rewrite() does not produce the matched output '{m.output.name}': pass "
                                     f"outputs=[m.output] to the b.op(...) that computes it, or return an "
                                     f"existing tensor (m.tensor(name)) for its readers to read")
            ctx.replace(m.nodes, b.nodes, at=node)

    def near_misses(self, ctx: GraphContext) -> None:
        for node, _ in self._matches(ctx, strict=True):
            ctx.decline(node, f"matched, but the rule supports opsets {self.opset_range()} "
                              f"(the model has {ctx.opset})", kind="opset")


def _built_here(b: Builder, value) -> bool:
    """``value`` is what ``b.op(...)`` returned (its output list, or one of its outputs): ``return b.op(...)``
    builds the replacement as if nothing were returned."""
    made = [t for p in b.nodes for t in p.outputs]
    values = value if isinstance(value, (list, tuple)) else [value]
    return bool(values) and all(any(v is t for t in made) for v in values)


def _existing_tensor(m: Match, b: Builder, kept) -> gs.Tensor:
    """What ``rewrite`` returned, checked: a tensor the matched nodes read, with nothing built."""
    if b.nodes:
        raise RuleUsageError(f"rewrite() built {len(b.nodes)} node(s) with b.op(...) and also returned "
                             f"{_describe(kept)}: either return an existing tensor (the matched nodes go and "
                             f"the readers of '{m.output.name}' read it) or build the replacement with "
                             f"b.op(..., outputs=[m.output]) and return nothing")
    if isinstance(kept, gs.Tensor) and any(kept is t for n in m.nodes for t in n.inputs):
        return kept
    bound = m.name_of(kept)
    if bound is not None and m.tensor(bound) is not None:
        how = f"m[{bound!r}] is its value: return m.tensor({bound!r}) to read the same tensor"
    elif kept is m.output:
        how = "that is the output that goes: return the tensor it equals (m.tensor(name))"
    else:
        how = ("return a tensor the match reads (m.tensor(name) of a var or const), or build new values with "
               "b.op(..., outputs=[m.output]) and return nothing")
    raise RuleUsageError(f"rewrite() returned {_describe(kept)}, not a tensor the match reads; {how}")


def _describe(value) -> str:
    if isinstance(value, gs.Tensor):
        return f"tensor '{value.name}'"
    return f"a {type(value).__name__}" if not isinstance(value, (bool, int, float, str)) else repr(value)
