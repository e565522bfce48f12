"""Two nodes of which the second undoes the first: the readers of the second read the first one's input.

* ``Cast(Cast(x, B), A) = x`` for ``x`` of type ``A`` when every value of ``A`` is a value of ``B``
  (``WIDENS`` below): the first Cast is then exact and the second returns the value it was given.
  float16 -> float32 -> float16 and int32 -> int64 -> int32 are exact; float32 -> float16 -> float32 is
  not (it rounds to float16: declined), and neither is int64 -> int32 -> int64 (exact only for values
  that fit in int32, which a graph does not state: declined). Integers go through a float exactly while
  they fit its significand (int8 / uint8 in float16 and bfloat16, 16-bit ones in float32, 32-bit ones in
  float64); bool through any numeric type (0 and 1, and nonzero is true). Types outside the table
  (float8, int4, strings) are left alone.
* ``Unsqueeze(Squeeze(x, a), a) = x``: the Squeeze removes dims of size 1 at ``a`` (it fails on any
  other input) and the Unsqueeze puts them back at the same places; both count ``a`` in ``x``'s rank.
  A Squeeze without axes removes every dim of size 1: only with every dim of ``x`` static.
* ``Squeeze(Unsqueeze(x, a), a) = x``: both count ``a`` in the rank of the unsqueezed tensor. A Squeeze
  without axes: only when ``x`` has static dims and none of size 1.

The first node goes too when nothing else reads it; else only the second goes (one node less either
way). Transpose pairs: ``merge-transposes``.
"""
from __future__ import annotations

from onnx import TensorProto as T

from ...graph import GraphContext, is_onnx_op
from ...rule import Pass
from ..ops.known import axes_of, body_would_copy, dims_of, elem_type, is_static, normalized, own_nodes, type_name

_INTS = {T.INT8, T.INT16, T.INT32, T.INT64, T.UINT8, T.UINT16, T.UINT32, T.UINT64}
#: type -> the types that hold each of its values exactly
WIDENS = {
    T.BOOL: _INTS | {T.FLOAT16, T.BFLOAT16, T.FLOAT, T.DOUBLE},
    T.INT8: {T.INT16, T.INT32, T.INT64, T.FLOAT16, T.BFLOAT16, T.FLOAT, T.DOUBLE},
    T.UINT8: {T.INT16, T.INT32, T.INT64, T.UINT16, T.UINT32, T.UINT64, T.FLOAT16, T.BFLOAT16, T.FLOAT, T.DOUBLE},
    T.INT16: {T.INT32, T.INT64, T.FLOAT, T.DOUBLE},
    T.UINT16: {T.INT32, T.INT64, T.UINT32, T.UINT64, T.FLOAT, T.DOUBLE},
    T.INT32: {T.INT64, T.DOUBLE},
    T.UINT32: {T.INT64, T.UINT64, T.DOUBLE},
    T.FLOAT16: {T.FLOAT, T.DOUBLE},
    T.BFLOAT16: {T.FLOAT, T.DOUBLE},
    T.FLOAT: {T.DOUBLE},
}


def _casts(ctx, first, second) -> bool | str:
    a, b, c = elem_type(first.inputs[0], ctx), first.attrs.get("to"), second.attrs.get("to")
    if a is None:
        return "not proven to cancel: the first Cast's input type is unknown"
    if c != a:
        return False
    if b == a or b in WIDENS.get(a, ()):
        return True
    return f"{type_name(a)} -> {type_name(b)} -> {type_name(a)} is not exact: {type_name(b)} does not hold every {type_name(a)}"


def _squeeze_then_unsqueeze(ctx, first, second) -> bool | str:
    (known_a, a), (known_b, b) = axes_of(ctx, first), axes_of(ctx, second)
    if not (known_a and known_b) or b is None:
        return False
    dims = dims_of(first.inputs[0])
    rank = None if dims is None else len(dims)
    if a is None:  # every dim of size 1
        if dims is None or not all(is_static(d) for d in dims):
            return "not proven to cancel: a Squeeze without axes on dims that are not all static"
        a = [i for i, d in enumerate(dims) if d == 1]
    na, nb = normalized(a, rank), normalized(b, rank)
    if na is None or nb is None:
        return "not proven to cancel: negative axes and the input's rank is unknown"
    return na == nb


def _unsqueeze_then_squeeze(ctx, first, second) -> bool | str:
    (known_a, a), (known_b, b) = axes_of(ctx, first), axes_of(ctx, second)
    if not (known_a and known_b) or a is None:
        return False
    dims = dims_of(first.inputs[0])
    if b is None:  # every dim of size 1: the inserted ones, and x's own
        if dims is None or not all(is_static(d) for d in dims):
            return "not proven to cancel: a Squeeze without axes after x of dims not all static"
        return all(d != 1 for d in dims)
    rank = None if dims is None else len(dims) + len(a)
    if rank is None and dims_of(first.outputs[0]) is not None:
        rank = len(dims_of(first.outputs[0]))
    na, nb = normalized(a, rank), normalized(b, rank)
    if na is None or nb is None:
        return "not proven to cancel: negative axes and the input's rank is unknown"
    return na == nb


#: (first op, second op) -> when they cancel (module doc)
PAIRS = {("Cast", "Cast"): _casts, ("Squeeze", "Unsqueeze"): _squeeze_then_unsqueeze,
         ("Unsqueeze", "Squeeze"): _unsqueeze_then_squeeze}


class RemoveInversePairs(Pass):
    """Cast round trips through a type that holds every value, Squeeze / Unsqueeze on the same axes: readers of the
    second node read the first one's input."""
    name = "remove-inverse-pairs"
    priority = 1  # with remove-no-ops, before the region collapse

    def run(self, ctx: GraphContext) -> None:
        own = own_nodes(ctx)
        for second in ctx.nodes("Cast", "Squeeze", "Unsqueeze"):
            if not second.inputs:
                continue
            first = ctx.producer(second.inputs[0])
            check = PAIRS.get((first.op, second.op)) if first is not None and is_onnx_op(first) else None
            if check is None or id(first) not in own or not first.inputs or ctx.is_absent(first.inputs[0]):
                continue  # (a first node of the outer graph is that graph's to remove)
            verdict = check(ctx, first, second)
            if isinstance(verdict, str):
                ctx.decline(second, verdict)
                continue
            if not verdict:
                continue
            x, y = first.inputs[0], second.outputs[0]
            copy = body_would_copy(own, x, y)
            if copy is not None:
                ctx.decline(second, copy)
                continue
            region = [first, second] if ctx.is_private(first.outputs[0]) else [second]
            ctx.bypass(region, y, x, at=second)
