"""Nodes whose output is their first input, element for element: the node goes, its readers read the input.

Each check below states when its op is the identity ``y = x`` (exact, in any precision, for every input
the model accepts), and returns ``True`` (a no-op: removed), ``False`` (it changes something: kept,
nothing to say) or the reason it may be one but is not proven (kept and declined, ``--explain``):

* ``Identity(x) = x``.
* ``Dropout(x) = x`` at inference: ``training_mode`` absent or a constant false (the ratio is then
  ignored); its mask output, when present, must be read by nothing.
* ``Cast(x, to=T) = x`` when ``x`` already has element type ``T`` (known types only); ``CastLike`` alike.
* ``Reshape(x, s) = x`` when ``s`` gives ``x`` its own shape: ``Shape(x)`` itself, or a constant whose
  every entry is ``0`` (copies the dim; not with ``allowzero``), the dim's static value, or one ``-1``
  (then the element count forces the remaining dim), and ``x``'s rank is ``len(s)``.
* ``Expand(x, s) = x`` when broadcasting ``x`` to ``s`` changes no dim: ``s`` is ``Shape(x)``, or no
  longer than ``x``'s rank and each entry ``1`` or the dim's static value.
* ``Transpose(x, perm) = x`` for ``perm = (0, 1, ..., r-1)`` (no ``perm`` reverses: rank 0 or 1 only).
* ``Slice(x, starts, ends, axes, steps) = x`` when on every axis it names the step is 1, the start 0
  (or ``<= -dim`` for a static dim) and the end at least the dim (static) or INT64_MAX (any dim: ends
  are clamped to the dim). An end from INT32_MAX up on a dynamic dim is declined: no dim is proven
  below it.
* ``Concat(x) = x`` (one input).
* ``Pad(x, pads) = x`` for all-zero pads, in every mode.
* ``Flatten(x, axis=1) = x`` for a rank-2 ``x``.

A graph output keeps its producer (declined: the model's interface); so does a node whose removal
would make a body read an initializer of the graph directly (the export would copy it into the body).
"""
from __future__ import annotations

import numpy as np

from ...graph import GraphContext
from ...pattern import attr_value
from ...rule import Pass
from ..ops.known import body_would_copy, dims_of, elem_type, is_static, own_nodes

INT64_MAX = np.iinfo(np.int64).max
INT32_MAX = np.iinfo(np.int32).max


def _is_shape_of(ctx: GraphContext, s, x) -> bool:
    """``s`` is ``Shape(x)``, whole (no start / end)."""
    p = ctx.producer(s)
    return (p is not None and p.op == "Shape" and p.inputs and p.inputs[0] is x
            and p.attrs.get("start", 0) == 0 and p.attrs.get("end") is None)


def _identity(ctx, node) -> bool | str:
    return True


def _dropout(ctx, node) -> bool | str:
    if len(node.outputs) > 1 and (node.outputs[1].outputs or ctx.is_graph_output(node.outputs[1])):
        return f"its mask '{node.outputs[1].name}' is read (the Dropout stays to compute it)"
    if len(node.inputs) > 2 and not ctx.is_absent(node.inputs[2]):
        training = ctx.constant(node.inputs[2])
        if training is None:
            return "training_mode is not a constant (it may drop elements)"
        if bool(np.asarray(training).reshape(-1)[0]):
            return "training_mode is true: it drops elements"
    return True


def _cast(ctx, node) -> bool | str:
    have = elem_type(node.inputs[0], ctx)
    if node.op == "CastLike":
        want = elem_type(node.inputs[1], ctx)
    else:
        want = node.attrs.get("to")
    if have is None or want is None:
        return "not proven a no-op: the input's element type is unknown"
    return have == want


def _target_shape(ctx, node) -> tuple[list[int], list] | bool | str:
    """A Reshape's / Expand's constant target and its input's dims; else the verdict already known: True
    (the target is ``Shape(x)``), False (a computed target: nothing proven) or why the dims are unknown."""
    x, s = node.inputs[0], node.inputs[1]
    if _is_shape_of(ctx, s, x):
        return True
    target = ctx.constant(s)
    if target is None:
        return False
    dims = dims_of(x)
    if dims is None:
        return "not proven a no-op: the input's shape is unknown"
    return [int(v) for v in np.asarray(target).reshape(-1)], dims


