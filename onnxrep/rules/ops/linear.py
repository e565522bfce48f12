"""Read ONNX nodes as algebra forms: a Conv as a ``ConvForm``, BN / Mul / Add / Sub / Div / Neg
by constants as an ``AffineForm``. Graph-facing but free of rewrite logic."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...algebra import AffineForm, ConvForm, NotRepresentable, SizeDependentPads, bn_affine, channel_constant
from ...algebra.geometry import same_pads
from ...graph import GraphContext, is_onnx_op


def conv_form(ctx: GraphContext, node: gs.Node) -> ConvForm:
    """The Conv node as a ``ConvForm`` (weights kept in the model's dtype, no copy)."""
    if len(node.inputs) < 2:
        raise NotRepresentable("Conv without a weight input")
    w = ctx.constant(node.inputs[1])
    if w is None:
        raise NotRepresentable("conv weight is not a constant", code="not-constant")
    b = None
    if len(node.inputs) > 2 and not ctx.is_absent(node.inputs[2]):
        b = ctx.constant(node.inputs[2])
        if b is None:
            raise NotRepresentable("conv bias is not a constant", code="not-constant")
    a = node.attrs
    n = w.ndim - 2
    kernel = tuple(w.shape[2:])
    if "kernel_shape" in a and tuple(a["kernel_shape"]) != kernel:
        raise NotRepresentable("kernel_shape attribute disagrees with the weight")
    strides = tuple(a.get("strides", (1,) * n))
    dilations = tuple(a.get("dilations", (1,) * n))
    auto_pad = a.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("NOTSET", ""):
        pads = tuple(a.get("pads", (0,) * (2 * n)))
    elif auto_pad == "VALID":
        pads = (0,) * (2 * n)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = same_auto_pads(node.inputs[0], auto_pad, kernel, strides, dilations)
    else:
        raise NotRepresentable(f"unknown auto_pad {auto_pad!r}")
    return ConvForm.make(w, b, strides, pads, dilations, int(a.get("group", 1)))


def static_spatial(t: gs.Tensor) -> tuple[int | None, ...] | None:
    """The spatial size of ``t`` (axes 2 on) as the graph states it, ``None`` per dynamic axis."""
    shape = t.shape
    if shape is None or len(shape) < 3:
        return None
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape[2:])


def same_auto_pads(x: gs.Tensor, auto_pad: str, kernel, strides, dilations) -> tuple[int, ...] | SizeDependentPads:
    """Explicit ONNX pads of ``auto_pad=SAME_*`` on input ``x``: with stride 1 for any size, with a
    larger stride on the static spatial size the graph states (the pads depend on it); on a
    dynamic size, ``SizeDependentPads`` (the form then only takes an affine after it)."""
    n = len(kernel)
    size = static_spatial(x)
    begins, ends = [], []
    for ax in range(n):
        length = size[ax] if size is not None and ax < len(size) else None
        if length is None:
            if strides[ax] != 1 and dilations[ax] * (kernel[ax] - 1) > 0:
                return SizeDependentPads(auto_pad, n)
            length = 1  # any: with stride 1 the pads are d (k - 1), with one tap 0, whatever the size
        b, e = same_pads(length, kernel[ax], strides[ax], dilations[ax], auto_pad == "SAME_UPPER")
        begins.append(b)
        ends.append(e)
    return tuple(begins + ends)


