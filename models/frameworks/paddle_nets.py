"""RepVGG / ACNet reference networks in PaddlePaddle, exported with paddle2onnx.

Versions: paddlepaddle 3.3.1 (CPU), paddle2onnx 2.1.0, which pins ``onnx>=1.16.1,<=1.17.0`` and
``onnxoptimizer==0.3.13`` but runs with onnx 1.23 and onnxoptimizer 0.4 (its converter is C++; the
``frameworks`` extra leaves it out and ``.ci/run`` installs it with ``--no-deps``), polygraphy 0.53;
numpy 2.4, protobuf 7, onnxruntime 1.32. PaddlePaddle and TensorFlow crash each other in one process
(a segmentation fault): ``python -m models.frameworks`` exports each framework in its own.

Export path: ``paddle.onnx.export`` (= ``paddle2onnx.dygraph2onnx``: ``paddle.jit.save`` to a PIR
``.json`` + ``.pdiparams`` program, the C++ converter, then polygraphy constant folding). It logs
conversion errors instead of raising, so ``export_pair`` checks that the file was written. Opsets
7..21 export; 22+ makes the C++ converter abort the whole process (SIGABRT, "The Opset Version must
be between 7 and 21"), so ``export_pair`` refuses them. The file has exactly the requested opset (IR 7
for opset 13, IR 8 for 17), an empty producer name, input ``x`` and output ``fetch_name_0``; the batch
dim is ``dim_param "DynamicDimension.0"``, ``dynamic_spatial=True`` adds ``DynamicDimension.1/.2``.

Layout: NCHW, as Paddle's default; no Transposes anywhere. ``Conv2D`` weights are ``[out, in/groups,
kh, kw]`` (as PyTorch), ``Linear`` weights ``[in, out]``.

Networks (input ``Nx3x32x32``, 10 classes):

* ``repvgg``: RepVGG blocks ``ReLU(BN(conv3x3) + BN(conv1x1) [+ BN(x)])``. The stride-2 blocks use
  ``padding="SAME"`` on both branches, as a Paddle/TF user writes them: on an even input the 3x3
  gets pads (top, left, bottom, right) = (0, 0, 1, 1) and the 1x1 none, so the 1x1 tap lands on the
  TOP-LEFT of the 3x3 window, not its centre. The stride-1 blocks use ``padding=1`` / ``0``. Blocks:
  stem 3->8 s2; 8->16 s2, 16->16 g2 (+id), 16->16 (+id); 16->32 s2 g4, 32->32 g4 (+id).
* ``acnet``: ACBs ``ReLU(BN(conv3x3) + BN(conv1x3) + BN(conv3x1))`` with int paddings (1, [0, 1],
  [1, 0]), except the third block (stride 2, ``padding="SAME"`` on all three: the 1x3 / 3x1 land on
  the top row / left column of the 3x3). Blocks: 3->8 s2, 8->16, 16->16 s2 SAME, 16->32 g2, 32->32 s2 g4.

Head: ``AdaptiveAvgPool2D(1)`` + ``paddle.flatten(x, 1)`` + ``Linear``. BN weight/bias/mean/variance
are random (seeded numpy RNG, as ``models.common.randomize_bn_``), conv/linear weights random.

Exported graph (same for opsets 13 and 17, static or dynamic H, W): per branch ``Conv`` (no bias
input) -> ``BatchNormalization``; the branch sum is ``Add`` -> ``Identity`` (paddle2onnx writes an
Identity after every Add) -> ``Relu``. Int paddings become explicit ``pads``; ``"SAME"`` becomes
``auto_pad="SAME_UPPER"`` even when H, W are static. Head: ``GlobalAveragePool`` -> ``Shape`` ->
``Slice`` -> ``Concat`` -> ``Reshape`` (the flatten) -> ``MatMul`` -> ``Add`` -> ``Identity``. The deploy
form has per block ``Conv`` (no bias input) -> ``Add`` (bias as a ``[1, C, 1, 1]`` initializer) ->
``Identity`` -> ``Relu``: paddle2onnx does not put a Conv2D bias into the ONNX Conv. No Transpose, Pad,
Mul or Gemm nodes.

Caveat: the SAME-padded stride-2 fusion is only valid for EVEN block inputs (on an odd input SAME pads
(1, 1) and the 1x1 tap moves to the centre). With ``dynamic_spatial=True`` the deploy file is thus
exact only for sizes divisible by 8 (``repvgg``) / 4 (``acnet``); the training form is right for all.

The deploy form is fused here by hand in float64 numpy (BN fold, 1x1 padded into the 3x3 at the tap
the paddings give, identity as a grouped kernel, 1x3 / 3x1 added to the aligned row / column).
This module imports paddle and paddle2onnx lazily and never imports torch (importing it as
``models.frameworks.paddle_nets`` runs ``models/__init__``, which does).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["NETWORKS", "OPSETS", "INPUT_SHAPE", "INPUT_HW", "LAYOUT", "build", "export_pair", "fuse", "predict",
           "same_pads"]

NETWORKS = ("repvgg", "acnet")
OPSETS = (13, 17)                 # the tested ones; export_pair accepts 7..21
_MIN_OPSET, _MAX_OPSET = 7, 21
INPUT_SHAPE = (1, 3, 32, 32)
INPUT_HW = INPUT_SHAPE[2:]
LAYOUT = "NCHW"
NUM_CLASSES = 10

# (in, out, stride, groups, padding of the stride-2 blocks: "SAME" or 1); identity when in==out, s==1
_REPVGG = [(3, 8, 2, 1, "SAME"),
           (8, 16, 2, 1, "SAME"), (16, 16, 1, 2, 1), (16, 16, 1, 1, 1),
           (16, 32, 2, 4, "SAME"), (32, 32, 1, 4, 1)]
# (in, out, stride, groups, padding: "SAME" or 1)
_ACNET = [(3, 8, 2, 1, 1), (8, 16, 1, 1, 1), (16, 16, 2, 1, "SAME"), (16, 32, 1, 2, 1),
          (32, 32, 2, 4, 1)]


def same_pads(k: int, s: int, n: int) -> tuple[int, int]:
    """(before, after) padding of Paddle's / TF's "SAME" along a dim of size ``n``."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _pads(padding, kh: int, kw: int, s: int, h: int, w: int) -> tuple[int, int]:
    """Top and left padding of a conv given its Paddle ``padding`` argument and input size."""
    if isinstance(padding, str):
        assert padding.upper() == "SAME"
        return same_pads(kh, s, h)[0], same_pads(kw, s, w)[0]
    if isinstance(padding, int):
        return padding, padding
    ph, pw = padding
    return ph, pw