def _reshape(ctx, node) -> bool | str:
    found = _target_shape(ctx, node)
    if not isinstance(found, tuple):
        return found
    target, dims = found
    if len(dims) != len(target):
        return False
    allowzero = attr_value(node, "allowzero", ctx.opset) or 0
    inferred = 0
    for d, t in zip(dims, target):
        if (t == 0 and not allowzero) or (is_static(d) and t == d):
            continue  # a 0 copies the dim
        if t == -1:
            inferred += 1  # the element count fixes it once every other dim is kept
        elif is_static(d):
            return False
        else:
            return f"not proven a no-op: target dim {t} against the dynamic dim '{d}'"
    return inferred <= 1


def _expand(ctx, node) -> bool | str:
    found = _target_shape(ctx, node)
    if not isinstance(found, tuple):
        return found
    target, dims = found
    if len(target) > len(dims):
        return False  # adds leading dims
    for d, t in zip(dims[len(dims) - len(target):], target):
        if t == 1 or (is_static(d) and t == d):
            continue
        if is_static(d):
            return False
        return f"not proven a no-op: target dim {t} against the dynamic dim '{d}' (it may broadcast a 1)"
    return True


def _transpose(ctx, node) -> bool | str:
    perm = node.attrs.get("perm")
    if perm is None:
        dims = dims_of(node.inputs[0])
        if dims is None:
            return "not proven a no-op: no perm (the reversal) and the input's rank is unknown"
        return len(dims) <= 1
    return list(perm) == list(range(len(perm)))


def _slice(ctx, node) -> bool | str:
    x = node.inputs[0]
    args = []
    for t in node.inputs[1:5]:
        value = None if ctx.is_absent(t) else ctx.constant(t)
        if value is None and not ctx.is_absent(t):
            return False  # computed bounds
        args.append(value)
    starts, ends, axes, steps = args + [None] * (4 - len(args))
    if starts is None or ends is None:
        return False
    starts, ends = np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1)
    steps = np.ones_like(starts) if steps is None else np.asarray(steps).reshape(-1)
    if np.any(steps != 1) or np.any(starts > 0):
        return False
    dims = dims_of(x)
    if axes is None:
        axes = np.arange(len(starts))
    axes = np.asarray(axes).reshape(-1)
    if np.any(axes < 0) and dims is None:
        return "not proven a no-op: negative axes and the input's rank is unknown"
    for a, start, end in zip(axes, starts, ends):
        d = None if dims is None else dims[int(a) % len(dims)]
        if is_static(d):
            if start < 0 and start > -d or end < d:
                return False
            continue
        if start != 0 or end < INT32_MAX:
            return False  # a real slice, most likely: nothing to say
        if end < INT64_MAX:
            return f"not proven a no-op: end {end} on the dynamic dim '{d}' (only INT64_MAX is past every dim)"
    return True


def _concat(ctx, node) -> bool | str:
    return len(node.inputs) == 1


def _pad(ctx, node) -> bool | str:
    if len(node.inputs) < 2 or ctx.is_absent(node.inputs[1]):
        return False
    pads = ctx.constant(node.inputs[1])
    return pads is not None and not np.any(np.asarray(pads) != 0)


def _flatten(ctx, node) -> bool | str:
    dims = dims_of(node.inputs[0])
    return dims is not None and len(dims) == 2 and attr_value(node, "axis", ctx.opset) in (1, -1)


#: op type -> its check (module doc); every one keeps input 0
CHECKS = {"Identity": _identity, "Dropout": _dropout, "Cast": _cast, "CastLike": _cast, "Reshape": _reshape,
          "Expand": _expand, "Transpose": _transpose, "Slice": _slice, "Concat": _concat, "Pad": _pad,
          "Flatten": _flatten}


class RemoveNoOps(Pass):
    """Nodes that compute their own input (Identity, inference Dropout, no-op Cast / Reshape / Expand / Transpose /
    Slice / Concat / Pad / Flatten) go: their readers read the input."""
    name = "remove-no-ops"
    priority = 1  # after fold-constants (shapes, pads and Cast targets are constants), before the region collapse

    def run(self, ctx: GraphContext) -> None:
        own = own_nodes(ctx)
        for node in ctx.nodes(*CHECKS):
            if not node.inputs or ctx.is_absent(node.inputs[0]):
                continue
            verdict = CHECKS[node.op](ctx, node)
            if isinstance(verdict, str):
                ctx.decline(node, verdict)
            elif verdict:
                copy = body_would_copy(own, node.inputs[0], node.outputs[0])
                if copy is not None:
                    ctx.decline(node, copy)
                    continue
                ctx.remove(node)  # declined for a graph output, a read mask, or types / shapes that differ