def bn_form(ctx: GraphContext, node: gs.Node) -> AffineForm:
    """An inference-mode BatchNormalization as ``s x + t`` (channel axis 1)."""
    if node.attrs.get("training_mode", 0):
        raise NotRepresentable("BatchNormalization has training_mode=1 (model exported in training mode?)")
    if len([t for t in node.outputs if t.name]) != 1:
        raise NotRepresentable("BatchNormalization in training mode (it outputs running statistics)")
    params = [ctx.constant(t) for t in node.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        raise NotRepresentable("BatchNormalization parameters are not constants", code="not-constant")
    if any(p.ndim != 1 for p in params):
        raise NotRepresentable("BatchNormalization parameters are not vectors")
    return bn_affine(*params, epsilon=float(node.attrs.get("epsilon", 1e-5)))


def constant_affine(ctx: GraphContext, node: gs.Node) -> tuple[gs.Tensor, AffineForm] | None:
    """``(x, affine)`` for Mul/Add/Sub/Div/Neg of ``x`` by a per-channel or scalar constant.

    ``None`` when the node is not such an op (for example a Mul of two tensors).
    """
    op = node.op
    if op == "Neg" and len(node.inputs) == 1:
        return node.inputs[0], AffineForm(np.float64(-1.0), np.float64(0.0))
    if op not in ("Mul", "Add", "Sub", "Div") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    ca, cb = ctx.constant(a), ctx.constant(b)
    if (ca is None) == (cb is None):
        return None
    x, c, const_first = (b, ca, True) if cb is None else (a, cb, False)
    if not np.issubdtype(c.dtype, np.floating):
        raise NotRepresentable(f"{op} by a non-float constant")
    vec, rank, min_rank = channel_constant(c)
    if x.shape is not None:  # the tensor's rank is known: the constant must broadcast along its channels
        AffineForm(vec, vec, rank, min_rank).check_rank(len(x.shape))
    one, zero = np.ones_like(vec), np.zeros_like(vec)
    if op == "Mul":
        aff = AffineForm(vec, zero, rank, min_rank)
    elif op == "Add":
        aff = AffineForm(one, vec, rank, min_rank)
    elif op == "Sub":
        aff = AffineForm(-one, vec, rank, min_rank) if const_first else AffineForm(one, -vec, rank, min_rank)
    else:  # Div
        if const_first:
            return None
        if np.any(vec == 0):
            raise NotRepresentable("division by a constant containing zeros")
        aff = AffineForm(1.0 / vec, zero, rank, min_rank)
    return x, aff


#: the non-linear ops of gated activations ``x * gate(x)`` (GELU's Erf / Tanh, HardSwish's Clip, SiLU)
GATES = ("Erf", "Tanh", "Clip", "Sigmoid", "HardSigmoid", "Relu")


def activation_scale(ctx: GraphContext, node: gs.Node) -> str | None:
    """The activation whose constant scale ``node`` is, if it is one (``None`` otherwise).

    Exporters write GELU as ``Mul(x, Add(Erf(Div(x, sqrt 2)), 1))`` then ``Mul(., 0.5)``, and HardSwish
    as ``Mul(x, Clip(x + 3, 0, 6))`` then ``Div(., 6)``. onnxruntime and TensorRT fuse such a chain
    into one kernel; folding its last ``* 0.5`` into the next conv is exact and saves a node, but the
    fusion is then lost and the model runs slower (FastViT-T8: +10% latency, 17 GELUs unfused). So a
    Mul / Div by a scalar of a product ``x * gate(x)`` (gate: one of ``GATES`` a few ops from ``x``)
    is left to the activation.
    """
    if node.op not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    data = [t for t in node.inputs if ctx.constant(t) is None]
    consts = [ctx.constant(t) for t in node.inputs if t not in data]
    if len(data) != 1 or consts[0].size != 1:  # a scalar (GELU's 0.5, HardSwish's 6), not a layer scale
        return None
    product = ctx.producer(data[0])
    if product is None or product.op != "Mul" or len(product.inputs) != 2:
        return None
    a, b = product.inputs
    for x, gated in ((a, b), (b, a)):
        t = gated
        for _ in range(4):  # gate(x) is a short chain: Div -> Erf -> Add, Add -> Clip (-> Div)
            p = ctx.producer(t)
            if p is None or not is_onnx_op(p):
                break
            if p.op in GATES and _reads(ctx, p, x):
                return f"{p.op}-gated activation"
            data = [i for i in p.inputs if ctx.constant(i) is None]
            if len(data) != 1:
                break
            t = data[0]
    return None


def _reads(ctx: GraphContext, node: gs.Node, x: gs.Tensor, depth: int = 3) -> bool:
    """``node`` reads ``x``, directly or through up to ``depth`` single-input ops (``x / sqrt 2``, ``x + 3``)."""
    t = next((i for i in node.inputs if ctx.constant(i) is None), None)
    for _ in range(depth + 1):
        if t is None:
            return False
        if t is x:
            return True
        p = ctx.producer(t)
        if p is None:
            return False
        t = next((i for i in p.inputs if ctx.constant(i) is None), None)
    return False


INT64_MAX = 2**63 - 1


def _ints(ctx: GraphContext, tensor) -> list[int] | None:
    if ctx.is_absent(tensor):
        return None
    v = ctx.constant(tensor)
    return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]