def _paddle():
    import paddle  # noqa: PLC0415 (lazy: only where paddle is installed)
    return paddle


# ---- layers -------------------------------------------------------------------------------------
def _layers():
    paddle = _paddle()
    nn = paddle.nn

    class ConvBN(nn.Layer):
        def __init__(self, cin, cout, k, stride, padding, groups):
            super().__init__()
            self.conv = nn.Conv2D(cin, cout, k, stride=stride, padding=padding, groups=groups,
                                  bias_attr=False)
            self.bn = nn.BatchNorm2D(cout)
            self.padding = padding

        def forward(self, x):
            return self.bn(self.conv(x))

    class RepVGGBlock(nn.Layer):
        def __init__(self, cin, cout, stride, groups, padding, deploy=False):
            super().__init__()
            self.cin, self.cout, self.stride, self.groups = cin, cout, stride, groups
            self.padding = padding                       # of the 3x3 (and of the deploy conv)
            self.padding_1x1 = "SAME" if isinstance(padding, str) else 0
            self.act = nn.ReLU()
            if deploy:
                self.rbr_reparam = nn.Conv2D(cin, cout, 3, stride=stride, padding=padding,
                                             groups=groups)
                return
            self.rbr_dense = ConvBN(cin, cout, 3, stride, padding, groups)
            self.rbr_1x1 = ConvBN(cin, cout, 1, stride, self.padding_1x1, groups)
            self.rbr_identity = nn.BatchNorm2D(cin) if cin == cout and stride == 1 else None

        def forward(self, x):
            if hasattr(self, "rbr_reparam"):
                return self.act(self.rbr_reparam(x))
            y = self.rbr_dense(x) + self.rbr_1x1(x)
            if self.rbr_identity is not None:
                y = y + self.rbr_identity(x)
            return self.act(y)

    class ACBlock(nn.Layer):
        def __init__(self, cin, cout, stride, groups, padding, deploy=False):
            super().__init__()
            self.cin, self.cout, self.stride, self.groups = cin, cout, stride, groups
            self.padding = padding
            if isinstance(padding, str):
                hor_pad = ver_pad = padding
            else:
                hor_pad, ver_pad = [0, padding], [padding, 0]
            self.hor_padding, self.ver_padding = hor_pad, ver_pad
            self.act = nn.ReLU()
            if deploy:
                self.fused_conv = nn.Conv2D(cin, cout, 3, stride=stride, padding=padding,
                                            groups=groups)
                return
            self.square = ConvBN(cin, cout, (3, 3), stride, padding, groups)
            self.hor = ConvBN(cin, cout, (1, 3), stride, hor_pad, groups)
            self.ver = ConvBN(cin, cout, (3, 1), stride, ver_pad, groups)

        def forward(self, x):
            if hasattr(self, "fused_conv"):
                return self.act(self.fused_conv(x))
            return self.act(self.square(x) + self.hor(x) + self.ver(x))

    class Net(nn.Layer):
        def __init__(self, block, cfg, deploy=False):
            super().__init__()
            self.blocks = nn.LayerList([block(cin, cout, s, g, p, deploy=deploy)
                                        for (cin, cout, s, g, p) in cfg])
            self.gap = nn.AdaptiveAvgPool2D(1)
            self.linear = nn.Linear(cfg[-1][1], NUM_CLASSES)

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.linear(paddle.flatten(self.gap(x), 1))

    return RepVGGBlock, ACBlock, Net


