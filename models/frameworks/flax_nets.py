"""RepVGG / ACNet reference networks in JAX + Flax NNX, exported to ONNX with jax2onnx.

Versions written against: jax 0.10.2 (jaxlib 0.10.2), flax 0.12.8 (``flax.nnx``), jax2onnx 0.17.1
(``jax2onnx.to_onnx``; needs onnx>=1.20.1, onnxruntime>=1.24.1, onnx-ir>=0.2.1 and works with
onnx 1.23 / onnxruntime 1.32 / numpy 2.4 / protobuf 7). Opsets 13 and 17 both export and run.

Layout: native Flax, i.e. the ONNX input ``input`` is **NHWC** ``(B, 32, 32, 3)`` float32 (``B``
the dim_param ``"B"``), output ``logits`` ``(B, 10)``. Kernels are HWIO (``(kh, kw, in/groups, out)``).
``dynamic_spatial=True`` exports ``("B", "8*h", "8*w", 3)``: plain ``("B", "H", "W", 3)`` fails
in JAX's symbolic shape check, because SAME gives a stride-2 3x3 the output size
``-floordiv(-H, 2)`` and a stride-2 1x1 ``floordiv(H - 1, 2) + 1``, which it cannot prove equal:
"TypeError: add got incompatible shapes for broadcasting: (B, - floordiv(- H, 2),
- floordiv(- W, 2), 8), (B, floordiv(H - 1, 2) + 1, floordiv(W - 1, 2) + 1, 8)". Declaring the
sizes multiples of 2**(stride-2 blocks) = 8 makes every branch ``4*h`` etc.; the ONNX dim_params
are the strings ``"8*h"`` / ``"8*w"`` (onnxruntime runs any size).

Padding: Flax's default ``padding="SAME"`` on every conv, as a Flax user writes it. On the
ONNX side jax2onnx writes ``auto_pad="SAME_UPPER"`` (no ``pads``). For a stride-1 conv that is
the symmetric pad 1 of a 3x3 (and 0 of a 1x1) -- the usual RepVGG alignment. For a **stride-2**
conv on an even input it is the asymmetric pad ``(0, 1)`` per axis for the 3x3 and ``(0, 0)`` for
the 1x1 / the 1-wide axis of a 1x3 or 3x1, so the 1x1 tap sits at kernel position **[0, 0]**
(top-left), not at the centre, and ACNet's 1x3 / 3x1 go into the **top row / left column**.
``fuse`` computes every branch's offset inside the 3x3 window from the SAME pads at the design
input size (:data:`INPUT_HW`), so the hand-fused deploy form is exact for every input size
whose stride-2 blocks all see even sizes (multiples of 8 here: 32, 48, 64, ...). For other sizes
(e.g. 33x33) SAME_UPPER pads a stride-2 3x3 by ``(1, 1)`` and the 1x1 tap moves to the centre:
the training form is still right, the deploy form is not -- a dynamic-spatial export of a
SAME/stride-2 block therefore cannot be merged into one conv that is valid for all sizes.

Training form (``build(network, deploy=False)``):

* ``"repvgg"``: stem RepVGG block 3->8 s2 (3x3+BN, 1x1+BN); stage1: 8->16 s2, 16->16 s1 (+ identity
  BN); stage2 (grouped, like RepVGG-A0_g4): 16->32 s2 g=2, 32->32 s1 g=4 (+ identity BN),
  32->32 s1 g=1 (+ identity BN); ReLU after each block; mean over H, W; ``nnx.Linear(32, 10)``.
  Input 32x32.
* ``"acnet"``: ACBs (3x3+BN, 1x3+BN, 3x1+BN summed, all SAME) 3->8 s2, 8->16 s1,
  16->16 s2 g=2, 16->32 s1, 32->32 s2; ReLU after each; same head. Input 32x32.

All conv kernels ~ N(0, 2/fan_in), BN scale ~ U(0.5, 1.5), bias ~ N(0, 0.2), running mean ~
N(0, 0.2), running var ~ U(0.5, 2.0) (the ranges of ``models.common.randomize_bn_``), from
``numpy.random.default_rng(seed)``. BN is ``nnx.BatchNorm(use_running_average=True)``, eps 1e-5.

Deploy form (``fuse(train)``): one ``nnx.Conv(3x3, SAME, use_bias=True)`` per block, weights
computed in float64 numpy (BN fold, 1x1 / identity / 1x3 / 3x1 placed at their SAME offsets,
grouped kernels kept per group) and cast to float32.

Exported graphs (jax2onnx 0.17.1; opset 13 and 17 give the same graph):

* ``Transpose(NHWC->NCHW)`` on the input, then the whole conv trunk in NCHW: each ``nnx.Conv`` is
  ``Conv(auto_pad="SAME_UPPER", strides, group)`` with an OIHW initializer (no ``pads``, no
  ``Pad`` node); each ``nnx.BatchNorm`` is a ``BatchNormalization`` (4 inputs as initializers,
  ``momentum`` attribute), block sums are ``Add``, ReLU ``Relu``. jax2onnx cancels the per-layer
  Transpose pairs, except in the last block: there each branch ends in its own
  ``Transpose(NCHW->NHWC)`` before the ``Add`` nodes (train: 4 Transposes, deploy: 2).
* head: ``ReduceMean(axes=[1, 2], keepdims=0)`` on NHWC, ``Gemm`` (``nnx.Linear``).
* train repvgg: BatchNormalization 15, Conv 12, Add 9, Relu 6, Transpose 4, ReduceMean 1, Gemm 1;
  deploy: Conv 6, Relu 6, Transpose 2, ReduceMean 1, Gemm 1.
  train acnet: Conv 15, BatchNormalization 15, Add 10, Relu 5, Transpose 4, ReduceMean, Gemm;
  deploy: Conv 5, Relu 5, Transpose 2, ReduceMean, Gemm.

Two jax2onnx 0.17.1 bugs are worked around in ``export_pair`` (``fix_exporter_bugs=False`` keeps
the raw output): ``ReduceMean`` gets ``axes`` as an input at every opset (valid only from 18;
:func:`fix_reduce_axes`), and value_info keeps stale NHWC shapes for tensors that are NCHW after
the Transpose cancellation, so onnxruntime refuses the training form (:func:`fix_value_info`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

import jax.numpy as jnp
from flax import nnx

__all__ = ["NETWORKS", "OPSETS", "INPUT_HW", "NUM_CLASSES", "build", "fuse", "build_pair",
           "export_pair", "fix_reduce_axes", "fix_value_info", "same_pads", "RepVGGBlock", "ACBlock",
           "Net", "predict", "LAYOUT"]

NETWORKS: tuple[str, ...] = ("repvgg", "acnet")
OPSETS: tuple[int, ...] = (13, 17)
INPUT_HW: tuple[int, int] = (32, 32)
LAYOUT = "NHWC"
NUM_CLASSES = 10
BN_EPS = 1e-5

# (in, out, stride, groups) per block
_CFG = {
    "repvgg": [(3, 8, 2, 1),
               (8, 16, 2, 1), (16, 16, 1, 1),
               (16, 32, 2, 2), (32, 32, 1, 4), (32, 32, 1, 1)],
    "acnet": [(3, 8, 2, 1), (8, 16, 1, 1), (16, 16, 2, 2), (16, 32, 1, 1), (32, 32, 2, 1)],
}

# Flax's own random initialisers run eagerly op by op (seconds per shape on CPU); every weight is
# overwritten from numpy anyway, so the layers are created with zeros.
_ZEROS = nnx.initializers.zeros
_List = getattr(nnx, "List", list)  # flax >= 0.12 wants nnx.List for lists of sub-modules


# ---- helpers ---------------------------------------------------------------------------------

def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """(lo, hi) padding of ``padding="SAME"`` (XLA / ONNX SAME_UPPER) on one axis of size n."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _set(var, value) -> None:
    var[...] = jnp.asarray(np.asarray(value, dtype=np.float32))


