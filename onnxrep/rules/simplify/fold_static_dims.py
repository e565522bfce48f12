"""Fold the dims of a tensor that ONNX shape inference finds static, even when other dims are dynamic.

Exports compute sizes at run time: ``x.view(b, c, h * w)`` becomes ``Shape(x) -> Gather(i) -> Unsqueeze ->
Concat -> Reshape`` for every dim, static or not (YOLO11n with a dynamic batch: 16 Shape, 16 Gather,
20 Unsqueeze). ``fold-constants`` folds only nodes whose inputs are all constants, and ``Shape`` only of a
constant; this rule folds what the *dims* fix:

* ``Shape(x)`` (with its ``start`` / ``end``) and ``Size(x)`` when every dim they read is static;
* ``Gather(Shape(x), i)`` and ``Slice(Shape(x), a, b, ...)`` with constant indices that select static dims
  only, while other dims of ``x`` (a dynamic batch) stay dynamic: the selection is evaluated on the
  positions ``0 .. r-1`` with ``onnx.reference`` (negative indices, clamping and steps as ONNX has them),
  and the dims at the positions it picks are the result;
* with each of those, the nodes downstream that the folded value and constants alone compute (the
  ``Unsqueeze`` / ``Add`` / ``Div`` of the size arithmetic), evaluated once: one fold. A node that also
  reads a dynamic value (a ``Concat`` with the batch) is where the fold stops; its static inputs become
  constants and the dynamic one stays.

**Why it is exact.** A static dim is one ONNX shape inference derives from the model's declared inputs
with nothing pinned (``graph/static_shapes.py``: a weightless skeleton of the graph as it stands, no
declared ``value_info`` or output shapes, data propagation on, Loop / Scan bodies not read). Such a dim
has that size for every input the model accepts (onnxruntime refuses inputs against a static declared
dim), so ``Shape`` returns it on every run; a dynamic or data-dependent dim (``NonZero``, a symbolic
batch) is never read, and the nodes that use it stay. Inference runs again each sweep, on the graph the
folds left (a folded ``x.chunk`` Slice lets it see the sizes behind it).

**Parameters.** A fold adds the values it leaves for nodes outside it and frees the stored constants
only its nodes read; over the run its additions, in elements and in bytes, may not exceed what its folds
freed (``rules/ops/budget.py``, the budget of ``fold-constants``, a balance of this rule's own), else it
is declined with what it would add. The
downstream nodes are part of the fold for that reason: ``Gather(Shape(x), 1)`` of ``x.chunk(2, 1)``
shares its index with the Slices' axes, and on its own would add one element; with the ``Add`` /
``Div`` / ``Mul`` after it, it frees more than it adds. ``Expand(a, Shape(b))`` alone would add the rank
of ``b``, and is declined unless earlier folds freed that much.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import GraphContext, is_onnx_op
from ...graph.convert import subgraphs
from ...graph.evaluate import evaluate
from ...graph.static_shapes import Inferred, static_dims
from ...rule import Pass
from ..fold_constants import MAX_ELEMENTS, NEVER
from ..ops.budget import charge

#: nodes in one fold at most (a seed and what it alone makes computable downstream)
MAX_FOLD_NODES = 64
_INFERRED = "inferred dims"


class FoldStaticDims(Pass):
    name = "fold-static-dims"
    priority = 0

    def run(self, ctx: GraphContext) -> None:
        inferred = self._inferred(ctx)
        if not inferred:
            return
        for node in ctx.nodes("Shape", "Size"):
            x = node.inputs[0] if node.inputs else None
            if x is None or ctx.constant_info(x) is not None:
                continue  # a constant's shape is fold-constants' (no dims to infer)
            dims = inferred.dims(x)
            if dims is None:
                continue
            if node.op == "Size":
                if all(isinstance(d, int) for d in dims):
                    self._fold(ctx, node, np.asarray(int(np.prod(dims, dtype=np.int64)), dtype=np.int64))
                continue
            read = list(range(len(dims)))[node.attrs.get("start", 0):node.attrs.get("end", None)]
            shape = [dims[p] for p in read]
            if all(isinstance(d, int) for d in shape):
                self._fold(ctx, node, np.asarray(shape, dtype=np.int64))
                continue
            out = node.outputs[0]
            for reader in ctx.consumers(out):
                if not ctx.is_live(reader):
                    continue
                positions = _selection(ctx, reader, out, len(shape))
                if positions is None:
                    continue
                picked = [shape[p] for p in positions.ravel()]
                dynamic = sorted({read[p] for p in positions.ravel() if not isinstance(shape[p], int)})
                if dynamic:
                    names = ", ".join(f"{d} ({dims[d]})" if _named(dims[d]) else str(d) for d in dynamic)
                    ctx.decline(reader, f"selects dynamic dim(s) {names} of '{x.name}'")
                    continue
                last = not ctx.is_graph_output(out) and all(c is reader for c in out.outputs)
                self._fold(ctx, reader, np.asarray(picked, dtype=np.int64).reshape(positions.shape),
                           [node] if last else [])  # the last reader takes the Shape with it

    @staticmethod
    def _inferred(ctx: GraphContext) -> Inferred | None:
        """Dims by inference on the graph as it is at the start of this sweep (computed in the main graph's
        run, which comes first, and read in the bodies')."""
        memory = ctx.record.memory
        if ctx.main:
            graphs = [ctx.graph] + subgraphs(ctx.graph)
            if not any(n.op in ("Shape", "Size") and is_onnx_op(n) for g in graphs for n in g.nodes):
                memory[_INFERRED] = Inferred()
                return None
            memory[_INFERRED] = static_dims(ctx.graph, ctx.opset, ctx.overridable)
            if memory[_INFERRED].error:
                ctx.decline("(shape inference)", f"ONNX shape inference failed: {memory[_INFERRED].error}")
        return memory.get(_INFERRED)

    def _fold(self, ctx: GraphContext, seed: gs.Node, value: np.ndarray, upstream: list[gs.Node] = ()) -> None:
        """Fold ``seed`` (whose output is ``value``), the nodes that it and constants alone compute, and
        ``upstream`` (the Shape that only ``seed`` reads)."""
        if any(ctx.is_graph_output(t) for t in seed.outputs):
            return  # the interface keeps its producer
        group, values = _grow(ctx, seed, value)
        group += [n for n in upstream if n not in group]
        members = {id(n) for n in group}
        frontier = [t for n in group for t in n.outputs
                    if any(id(c) not in members for c in t.outputs)]
        if not charge(ctx, seed, [values[id(t)] for t in frontier], group):
            return
        for t in frontier:
            if not ctx.substitute(t, ctx.make_constant(t.name + "_folded", values[id(t)])):
                return
        ctx.replace(group, [], at=seed)


def _named(dim) -> bool:
    """A symbol the model gave (``batch``), not one inference made up (``unk__3``)."""
    return isinstance(dim, str) and not dim.startswith("unk__")


def _selection(ctx: GraphContext, reader: gs.Node, shape: gs.Tensor, rank: int) -> np.ndarray | None:
    """The positions of ``shape`` (a Shape output of ``rank`` elements) that ``reader`` picks, when it is a
    Gather or Slice of it with constant arguments; ``None`` otherwise."""
    if reader.op not in ("Gather", "Slice") or not is_onnx_op(reader) or not reader.inputs:
        return None
    if reader.inputs[0] is not shape or any(t is shape for t in reader.inputs[1:]) or len(reader.outputs) != 1:
        return None
    args = [None if ctx.is_absent(t) else ctx.constant(t) for t in reader.inputs[1:]]
    if any(a is None and not ctx.is_absent(t) for a, t in zip(args, reader.inputs[1:])):
        return None
    try:
        positions = evaluate(reader, [np.arange(rank, dtype=np.int64)] + args, ctx.opset)[0]
    except Exception:  # noqa: BLE001  (indices out of range, an attribute the reference refuses)
        return None
    return np.asarray(positions, dtype=np.int64)


def _grow(ctx: GraphContext, seed: gs.Node, value: np.ndarray) -> tuple[list[gs.Node], dict[int, np.ndarray]]:
    """``seed`` and the nodes downstream whose inputs are the fold's values or constants, with their values."""
    group, values = [seed], {id(seed.outputs[0]): value}
    members, failed = {id(seed)}, set()
    grew = True
    while grew and len(group) < MAX_FOLD_NODES:
        grew = False
        for t in [t for n in group for t in n.outputs]:
            for c in list(t.outputs):
                if id(c) in members or id(c) in failed or len(group) >= MAX_FOLD_NODES:
                    continue
                inputs = _inputs(ctx, c, values)
                if inputs is None:
                    continue  # another input is not known yet (or never)
                results = _evaluate(ctx, c, inputs)
                if results is None:
                    failed.add(id(c))
                    continue
                group.append(c)
                members.add(id(c))
                values.update((id(o), r) for o, r in zip(c.outputs, results))
                grew = True
    _absorb_producers(ctx, group, members, values)
    return group, values


def _absorb_producers(ctx: GraphContext, group: list[gs.Node], members: set[int], values: dict) -> None:
    """Add the producers of computed constants (small nodes on constants, ``ctx.constant``) that only the
    fold reads: they go with it, and so do the stored constants they read (counted as freed)."""
    grew = True
    while grew and len(group) < MAX_FOLD_NODES:
        grew = False
        for node in list(group):
            for t in node.inputs:
                p = None if ctx.is_absent(t) or id(t) in values or isinstance(t, gs.Constant) else ctx.producer(t)
                if (p is None or id(p) in members or p.op == "Constant" or not is_onnx_op(p)
                        or any(isinstance(v, gs.Graph) for v in p.attrs.values()) or ctx.constant_info(t) is None):
                    continue
                if any(ctx.is_graph_output(o) or any(id(c) not in members for c in o.outputs) for o in p.outputs):
                    continue
                group.append(p)
                members.add(id(p))
                grew = True


def _inputs(ctx: GraphContext, node: gs.Node, values: dict[int, np.ndarray]) -> list | None:
    if (node.op in NEVER or not is_onnx_op(node) or any(isinstance(v, gs.Graph) for v in node.attrs.values())
            or any(ctx.is_graph_output(t) for t in node.outputs)):
        return None
    found, size = [], 0
    for t in node.inputs:
        if ctx.is_absent(t):
            found.append(None)
            continue
        if id(t) in values:
            v = values[id(t)]
        else:
            info = ctx.constant_info(t)
            if info is None or int(np.prod(info[0])) > MAX_ELEMENTS:
                return None
            v = ctx.constant(t)
        size += int(v.size)
        found.append(v)
    return found if size <= MAX_ELEMENTS else None


def _evaluate(ctx: GraphContext, node: gs.Node, inputs: list) -> list[np.ndarray] | None:
    """The node's outputs, or ``None`` when the reference cannot run it or they are larger than its inputs
    (``ConstantOfShape``, ``Expand`` of a fold: the rules read such a tensor where it is)."""
    try:
        results = evaluate(node, inputs, ctx.opset)
    except Exception:  # noqa: BLE001
        return None
    if sum(r.size for r in results) > sum(int(v.size) for v in inputs if v is not None):
        return None
    return results