# ---- weights ------------------------------------------------------------------------------------
def _randomize(net, seed: int) -> None:
    """Random conv / linear weights and random BN affine + running statistics (seeded numpy)."""
    paddle = _paddle()
    rng = np.random.default_rng(seed)
    for _, layer in net.named_sublayers(include_self=True):
        if isinstance(layer, paddle.nn.BatchNorm2D):
            n = layer.weight.shape[0]
            layer.weight.set_value(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.bias.set_value((rng.standard_normal(n) * 0.2).astype("float32"))
            layer._mean.set_value((rng.standard_normal(n) * 0.2).astype("float32"))
            layer._variance.set_value(rng.uniform(0.5, 2.0, n).astype("float32"))
        elif isinstance(layer, (paddle.nn.Conv2D, paddle.nn.Linear)):
            w = layer.weight
            fan_in = int(np.prod(w.shape[1:])) if isinstance(layer, paddle.nn.Conv2D) else w.shape[0]
            w.set_value((rng.standard_normal(w.shape) / np.sqrt(fan_in)).astype("float32"))
            if layer.bias is not None:
                layer.bias.set_value((rng.standard_normal(layer.bias.shape) * 0.1).astype("float32"))


def _np(t) -> np.ndarray:
    return np.asarray(t.numpy(), dtype=np.float64)


def _bn_scale_shift(bn) -> tuple[np.ndarray, np.ndarray]:
    t = _np(bn.weight) / np.sqrt(_np(bn._variance) + float(bn._epsilon))
    return t, _np(bn.bias) - _np(bn._mean) * t


def _fold(conv_bn) -> tuple[np.ndarray, np.ndarray]:
    t, b = _bn_scale_shift(conv_bn.bn)
    return _np(conv_bn.conv.weight) * t[:, None, None, None], b


def _place(kernel: np.ndarray, small: np.ndarray, top: int, left: int) -> None:
    """Add ``small`` (a kh x kw kernel) into the 3x3 ``kernel`` with its (0, 0) tap at (top, left)."""
    kh, kw = small.shape[2:]
    assert 0 <= top and top + kh <= 3 and 0 <= left and left + kw <= 3, (top, left, kh, kw)
    kernel[:, :, top:top + kh, left:left + kw] += small


def _fuse_repvgg(b, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    p3 = _pads(b.padding, 3, 3, b.stride, h, w)
    p1 = _pads(b.padding_1x1, 1, 1, b.stride, h, w)
    kernel, bias = _fold(b.rbr_dense)
    k1, b1 = _fold(b.rbr_1x1)
    # the 1x1 reads input row s*i - p1; the 3x3 window starts at s*i - p3: tap p3 - p1
    _place(kernel, k1, p3[0] - p1[0], p3[1] - p1[1])
    bias = bias + b1
    if b.rbr_identity is not None:
        t, bid = _bn_scale_shift(b.rbr_identity)
        cin_g = b.cin // b.groups
        ident = np.zeros((b.cout, cin_g, 1, 1))
        ident[np.arange(b.cout), np.arange(b.cout) % cin_g, 0, 0] = t
        _place(kernel, ident, p3[0], p3[1])       # output pixel i reads input pixel i (stride 1)
        bias = bias + bid
    return kernel, bias


def _fuse_acnet(b, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    p3 = _pads(b.padding, 3, 3, b.stride, h, w)
    ph = _pads(b.hor_padding, 1, 3, b.stride, h, w)
    pv = _pads(b.ver_padding, 3, 1, b.stride, h, w)
    kernel, bias = _fold(b.square)
    kh, bh = _fold(b.hor)
    kv, bv = _fold(b.ver)
    _place(kernel, kh, p3[0] - ph[0], p3[1] - ph[1])
    _place(kernel, kv, p3[0] - pv[0], p3[1] - pv[1])
    return kernel, bias + bh + bv


def fuse(train_net, deploy_net, input_hw=INPUT_SHAPE[2:]) -> None:
    """Fill ``deploy_net`` (one conv with bias per block) from ``train_net`` in float64 numpy; the
    input size fixes the taps of "SAME"-padded stride-2 blocks (any even size gives the same)."""
    h, w = input_hw
    for tb, db in zip(train_net.blocks, deploy_net.blocks):
        if hasattr(tb, "rbr_dense"):
            kernel, bias = _fuse_repvgg(tb, h, w)
            conv = db.rbr_reparam
        else:
            kernel, bias = _fuse_acnet(tb, h, w)
            conv = db.fused_conv
        conv.weight.set_value(kernel.astype("float32"))
        conv.bias.set_value(bias.astype("float32"))
        h, w = -(-h // tb.stride), -(-w // tb.stride)
    deploy_net.linear.weight.set_value(train_net.linear.weight.numpy())
    deploy_net.linear.bias.set_value(train_net.linear.bias.numpy())


def build(network: str, seed: int = 0):
    """``(train_net, deploy_net)`` in eval mode, the deploy one fused from the seeded training one."""
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; known: {NETWORKS}")
    paddle = _paddle()
    paddle.set_device("cpu")
    paddle.seed(seed)
    RepVGGBlock, ACBlock, Net = _layers()
    block, cfg = (RepVGGBlock, _REPVGG) if network == "repvgg" else (ACBlock, _ACNET)
    train, deploy = Net(block, cfg), Net(block, cfg, deploy=True)
    _randomize(train, seed)
    fuse(train, deploy, INPUT_SHAPE[2:])
    train.eval()
    deploy.eval()
    return train, deploy


def predict(network: str, inputs, *, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Paddle's own outputs of the training form and of the deploy form (fused for ``INPUT_HW``)
    on each NCHW input (any spatial size)."""
    paddle = _paddle()
    train, deploy = build(network, seed)
    with paddle.no_grad():
        return ([train(paddle.to_tensor(x)).numpy() for x in inputs],
                [deploy(paddle.to_tensor(x)).numpy() for x in inputs])


def _export(net, path: Path, opset: int, dynamic_spatial: bool) -> None:
    paddle = _paddle()
    import paddle2onnx  # noqa: F401,PLC0415 (fail early and clearly if it is missing)
    shape = [None, 3, None, None] if dynamic_spatial else [None, *INPUT_SHAPE[1:]]
    spec = [paddle.static.InputSpec(shape=shape, dtype="float32", name="x")]
    prefix = str(path)[:-len(".onnx")]
    if path.exists():
        path.unlink()
    paddle.onnx.export(net, prefix, input_spec=spec, opset_version=opset)
    if not path.exists():  # paddle2onnx logs conversion errors instead of raising them
        raise RuntimeError(f"paddle2onnx did not write {path} (opset {opset}); see its log above")


def export_pair(network: str, out_dir, *, opset: int = 13, seed: int = 0,
                dynamic_spatial: bool = False) -> tuple[Path, Path]:
    """Write ``paddle_<network>_op<opset>[_dyn]_{train,deploy}.onnx`` into ``out_dir``."""
    if not _MIN_OPSET <= opset <= _MAX_OPSET:  # outside, paddle2onnx aborts the process
        raise ValueError(f"paddle2onnx 2.1 exports opsets {_MIN_OPSET}..{_MAX_OPSET}, not {opset}")
    train, deploy = build(network, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"paddle_{network}_op{opset}{'_dyn' if dynamic_spatial else ''}"
    paths = (out_dir / f"{stem}_train.onnx", out_dir / f"{stem}_deploy.onnx")
    for net, p in zip((train, deploy), paths):
        _export(net, p, opset, dynamic_spatial)
    return paths


if __name__ == "__main__":  # python -m models.frameworks.paddle_nets OUT_DIR
    import sys
    for _net in NETWORKS:
        for _op in OPSETS:
            print(export_pair(_net, sys.argv[1] if len(sys.argv) > 1 else os.getcwd(), opset=_op))
