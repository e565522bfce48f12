"""Replace an If whose condition is a constant by the nodes of the branch it takes.

``If(c)`` runs ``then_branch`` when its one-element condition ``c`` is true and ``else_branch`` otherwise;
with ``c`` a constant (an initializer, a Constant node, or small nodes on constants: what the folds leave
of ``if x.shape[2] > 16`` once the dim is static) every run takes the same branch, so the If's outputs
are that branch's outputs, computed by that branch's nodes. The branch's nodes move into the graph that
holds the If (the main graph, a Loop body, another branch), the other branch goes.

**Why it is exact.** A branch reads only its own tensors and, by name, those of the scopes around it
(ONNX If branches have no inputs); the graph that holds the If is one of those scopes, so every tensor the
moved nodes read is defined where they now are, and they compute what they computed inside the branch.
What the move takes care of:

* *outputs*: the node that made the branch's k-th output now writes the If's k-th output (its name, its
  readers, a graph output keeps its producer); an output the branch passes through (an outer tensor, a
  constant, the same tensor twice) becomes an ``Identity``, removed again when its output is not a graph
  output;
* *names*: the branch's own tensors (node outputs, initializers only it reads) take fresh names: another
  branch or body elsewhere may use the same ones, which would then shadow the moved tensors;
* *nested bodies* (an If or Loop inside the branch) move with their node, reads of the branch's tensors
  included; an If in a Loop body is inlined into that body;
* *the other branch* is detached, nested nodes included, so the outer tensors it read lose that reader.

Nodes: the report counts the main graph's nodes, so inlining a branch of n nodes there counts ``1 - n``
removed, while the model (every graph) loses the other branch.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import Builder, GraphContext
from ...rule import Pass


class InlineConstantIf(Pass):
    name = "inline-constant-if"
    priority = 1  # after fold-constants (0), which makes the conditions constants

    def run(self, ctx: GraphContext) -> None:
        for node in ctx.nodes("If"):
            if not node.inputs:
                continue
            cond = ctx.constant(node.inputs[0])
            if cond is None:
                continue
            cond = np.asarray(cond)
            if cond.size != 1:
                ctx.decline(node, f"its condition is a constant of {cond.size} elements, not one")
                continue
            taken = bool(cond.reshape(-1)[0])
            branch = node.attrs.get("then_branch" if taken else "else_branch")
            other = node.attrs.get("else_branch" if taken else "then_branch")
            if not isinstance(branch, gs.Graph):
                continue
            if branch.inputs or len(branch.outputs) != len(node.outputs):
                ctx.decline(node, f"the {'then' if taken else 'else'} branch has {len(branch.inputs)} input(s) and "
                                  f"{len(branch.outputs)} output(s) for the If's {len(node.outputs)}")
                continue
            _inline(ctx, node, branch, other)


def _inline(ctx: GraphContext, node: gs.Node, branch: gs.Graph, other: gs.Graph | None) -> None:
    moved = [n for n in branch.nodes if n.outputs]
    made_here = {id(t) for n in moved for t in n.outputs}
    results = list(node.outputs)
    renamed: dict[int, tuple[gs.Tensor, gs.Tensor]] = {}  # id(branch output) -> (it, the If's output)
    passed = []  # (tensor, If output) written by an Identity
    for inner, outer in zip(branch.outputs, results):
        if id(inner) in made_here and id(inner) not in renamed:
            renamed[id(inner)] = (inner, outer)
        else:
            passed.append((renamed[id(inner)][1] if id(inner) in renamed else inner, outer))

    def mapped(t: gs.Tensor) -> gs.Tensor:
        return renamed[id(t)][1] if id(t) in renamed else t

    b = Builder(ctx, node.name or "If")
    for n in moved:
        b.op(n.op, [mapped(t) for t in n.inputs], outputs=[mapped(t) for t in n.outputs], attrs=n.attrs,
             name=n.name or n.op, domain=n.domain or "")
    for source, target in passed:
        b.op("Identity", [source], outputs=[target])
    made = ctx.replace([node], b.nodes, at=node)
    if made is None:
        return
    for n in moved:  # their copies took their place
        n.inputs.clear()
        n.outputs.clear()
    for inner, outer in renamed.values():  # read inside a nested body of the branch
        for reader in list(inner.outputs):
            for i, t in enumerate(reader.inputs):
                if t is inner:
                    reader.inputs[i] = outer
    if isinstance(other, gs.Graph):
        _detach(other)
    _rename_own(ctx, made, {id(t) for t in results})
    for identity in made[len(made) - len(passed):]:
        if not ctx.is_graph_output(identity.outputs[0]):
            ctx.remove(identity)


def _detach(graph: gs.Graph) -> None:
    """Disconnect every node of ``graph`` and of the bodies inside it."""
    for n in graph.nodes:
        for value in n.attrs.values():
            if isinstance(value, gs.Graph):
                _detach(value)
        n.inputs.clear()
        n.outputs.clear()


def _nested_ids(nodes: list[gs.Node]) -> set[int]:
    found, stack = set(), [v for n in nodes for v in n.attrs.values() if isinstance(v, gs.Graph)]
    while stack:
        g = stack.pop()
        for n in g.nodes:
            found.add(id(n))
            stack.extend(v for v in n.attrs.values() if isinstance(v, gs.Graph))
    return found


def _rename_own(ctx: GraphContext, made: list[gs.Node], keep: set[int]) -> None:
    """Fresh names for the branch's tensors now in the host graph: the moved nodes' outputs (not the If's)
    and the constants only they (and the bodies inside them) read."""
    inside = {id(n) for n in made} | _nested_ids(made)
    for n in made:
        for t in n.outputs:
            if id(t) not in keep and t.name:
                t.name = ctx.unique_name(t.name)
        for t in n.inputs:
            if (isinstance(t, gs.Constant) and t.name not in ctx.overridable and id(t) not in keep
                    and all(id(c) in inside for c in t.outputs)):
                keep.add(id(t))  # once
                t.name = ctx.unique_name(t.name)
