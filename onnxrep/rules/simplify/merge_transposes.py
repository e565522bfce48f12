"""A Transpose of a Transpose is one Transpose, or none.

``Transpose(Transpose(x, p), q) = Transpose(x, r)`` with ``r[j] = p[q[j]]``: axis ``j`` of the result
is axis ``q[j]`` of the middle tensor, which is axis ``p[q[j]]`` of ``x``. When ``r`` is the identity
(``q`` is ``p``'s inverse: an NHWC <-> NCHW round trip, as jax2onnx and tf2onnx leave them between
layers) the pair is ``x`` itself, and the readers of the second read ``x``. A Transpose without
``perm`` reverses the axes (its rank from the other's ``perm``, or from the known shape).

The pair becomes one Transpose only when nothing else reads the middle tensor (else the node count
would not drop; declined); an inverse pair always loses its second node, and its first too when
nothing else reads it.
"""
from __future__ import annotations

from ...graph import Builder, GraphContext, is_onnx_op
from ...rule import Pass
from ..ops.known import body_would_copy, dims_of, own_nodes


def _perm(node, rank: int | None) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    return None if rank is None else list(range(rank))[::-1]


def composed(p: list[int], q: list[int]) -> list[int]:
    """The one permutation of ``Transpose(Transpose(x, p), q)``."""
    return [p[k] for k in q]


class MergeTransposes(Pass):
    """Transpose(Transpose(x, p), q) = Transpose(x, p[q]); x itself when p[q] is the identity."""
    name = "merge-transposes"
    priority = 2  # before sink-transposes-below-sum (6) and the region collapse (10)

    def run(self, ctx: GraphContext) -> None:
        own = own_nodes(ctx)
        for second in ctx.nodes("Transpose"):
            first = ctx.producer(second.inputs[0]) if second.inputs else None
            if first is None or first.op != "Transpose" or not is_onnx_op(first) or not first.inputs \
                    or id(first) not in own:  # a first node of the outer graph is that graph's to remove
                continue
            x, y = first.inputs[0], second.outputs[0]
            dims = dims_of(x)
            rank = next((len(p) for p in (first.attrs.get("perm"), second.attrs.get("perm")) if p is not None),
                        None if dims is None else len(dims))
            p, q = _perm(first, rank), _perm(second, rank)
            if p is None or q is None:
                ctx.decline(second, "two Transposes without perm (reversals) and the rank is unknown")
                continue
            r = composed(p, q)
            private = ctx.is_private(first.outputs[0])
            if r == list(range(len(r))):
                copy = body_would_copy(own, x, y)
                if copy is not None:
                    ctx.decline(second, copy)
                    continue
                ctx.bypass([first, second] if private else [second], y, x, at=second)
            elif not private:
                ctx.decline(second, f"the first Transpose's output '{first.outputs[0].name}' is read elsewhere "
                                    f"too: one Transpose for both would not remove a node")
            else:
                b = Builder(ctx, second.name or "transpose")
                b.op("Transpose", [x], outputs=[y], attrs={"perm": r})
                ctx.replace([first, second], b.nodes, at=second)
