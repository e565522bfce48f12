"""Hypothesis strategy for random training-form ONNX graphs (the "Reliability" fuzzer).

``training_graphs()`` draws a ``FuzzCase``: an ``onnx.ModelProto`` that passes
``onnx.checker.check_model(full_check=True)`` and runs in onnxruntime, plus what the property
needs to know about it (marked regions, nodes that must survive, expected declines, the If
condition). ``check_property(case)`` optimizes it and checks the property (see the end of this
file); ``tests/test_fuzz.py`` (quick profile) and ``benchmarks/fuzz_long.py`` (long run) call it.
``docs/fuzzing.md`` lists everything the generator draws; in short:

* a chain of 1-4 blocks on ``x`` (N, C<=8, H, W<=12) with Relu / another activation / custom-domain
  QuickGelu / nothing between them;
* a block is a sum (chain or tree of Add, some Sub) of 1-4 branches reading one tensor: Conv
  (1xK, Kx1, even sizes, strides, dilations, symmetric / asymmetric pads, groups, depthwise,
  shared weights, Slice / negative-Pad crops) with pre- and post-affines (BN, per-channel or
  scalar Mul / Add / Sub / Div, computed or spatially broadcast constants), misaligned convs,
  ``x``, ``BN(x)``, ``x * c + b``, AvgPool (count_include_pad 1 / 0) or MaxPool, 1x1 -> KxK with the
  border done by the conv, a zero Pad, DBB's ``Add(Pad(Sub(y, v)), v)`` or ``Where`` border writes
  (right or wrong ``v``), KxK -> 1x1; or a ConvTranspose + BN; then optionally a Gemm / MatMul + BN
  head;
* exact-but-costlier blocks (a depthwise KxK -> 1x1 expansion, a 1x1 reduction -> KxK, a depthwise
  KxK beside a dense 1x1, stride-2 variants): marked, their two convs must stay;
* marked pairs / chains that are not one conv (their Conv count must not change), fp16 blocks whose
  merged weights overflow (must be declined), a branch tensor that is also an output, an ``If``
  with a block in each body, dynamic batch / spatial dims, float32 / float16, opsets 11..newest.

Weights come from a numpy generator seeded by one drawn integer, so hypothesis shrinks the
structure and the examples stay fast to draw.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import make_model, newest_ort_opset

MIN_OPSET = 11
MAX_C = 8
MAX_HW = 12
FP16_MAX = 65504.0
DTYPES = {"float32": np.float32, "float16": np.float16}
ACTIVATIONS = ["Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Clip", "QuickGelu"]


@dataclass
class Region:
    """The nodes between tensor ``start`` and tensor ``end`` (both non-linear boundaries).

    ``expect="keep"``: not one conv in truth, so the Conv count must not change (a property).
    ``expect="merge"``: exactly one conv in truth; a float32 region left with more than one Conv
    is a *missed merge*, counted by the long run but not a property violation."""
    start: str
    end: str
    why: str
    expect: str = "keep"


@dataclass
class FuzzCase:
    model: onnx.ModelProto
    dtype: str
    opset: int
    seed: int
    blocks: list[str] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    keepers: list[str] = field(default_factory=list)          # node names that must survive unchanged
    expect_declines: list[str] = field(default_factory=list)  # substrings of decline reasons
    cond: str | None = None                                   # If condition input, if any
    features: set[str] = field(default_factory=set)

    def __repr__(self) -> str:
        head = f"FuzzCase(opset={self.opset}, dtype={self.dtype}, seed={self.seed}"
        if self.cond:
            head += ", If"
        marks = "; ".join(f"{r.expect} {r.why}: {r.start}->{r.end}" for r in self.regions)
        return (head + ", blocks=[" + " | ".join(self.blocks) + "]" + (f", regions=[{marks}]" if marks else "")
                + f", nodes={len(self.model.graph.node)})")


# --------------------------------------------------------------------------- alignment
@dataclass(frozen=True)
class Axis:
    """One spatial axis of a block: span ``K`` taps of dilation ``d``, begin/end pads of the
    full-span kernel ``P``/``E``, stride ``s``. Every aligned branch is a sub-kernel of the span."""
    K: int
    d: int
    P: int
    E: int
    s: int

    @property
    def slack(self) -> int:
        return self.P + self.E - self.d * (self.K - 1)

    def out(self, n: int) -> int:
        return (n + self.slack - 1) // self.s + 1

    def place(self, k: int, o: int) -> tuple[int, int]:
        """(begin pad, end pad) of a ``k``-tap kernel at tap offset ``o`` inside the span."""
        pb = self.P - self.d * o
        return pb, self.slack + self.d * (k - 1) - pb

    def offsets(self, k: int) -> list[int]:
        return [o for o in range(self.K - k + 1) if min(self.place(k, o)) >= 0]

    def identity_ok(self) -> bool:
        return self.s == 1 and self.slack == 0 and self.P % self.d == 0 and self.P // self.d < self.K

    def pool_places(self) -> list[tuple[int, int, int, int]]:
        """(k, o, pb, pe) for an AveragePool (no dilation, ORT wants pads < kernel)."""
        out = []
        for k in range(1, self.K + 1):
            if k > 1 and self.d != 1:
                continue
            for o in range(self.K - k + 1):
                pb, pe = self.place(k, o)
                if 0 <= pb < k and 0 <= pe < k:
                    out.append((k, o, pb, pe))
        return out


# --------------------------------------------------------------------------- generator
class _Gen:
    def __init__(self, draw, seed: int, dtype: str, opset: int, batch, spatial_dynamic: bool):
        self.draw = draw
        self.rng = np.random.default_rng(seed)
        self.dtype_name = dtype
        self.dtype = np.dtype(DTYPES[dtype])
        self.elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.opset = opset
        self.batch = batch
        self.spatial_dynamic = spatial_dynamic
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count: Counter = Counter()
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self.weight_pool: dict[tuple, str] = {}
        self.inner: list[str] = []        # branch tensors (candidates for extra outputs)
        self.keepers: list[str] = []
        self.regions: list[Region] = []
        self.expect_declines: list[str] = []
        self.features: set[str] = set()
        self.overridable: list[onnx.ValueInfoProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self.uses_ms = False
        self.in_body = False
        self.block_convs: list[tuple] = []
        self.values: dict[str, np.ndarray] = {}   # every constant made by ``const``
        self.forced_outputs: list[str] = []
        self.scalar_pool: dict[tuple, str] = {}

    # ------------------------------------------------------------ draws
    def coin(self, p: float) -> bool:
        """True with probability ``p``; shrinks to False."""
        return self.draw(st.integers(0, 99)) >= 100 - round(100 * p)

    def pick(self, options):
        return self.draw(st.sampled_from(list(options)))

    def upto(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    # ------------------------------------------------------------ values
    def randn(self, *shape, scale=1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(self.dtype)

    def uniform(self, lo, hi, *shape) -> np.ndarray:
        return self.rng.uniform(lo, hi, size=shape).astype(self.dtype)

    def signs(self, *shape) -> np.ndarray:
        return self.rng.choice(np.array([-1.0, 1.0]), size=shape).astype(self.dtype)

    # ------------------------------------------------------------ graph
    def fresh(self, hint: str) -> str:
        self.count[hint] += 1
        return f"{hint}{self.count[hint]}"

    def const(self, value: np.ndarray, hint: str = "c", node_ok: bool = True, overridable_ok: bool = False) -> str:
        """An initializer (or, sometimes, a Constant node) holding ``value``."""
        name = self.fresh(hint)
        value = np.asarray(value)
        self.values[name] = value
        if node_ok and self.opset >= 12 and value.dtype == np.float32 and value.size == 1 and self.coin(0.1):
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh("Constant_"),
                                               value_float=float(value.reshape(()))))
            if value.ndim:  # value_float makes a 0-d tensor: keep the declared rank
                self.nodes[-1].output[0] = name + "_0d"
                self.nodes.append(helper.make_node("Reshape", [name + "_0d", self.ints(list(value.shape), "shape")],
                                                   [name], name=self.fresh("Reshape_")))
            self.features.add("value_float")
            return name
        if node_ok and self.coin(0.08):
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh("Constant_"),
                                               value=numpy_helper.from_array(value, name + "_v")))
            self.features.add("constant-node")
            return name
        self.inits.append(numpy_helper.from_array(value, name))
        if overridable_ok and not self.in_body and self.coin(0.015):
            self.overridable.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)))
            self.features.add("initializer-as-input")
        return name

    def ints(self, values, hint="i", plain: bool = False) -> str:
        """An int64 vector: an initializer, or (exporter style, for fold-constants) a Concat of
        Unsqueezed Constant scalars (Unsqueeze axes: attribute before opset 13, input from 13)."""
        name = self.fresh(hint)
        values = [int(v) for v in values]
        if values and not plain and self.coin(0.1):
            parts = []
            for v in values:
                sc = self.fresh(hint + "_s")
                self.nodes.append(helper.make_node("Constant", [], [sc], name=self.fresh("Constant_"),
                                                   value=numpy_helper.from_array(np.array(v, np.int64), sc + "_v")))
                if self.opset >= 13:
                    u = self.node("Unsqueeze", [sc, self.ints([0], "uaxes", plain=True)], hint + "_u")
                else:
                    u = self.node("Unsqueeze", [sc], hint + "_u", axes=[0])
                parts.append(u)
            self.nodes.append(helper.make_node("Concat", parts, [name], name=self.fresh("Concat_"), axis=0))
            self.features.add("constant-subgraph")
            return name
        self.inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def node(self, op: str, inputs, hint: str | None = None, domain: str | None = None, shape=None, **attrs) -> str:
        out = self.fresh(hint or op.lower())
        n = helper.make_node(op, list(inputs), [out], name=self.fresh(op + "_"), **attrs)
        if domain:
            n.domain = domain
        self.nodes.append(n)
        if shape is not None:
            self.shapes[out] = shape
        return out

    def last_node_name(self) -> str:
        return self.nodes[-1].name

    # ------------------------------------------------------------ ops
    def conv(self, x: str, cin: int, cout: int, k, pads_b, pads_e, strides=(1, 1), dil=(1, 1), group=1,
             bias=True, weight: str | None = None, wscale: float = 1.0, shape=None) -> str:
        wshape = (cout, cin // group) + tuple(k)
        if weight is None:
            key = ("w",) + wshape
            if key in self.weight_pool and self.coin(0.15):
                weight = self.weight_pool[key]
                self.features.add("shared-weight")
            else:
                fan_in = cin // group * k[0] * k[1]
                weight = self.const(self.randn(*wshape, scale=wscale / math.sqrt(fan_in)), "W")
                if not self.in_body:  # a body's initializers are not visible outside it
                    self.weight_pool.setdefault(key, weight)
        inputs = [x, weight]
        if bias:
            inputs.append(self.const(self.randn(cout, scale=0.5), "B"))
        elif self.coin(0.1):
            inputs.append("")  # an explicitly omitted bias
        elif self.coin(0.08):  # exported without constant folding: Expand(CastLike(0, W), [cout])
            zero = self.fresh("zero")
            self.nodes.append(helper.make_node("Constant", [], [zero], name=self.fresh("Constant_"),
                                               value=numpy_helper.from_array(np.array(0.0, np.float32), zero + "_v")))
            if self.opset >= 15:
                z = self.node("CastLike", [zero, weight], "zcast")
            else:
                z = self.node("Cast", [zero], "zcast", to=self.elem)
            inputs.append(self.node("Expand", [z, self.ints([cout], "bshape")], "zbias"))
            self.features.add("expand-zero-bias")
        attrs = {}
        pads = list(pads_b) + list(pads_e)
        same = [dd * (kk - 1) for dd, kk in zip(dil, k)]
        upper = [t // 2 for t in same] + [t - t // 2 for t in same]
        lower = [t - t // 2 for t in same] + [t // 2 for t in same]
        auto = None
        if tuple(strides) == (1, 1) and tuple(dil) == (1, 1) and self.coin(0.15):  # ORT: no dilations with SAME_*
            if pads == upper:
                auto = "SAME_UPPER"
            elif pads == lower:
                auto = "SAME_LOWER"
            elif not any(pads):
                auto = "VALID"
        if auto:
            attrs["auto_pad"] = auto
            self.features.add("auto_pad")
        elif any(pads) or self.coin(0.5):
            attrs["pads"] = pads
        if self.coin(0.8):
            attrs["kernel_shape"] = list(k)
        if tuple(strides) != (1, 1) or self.coin(0.3):
            attrs["strides"] = list(strides)
        if tuple(dil) != (1, 1) or self.coin(0.3):
            attrs["dilations"] = list(dil)
        if group != 1 or self.coin(0.3):
            attrs["group"] = group
        return self.node("Conv", inputs, "conv", shape=shape, **attrs)

    def bn(self, x: str, c: int, big: float | None = None, overridable_ok: bool = True) -> str:
        if big is None:
            gamma = self.uniform(0.5, 1.5, c) * self.signs(c)
        else:
            gamma = np.full(c, big, self.dtype) * self.signs(c)
        params = [gamma, self.randn(c, scale=0.5), self.randn(c, scale=0.5), self.uniform(0.5, 2.0, c)]
        if self.dtype == np.float16 and self.opset >= 15 and self.coin(0.15):  # BN-15: T1, T2 may differ from T
            first = 0 if self.coin(0.5) else 2
            params = params[:first] + [p.astype(np.float32) for p in params[first:]]
            self.features.add("bn-mixed-dtypes")
        names = [self.const(p, h, overridable_ok=overridable_ok) for p, h in zip(params, ("gamma", "beta", "mean", "var"))]
        attrs = {} if self.coin(0.2) else {"epsilon": float(self.pick([1e-5, 1e-3, 0.1]))}
        if self.coin(0.2):
            attrs["momentum"] = 0.9
        if self.opset >= 14 and self.coin(0.3):
            attrs["training_mode"] = 0
        return self.node("BatchNormalization", [x] + names, "bn", shape=self.shapes[x], **attrs)

    def chan_shape(self, c: int) -> tuple:
        return self.pick([(c, 1, 1), (1, c, 1, 1), (), (1,), (1, 1, 1, 1)])

    def affine_op(self, x: str, c: int, ops=("BN", "Mul", "Add", "Sub", "Div", "Neg"),
                  spatial_ok: bool = True) -> tuple[str, str]:
        """One affine op after ``x``; returns (output, label). With ``spatial_ok`` the constant
        sometimes broadcasts along a spatial axis instead (not per-channel: must not fold as one)."""
        op = self.pick(ops)
        shape = self.shapes[x]
        if op == "BN":
            return self.bn(x, c), "BN"
        if op == "Neg":
            return self.node("Neg", [x], shape=shape), "Neg"
        kind = "c"
        _, h, w = shape
        if spatial_ok and not self.spatial_dynamic and op != "Div" and self.coin(0.05):
            cs = self.pick([(w,), (1, 1, 1, w), (h, 1), (1, 1, h, w), (c, h, w)])
            kind = "sp"
            self.features.add("spatial-constant")
        else:
            cs = self.chan_shape(c)
        size = int(np.prod(cs)) if cs else 1
        if op == "Mul":
            v = self.uniform(0.5, 1.5, size) * self.signs(size)
        elif op == "Div":
            v = self.uniform(0.5, 2.0, size) * self.signs(size)
        else:
            v = self.randn(size, scale=0.5)
        key = (op, tuple(cs))
        if size == 1 and key in self.scalar_pool and self.coin(0.2):  # one scalar constant, several readers
            cname = self.scalar_pool[key]
            self.features.add("shared-scalar")
        elif kind == "c" and cs == (c, 1, 1) and self.coin(0.1):
            cname = self.computed_const(v.reshape(cs), op.lower() + "_c")
        else:
            cname = self.const(v.reshape(cs), op.lower() + "_c", overridable_ok=True)
            if size == 1 and not self.in_body:
                self.scalar_pool.setdefault(key, cname)
        first = op != "Div" and self.coin(0.3)  # c op x (Sub: c - x)
        ins = [cname, x] if first else [x, cname]
        label = f"{op}{kind if size > 1 else 's'}"
        return self.node(op, ins, shape=shape), label

    def computed_const(self, value: np.ndarray, hint: str) -> str:
        """A (C, 1, 1) constant the way exporters write it without constant folding:
        ``Unsqueeze(Unsqueeze(v, -1), -1)`` (axes attribute before opset 13) or ``Reshape(v, [C, 1, 1])``
        of a vector ``v`` (for ``fold-constants``)."""
        vec = self.const(value.reshape(-1), hint + "_vec")
        self.features.add("computed-constant")
        if self.coin(0.5):
            t = self.node("Reshape", [vec, self.ints(list(value.shape), "cshape")], hint + "_r")
        else:
            t = vec
            for _ in range(2):
                if self.opset >= 13:
                    t = self.node("Unsqueeze", [t, self.ints([-1], "uaxes", plain=True)], hint + "_u")
                else:
                    t = self.node("Unsqueeze", [t], hint + "_u", axes=[-1])
        self.values[t] = value
        return t

    def pass_through(self, x: str) -> str:
        shape = self.shapes[x]
        if self.coin(0.5):
            return self.node("Identity", [x], shape=shape)
        if self.opset >= 12 and self.coin(0.5):
            ins = [x, self.const(np.array(0.3, self.dtype), "ratio", node_ok=False)]
            if self.coin(0.5):
                ins.append(self.const(np.array(False), "train", node_ok=False))
            return self.node("Dropout", ins, shape=shape)
        return self.node("Dropout", [x], shape=shape)

    def activation(self, x: str, allow_custom=True) -> str:
        kinds = ACTIVATIONS if allow_custom else ACTIVATIONS[:-1]
        kind = self.pick(kinds)
        shape = self.shapes[x]
        if kind == "Relu":
            y = self.node("Relu", [x], "relu", shape=shape)
        elif kind == "LeakyRelu":
            y = self.node("LeakyRelu", [x], "lrelu", shape=shape, alpha=0.1)
        elif kind == "Sigmoid":
            y = self.node("Sigmoid", [x], "sig", shape=shape)
        elif kind == "HardSigmoid":
            y = self.node("HardSigmoid", [x], "hsig", shape=shape, alpha=0.25, beta=0.4)
        elif kind == "Clip":
            lo = self.const(np.array(-1.5, self.dtype), "clip_lo", node_ok=False)
            hi = self.const(np.array(2.0, self.dtype), "clip_hi", node_ok=False)
            y = self.node("Clip", [x, lo, hi], "clip", shape=shape)
        else:
            self.uses_ms = True
            self.features.add("custom-domain")
            y = self.node("QuickGelu", [x], "qgelu", domain="com.microsoft", shape=shape, alpha=1.25)
            if self.coin(0.5):
                self.value_info.append(self.vi(y))
        self.keepers.append(self.last_node_name())
        return y

    def dims(self, name: str) -> list:
        c, h, w = self.shapes[name]
        if self.spatial_dynamic:
            return [self.batch, c, None, None]
        return [self.batch, c, h, w]

    def vi(self, name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, self.elem, self.dims(name))

    # ------------------------------------------------------------ alignment
    def axis(self, n: int, *, stride_ok=True, identity=False, classic=None) -> Axis:
        if identity:
            d = self.pick([1, 1, 1, 2])
            K = self.pick([1, 3, 2, 5, 4])
            o = (K - 1) // 2 if self.coin(0.7) else self.upto(0, K - 1)
            P = d * o
            return Axis(K, d, P, d * (K - 1) - P, 1)
        s = 2 if stride_ok and n >= 2 and self.coin(0.25) else 1
        d = self.pick([1, 1, 1, 2, 3])
        classic = self.coin(0.6) if classic is None else classic
        if classic:
            K = self.pick([3, 1, 5])
            P = E = d * (K - 1) // 2
        else:
            K = self.upto(1, 5)
            span = d * (K - 1)
            P, E = self.upto(0, span + 1), self.upto(0, span + 1)
        ax = Axis(K, d, P, E, s)
        if n + ax.slack < 1:
            ax = Axis(1, d, 0, 0, s)
        return ax

    def kernel_place(self, ax: Axis, allow_crop: bool, n: int) -> tuple[int, int, int, int]:
        """(k, o, pb, pe) of a branch kernel on ``ax`` (input size ``n``); pads may be negative
        (a crop of the input) if allowed."""
        k = self.pick(range(ax.K, 0, -1)) if self.coin(0.6) else ax.K
        offs = ax.offsets(k)
        crop_o = [o for o in range(ax.K - k + 1) if sum(max(-p, 0) for p in ax.place(k, o)) < n]
        if allow_crop and self.coin(0.12) and crop_o:
            o = self.pick(crop_o)
        elif offs:
            o = offs[len(offs) // 2] if self.coin(0.6) else self.pick(offs)
        else:
            k, o = ax.K, 0
        pb, pe = ax.place(k, o)
        spare = (n - 1 + ax.slack) % ax.s  # end pad the stated size does not need: same output length
        if not self.spatial_dynamic and spare and pe > 0 and self.coin(0.3):
            pe -= min(pe, self.upto(1, spare))  # TensorFlow's 'same' on a stride-2 3x3: (0, 1) beside a 1x1's (0, 0)
            self.features.add("size-aligned")
        return k, o, pb, pe

    # ------------------------------------------------------------ branches
    def conv_branch(self, x: str, cin: int, cout: int, axes, groups, *, post=True, allow_crop=True,
                    share_from=None, pre_ok=True) -> tuple[str, str]:
        c, h, w = self.shapes[x]
        hw = (h, w)
        if share_from is not None:
            k, group, weight = share_from
            places = []
            for i, ax in enumerate(axes):
                offs = ax.offsets(k[i])
                if not offs:
                    share_from = None
                    break
                places.append((k[i],) + ax.place(k[i], self.pick(offs)))
        if share_from is None:
            places = []
            for ax, n in zip(axes, hw):
                kk, _, pb, pe = self.kernel_place(ax, allow_crop and not self.in_body, n)
                places.append((kk, pb, pe))
            group = self.pick(groups)
            weight = None
        k = tuple(p[0] for p in places)
        pb = [p[1] for p in places]
        pe = [p[2] for p in places]
        src = x
        label = f"conv{k[0]}x{k[1]}" + (f"/g{group}" if group > 1 else "")
        if pre_ok and self.coin(0.15):  # RepViT / ImplicitA: BN or a per-channel affine before the conv
            for _ in range(self.upto(1, 2)):
                src, lab = self.affine_op(src, cin, ("BN", "Mul", "Add", "Sub", "Neg"))
                self.inner.append(src)
                label = f"{lab}->" + label
            self.features.add("pre-affine")
        if any(p < 0 for p in pb + pe):  # crop x with a Slice (ACNet)
            crop_b = [max(-p, 0) for p in pb]
            crop_e = [max(-p, 0) for p in pe]
            starts, ends, axes_ = [], [], []
            for i in range(2):
                if crop_b[i] or crop_e[i]:
                    starts.append(crop_b[i])
                    if crop_e[i] == 0:
                        ends.append(self.pick([2**63 - 1, 1 << 30]) if self.spatial_dynamic else
                                    self.pick([2**63 - 1, hw[i]]))
                    elif self.spatial_dynamic or self.coin(0.5):
                        ends.append(-crop_e[i])
                    else:
                        ends.append(hw[i] - crop_e[i])
                    axes_.append(i + 2 if self.coin(0.7) else i - 2)
            cshape = (c, h - crop_b[0] - crop_e[0], w - crop_b[1] - crop_e[1])
            if self.coin(0.25):  # a Pad with negative pads crops too
                src = self._pad(src, [0, 0, -crop_b[0], -crop_b[1], 0, 0, -crop_e[0], -crop_e[1]], cshape)
                self.features.add("negative-pad")
            else:
                # (constant Slice inputs: onnx shape inference infers wrong sizes from computed axes)
                ins = [src, self.ints(starts, "starts", plain=True), self.ints(ends, "ends", plain=True),
                       self.ints(axes_, "axes", plain=True)]
                if self.coin(0.3):
                    ins.append(self.ints([1] * len(axes_), "steps", plain=True))
                src = self.node("Slice", ins, "crop", shape=cshape)
            self.inner.append(src)
            pb = [max(p, 0) for p in pb]
            pe = [max(p, 0) for p in pe]
            label = "crop+" + label
            self.features.add("crop")
        strides = tuple(ax.s for ax in axes)
        dil = tuple(ax.d if (kk > 1 or self.coin(0.5)) else 1 for ax, kk in zip(axes, k))
        out_shape = (cout, axes[0].out(h), axes[1].out(w))
        y = self.conv(src, cin, cout, k, pb, pe, strides, dil, group, bias=self.coin(0.7), weight=weight,
                      shape=out_shape)
        self.block_convs.append((k, group, self.nodes[-1].input[1], cin, cout))
        if post:
            y, more = self.post_ops(y, cout)
            label += more
        return y, label

    def post_ops(self, y: str, c: int, max_ops: int = 3) -> tuple[str, str]:
        label = ""
        for _ in range(self.upto(0, max_ops)):
            self.inner.append(y)
            if self.coin(0.1):
                y = self.pass_through(y)
                label += "+pass"
                continue
            if self.coin(0.03):  # not linear: the branch no longer reads the block input linearly
                y = self.node("Mul", [y, y], "square", shape=self.shapes[y])
                label += "+square"
                self.features.add("square")
                continue
            y, lab = self.affine_op(y, c)
            label += "+" + lab
        return y, label

    def identity_like(self, x: str, kind: str) -> tuple[str, str]:
        c = self.shapes[x][0]
        if kind == "identity":
            return x, "id"
        if kind == "bn":
            y = self.bn(x, c)
            return y, "BN(x)"
        y, lab = self.affine_op(x, c, ("Mul", "Add", "Sub", "Neg", "BN"))
        return y, f"{lab}(x)"

    def misaligned_branch(self, x: str, cin: int, cout: int, axes, groups) -> tuple[str, str]:
        """A conv with the block's stride and output size whose taps are off the block's grid
        (another dilation, or a begin pad off the dilation grid): onnxrep may decline the sum."""
        c, h, w = self.shapes[x]
        k, pb, pe, dil = [], [], [], []
        for ax in axes:
            d = ax.d + 1 if ax.d == 1 or self.coin(0.5) else ax.d
            kk = self.pick([2, 3])
            total = ax.slack + d * (kk - 1)
            if total < 0:
                kk, d, (b, e) = ax.K, ax.d, ax.place(ax.K, 0)
            else:
                b = self.upto(0, total)
                e = total - b
            k.append(kk)
            pb.append(b)
            pe.append(e)
            dil.append(d)
        out_shape = (cout, axes[0].out(h), axes[1].out(w))
        y = self.conv(x, cin, cout, tuple(k), pb, pe, tuple(ax.s for ax in axes), tuple(dil), self.pick(groups),
                      bias=self.coin(0.5), shape=out_shape)
        y, lab = self.post_ops(y, cout, 2)
        return y, f"mis{k[0]}x{k[1]}/d{dil[0]}{dil[1]}" + lab

    def avgpool_branch(self, x: str, axes) -> tuple[str, str]:
        c, h, w = self.shapes[x]
        k, pb, pe = [], [], []
        for ax in axes:
            kk, _, b, e = self.pick(ax.pool_places())
            k.append(kk)
            pb.append(b)
            pe.append(e)
        pads = pb + pe
        cip = 1 if self.coin(0.7) else 0
        attrs = {"kernel_shape": k}
        if any(pads) or self.coin(0.3):
            attrs["pads"] = pads
        if any(ax.s != 1 for ax in axes) or self.coin(0.3):
            attrs["strides"] = [ax.s for ax in axes]
        if cip or self.coin(0.5):
            attrs["count_include_pad"] = cip
        exact = all((n + b + e - kk) % ax.s == 0 for n, b, e, kk, ax in zip((h, w), pb, pe, k, axes))
        if exact and not self.spatial_dynamic and self.coin(0.1):  # ceil_mode that adds no window
            attrs["ceil_mode"] = 1
            self.features.add("avgpool-ceil")
        if self.opset >= 19 and self.coin(0.2):
            attrs["dilations"] = [1, 1]
        op = "MaxPool" if self.coin(0.08) else "AveragePool"
        if op == "MaxPool":
            attrs.pop("count_include_pad", None)
            self.features.add("maxpool")
        y = self.node(op, [x], "pool", shape=(c, axes[0].out(h), axes[1].out(w)), **attrs)
        if op == "MaxPool":
            return y, f"maxpool{k[0]}x{k[1]}"
        label = f"avgpool{k[0]}x{k[1]}" + ("/pad" if any(pads) else "") + f"/cip{cip}"
        if any(pads) and not cip:
            self.features.add("avgpool-cip0-pad")
        if self.coin(0.6):
            self.inner.append(y)
            y = self.bn(y, c)
            label += "+BN"
        return y, label

    def seq_branch(self, x: str, cin: int, cout: int, axes, groups, mode: str | None = None
                   ) -> tuple[str, str, str]:
        """1x1 (+BN/Mul) -> border -> KxK; returns (out, label, status): "merge" (one conv by the
        standard folds), "keep" (not one conv: every border value must stay) or "none" (one conv
        only by folding a border of a single-output axis into the bias)."""
        c, h, w = self.shapes[x]
        first = self.pick(["1x1", "1x1", "1x1", "x", "BN(x)"])  # DBB's 1x1, or the border right on x
        if first == "1x1":
            cm = self.upto(1, MAX_C)
            g1 = self.pick([g for g in _divisors(math.gcd(cin, cm))])
            bias1 = self.coin(0.6)
            y = self.conv(x, cin, cm, (1, 1), (0, 0), (0, 0), group=g1, bias=bias1, shape=(cm, h, w))
            chain = [self.nodes[-1]]
            zero_at_zero = not bias1
            post = self.pick(["none", "BN", "Mul"])
        else:
            cm, y, chain, zero_at_zero = cin, x, [], True
            post = "BN" if first == "BN(x)" else "none"
            self.features.add("seq-border-on-input")
        g2 = self.pick([g for g in _divisors(math.gcd(cm, cout))])
        if post == "BN":
            self.inner.append(y)
            y = self.bn(y, cm)
            chain.append(self.nodes[-1])
            zero_at_zero = False
        elif post == "Mul":
            self.inner.append(y)
            y, _ = self.affine_op(y, cm, ("Mul",), spatial_ok=False)
            chain.append(self.nodes[-1])
        value = self._value_at_zero(chain, cm)
        places = []
        for ax in axes:
            k = self.pick(range(ax.K, 0, -1)) if self.coin(0.5) else ax.K
            offs = ax.offsets(k)
            o = self.pick(offs) if offs else 0
            if not offs:
                k = ax.K
            places.append((k,) + ax.place(k, o))
        k = tuple(p[0] for p in places)
        pb = [p[1] for p in places]
        pe = [p[2] for p in places]
        if mode is None:
            mode = self.pick(["conv_pad", "pad_zero", "dbb", "where", "dbb_wrong", "where_wrong"])
        if mode.startswith("where") and self.spatial_dynamic:
            mode = "dbb" if mode == "where" else "dbb_wrong"
        # a border changes the result position by position only if a padded axis has >= 2 outputs
        def matters(b, e):
            return any((b[i] or e[i]) and (self.spatial_dynamic or ax.out(n) >= 2)
                       for i, (ax, n) in enumerate(zip(axes, (h, w))))
        padded = matters(pb, pe)

        def problem(b, e):
            """A wrong border value padded on ``b``/``e``: not one conv ("keep") if an axis with
            >= 2 outputs is padded; one conv only by folding the border into the bias ("none")
            if only single-output axes are; no problem if nothing is padded."""
            return "keep" if matters(b, e) else "none" if any(b + e) else "merge"

        rank = {"merge": 0, "none": 1, "keep": 2}
        status = "merge"
        nonzero = bool(np.any(value != 0))
        label = f"seq{first}->{k[0]}x{k[1]}[{mode}]"
        self.features.add("seq-" + mode)
        if mode == "conv_pad":
            kp_b, kp_e = pb, pe
            if nonzero:
                status = problem(pb, pe)
        else:
            v = value.astype(self.dtype)
            wrong = mode.endswith("wrong")
            if wrong:
                v = (value + self.pick([0.5, -1.0, 2.0]) * (1 + np.abs(value))).astype(self.dtype)
            # usually the border op pads everything; sometimes the conv pads a part itself
            kp_b, kp_e = [0, 0], [0, 0]
            if padded and self.coin(0.2):
                kp_b = [self.upto(0, p) for p in pb]
                kp_e = [self.upto(0, p) for p in pe]
                if any(kp_b + kp_e):
                    self.features.add("seq-split-pad")
            if not self.in_body and y != x and self.coin(0.15):  # the value that gets a border is an output
                self.forced_outputs.append(y)
                self.features.add("seq-border-input-is-output")
            ob, oe = [a - b for a, b in zip(pb, kp_b)], [a - b for a, b in zip(pe, kp_e)]
            if nonzero:  # the conv zero-pads where the value at zero belongs
                status = max(status, problem(kp_b, kp_e), key=rank.get)
            if wrong or (mode == "pad_zero" and nonzero):  # the border op writes the wrong value
                status = max(status, problem(ob, oe), key=rank.get)
            hp, wp = h + ob[0] + oe[0], w + ob[1] + oe[1]
            full = [0, 0, ob[0], ob[1], 0, 0, oe[0], oe[1]]
            self.inner.append(y)
            if mode == "pad_zero":
                y = self._pad(y, full, (cm, hp, wp))
            elif not any(ob + oe):
                pass  # nothing to write a border into (a Where with an all-true mask is not a border fill)
            elif mode.startswith("dbb"):
                vc = self.const(v.reshape(cm, 1, 1), "border_v")
                y = self.node("Sub", [y, vc], shape=(cm, h, w))
                y = self._pad(y, full, (cm, hp, wp))
                y = self.node("Add", [y, vc], shape=(cm, hp, wp))
            else:  # exported-style border writes: Where(inside, Pad(y), v), all at once or rows then columns
                y = self._pad(y, full, (cm, hp, wp))
                vname = self.const(v.reshape(1, cm, 1, 1), "border_v")
                rows = np.zeros((1, 1, hp, wp), bool)
                rows[..., ob[0]:ob[0] + h, :] = True
                cols = np.zeros((1, 1, hp, wp), bool)
                cols[..., :, ob[1]:ob[1] + w] = True
                writes = [rows & cols] if self.coin(0.3) else [rows, cols]
                for mask in writes:
                    y = self.node("Where", [self.const(mask, "inside", node_ok=False), y, vname], shape=(cm, hp, wp))
                if len(writes) == 1:
                    # one write: Pad + Where is already as small as the canonical Sub + Pad + Add, and
                    # onnxrep (since 2bc27af) leaves it alone: one conv in truth, but not expected to merge
                    self.features.add("seq-where-single-write")
                    if status == "merge" and any(ob + oe):
                        status = "none"
            self.inner.append(y)
        strides = tuple(ax.s for ax in axes)
        dil = tuple(ax.d if kk > 1 else 1 for ax, kk in zip(axes, k))
        shape = (cout, axes[0].out(h), axes[1].out(w))
        y = self.conv(y, cm, cout, k, kp_b, kp_e, strides, dil, g2, bias=self.coin(0.6), shape=shape)
        if self.coin(0.5):
            self.inner.append(y)
            y = self.bn(y, cout)
            label += "+BN"
        return y, label, status

    def _value_at_zero(self, y_chain, cm: int) -> np.ndarray:
        """The 1x1 path's output at zero input: its bias through the BN / Mul, in float64."""
        v = np.zeros(cm)
        consts = self.values
        for n in y_chain:
            if n.op_type == "Conv":
                b = n.input[2] if len(n.input) > 2 else ""
                v = consts[b].astype(np.float64) if b in consts else np.zeros(cm)  # none, or Expand(0)
            elif n.op_type == "BatchNormalization":
                g, b, m, var = (consts[i].astype(np.float64) for i in n.input[1:5])
                eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
                v = g * (v - m) / np.sqrt(var + eps) + b
            elif n.op_type == "Mul":
                c = [consts[i] for i in n.input if i in consts][0].astype(np.float64).reshape(-1)
                v = v * c
        return v

    def _pad(self, y: str, full_pads, shape) -> str:
        c = self.shapes[y][0]
        ins = [y]
        if self.opset >= 18 and self.coin(0.4):
            axes = self.pick([[2, 3], [-2, -1]])
            ins += [self.ints(full_pads[2:4] + full_pads[6:8], "pads"), "", self.ints(axes, "pad_axes", plain=True)]
            if self.coin(0.5):
                ins[2] = self.const(np.array(0, self.dtype), "pad_value", node_ok=False)
        else:
            ins.append(self.ints(full_pads, "pads"))
            if self.coin(0.5):
                ins.append(self.const(np.array(0, self.dtype), "pad_value", node_ok=False))
        kw = {"mode": "constant"} if self.coin(0.5) else {}
        return self.node("Pad", ins, "pad", shape=shape, **kw)

    def compactor_branch(self, x: str, cin: int, cout: int, axes, groups) -> tuple[str, str]:
        c, h, w = self.shapes[x]
        cm = self.upto(1, MAX_C)
        y, label = self.conv_branch(x, cin, cm, axes, _divisors(math.gcd(cin, cm)), post=False, allow_crop=False)
        if self.coin(0.5):
            self.inner.append(y)
            y = self.bn(y, cm)
            label += "+BN"
        self.inner.append(y)
        g = self.pick(_divisors(math.gcd(cm, cout)))
        _, ho, wo = self.shapes[y]
        y = self.conv(y, cm, cout, (1, 1), (0, 0), (0, 0), group=g, bias=self.coin(0.5), shape=(cout, ho, wo))
        return y, label + f"->1x1/g{g}"

    # ------------------------------------------------------------ blocks
    def combine(self, terms: list[str], shape) -> str:
        if len(terms) == 1:
            return terms[0]
        if self.coin(0.04):  # the same tensor twice in one sum
            terms = terms + [self.pick(terms)]
            self.features.add("repeated-term")
        order = self.draw(st.permutations(terms))
        chain = self.coin(0.5)
        return self._tree(list(order), chain, shape)

    def _tree(self, terms, chain, shape) -> str:
        if len(terms) == 1:
            return terms[0]
        cut = len(terms) - 1 if chain else self.upto(1, len(terms) - 1)
        a = self._tree(terms[:cut], chain, shape)
        b = self._tree(terms[cut:], chain, shape)
        op = "Sub" if self.coin(0.25) else "Add"
        return self.node(op, [a, b], "sum" if op == "Add" else "diff", shape=shape)

    def sum_block(self, x: str, axes=None, cout=None) -> tuple[str, str]:
        cin, h, w = self.shapes[x]
        if axes is None:
            identity = self.coin(0.4)
            axes = [self.axis(n, identity=identity) for n in (h, w)]
        if cout is None:
            cout = cin if self.coin(0.5) else self.upto(1, MAX_C)
        out_shape = (cout, axes[0].out(h), axes[1].out(w))
        kinds = ["conv", "seq", "compactor"]
        if self.coin(0.3):
            kinds.append("misaligned")
        if cin == cout and all(ax.identity_ok() for ax in axes):
            kinds += ["identity", "bn", "affine"]
        if cin == cout and all(ax.pool_places() for ax in axes):
            kinds.append("avgpool")
        n = self.upto(1, 4)
        groups = _divisors(math.gcd(cin, cout))
        terms, labels = [], []
        self.block_convs = []
        for i in range(n):
            kind = self.pick(["conv"] + kinds if n > 1 else ["conv"] + [k for k in kinds if k != "identity"])
            if kind == "conv":
                share = None
                mine = [b for b in self.block_convs if b[3:] == (cin, cout)]
                if mine and self.coin(0.25):
                    share = self.pick(mine)[:3]
                    self.features.add("shared-weight-in-sum")
                t, lab = self.conv_branch(x, cin, cout, axes, groups, share_from=share)
            elif kind in ("identity", "bn", "affine"):
                t, lab = self.identity_like(x, kind)
            elif kind == "avgpool":
                t, lab = self.avgpool_branch(x, axes)
            elif kind == "misaligned":
                t, lab = self.misaligned_branch(x, cin, cout, axes, groups)
            elif kind == "seq":
                t, lab, _ = self.seq_branch(x, cin, cout, axes, groups)
            else:
                t, lab = self.compactor_branch(x, cin, cout, axes, groups)
            self.features.add("branch-" + kind)
            if t != x:
                self.inner.append(t)
            terms.append(t)
            labels.append(lab)
        y = self.combine(terms, out_shape)
        label = "sum[" + ", ".join(labels) + "]" if n > 1 else labels[0]
        if y != x and self.coin(0.3):
            self.inner.append(y)
            y, lab = self.affine_op(y, cout)
            label += f" then {lab}"
        if y == x:  # a lone identity: give the block one op
            y, lab = self.affine_op(x, cout)
            label = lab + "(x)"
        return y, label

    def pair_block(self, x: str) -> tuple[str, str, str]:
        """Two branches that must not merge; returns (out, label, why)."""
        cin, h, w = self.shapes[x]
        why = self.pick(["relu-root", "preaffine-pad", "stride"])
        if why == "stride" and (self.spatial_dynamic or max(h, w) < 2):
            why = "relu-root"
        cout = cin if self.coin(0.5) else self.upto(1, MAX_C)
        groups = _divisors(math.gcd(cin, cout))
        if why == "stride":
            # A: 1x1 stride 1; B: 1x1 stride 2 on an axis with size >= 2, pads so the size stays
            axes_a = [Axis(1, 1, 0, 0, 1), Axis(1, 1, 0, 0, 1)]
            a, la = self.conv_branch(x, cin, cout, axes_a, groups, allow_crop=False)
            strides, pb, pe = [1, 1], [0, 0], [0, 0]
            for i, n in enumerate((h, w)):
                if n >= 2 and (i == 1 or self.coin(0.5) or w < 2):
                    total = n - 1 if self.coin(0.5) else n
                    b = self.upto(0, total)
                    strides[i], pb[i], pe[i] = 2, b, total - b
            b_ = self.conv(x, cin, cout, (1, 1), pb, pe, tuple(strides), group=self.pick(groups),
                           shape=(cout, h, w))
            b_, lb = self.post_ops(b_, cout, 2)
            lb = f"conv1x1/s{strides[0]}{strides[1]}" + lb
        else:
            axes = [self.axis(n, stride_ok=False, classic=True) for n in (h, w)]
            if why == "preaffine-pad":
                # the shifted border differs between output positions only where a tap that also reads the
                # map reads padding (crop-dead-taps removes the taps that read padding only)
                if not any(_reads_padding(ax, n, self.spatial_dynamic) for ax, n in zip(axes, (h, w))):
                    if max(h, w) >= 2 or self.spatial_dynamic:
                        axes = [Axis(3, 1, 1, 1, 1), Axis(3, 1, 1, 1, 1)]
                    else:
                        why = "relu-root"
            a, la = self.conv_branch(x, cin, cout, axes, groups, allow_crop=False)
            if why == "relu-root":
                src = self.node("Relu", [x], "relu", shape=self.shapes[x])
                self.keepers.append(self.last_node_name())
                b_, lb = self.conv_branch(src, cin, cout, axes, groups, allow_crop=False)
                lb = "relu->" + lb
            else:
                shift = self.randn(cin, scale=0.5) + self.signs(cin)  # |shift| >= 0.5 roughly
                src = self.node("Add", [x, self.const(shift.reshape(cin, 1, 1), "pre_shift")], shape=self.shapes[x])
                places = [(ax.K,) + ax.place(ax.K, 0) for ax in axes]   # the full-span kernel pads
                k = tuple(p[0] for p in places)
                b_ = self.conv(src, cin, cout, k, [p[1] for p in places], [p[2] for p in places],
                               dil=tuple(ax.d for ax in axes), group=self.pick(groups),
                               shape=(cout,) + self.shapes[a][1:])
                b_, lb = self.post_ops(b_, cout, 2)
                lb = f"shift->conv{k[0]}x{k[1]}/pad" + lb
        self.inner += [a, b_]
        terms = [a, b_] if self.coin(0.5) else [b_, a]
        y = self.node(self.pick(["Add", "Sub"]), terms, "pair", shape=self.shapes[a])
        if self.coin(0.3):
            self.inner.append(y)
            y, lab = self.affine_op(y, cout)
            la += f" then {lab}"
        self.features.add("unmergeable-" + why)
        return y, f"pair[{la}, {lb}]", why

    def costly_block(self, x: str) -> tuple[str, str, str | None]:
        """Exact but costlier as one conv, so its two convs must stay: a depthwise KxK -> 1x1
        expansion (merged: C*E*K^2 > C*K^2 + C*E per pixel), a 1x1 reduction -> KxK (merged C*C*K^2/s^2
        > C*R + R*C*K^2/s^2), or a depthwise KxK beside a dense 1x1 (merged C^2*K^2 > C*K^2 + C^2);
        with BNs / affines around, stride-2 variants. Returns (out, label, why); ``why`` None on a static map
        smaller than the kernel, where the two convs need not stay."""
        cin, h, w = self.shapes[x]
        kind = self.pick(["dw-expand", "reduce-kxk", "dw-beside-dense"])
        c = cin
        k = self.pick([3, 5]) if min(h, w) >= 3 or self.spatial_dynamic else 3
        s = 2 if self.coin(0.35) and not self.spatial_dynamic and min(h, w) >= 2 else 1
        out_hw = tuple((n + 2 * (k // 2) - k) // s + 1 for n in (h, w))
        if kind == "reduce-kxk" and c * k * k // (s * s + k * k) < 1:
            kind = "dw-expand"
        if kind == "dw-beside-dense" and c < 2:
            kind = "dw-expand"
        if kind == "dw-expand":
            e = self.upto(2, 2 * MAX_C)
            t = self.conv(x, c, c, (k, k), (k // 2,) * 2, (k // 2,) * 2, (s, s), group=c, bias=self.coin(0.5),
                          shape=(c,) + out_hw)
            if self.coin(0.6):
                t = self.bn(t, c)
            self.inner.append(t)
            y = self.conv(t, c, e, (1, 1), (0, 0), (0, 0), bias=self.coin(0.5), shape=(e,) + out_hw)
            label = f"dw{k}x{k}/s{s} -> 1x1({c}->{e})"
        elif kind == "reduce-kxk":
            r = self.upto(1, max(1, math.ceil(c * k * k / (s * s + k * k)) - 1))
            t = self.conv(x, c, r, (1, 1), (0, 0), (0, 0), bias=self.coin(0.5), shape=(r, h, w))
            if self.coin(0.4):
                t = self.bn(t, r)
            self.inner.append(t)
            e = c
            y = self.conv(t, r, e, (k, k), (k // 2,) * 2, (k // 2,) * 2, (s, s), bias=self.coin(0.5),
                          shape=(e,) + out_hw)
            label = f"1x1({c}->{r}) -> {k}x{k}/s{s}"
        else:
            e = c
            a = self.conv(x, c, c, (k, k), (k // 2,) * 2, (k // 2,) * 2, (s, s), group=c, bias=self.coin(0.5),
                          shape=(c,) + out_hw)
            b_ = self.conv(x, c, c, (1, 1), (0, 0), (0, 0), (s, s), bias=self.coin(0.5), shape=(c,) + out_hw)
            if self.coin(0.5):
                a = self.bn(a, c)
            if self.coin(0.5):
                b_ = self.bn(b_, c)
            self.inner += [a, b_]
            y = self.node("Add", [a, b_] if self.coin(0.5) else [b_, a], "costly_sum", shape=(c,) + out_hw)
            label = f"dw{k}x{k}/s{s} || 1x1"
        if self.coin(0.4):
            self.inner.append(y)
            y, lab = self.affine_op(y, e)
            label += f" then {lab}"
        self.features.add("costly-" + kind)
        if not self.spatial_dynamic and h * w < k * k:
            # a KxK kernel on a map smaller than itself mostly reads padding: cropped to the taps that read
            # the map (crop-dead-taps) it can cost less, and then merge; no longer costlier as one conv
            return y, f"costly[{label}]", None
        return y, f"costly[{label}]", "costly-" + kind

    def convt_block(self, x: str) -> tuple[str, str]:
        """ConvTranspose (groups, strides, pads, output_padding, dilations) + BN / Mul."""
        cin, h, w = self.shapes[x]
        cout = self.upto(1, MAX_C)
        g = self.pick(_divisors(math.gcd(cin, cout)))
        k, st_, d, pb, pe, op_, out = [], [], [], [], [], [], []
        for n in (h, w):
            kk, ss, dd = self.upto(1, 3), self.pick([1, 2]), self.pick([1, 1, 2])
            span = dd * (kk - 1)
            b, e = self.upto(0, span), self.upto(0, span)
            o = self.upto(0, ss - 1)
            size = (n - 1) * ss - b - e + span + o + 1
            if size < 1:
                b = e = 0
                size = (n - 1) * ss + span + o + 1
            k.append(kk), st_.append(ss), d.append(dd), pb.append(b), pe.append(e), op_.append(o), out.append(size)
        wv = self.randn(cin, cout // g, *k, scale=1.0 / math.sqrt(max(cin // g * k[0] * k[1], 1)))
        ins = [x, self.const(wv, "Wt")]
        if self.coin(0.6):
            ins.append(self.const(self.randn(cout, scale=0.5), "Bt"))
        attrs = {"kernel_shape": k, "strides": st_, "pads": pb + pe, "group": g}
        if any(o for o in op_) or self.coin(0.3):
            attrs["output_padding"] = op_
        if any(dd != 1 for dd in d) or self.coin(0.3):
            attrs["dilations"] = d
        y = self.node("ConvTranspose", ins, "convt", shape=(cout, out[0], out[1]), **attrs)
        label = f"convT{k[0]}x{k[1]}/s{st_[0]}{st_[1]}" + (f"/g{g}" if g > 1 else "")
        if self.coin(0.75):
            self.inner.append(y)
            y = self.bn(y, cout)
            label += "+BN"
        if self.coin(0.3):
            self.inner.append(y)
            y, lab = self.affine_op(y, cout, ("Mul", "BN"))
            label += "+" + lab
        self.features.add("convtranspose")
        return y, label

    def head(self, x: str) -> str:
        """GlobalAveragePool -> Flatten -> Gemm (transB, alpha, beta, C shapes) or MatMul (+Add) -> BN."""
        cin = self.shapes[x][0]
        k = self.upto(1, MAX_C)
        t = self.node("GlobalAveragePool", [x], "gap", shape=(cin, 1, 1))
        t = self.node("Flatten", [t], "flat", axis=1)
        if self.coin(0.6):
            trans_b = self.coin(0.5)
            wv = self.randn(*((k, cin) if trans_b else (cin, k)), scale=1.0 / math.sqrt(cin))
            ins = [t, self.const(wv, "Wfc")]
            cshape = self.pick(["none", (k,), (1, k), ()])
            if cshape != "none":
                ins.append(self.const(self.randn(*cshape, scale=0.5), "Cfc"))
            attrs = {}
            if trans_b or self.coin(0.3):
                attrs["transB"] = int(trans_b)
            if self.coin(0.4):
                attrs["alpha"] = float(self.pick([0.5, 2.0, -1.0]))
            if self.coin(0.4):
                attrs["beta"] = float(self.pick([0.7, 2.0, 0.0]))
            y = self.node("Gemm", ins, "fc", **attrs)
            self.features.add("gemm-head")
        else:
            y = self.node("MatMul", [t, self.const(self.randn(cin, k, scale=1.0 / math.sqrt(cin)), "Wmm")], "mm")
            if self.coin(0.5):
                y = self.node("Add", [y, self.const(self.randn(k, scale=0.5), "Bmm")], "mm_b")
            self.features.add("matmul-head")
        self.inner_head = y
        t = self.node("BatchNormalization", [y] + [self.const(p, h) for p, h in zip(
            [self.uniform(0.5, 1.5, k) * self.signs(k), self.randn(k, scale=0.5), self.randn(k, scale=0.5),
             self.uniform(0.5, 2.0, k)], ("gamma", "beta", "mean", "var"))], "bn1d")
        self.head_dims = [self.batch, k]
        return t

    def dead_block(self, x: str) -> tuple[str, str]:
        """ResRep after training: conv (+BN) -> compactor 1x1 with exactly-zero rows (dead channels),
        alone, summed with a conv whose same rows are zero (a residual Add: the channels are dead in
        both inputs) or beside one (Concat), sometimes with a depthwise 3x3 after it."""
        cin, h, w = self.shapes[x]
        cm = self.upto(2, MAX_C)
        k, p = self.pick([(1, 0), (3, 1)])
        y = self.conv(x, cin, cm, (k, k), (p, p), (p, p), shape=(cm, h, w))
        if self.coin(0.5):
            self.inner.append(y)
            y = self.bn(y, cm)
        dead = sorted(self.draw(st.sets(st.integers(0, cm - 1), min_size=1, max_size=cm - 1)))
        q = np.eye(cm, dtype=self.dtype) + self.randn(cm, cm, scale=0.1)
        q[dead] = 0
        self.inner.append(y)
        y = self.conv(y, cm, cm, (1, 1), (0, 0), (0, 0), bias=False, weight=self.const(q.reshape(cm, cm, 1, 1), "Q"),
                      shape=(cm, h, w))
        variant = self.pick(["plain", "residual", "concat"])
        if variant != "plain":
            self.inner.append(y)
            w2 = self.randn(cm, cin, 1, 1, scale=1 / math.sqrt(cin))
            rows = dead if variant == "residual" else dead[:1]
            w2[rows] = 0
            y2 = self.conv(x, cin, cm, (1, 1), (0, 0), (0, 0), weight=self.const(w2, "W"), shape=(cm, h, w))
            self.inner.append(y2)
            if variant == "residual":
                y = self.node("Add", [y, y2], "sum", shape=(cm, h, w))
            else:
                y = self.node("Concat", [y, y2], "cat", axis=1, shape=(2 * cm, h, w))
                cm *= 2
        if self.coin(0.3):
            self.inner.append(y)
            y = self.node("Relu", [y], "relu", shape=(cm, h, w))
            self.inner.append(y)
            y = self.conv(y, cm, cm, (3, 3), (1, 1), (1, 1), group=cm, shape=(cm, h, w))
            variant += "+dw3x3"
        self.features.add("dead-channels")
        return y, f"dead[{variant}, {len(dead)} of {self.shapes[y][0]}]"

    def overflow_block(self, x: str) -> tuple[str, str]:
        """fp16: Mul(x, 1e-4) -> Relu -> Conv(W ~ 400) -> BN(gamma ~ 400): merged weights > 65504."""
        cin, h, w = self.shapes[x]
        cout = self.upto(1, MAX_C)
        t = self.node("Mul", [x, self.const(np.array(1e-4, self.dtype), "tiny")], shape=self.shapes[x])
        t = self.node("Relu", [t], "relu", shape=self.shapes[x])
        self.keepers.append(self.last_node_name())
        wv = self.randn(cout, cin, 3, 3, scale=0.3)
        wv[:, :, 1, 1] = 400 * self.signs(cout, cin)
        y = self.conv(t, cin, cout, (3, 3), (1, 1), (1, 1), weight=self.const(wv, "W_big"), shape=(cout, h, w))
        y = self.bn(y, cout, big=400.0, overridable_ok=False)
        self.expect_declines.append("overflow")
        self.features.add("fp16-overflow")
        return y, "overflow[Mul1e-4, Relu, conv3x3(400)+BN(400)]"


def _reads_padding(ax: Axis, n: int, dynamic: bool) -> bool:
    """Whether the full-span kernel on ``ax`` has a tap that reads both the map (of size ``n``) and its
    padding; on a dynamic size, whether it is padded at all (some size has such a tap)."""
    if dynamic:
        return bool(ax.P or ax.E)
    inside = [[0 <= o * ax.s - ax.P + t * ax.d < n for o in range(ax.out(n))] for t in range(ax.K)]
    return any(any(row) and not all(row) for row in inside)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# --------------------------------------------------------------------------- the strategy
@st.composite
def training_graphs(draw, max_blocks: int = 4, allow_if: bool = True, float16_share: int = 25) -> FuzzCase:
    """Random training-form models; ``float16_share`` percent of them in float16."""
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = "float16" if draw(st.integers(0, 99)) >= 100 - float16_share else "float32"
    opset = draw(st.integers(MIN_OPSET, newest_ort_opset()))
    dyn = draw(st.integers(0, 99))
    spatial_dynamic = dyn >= 94
    batch = "N" if dyn >= 70 else draw(st.sampled_from([1, 2]))
    g = _Gen(draw, seed, dtype, opset, batch, spatial_dynamic)
    c = g.upto(1, MAX_C)
    h, w = g.upto(1, MAX_HW), g.upto(1, MAX_HW)
    x = "x"
    g.shapes[x] = (c, h, w)
    n_blocks = g.upto(1, max_blocks)
    seps = [g.pick(["Relu", "none", "act"]) for _ in range(n_blocks - 1)]
    overflow_last = dtype == "float16" and g.coin(0.15)
    blocks = []
    t = x
    for i in range(n_blocks):
        bounded = (i == 0 or seps[i - 1] != "none") and (i == n_blocks - 1 or seps[i] != "none")
        start = t
        if i == n_blocks - 1 and overflow_last:
            t, label = g.overflow_block(t)
        elif bounded and g.coin(0.12):
            t, label, why = g.costly_block(t)
            if why is not None:
                g.regions.append(Region(start, t, why))
        elif bounded and g.coin(0.2):
            if g.coin(0.6):
                t, label, why = g.pair_block(t)
            else:
                cin = g.shapes[t][0]
                cout = cin if g.coin(0.5) else g.upto(1, MAX_C)
                axes = [g.axis(n, stride_ok=False, classic=True) for n in g.shapes[t][1:]]
                if not any(ax.P or ax.E for ax in axes):
                    axes = [Axis(3, 1, 1, 1, 1), Axis(3, 1, 1, 1, 1)]
                mode = g.pick(["conv_pad", "pad_zero", "dbb_wrong", "where_wrong", "dbb", "where"])
                t, label, status = g.seq_branch(t, cin, cout, axes, _divisors(math.gcd(cin, cout)), mode=mode)
                why = f"seq-{mode}"
                if status == "merge" and dtype == "float32":  # one conv (e.g. the 1x1 path is zero at zero)
                    g.regions.append(Region(start, t, why, "merge"))
                if status != "keep":
                    why = None
                elif not spatial_dynamic and any(n < ax.K for ax, n in zip(axes, g.shapes[start][1:])):
                    why = None  # a map smaller than the kernel: crop-dead-taps may drop the padded taps
            if why:
                g.regions.append(Region(start, t, why))
        elif g.coin(0.07):
            t, label = g.convt_block(t)
        elif g.coin(0.08):
            t, label = g.dead_block(t)
        else:
            t, label = g.sum_block(t)
        blocks.append(label)
        if i < n_blocks - 1:
            if seps[i] == "Relu":
                t = g.node("Relu", [t], "relu", shape=g.shapes[t])
                g.keepers.append(g.last_node_name())
            elif seps[i] == "act":
                t = g.activation(t)
    outputs = [t]
    if g.coin(0.3):
        outputs = [g.activation(t)]
    head = None
    if g.coin(0.12):
        head = g.head(outputs[0])
        outputs = [head] + ([outputs[0]] if g.coin(0.3) else [])
    outputs += [o for o in dict.fromkeys(g.forced_outputs) if o not in outputs]
    # a branch tensor that is also a graph output, or feeds an extra Relu output
    candidates = [n for n in dict.fromkeys(g.inner) if n in g.shapes and n not in outputs]
    for _ in range(g.upto(0, 2) if candidates and g.coin(0.35) else 0):
        u = g.pick(candidates)
        if g.coin(0.5):
            if u not in outputs:
                outputs.append(u)
                g.features.add("branch-is-output")
        else:
            outputs.append(g.node("Relu", [u], "extra_relu", shape=g.shapes[u]))
            g.keepers.append(g.last_node_name())
            g.features.add("branch-feeds-relu")
    cond = None
    if allow_if and g.coin(0.12):
        cond = _add_if(g, outputs)
    if g.coin(0.1):  # exporters without node names (keepers keep theirs; ORT refuses duplicate names)
        keep = set(g.keepers)
        for n in g.nodes:
            if n.name not in keep:
                n.name = ""
        g.features.add("anonymous-nodes")
    if g.coin(0.3):  # exporters that record intermediate shapes
        have = {v.name for v in g.value_info} | set(outputs)
        for n in g.nodes:
            for o in n.output:
                if o in g.shapes and o not in have:
                    g.value_info.append(g.vi(o))
                    have.add(o)
        g.features.add("value-info")
    inputs = [helper.make_tensor_value_info(x, g.elem, [batch, c, "H" if spatial_dynamic else h,
                                                        "W" if spatial_dynamic else w])]
    if cond:
        inputs.append(helper.make_tensor_value_info(cond, TensorProto.BOOL, []))
    inputs += g.overridable
    outs = [helper.make_tensor_value_info(o, g.elem, g.head_dims) if o == head else g.vi(o) for o in outputs]
    graph = helper.make_graph(g.nodes, "fuzz", inputs, outs, initializer=g.inits, value_info=g.value_info)
    ops = [helper.make_opsetid("", opset)]
    if g.uses_ms:
        ops.append(helper.make_opsetid("com.microsoft", 1))
    model = make_model(graph, ops)
    if g.coin(0.1):  # tensor names onnxrep itself would make ("<node>_weight", "<node>_1", ...)
        names = [n.name for n in g.nodes if n.name]
        inner = [o for n in g.nodes for o in n.output if o not in outputs]
        mapping = {}
        taken = {o for n in g.nodes for o in n.output} | {t.name for t in g.inits} | set(names)
        for _ in range(g.upto(1, 3) if names and inner else 0):
            old = g.pick(inner)
            new = g.pick(names) + g.pick(["_weight", "_bias", "_1", "_2", "_sub", "_pad", "_border_value"])
            if old not in mapping and new not in taken:
                mapping[old] = new
                taken.add(new)
        if mapping:
            _rename_tensors(model.graph, mapping)
            g.regions = [Region(mapping.get(r.start, r.start), mapping.get(r.end, r.end), r.why, r.expect)
                         for r in g.regions]
            g.features.add("hostile-names")
    if spatial_dynamic:
        g.features.add("dynamic-spatial")
    if batch == "N":
        g.features.add("dynamic-batch")
    g.features.add(dtype)
    return FuzzCase(model, dtype, opset, seed, blocks, g.regions, g.keepers, g.expect_declines, cond,
                    g.features)


def _rename_tensors(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename tensors everywhere in ``graph`` and its subgraphs (they may read outer names)."""
    for n in graph.node:
        ins, outs = [mapping.get(i, i) for i in n.input], [mapping.get(o, o) for o in n.output]
        del n.input[:], n.output[:]
        n.input.extend(ins)
        n.output.extend(outs)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _rename_tensors(a.g, mapping)
            for sub in a.graphs:
                _rename_tensors(sub, mapping)
    for coll in (graph.input, graph.output, graph.value_info, graph.initializer):
        for v in coll:
            v.name = mapping.get(v.name, v.name)


def _add_if(g: _Gen, outputs: list[str]) -> str:
    """An If whose then/else bodies each hold a block on a main-graph tensor (outer scope)."""
    candidates = ["x"] + [n for n in dict.fromkeys(g.inner) if n in g.shapes]
    u = g.pick(candidates)
    cin, h, w = g.shapes[u]
    axes = [g.axis(n) for n in (h, w)]
    cout = cin if g.coin(0.5) else g.upto(1, MAX_C)
    saved_nodes, saved_inits = g.nodes, g.inits
    bodies = []
    g.in_body = True
    try:
        for which in ("then", "else"):
            g.nodes, g.inits = [], []
            y, label = g.sum_block(u, axes=axes, cout=cout)
            if y == u:
                y = g.node("Identity", [u], shape=g.shapes[u])
            if g.coin(0.3):
                y = g.node("Relu", [y], "relu", shape=g.shapes[y])
            body = helper.make_graph(g.nodes, f"{which}_body", [], [g.vi(y)], initializer=g.inits)
            bodies.append((body, y, label))
    finally:
        g.nodes, g.inits = saved_nodes, saved_inits
        g.in_body = False
    cond = "cond"
    out = g.fresh("if_out")
    g.nodes.append(helper.make_node("If", [cond], [out], name=g.fresh("If_"),
                                    then_branch=bodies[0][0], else_branch=bodies[1][0]))
    g.shapes[out] = g.shapes[bodies[0][1]]
    outputs.append(out)
    g.features.add("if")
    return cond


# --------------------------------------------------------------------------- reproducers
def model_to_script(model: onnx.ModelProto) -> str:
    """A standalone ``onnx.helper`` script that rebuilds ``model`` (for bug reports)."""
    lines = ["import numpy as np", "import onnx", "from onnx import helper, numpy_helper, TensorProto", ""]

    def arr(t):
        a = numpy_helper.to_array(t)
        return f"np.array({a.reshape(-1).tolist()!r}, dtype=np.{a.dtype.name}).reshape({list(a.shape)!r})"

    def vi(v):
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim] \
            if tt.HasField("shape") else None
        return f"helper.make_tensor_value_info({v.name!r}, {tt.elem_type}, {dims!r})"

    def graph(gp, var):
        for i, n in enumerate(gp.node):
            attrs = []
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    sub = f"{var}_{i}_{a.name}"
                    graph(a.g, sub)
                    attrs.append(f"{a.name}={sub}")
                elif a.type == onnx.AttributeProto.TENSOR:
                    attrs.append(f"{a.name}=numpy_helper.from_array({arr(a.t)}, {a.t.name!r})")
                else:
                    attrs.append(f"{a.name}={helper.get_attribute_value(a)!r}")
            dom = f", domain={n.domain!r}" if n.domain else ""
            lines.append(f"n_{var}_{i} = helper.make_node({n.op_type!r}, {list(n.input)!r}, {list(n.output)!r}, "
                         f"name={n.name!r}{dom}{''.join(', ' + a for a in attrs)})")
        inits = ", ".join(f"numpy_helper.from_array({arr(t)}, {t.name!r})" for t in gp.initializer)
        lines.append(f"{var} = helper.make_graph([{', '.join(f'n_{var}_{i}' for i in range(len(gp.node)))}], "
                     f"{gp.name!r}, [{', '.join(vi(v) for v in gp.input)}], [{', '.join(vi(v) for v in gp.output)}], "
                     f"initializer=[{inits}], value_info=[{', '.join(vi(v) for v in gp.value_info)}])")

    graph(model.graph, "g")
    ops = ", ".join(f"helper.make_opsetid({o.domain!r}, {o.version})" for o in model.opset_import)
    lines.append(f"model = helper.make_model(g, opset_imports=[{ops}], ir_version={model.ir_version})")
    lines.append("onnx.checker.check_model(model, full_check=True)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the property
#: the float16 acceptance bound of issue 8 (a statistic of the long run, not a failure): max abs error
#: <= FLOAT16_BOUND * max(1, max|y|). Verification itself uses onnxrep's tolerance by precision
#: (onnxrep.verification.precision: float32 1e-4 / 1e-5; float16 2.5e-3 / 2.5e-3 plus twice how far the original
#: moves under float16 rounding of its activations or of its weights)
FLOAT16_BOUND = 5e-3


@dataclass
class Outcome:
    """What one example did: numbers for the long run, and every violated property."""
    rewrites: int = 0
    declines: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    beyond_bound: int = 0    # float16 outputs beyond FLOAT16_BOUND * max(1, max|y|)
    by_noise: int = 0        # outputs within tolerance only thanks to the noise term
    channels_removed: int = 0  # dead channels eliminate-dead-channels removed
    seconds: float = 0.0
    invalid: str | None = None                          # the generator made a bad model (a fuzzer bug)
    crash: str | None = None                            # optimize() raised
    mismatch: str | None = None                         # onnxruntime outputs differ beyond tolerance
    failures: list[str] = field(default_factory=list)   # every other violated property
    known: list[str] = field(default_factory=list)      # hits of known bugs (KNOWN_BUGS), not failures
    missed: list[str] = field(default_factory=list)     # regions that are one conv in truth, not merged, not by cost

    @property
    def ok(self) -> bool:
        return self.invalid is None and self.crash is None and self.mismatch is None and not self.failures

    def explain(self) -> str:
        parts = ([f"invalid: {self.invalid}"] if self.invalid else []) + ([f"crash: {self.crash}"] if self.crash else []) + (
            [f"mismatch: {self.mismatch}"] if self.mismatch else []) + self.failures
        return "; ".join(parts)


#: bugs found by this fuzzer and not fixed yet; each has a strict xfail regression test in
#: tests/test_fuzz.py. The property records their hits in ``Outcome.known`` instead of failing.
#: Fixed ones are removed from here, so that they fail again: "output-dims" (graph outputs declared
#: with unknown dims came back with shape inference's 'unk__0' names), "border-fill-growth" (Pad +
#: one Where became Sub + Pad + Add), "io-same-tensor" (an input that is also an output lost its
#: output declaration), "spatial-constant-crash" (a constant broadcasting along a spatial axis
#: next to a BN crashed), "border-probe-alias" (verification outputs aliased input buffers) and
#: "fp16-border-roundtrip" (a canonical border fill left unmerged computed y - v + v in float16).
KNOWN_BUGS: dict[str, str] = {
    "cost-rank0-shape": (
        "float16, opset 24: shape inference gives rank-0 shapes to the tensors after a Mul by an initializer "
        "that is also a graph input, so the cost model counts the overflow block's conv at 1 pixel when kept "
        "apart from its BN (144 MACs) and at 72 when merged (10.4 kMACs): the region is 'kept apart' by cost "
        "and the expected float16 overflow decline never comes (nothing overflows: the output is exact). "
        "Found by the 10,000-example run of 2026-11-30; present at the session's first commit (7aa6e33)"),
}


def _only_invented_dims(before: list, after: list) -> bool:
    """True when ``after`` differs from ``before`` only where a dim (or the whole shape) was unknown."""
    if [(n, t) for n, t, _ in before] != [(n, t) for n, t, _ in after]:
        return False
    for (_, _, a), (_, _, b) in zip(before, after):
        if a is None:
            continue
        if b is None or len(a) != len(b):
            return False
        if any(x is not None and x != y for x, y in zip(a, b)):
            return False
    return True


def _io(vis) -> list:
    out = []
    for v in vis:
        tt = v.type.tensor_type
        dims = None
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        out.append((v.name, tt.elem_type, dims))
    return out


def convs_between(model: onnx.ModelProto, start: str, end: str) -> int | None:
    """Conv nodes on the producer paths from tensor ``end`` back to tensor ``start`` (not past it);
    ``None`` if ``end`` is no longer produced or is not reached from ``start``."""
    producer = {o: n for n in model.graph.node for o in n.output}
    if end not in producer:
        return None
    seen, stack, convs, reached = set(), [end], 0, False
    while stack:
        t = stack.pop()
        if t == start:
            reached = True
            continue
        n = producer.get(t)
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        convs += n.op_type == "Conv"
        stack.extend(i for i in n.input if i)
    return convs if reached else None


def _kept_apart_by_cost(out: onnx.ModelProto, region: Region, report) -> bool:
    """True when a node between the region's ends was kept apart because one conv costs more."""
    producer = {o: n for n in out.graph.node for o in n.output}
    names, seen, stack = set(), set(), [region.end]
    while stack:
        t = stack.pop()
        n = producer.get(t)
        if t == region.start or n is None or id(n) in seen:
            continue
        seen.add(id(n))
        names.add(n.name or n.op_type)  # a decline names an anonymous node by its op
        stack.extend(i for i in n.input if i)
    return any("would cost" in d.reason and d.node in names for d in report.declines())


def _region_is_private(model: onnx.ModelProto, start: str, end: str) -> bool:
    """True when no tensor made between ``start`` and ``end`` is a graph output, is read outside
    the region, or is read from inside a subgraph (If bodies), and no node of the region reads a
    graph input other than ``start``."""
    producer = {o: n for n in model.graph.node for o in n.output}
    region, stack = set(), [end]
    while stack:
        t = stack.pop()
        n = producer.get(t)
        if t == start or n is None or id(n) in region:
            continue
        region.add(id(n))
        stack.extend(i for i in n.input if i)
    inner = {o for n in model.graph.node if id(n) in region for o in n.output if o != end}
    if inner & {o.name for o in model.graph.output}:
        return False
    fed = {i.name for i in model.graph.input} - {start}  # e.g. an initializer the caller may override
    if any(fed & set(n.input) for n in model.graph.node if id(n) in region):
        return False
    for n in model.graph.node:
        if id(n) not in region and inner & set(n.input):
            return False
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used = {i for m in a.g.node for i in m.input}
                if inner & used:
                    return False
    return True


def _node_sig(n: onnx.NodeProto):
    return (n.op_type, n.domain, list(n.input), list(n.output),
            sorted((a.name, a.SerializeToString()) for a in n.attribute))


def _feeds(case: FuzzCase) -> dict:
    """Verification inputs: batch 2 for a dynamic batch, 13x14 for dynamic spatial dims."""
    from onnxrep.verification import make_inputs
    shapes = {}
    x = case.model.graph.input[0]
    dims = _io([x])[0][2]
    if any(not isinstance(d, int) for d in dims):
        shapes[x.name] = tuple(d if isinstance(d, int) else (2 if i == 0 else 13 + i % 2) for i, d in enumerate(dims))
    return make_inputs(case.model, shapes, seed=0)


def check_property(case: FuzzCase) -> Outcome:
    """Optimize ``case.model`` and check every property; never raises."""
    import time
    import traceback

    import onnxrep
    from onnxrep.verification import VerifyError

    model = case.model
    res = Outcome(nodes_before=len(model.graph.node))
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001
        res.invalid = f"the generated model fails the checker: {str(exc).splitlines()[0][:300]}"
        return res
    before = model.SerializeToString()
    t0 = time.perf_counter()
    try:
        out, report = onnxrep.optimize(model)
    except Exception as exc:  # noqa: BLE001
        res.seconds = time.perf_counter() - t0
        if isinstance(exc, ValueError) and "could not be broadcast" in str(exc) \
                and "spatial-constant" in case.features and "spatial-constant-crash" in KNOWN_BUGS:
            res.known.append("spatial-constant-crash")
            return res
        res.crash = f"{type(exc).__name__}: {exc}".splitlines()[0] + " | " + \
            traceback.format_exc().strip().splitlines()[-3].strip()
        return res
    res.seconds = time.perf_counter() - t0
    res.rewrites = report.rewrites
    res.declines = len(report.declines())
    res.channels_removed = sum(c.before - c.after for r in report.rules if r.name == "eliminate-dead-channels"
                               for c in r.channels)
    res.nodes_after = len(out.graph.node)
    fail = res.failures.append

    def known(tag, message):
        """A violation that is the known bug ``tag`` is recorded as a hit; anything else fails."""
        if tag in KNOWN_BUGS:
            res.known.append(tag)
        else:
            fail(message + (f" [looks like the fixed bug '{tag}']" if tag else ""))
    if model.SerializeToString() != before:
        fail("optimize() modified its input model")
    try:
        onnx.checker.check_model(out, full_check=True)
    except Exception as exc:  # noqa: BLE001
        fail(f"checker: {str(exc).splitlines()[0][:300]}")
    # numbers: onnxruntime on the same inputs (and both If branches)
    feeds = [_feeds(case)]
    if case.cond:
        flipped = dict(feeds[0])
        flipped[case.cond] = np.logical_not(flipped[case.cond])
        feeds.append(flipped)
    for inputs in feeds:
        try:
            v = onnxrep.verify(model, out, inputs=inputs)  # tolerance by precision
        except VerifyError as exc:
            fail(f"verify: {exc}")
            break
        res.max_abs = max(res.max_abs, v.max_abs)
        res.max_rel = max(res.max_rel, v.max_rel)
        res.by_noise += sum(o.passes() and o.max_abs > o.rtol * o.ref_max_abs + o.atol for o in v.outputs)
        if case.dtype == "float16":
            res.beyond_bound += sum(o.max_abs > FLOAT16_BOUND * max(1.0, o.ref_max_abs) for o in v.outputs)
        if not v.passed:
            bad = [o for o in v.outputs if not o.passes()]
            res.mismatch = ", ".join(f"{o.name}: max abs err {o.max_abs:.3g} (allowed {o.allowed:.3g}, "
                                     f"max|ref| {o.ref_max_abs:.3g})" for o in bad)
            break
    # MACs compare when every MAC-bearing node has known shapes on both sides (a custom op stops
    # shape inference: what follows it is not counted, and a rewrite may declare shapes it lacked)
    if report.before.macs_unknown == report.after.macs_unknown == 0 and report.after.macs > report.before.macs:
        fail(f"MACs grew {report.before.macs:,} -> {report.after.macs:,}")
    if report.after.params > report.before.params:
        fail(f"parameters grew {report.before.params:,} -> {report.after.params:,}")
    if res.nodes_after > res.nodes_before:
        fills = sum(r.rewrites for r in report.rules if r.name == "canonicalize-border-fill")
        known("border-fill-growth" if res.nodes_after - res.nodes_before <= fills else None,
              f"node count grew {res.nodes_before} -> {res.nodes_after}")
    if _io(out.graph.input) != _io(model.graph.input):
        fail(f"graph inputs changed: {_io(model.graph.input)} -> {_io(out.graph.input)}")
    io_in, io_out = _io(model.graph.output), _io(out.graph.output)
    if io_out != io_in:
        ins = {v.name for v in model.graph.input}
        same = len(io_in) == len(io_out) and all(a == b or (a[0] in ins and a[:2] == b[:2])
                                                 for a, b in zip(io_in, io_out))
        tag = "io-same-tensor" if same else "output-dims" if _only_invented_dims(io_in, io_out) else None
        known(tag, f"graph outputs changed: {io_in} -> {io_out}")
    for r in case.regions:
        a, b = convs_between(model, r.start, r.end), convs_between(out, r.start, r.end)
        if r.expect == "merge":
            if b != 1 and _region_is_private(model, r.start, r.end) and not _kept_apart_by_cost(out, r, report):
                res.missed.append(f"{r.why}: {r.start}->{r.end} has {b} convs (was {a})")
        elif a != b:
            fail(f"unmergeable region {r.start}->{r.end} ({r.why}): {a} convs -> {b}")
    by_name = {n.name: n for n in out.graph.node}
    orig = {n.name: n for n in model.graph.node}
    for name in case.keepers:
        n = by_name.get(name)
        if n is None:
            fail(f"node {name} ({orig[name].op_type}) is gone")
        elif _node_sig(n) != _node_sig(orig[name]):
            fail(f"node {name} ({orig[name].op_type}) changed: {_node_sig(orig[name])[:4]} -> {_node_sig(n)[:4]}")
    reasons = [d.reason for d in report.declines()]
    # every Where / Sub-Pad-Add border the generator writes is pad(y, p, v) for a constant v
    false_border = [r for r in reasons if "changes the inside of the padded tensor" in r]
    if false_border:
        known("border-probe-alias", f"a border fill was declined: {false_border[0]}")
    for want in case.expect_declines:
        if not any(want in r for r in reasons):
            apart = want == "overflow" and any(r.startswith("kept apart") for r in reasons)
            known("cost-rank0-shape" if apart else None, f"expected a decline mentioning {want!r}, got {reasons}")
    ifs_in = [n for n in model.graph.node if n.op_type == "If"]
    ifs_out = [n for n in out.graph.node if n.op_type == "If"]
    if len(ifs_in) != len(ifs_out):
        fail(f"If nodes {len(ifs_in)} -> {len(ifs_out)}")
    return res