def _np(var) -> np.ndarray:
    return np.asarray(var[...], dtype=np.float64)


def _conv(rng: np.random.Generator | None, cin: int, cout: int, kernel: tuple[int, int],
          stride: int, groups: int, use_bias: bool) -> nnx.Conv:
    conv = nnx.Conv(cin, cout, kernel_size=kernel, strides=stride, padding="SAME",
                    feature_group_count=groups, use_bias=use_bias, kernel_init=_ZEROS,
                    bias_init=_ZEROS, rngs=nnx.Rngs(0))
    if rng is not None:
        fan_in = kernel[0] * kernel[1] * (cin // groups)
        _set(conv.kernel, rng.standard_normal(conv.kernel.shape) * math.sqrt(2.0 / fan_in))
    return conv


def _bn(rng: np.random.Generator | None, c: int) -> nnx.BatchNorm:
    bn = nnx.BatchNorm(c, use_running_average=True, epsilon=BN_EPS, rngs=nnx.Rngs(0))
    if rng is not None:
        _set(bn.scale, rng.random(c) + 0.5)
        _set(bn.bias, rng.standard_normal(c) * 0.2)
        _set(bn.mean, rng.standard_normal(c) * 0.2)
        _set(bn.var, rng.random(c) * 1.5 + 0.5)
    return bn


def _fold(kernel: np.ndarray, bn: nnx.BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """BN fold in float64: HWIO kernel * (gamma / sigma) on the O axis, bias beta - mu * gamma / sigma."""
    t = _np(bn.scale) / np.sqrt(_np(bn.var) + bn.epsilon)
    return kernel * t, _np(bn.bias) - _np(bn.mean) * t


class ConvBN(nnx.Module):
    def __init__(self, rng, cin, cout, kernel, stride, groups):
        self.kernel_size = tuple(kernel)
        self.conv = _conv(rng, cin, cout, kernel, stride, groups, use_bias=False)
        self.bn = _bn(rng, cout)

    def __call__(self, x):
        return self.bn(self.conv(x))

    def folded(self):
        return _fold(_np(self.conv.kernel), self.bn)


# ---- blocks ------------------------------------------------------------------------------------

class RepVGGBlock(nnx.Module):
    """``relu(BN(conv3x3(x)) + BN(conv1x1(x)) [+ BN(x)])``, all convs SAME; deploy: one 3x3 conv."""

    def __init__(self, rng, cin, cout, stride=1, groups=1, deploy=False):
        self.cin, self.cout, self.stride, self.groups = cin, cout, stride, groups
        if deploy:
            self.rbr_reparam = _conv(rng, cin, cout, (3, 3), stride, groups, use_bias=True)
            return
        self.rbr_reparam = None
        self.rbr_dense = ConvBN(rng, cin, cout, (3, 3), stride, groups)
        self.rbr_1x1 = ConvBN(rng, cin, cout, (1, 1), stride, groups)
        self.rbr_identity = _bn(rng, cin) if (cin == cout and stride == 1) else None

    def __call__(self, x):
        if self.rbr_reparam is not None:
            return nnx.relu(self.rbr_reparam(x))
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return nnx.relu(y)

    def equivalent_kernel_bias(self, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Float64 HWIO 3x3 kernel and bias equal to the block for input size ``hw``."""
        k, b = self.rbr_dense.folded()
        k, b = k.copy(), b.copy()
        k1, b1 = self.rbr_1x1.folded()
        _add_at(k, k1, _offsets(hw, (3, 3), (1, 1), self.stride))
        b += b1
        if self.rbr_identity is not None:
            cpg = self.cin // self.groups
            ident = np.zeros((1, 1, cpg, self.cout))
            ident[0, 0, np.arange(self.cout) % cpg, np.arange(self.cout)] = 1.0
            kid, bid = _fold(ident, self.rbr_identity)
            _add_at(k, kid, _offsets(hw, (3, 3), (1, 1), 1))
            b += bid
        return k, b


class ACBlock(nnx.Module):
    """``relu(BN(conv3x3(x)) + BN(conv1x3(x)) + BN(conv3x1(x)))``, all SAME; deploy: one 3x3 conv."""

    def __init__(self, rng, cin, cout, stride=1, groups=1, deploy=False):
        self.cin, self.cout, self.stride, self.groups = cin, cout, stride, groups
        if deploy:
            self.fused_conv = _conv(rng, cin, cout, (3, 3), stride, groups, use_bias=True)
            return
        self.fused_conv = None
        self.square = ConvBN(rng, cin, cout, (3, 3), stride, groups)
        self.hor = ConvBN(rng, cin, cout, (1, 3), stride, groups)
        self.ver = ConvBN(rng, cin, cout, (3, 1), stride, groups)

    def __call__(self, x):
        if self.fused_conv is not None:
            return nnx.relu(self.fused_conv(x))
        return nnx.relu(self.square(x) + self.hor(x) + self.ver(x))

    def equivalent_kernel_bias(self, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        k, b = self.square.folded()
        k, b = k.copy(), b.copy()
        for branch in (self.hor, self.ver):
            kb, bb = branch.folded()
            _add_at(k, kb, _offsets(hw, (3, 3), branch.kernel_size, self.stride))
            b += bb
        return k, b


def _offsets(hw, big: tuple[int, int], small: tuple[int, int], stride: int) -> tuple[int, int]:
    """Where a SAME ``small`` kernel's window starts inside the SAME ``big`` kernel's window."""
    offs = []
    for n, kb, ks in zip(hw, big, small):
        off = same_pads(n, kb, stride)[0] - same_pads(n, ks, stride)[0]
        if not 0 <= off <= kb - ks:
            raise ValueError(f"a SAME {small} kernel is not inside the SAME {big} window at size {hw}")
        offs.append(off)
    return tuple(offs)


def _add_at(k: np.ndarray, small: np.ndarray, off: tuple[int, int]) -> None:
    k[off[0]:off[0] + small.shape[0], off[1]:off[1] + small.shape[1]] += small


# ---- networks ----------------------------------------------------------------------------------

class Net(nnx.Module):
    """Blocks with ReLU, then mean over H, W (NHWC) and ``nnx.Linear``."""

    def __init__(self, network: str, seed: int = 0, deploy: bool = False):
        if network not in _CFG:
            raise ValueError(f"unknown network {network!r}; expected one of {NETWORKS}")
        self.network, self.deploy = network, deploy
        rng = np.random.default_rng(seed)
        block_cls = RepVGGBlock if network == "repvgg" else ACBlock
        self.blocks = _List([block_cls(rng, *cfg, deploy=deploy) for cfg in _CFG[network]])
        c = _CFG[network][-1][1]
        self.linear = nnx.Linear(c, NUM_CLASSES, kernel_init=_ZEROS, bias_init=_ZEROS, rngs=nnx.Rngs(0))
        _set(self.linear.kernel, rng.standard_normal((c, NUM_CLASSES)) / math.sqrt(c))
        _set(self.linear.bias, rng.standard_normal(NUM_CLASSES) * 0.1)

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return self.linear(jnp.mean(x, axis=(1, 2)))


def build(network: str, *, seed: int = 0, deploy: bool = False) -> Net:
    """Training form (random seeded weights) or an (uninitialised) deploy-form network."""
    return Net(network, seed=seed, deploy=deploy)


def fuse(train: Net, input_hw: Sequence[int] = INPUT_HW) -> Net:
    """Hand-written deploy conversion: a new deploy-form ``Net`` filled from ``train``'s weights.

    The branch offsets inside the 3x3 window follow the SAME pads at ``input_hw`` (see the module
    docstring); the result is exact for every input size with the same pads in every block.
    """
    deploy = Net(train.network, seed=0, deploy=True)
    hw = tuple(int(v) for v in input_hw)
    for tb, db in zip(train.blocks, deploy.blocks):
        k, b = tb.equivalent_kernel_bias(hw)
        conv = db.rbr_reparam if isinstance(db, RepVGGBlock) else db.fused_conv
        assert conv.kernel.shape == k.shape, (conv.kernel.shape, k.shape)
        _set(conv.kernel, k)
        _set(conv.bias, b)
        hw = tuple(-(-n // tb.stride) for n in hw)
    _set(deploy.linear.kernel, _np(train.linear.kernel))
    _set(deploy.linear.bias, _np(train.linear.bias))
    return deploy


def build_pair(network: str, *, seed: int = 0) -> tuple[Net, Net]:
    train = build(network, seed=seed)
    return train, fuse(train)


def predict(network: str, inputs, *, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Flax's own outputs of the training form and of the deploy form (fused for ``INPUT_HW``) on
    each NHWC input (any spatial size)."""
    train, deploy = build_pair(network, seed=seed)
    return [np.asarray(train(jnp.asarray(x))) for x in inputs], [np.asarray(deploy(jnp.asarray(x))) for x in inputs]


def export_pair(network: str, out_dir, *, opset: int = 13, seed: int = 0,
                dynamic_spatial: bool = False, fix_exporter_bugs: bool = True) -> tuple[Path, Path]:
    """Export (training form, hand-fused deploy form) with ``jax2onnx.to_onnx``; NHWC input
    ``("B", 32, 32, 3)`` (``("B", "8*h", "8*w", 3)`` with ``dynamic_spatial``).

    ``fix_exporter_bugs=False`` writes jax2onnx's output untouched: at opsets < 18 its
    ``ReduceMean`` is invalid and its value_info is stale, so onnxruntime cannot load it
    (:func:`fix_reduce_axes`, :func:`fix_value_info`).
    """
    from jax2onnx import to_onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, deploy = build_pair(network, seed=seed)
    if dynamic_spatial:
        # plain ("B", "H", "W", 3) fails in JAX's shape check (see the module docstring); the
        # dims must be declared as multiples of 2**(number of stride-2 blocks)
        f = 2 ** sum(1 for cfg in _CFG[network] if cfg[2] == 2)
        spec = [("B", f"{f}*h", f"{f}*w", 3)]
    else:
        spec = [("B", *INPUT_HW, 3)]
    tag = f"flax_{network}_op{opset}{'_dynhw' if dynamic_spatial else ''}"
    paths = []
    for form, model in (("train", train), ("deploy", deploy)):
        path = out_dir / f"{tag}_{form}.onnx"
        proto = to_onnx(model, spec, opset=opset, model_name=f"{tag}_{form}", return_mode="proto",
                        input_names=["input"], output_names=["logits"])
        if fix_exporter_bugs:
            proto = fix_value_info(fix_reduce_axes(proto))
        onnx.save(proto, str(path))
        paths.append(path)
    return paths[0], paths[1]


def fix_reduce_axes(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Work around a jax2onnx 0.17.1 bug: ``jnp.mean`` is always exported as
    ``ReduceMean(x, axes)`` with ``axes`` as an input (the opset-18 form), also at opsets < 18,
    where ``axes`` must be an attribute (onnx.checker / onnxruntime reject the model:
    "Node(ReduceMean_0) with schema(::ReduceMean:13) has input size 2 not in range [min=1, max=1]").
    Moves a constant ``axes`` input into the attribute (in place) and drops the unused initializer.
    """
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 18:
        return model
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    moved = set()
    for node in g.node:
        if node.op_type in _AXES_ATTR_BELOW_18 and len(node.input) == 2 and node.input[1] in inits:
            axes = onnx.numpy_helper.to_array(inits[node.input[1]]).astype(np.int64).tolist()
            moved.add(node.input[1])
            del node.input[1]
            node.attribute.append(onnx.helper.make_attribute("axes", axes))
    still_used = {i for n in g.node for i in n.input}
    for name in moved - still_used:
        g.initializer.remove(inits[name])
        for vi in [v for v in g.value_info if v.name == name]:
            g.value_info.remove(vi)
    return model


def fix_value_info(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Work around a second jax2onnx 0.17.1 bug: after its Transpose cancellation, value_info
    still carries the NHWC shapes of tensors that are NCHW now (e.g. ``add_out_0`` declared
    ``(B, 16, 16, 8)``, really ``(B, 8, 16, 16)``), and onnxruntime refuses the training form:
    "Node (node_Add_44) Op (Add) [ShapeInferenceError] Incompatible dimensions". Drops all
    value_info and re-runs ONNX shape inference (in place)."""
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.value_info.extend(inferred.graph.value_info)
    return model


# reductions whose ``axes`` became an input only at opset 18 (ReduceSum already at 13)
_AXES_ATTR_BELOW_18 = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                       "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


if __name__ == "__main__":  # op histograms of the exports: python -m models.frameworks.flax_nets
    import collections
    import sys
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as d:
        for net in NETWORKS:
            for opset in OPSETS:
                for dyn in (False, True):
                    t0 = time.perf_counter()
                    paths = export_pair(net, d, opset=opset, dynamic_spatial=dyn)
                    dt = time.perf_counter() - t0
                    for p in paths:
                        g = onnx.load(p).graph
                        hist = collections.Counter(n.op_type for n in g.node)
                        print(f"{p.name}: {len(g.node)} nodes {dict(sorted(hist.items()))}")
                    print(f"  export_pair {dt:.2f}s", file=sys.stderr)
