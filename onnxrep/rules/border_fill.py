"""Exported border fills (DBB's BNAndPadLayer) rewritten to one exact ``pad(y, p, v)``.

DBB pads the output ``y`` of a 1x1 conv + BN with ``p`` pixels whose value is the per-channel
``v = BN(0)``. In PyTorch that is ``F.pad`` then four in-place writes; exporters emit a Pad and
then dozens to hundreds of data-movement nodes (Slice / ScatterND / Transpose / Expand / Where,
with shape arithmetic on ``Shape(...)``). This rule finds, after each constant Pad, the
single-exit region ``Q = f(y)`` made of such nodes and proves ``f(y) = pad(y, p, v)``:

* every node of the region only *moves* data (copies, transposes, scatters, selects with a
  data-independent condition); arithmetic only ever touches shapes and constants, so each
  element of ``Q`` is either a fixed element of ``y`` or a fixed constant;
* the spatial size is static, so that selection pattern is fixed; it is read off exactly by
  running the graph in onnxruntime on two random inputs: ``Q`` must equal ``y`` bit for bit
  inside, and a per-channel constant ``v`` (the same in both runs) on the border.

The region is then replaced by ``pad(y, p, v)`` written without arithmetic, so that it is exact in
any precision: ``Pad(y, p, v)`` when ``v`` is one value, else ``Where(inside, Pad(y, p, 0), v)``.
The linear-region rule reads either as one Pad by ``v`` and merges it into the pointwise map that
computes ``y`` when ``v`` is that map's value at zero (DBB); otherwise it stays as written. (The
earlier form ``Add(Pad(Sub(y, v), p, 0), v)`` computed ``y - v + v`` wherever it was not merged: in
float16 up to half an ulp of ``|v|`` per element.) Regions that cannot be proven are left alone
with the reason in ``--explain``.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..algebra import NotRepresentable
from ..graph import Builder, GraphContext, is_onnx_op
from ..graph.io import first_line
from ..rule import Pass
from .ops.linear import bn_form, constant_affine, conv_form, inside_mask, spatial_pads

#: ops whose output elements are copies of input elements or of constants (scatters only
#: without a ``reduction``: ``max``/``min``/``add``/``mul`` compute on the data)
MOVES = {"Slice", "ScatterND", "ScatterElements", "Concat", "Transpose", "Expand", "Reshape", "Unsqueeze",
         "Squeeze", "Identity", "Where", "Pad", "Gather", "GatherElements", "Flatten", "Tile"}
#: inputs of MOVES ops that carry data (the others are indices, shapes, conditions)
DATA_INPUTS = {"Slice": (0,), "ScatterND": (0, 2), "ScatterElements": (0, 2), "Concat": None, "Transpose": (0,),
               "Expand": (0,), "Reshape": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Identity": (0,),
               "Where": (1, 2), "Pad": (0,), "Gather": (0,), "GatherElements": (0,), "Flatten": (0,), "Tile": (0,)}
MAX_REGION = 4096


def _data_positions(node: gs.Node) -> range | tuple:
    pos = DATA_INPUTS.get(node.op)
    return range(len(node.inputs)) if pos is None else pos


def data_free(ctx: GraphContext, tensor: gs.Tensor, memo: dict) -> bool:
    """True when ``tensor`` depends on the graph inputs through their shapes only."""
    stack = [tensor]
    while stack:
        t = stack[-1]
        if id(t) in memo:
            stack.pop()
            continue
        if ctx.is_absent(t) or ctx.constant(t) is not None:
            memo[id(t)] = True
            stack.pop()
            continue
        node = ctx.producer(t)
        if node is None or not is_onnx_op(node) or any(
                isinstance(v, gs.Graph) for v in node.attrs.values()):
            memo[id(t)] = False
            stack.pop()
            continue
        if node.op == "Shape":
            memo[id(t)] = True
            stack.pop()
            continue
        pending = [x for x in node.inputs if id(x) not in memo]
        if pending:
            stack.extend(pending)
            continue
        memo[id(t)] = all(memo[id(x)] for x in node.inputs)
        stack.pop()
    return memo[id(tensor)]


def moves_data(node: gs.Node) -> bool:
    """True for ops whose output elements are copies of input elements (scatters without reduction)."""
    if node.op not in MOVES:
        return False
    reduction = node.attrs.get("reduction", "none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    return reduction == "none"


def border_region(ctx: GraphContext, pad: gs.Node, memo: dict | None = None,
                  top_level: set[int] | None = None) -> tuple[list[gs.Node], gs.Tensor]:
    """The data-movement region after ``pad`` and its single exit tensor, or ``NotRepresentable``.

    ``top_level``: ids of the graph's own nodes; readers inside subgraphs count as outside.
    """
    if top_level is None:
        top_level = {id(n) for n in ctx.graph.nodes}
    start = pad.outputs[0]
    data = {id(start)}  # tensors carrying data derived from the padded tensor
    region: list[gs.Node] = []
    in_region: set[int] = set()
    frontier = [start]
    while frontier:
        t = frontier.pop()
        for node in t.outputs:
            if id(node) in in_region or id(node) not in top_level:
                continue
            if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
                continue
            data_in = [i for i, x in enumerate(node.inputs) if id(x) in data]
            if node.op == "Shape":
                pass  # reads only the shape
            elif moves_data(node) and all(i in _data_positions(node) for i in data_in):
                pass
            elif not data_in:
                pass  # shape arithmetic on something already in the region
            else:
                continue  # a consumer that computes on the data: outside the region
            region.append(node)
            in_region.add(id(node))
            if len(region) > MAX_REGION:
                raise NotRepresentable("border region too large", code="border")
            for out in node.outputs:
                if data_in and node.op != "Shape":
                    data.add(id(out))
                frontier.append(out)
    if not region:
        raise NotRepresentable("no border writes after the Pad", code="border")
    # inputs from outside: constants, or non-data tensors (shapes); never other float data
    for node in region:
        for i, x in enumerate(node.inputs):
            if id(x) in data or ctx.is_absent(x) or ctx.constant(x) is not None:
                continue
            if x.inputs and id(x.inputs[0]) in in_region:
                continue
            if not data_free(ctx, x, memo if memo is not None else {}):
                raise NotRepresentable(f"border region reads another tensor '{x.name}'", code="border")
    exits = []
    for node in [pad] + region:
        for out in node.outputs:
            outside = [c for c in out.outputs if id(c) not in in_region]
            if outside or ctx.is_graph_output(out):
                exits.append(out)
    if len(exits) != 1 or id(exits[0]) not in data:
        raise NotRepresentable(f"border region has {len(exits)} exits", code="border")
    return region, exits[0]


class CanonicalizeBorderFill(Pass):
    name = "canonicalize-border-fill"
    priority = 5
    probes = 2
    whole_model = True  # the proof runs the model in onnxruntime

    def run(self, ctx: GraphContext) -> None:
        candidates = []
        unproven = ctx.memory.setdefault("unproven", {})  # id(pad) -> (pad, reason)
        memo: dict = {}
        top_level = {id(n) for n in ctx.graph.nodes}
        for pad in ctx.nodes("Pad"):
            try:
                pads, value = spatial_pads(ctx, pad)
            except NotRepresentable:
                continue
            y = pad.inputs[0]
            shape = y.shape
            try:
                region, exit_ = border_region(ctx, pad, memo, top_level)
            except NotRepresentable as exc:
                if "no border writes" not in str(exc):
                    ctx.decline(pad, str(exc))
                continue
            if len(region) < 2:
                continue  # Pad + one node: the exact form (1 or 2 nodes) would hardly be smaller
            if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape[1:]):
                ctx.decline(pad, "border fill after Pad: spatial size is dynamic, "
                                            "its semantics cannot be proven")
                continue
            if id(pad) in unproven:  # the evaluation is the costly part: do it once per Pad
                ctx.decline(pad, unproven[id(pad)][1])
                continue
            candidates.append((pad, pads, y, region, exit_))
        if not candidates:
            return
        proven = self._proven(ctx, candidates)
        for pad, pads, y, region, exit_ in candidates:
            if id(pad) not in proven:
                continue
            v = proven[id(pad)]
            added = fill_params(y, pads, v) - freed_params(ctx, [pad] + region)
            if added > 0 and not may_merge(ctx, y):  # asked each sweep: y's producer may become a conv
                ctx.decline(pad, f"border fill left as it is: its exact form would add {added} parameters, and "
                                 f"it cannot be merged (only after a private Conv, BatchNormalization or "
                                 f"constant affine)")
                continue
            b = Builder(ctx, pad.name or "border")
            write_fill(b, y, pads, v, exit_)
            ctx.replace([pad] + region, b.nodes, at=pad)

    def _proven(self, ctx: GraphContext, candidates) -> dict[int, np.ndarray]:
        """``id(pad) -> v`` (in ``y``'s dtype) for the candidates proven equal to ``pad(y, p, v)``; the
        others are declined. The evaluation is the costly part: done once per Pad."""
        proven = ctx.memory.setdefault("proven", {})  # id(pad) -> (pad, v)
        unproven = ctx.memory["unproven"]
        todo = [c for c in candidates if id(c[0]) not in proven]
        observed = []
        if todo:
            try:
                observed = self._probe(ctx, [(c[2], c[4]) for c in todo])
            except Exception as exc:  # the graph could not be run: nothing proven
                for c in todo:
                    ctx.decline(c[0], f"border fill could not be evaluated: {first_line(exc)}")
        for (pad, pads, *_), runs in zip(todo, observed):
            try:
                proven[id(pad)] = (pad, border_values(runs, pads).astype(runs[0][0].dtype))
            except NotRepresentable as exc:
                unproven[id(pad)] = (pad, str(exc))
                ctx.decline(pad, str(exc))
        return {id(c[0]): proven[id(c[0])][1] for c in candidates if id(c[0]) in proven}

    def _probe(self, ctx: GraphContext, pairs):
        from ..verification.inputs import make_inputs
        from ..verification.sessions import run
        g = ctx.graph
        saved = list(g.outputs)
        wanted = {}
        for y, q in pairs:
            wanted[y.name], wanted[q.name] = y, q
        try:
            g.outputs = list(wanted.values())
            for t in g.outputs:
                if t.dtype is None:
                    t.dtype = np.float32
            model = gs.export_onnx(g, do_type_check=False)
        finally:
            g.outputs = saved
        live = [n for n in model.graph.node if len(n.output)]  # nodes detached earlier in this sweep
        del model.graph.node[:]
        model.graph.node.extend(live)
        runs = []
        for seed in range(self.probes):
            out = run(model, make_inputs(model, seed=1234 + seed))
            runs.append(out)
        return [[(r[y.name], r[q.name]) for r in runs] for y, q in pairs]


def write_fill(b: Builder, y: gs.Tensor, pads, v: np.ndarray, out: gs.Tensor) -> None:
    """``out = pad(y, pads, v)`` (``v`` per channel, in ``y``'s dtype) with no arithmetic, so exact
    in any precision: every element is a copy of ``y`` or of ``v``.

    ``Pad(y, pads, v)`` when ``v`` is one value; else ``Where(inside, Pad(y, pads, 0), v)``, whose
    mask is ``True`` exactly where ``Pad`` put ``y`` (``ops.linear.border_write`` reads it back).
    """
    n = len(y.shape) - 2
    full_pads = b.const("pads", np.asarray([0, 0] + list(pads[:n]) + [0, 0] + list(pads[n:]), np.int64))
    if np.all(v == v[0]):
        b.op("Pad", [y, full_pads, b.const("value", np.asarray(v[0]))], outputs=[out], attrs={"mode": "constant"})
        return
    spatial = tuple(y.shape[2 + i] + pads[i] + pads[n + i] for i in range(n))
    (padded,) = b.op("Pad", [y, full_pads], attrs={"mode": "constant"})
    padded.dtype, padded.shape = y.dtype, list(y.shape[:2]) + list(spatial)
    inside = b.const("inside", inside_mask(spatial, pads).reshape((1, 1) + spatial))
    b.op("Where", [inside, padded, b.const("border_value", v.reshape((1, -1) + (1,) * n))], outputs=[out])


def fill_params(y: gs.Tensor, pads, v: np.ndarray) -> int:
    """Parameters ``write_fill`` adds: the pads and ``v``, and for a per-channel ``v`` the mask."""
    if np.all(v == v[0]):
        return len(y.shape) * 2 + 1
    n = len(pads) // 2
    return len(y.shape) * 2 + v.size + int(np.prod([y.shape[2 + i] + pads[i] + pads[n + i] for i in range(n)]))


def freed_params(ctx: GraphContext, nodes: list[gs.Node]) -> int:
    """Parameters (initializers, Constant nodes) that only ``nodes`` read: gone once they are replaced."""
    ids = {id(n) for n in nodes}
    freed, seen = 0, set()
    for node in nodes:
        for t in node.inputs:
            info = ctx.stored_constant_info(t)
            if info is None or id(t) in seen or ctx.is_graph_output(t):
                continue
            seen.add(id(t))
            if all(id(r) in ids for r in t.outputs):
                freed += int(np.prod(info[0], dtype=np.int64))
    return freed


def may_merge(ctx: GraphContext, y: gs.Tensor) -> bool:
    """Whether ``pad(y, p, v)`` can become part of a conv at all: ``pad(F(x), p, F(0)) = F'(pad0(x, p))``
    needs ``y = F(x)`` the private output of a linear op with constant parameters (a Conv, a
    BatchNormalization, an affine by constants); the region collapse decides whether it does."""
    node = ctx.producer(y)
    if node is None or not is_onnx_op(node) or not ctx.is_private(y):
        return False
    try:
        if node.op == "Conv":
            conv_form(ctx, node)
        elif node.op == "BatchNormalization":
            bn_form(ctx, node)
        else:
            return constant_affine(ctx, node) is not None
    except NotRepresentable:
        return False
    return True


def border_values(runs, pads) -> np.ndarray:
    """Per-channel border value ``v`` if every run has ``q == pad(y, pads, v)`` exactly."""
    n = len(pads) // 2
    values = None
    for y, q in runs:
        expect_shape = y.shape[:2] + tuple(y.shape[2 + i] + pads[i] + pads[n + i] for i in range(n))
        if q.shape != expect_shape:
            raise NotRepresentable(f"border region output shape {q.shape} is not the padded {expect_shape}",
                                   code="border")
        inner = (slice(None), slice(None)) + tuple(slice(pads[i], pads[i] + y.shape[2 + i]) for i in range(n))
        if not np.array_equal(q[inner], y):
            raise NotRepresentable("border region changes the inside of the padded tensor", code="border")
        mask = np.ones(q.shape[2:], bool)
        mask[inner[2:]] = False
        border = np.moveaxis(q, 1, 0)[:, :, mask] if mask.any() else None
        if border is None:
            raise NotRepresentable("Pad adds no border", code="border")
        v = border.reshape(border.shape[0], -1)
        if not np.all(v == v[:, :1]):
            raise NotRepresentable("border values are not one constant per channel", code="padding")
        v = v[:, 0]
        if values is not None and not np.array_equal(values, v):
            raise NotRepresentable("border values depend on the data", code="padding")
        values = v
    return values