def spatial_pads(ctx: GraphContext, node: gs.Node) -> tuple[tuple[int, ...], float]:
    """A constant-mode Pad on spatial axes only as ``(ONNX pads over spatial axes, value)``."""
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise NotRepresentable(f"Pad mode {mode!r} is not zero/constant padding")
    if "pads" in node.attrs:  # opset < 11
        raise NotRepresentable("Pad with pads as an attribute (opset < 11)")
    pads = _ints(ctx, node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None:
        raise NotRepresentable("Pad pads are not constant", code="not-constant")
    value = 0.0
    if len(node.inputs) > 2 and not ctx.is_absent(node.inputs[2]):
        v = ctx.constant(node.inputs[2])
        if v is None or v.size != 1:
            raise NotRepresentable("Pad value is not a constant scalar", code="not-constant")
        value = float(np.asarray(v).reshape(()))
    n_axes = len(pads) // 2
    axes = list(range(n_axes))
    if len(node.inputs) > 3 and not ctx.is_absent(node.inputs[3]):
        axes = _ints(ctx, node.inputs[3])
        if axes is None:
            raise NotRepresentable("Pad axes are not constant", code="not-constant")
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else (n_axes if len(axes) == n_axes and
                                                                                  axes == list(range(n_axes)) else None)
    if rank is None:
        raise NotRepresentable("rank of the padded tensor is unknown", code="rank")
    full = [0] * (2 * rank)
    for i, ax in enumerate(axes):
        ax = ax + rank if ax < 0 else ax
        full[ax], full[rank + ax] = pads[i], pads[n_axes + i]
    if full[0] or full[1] or full[rank] or full[rank + 1]:
        raise NotRepresentable("Pad pads the batch or channel axis")
    return tuple(full[2:rank] + full[rank + 2:]), value


def inside_mask(padded: tuple[int, ...], pads) -> np.ndarray:
    """``True`` where ``pad(y, pads)`` of spatial size ``padded`` holds ``y``, ``False`` on its border."""
    n = len(padded)
    inside = np.zeros(padded, bool)
    inside[tuple(slice(pads[i], padded[i] - pads[n + i]) for i in range(n))] = True
    return inside


def border_write(ctx: GraphContext, pad: gs.Node) -> tuple[gs.Node, tuple[int, ...], np.ndarray] | None:
    """``(where, pads, v)`` when ``pad`` is a zero Pad read only by ``where = Where(inside, pad, v)``
    with ``inside`` exactly the unpadded area and ``v`` a scalar or per-channel constant; ``None``
    otherwise.

    Then ``where = pad(y, pads, v)`` exactly, with no arithmetic: every element is a copy of ``y``
    or of ``v`` (the form ``canonicalize-border-fill`` writes for a per-channel border value).
    """
    try:
        pads, value = spatial_pads(ctx, pad)
    except NotRepresentable:
        return None
    out = pad.outputs[0]
    if value != 0 or min(pads) < 0 or not any(pads) or not ctx.is_private(out):
        return None
    where = out.outputs[0]
    if where.op != "Where" or len(where.inputs) != 3 or where.inputs[1] is not out or not is_onnx_op(where):
        return None
    inside, v = ctx.constant(where.inputs[0]), ctx.constant(where.inputs[2])
    shape = out.shape
    n = len(pads) // 2
    if inside is None or v is None or inside.dtype != bool or shape is None or len(shape) != n + 2:
        return None
    spatial = tuple(shape[2:])
    if inside.ndim > n + 2 or any(d != 1 for d in inside.shape[:-n]) or tuple(inside.shape[-n:]) != spatial:
        return None  # a mask that broadcasts the output up, or that the spatial size does not give
    if not np.array_equal(inside.reshape(spatial), inside_mask(spatial, pads)):
        return None
    try:
        vec, rank, min_rank = channel_constant(v)
        AffineForm(vec, vec, rank, min_rank).check_rank(n + 2)
    except NotRepresentable:
        return None
    if vec.ndim and vec.size != shape[1]:
        return None  # not one value per channel of the padded tensor
    return where, pads, vec


def spatial_crop(ctx: GraphContext, node: gs.Node) -> tuple[int, ...]:
    """A Slice with step 1 on spatial axes as negative ONNX pads (a crop)."""
    x = node.inputs[0]
    if x.shape is None:
        raise NotRepresentable("rank of the sliced tensor is unknown", code="rank")
    rank = len(x.shape)
    starts = _ints(ctx, node.inputs[1])
    ends = _ints(ctx, node.inputs[2])
    axes = _ints(ctx, node.inputs[3]) if len(node.inputs) > 3 else list(range(len(starts or [])))
    steps = _ints(ctx, node.inputs[4]) if len(node.inputs) > 4 else None
    if starts is None or ends is None or axes is None:
        raise NotRepresentable("Slice starts/ends/axes are not constant", code="not-constant")
    if steps is not None and any(s != 1 for s in steps):
        raise NotRepresentable("Slice with steps other than 1")
    n = rank - 2
    pads = [0] * (2 * n)
    for start, end, ax in zip(starts, ends, axes):
        ax = ax + rank if ax < 0 else ax
        dim = x.shape[ax]
        if start == 0 and (end >= INT64_MAX // 2 or (isinstance(dim, int) and end >= dim)):
            continue  # the whole axis
        if ax < 2:
            raise NotRepresentable("Slice on the batch or channel axis")
        dim = x.shape[ax]
        if start < 0 and isinstance(dim, int) and start > -(2**31):
            start = max(dim + start, 0)  # counts from the end of a static axis
        if start < 0 or (end < 0 and end < -(2**31)):
            raise NotRepresentable("Slice start counts from the end of a dynamic axis")
        if end >= 0 and end < INT64_MAX // 2:
            if not isinstance(dim, int):
                raise NotRepresentable("Slice end needs the (dynamic) spatial size")
            crop_end = max(dim - end, 0)
        else:
            crop_end = -end if end < 0 else 0
        pads[ax - 2] = -start
        pads[n + ax - 2] = -crop_end
    return tuple(pads)


def avgpool_params(node: gs.Node) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], bool]:
    a = node.attrs
    kernel = tuple(a["kernel_shape"])
    n = len(kernel)
    if a.get("ceil_mode", 0):
        raise NotRepresentable("AveragePool with ceil_mode=1")
    if tuple(a.get("dilations", (1,) * n)) != (1,) * n:
        raise NotRepresentable("AveragePool with dilations")
    auto_pad = a.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    strides = tuple(a.get("strides", (1,) * n))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = same_auto_pads(node.inputs[0], auto_pad, kernel, strides, (1,) * n)
        if isinstance(pads, SizeDependentPads):
            pads.refuse()
    elif auto_pad in ("NOTSET", "", "VALID"):
        pads = tuple(a.get("pads", (0,) * (2 * n))) if auto_pad != "VALID" else (0,) * (2 * n)
    else:
        raise NotRepresentable(f"AveragePool with auto_pad={auto_pad}")
    return kernel, strides, pads, bool(a.get("count_include_pad", 0))


def has_bias(ctx: GraphContext, node: gs.Node) -> bool:
    """A Conv / Gemm with its third (bias) input; a MatMul has none."""
    return node.op != "MatMul" and len(node.inputs) > 2 and not ctx.is_absent(node.inputs[2])


def gemm_attrs(node) -> tuple[dict, float, float, bool]:
    """``(attrs, alpha, beta, transB)`` of a Gemm, or a MatMul read as ``Gemm(alpha=1, beta=1)``."""
    attrs = dict(node.attrs) if node.op == "Gemm" else {}
    return attrs, float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0)), bool(attrs.get("transB", 0))
