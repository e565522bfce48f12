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

An exception in a rule stops the optimization with a ``RuleError`` naming the rule and the node.
"""
from __future__ import annotations

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

    def rewrite(self, m: Match, b: Builder) -> None:
        """Describe the replacement of ``m.nodes`` with ``b.op`` / ``b.const``.

        The replacement must produce ``m.output`` (pass ``outputs=[m.output]``). Raise
        ``NotRepresentable("why")`` to decline late.
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
                self.rewrite(m, b)
            except NotRepresentable as exc:
                ctx.decline(node, str(exc), kind="rewrite")
                continue
            if not any(t is m.output for p in b.nodes for t in p.outputs):
                raise RuleUsageError(f"rewrite() does not produce the matched output '{m.output.name}': pass "
                                     f"outputs=[m.output] to the b.op(...) that computes it")
            ctx.replace(m.nodes, b.nodes, at=node)

    def near_misses(self, ctx: GraphContext) -> None:
        for node, _ in self._matches(ctx, strict=True):
            ctx.decline(node, f"matched, but the rule supports opsets {self.opset_range()} "
                              f"(the model has {ctx.opset})", kind="opset")
