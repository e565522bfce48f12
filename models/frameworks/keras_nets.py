"""RepVGG / ACNet reference networks in TensorFlow-Keras, exported with tf2onnx.

Tested with tensorflow-cpu 2.21.0 (Keras 3.15.1, TF backend) and tf2onnx 1.17.0 (onnx 1.23.2,
protobuf 7.36, numpy 2.4; nothing of the project's dependency set is up- or downgraded by them).
Export: ``tf2onnx.convert.from_keras(model, input_signature, opset)``; ``OPSETS`` = 13 and 17 (the
targets; 11 and 18 export and run as well, tf2onnx 1.17 refuses opset > 18: "Opset 21 is not
supported yet").

Layout: native Keras, NHWC (``channels_last``); kernels are ``(kh, kw, in/groups, out)``. Every conv
uses ``padding="same"`` as a Keras user writes it, so on an even input a stride-2 3x3 conv pads
(top, left, bottom, right) = (0, 0, 1, 1) and its stride-2 1x1 / 1x3 / 3x1 siblings pad nothing
along the strided axes: those branches line up with kernel tap 0 (top row / left column) of the 3x3,
not with its centre. The hand-written deploy fusion (:func:`to_deploy`) therefore places a 1x1
kernel, and ACNet's 1x3 / 3x1 kernels, at the tap ``pad(3x3) - pad(k)`` TF's SAME rule gives for
the block's input size: 1 (centre) for stride 1, 0 for stride 2 on an even size, 1 for stride 2 on
an odd size. The deploy form is fused for ``INPUT_HW`` (32x32) unless ``to_deploy(input_hw=...)``
says otherwise; with ``dynamic_spatial=True`` it equals the training form for every size whose
stride-2 block inputs have the same parity as in the fused size: for 32x32, multiples of 16 (repvgg,
4 stride-2 levels) / 8 (acnet, 3). On other sizes (e.g. 40, 33) it is off by ~1.5 (max|y| ~4): the
training form's SAME alignment moves with the input size, one fixed kernel cannot follow it.
BatchNormalization uses Keras' default ``epsilon=1e-3`` with random gamma / beta / moving stats.

Grouped convs: Keras 3 runs ``Conv2D(groups>1)`` through ``@tf.function(jit_compile=True)``
(CPU workaround in ``keras/src/backend/tensorflow/nn.py::conv``); tf2onnx cannot inline that XLA
function and writes an unrunnable ``StatefulPartitionedCall`` node ("Tensorflow op [...]:
StatefulPartitionedCall] is not supported", tensorflow-onnx issue #2099, still open). During
export only, :func:`_traceable_grouped_convs` gives each grouped ``Conv2D`` instance a plain
``tf.nn.convolution`` ``convolution_op`` (the workaround from that issue); tf2onnx then writes
an ONNX ``Conv`` with ``group``. The model's own (eager) outputs keep using Keras' XLA path.

Exported graphs (tf2onnx with its default optimizers; opset_import also lists ai.onnx.ml v2):
input ``input`` [unk__N, 32, 32, 3] (NHWC, batch a tf2onnx dim_param; H, W too if dynamic), one
``Transpose`` perm [0,3,1,2] after the input (the transpose optimizer pushes every other layout change
out), then NCHW ``Conv`` nodes with explicit ``pads`` when H, W are static ([0,0,1,1] on stride-2 3x3,
[0,0,0,1] / [0,0,1,0] on stride-2 1x3 / 3x1, [0,0,0,0] on stride-2 1x1) and ``auto_pad=SAME_UPPER``
when they are dynamic. Keras 3 BN is ``tf.nn.batch_normalization`` arithmetic (Mul + Add by constants,
not FusedBatchNormV3); tf2onnx folds the BN after a conv into that ``Conv``'s weights and bias, so
each training branch is already a ``Conv`` with bias; RepVGG's identity BN stays a per-channel ``Mul``
+ ``Add`` ([1,C,1,1] constants) on the block input. Branch sums are ``Add`` chains, then ``Relu``; the
head is ``GlobalAveragePool`` + ``Squeeze`` + ``MatMul`` + ``Add``.
  repvgg train: Add 17, Conv 16, Relu 8, Mul 4, Transpose, GlobalAveragePool, Squeeze, MatMul (49 nodes)
  repvgg deploy: Conv 8, Relu 8, Transpose, GlobalAveragePool, Squeeze, MatMul, Add (21 nodes)
  acnet train: Conv 15, Add 11, Relu 5, Transpose, GlobalAveragePool, Squeeze, MatMul (35 nodes)
  acnet deploy: Conv 5, Relu 5, Transpose, GlobalAveragePool, Squeeze, MatMul, Add (15 nodes)
Opsets 13 and 17 give the same graphs. One ``export_pair`` takes ~1.2-2.7 s (2 cores), after ~5 s to
import TensorFlow.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402  (after TF_CPP_MIN_LOG_LEVEL)
import tensorflow as tf  # noqa: E402

__all__ = ["NETWORKS", "OPSETS", "INPUT_HW", "NUM_CLASSES", "REPVGG_BLOCKS", "ACNET_BLOCKS", "build",
           "to_deploy", "export_model", "export_pair", "predict", "versions", "LAYOUT"]

NETWORKS = ("repvgg", "acnet")
OPSETS = (13, 17)
INPUT_HW = (32, 32)
LAYOUT = "NHWC"
NUM_CLASSES = 10
BN_EPS = 1e-3  # keras.layers.BatchNormalization default

# (name, in_channels, out_channels, stride, groups)
REPVGG_BLOCKS = (
    ("stage0", 3, 8, 2, 1),      # stem: 3x3 + 1x1, no identity (channels change)
    ("stage1_0", 8, 16, 2, 1),
    ("stage1_1", 16, 16, 1, 2),  # identity BN, grouped
    ("stage2_0", 16, 32, 2, 2),  # stride 2, grouped 3x3 and 1x1
    ("stage2_1", 32, 32, 1, 1),
    ("stage2_2", 32, 32, 1, 4),  # g4 with identity
    ("stage3_0", 32, 32, 2, 4),  # in == out but stride 2: no identity
    ("stage3_1", 32, 32, 1, 1),
)
ACNET_BLOCKS = (
    ("acb0", 3, 8, 2, 1),
    ("acb1", 8, 16, 1, 1),
    ("acb2", 16, 16, 2, 2),      # grouped, stride 2
    ("acb3", 16, 32, 2, 1),
    ("acb4", 32, 32, 1, 4),      # grouped, stride 1
)
_BLOCKS = {"repvgg": REPVGG_BLOCKS, "acnet": ACNET_BLOCKS}


def versions() -> dict[str, str]:
    import onnx
    import tf2onnx
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__}


# ---- training / deploy forms -----------------------------------------------------------------------
def _conv(filters, kernel, stride, groups, name, bias=False):
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", groups=groups,
                               use_bias=bias, name=name)


def _bn(name):
    return keras.layers.BatchNormalization(epsilon=BN_EPS, name=name)


def _repvgg_block(x, name, cin, cout, stride, groups, deploy):
    if deploy:
        y = _conv(cout, 3, stride, groups, f"{name}_reparam", bias=True)(x)
    else:
        branches = [_bn(f"{name}_dense_bn")(_conv(cout, 3, stride, groups, f"{name}_dense_conv")(x)),
                    _bn(f"{name}_1x1_bn")(_conv(cout, 1, stride, groups, f"{name}_1x1_conv")(x))]
        if cin == cout and stride == 1:
            branches.append(_bn(f"{name}_identity_bn")(x))
        y = keras.layers.Add(name=f"{name}_add")(branches)
    return keras.layers.ReLU(name=f"{name}_relu")(y)


def _acnet_block(x, name, cin, cout, stride, groups, deploy):
    if deploy:
        y = _conv(cout, 3, stride, groups, f"{name}_fused_conv", bias=True)(x)
    else:
        y = keras.layers.Add(name=f"{name}_add")([
            _bn(f"{name}_square_bn")(_conv(cout, (3, 3), stride, groups, f"{name}_square_conv")(x)),
            _bn(f"{name}_ver_bn")(_conv(cout, (3, 1), stride, groups, f"{name}_ver_conv")(x)),
            _bn(f"{name}_hor_bn")(_conv(cout, (1, 3), stride, groups, f"{name}_hor_conv")(x)),
        ])
    return keras.layers.ReLU(name=f"{name}_relu")(y)


def _randomize(model: keras.Model, seed: int) -> None:
    """Seeded random weights; BN gets non-trivial gamma / beta / moving mean / moving var (> 0)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            k = layer.kernel.shape
            w = [rng.normal(0.0, math.sqrt(2.0 / (k[0] * k[1] * k[2])) / math.sqrt(3), size=k)]
            if layer.use_bias:
                w.append(rng.normal(0.0, 0.1, size=(k[3],)))
            layer.set_weights([a.astype(np.float32) for a in w])
        elif isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c).astype(np.float32),    # gamma
                               rng.normal(0.0, 0.2, c).astype(np.float32),     # beta
                               rng.normal(0.0, 0.3, c).astype(np.float32),     # moving_mean
                               rng.uniform(0.5, 2.0, c).astype(np.float32)])   # moving_variance
        elif isinstance(layer, keras.layers.Dense):
            n_in, n_out = layer.kernel.shape
            layer.set_weights([rng.normal(0.0, 1.0 / math.sqrt(n_in), (n_in, n_out)).astype(np.float32),
                               rng.normal(0.0, 0.1, n_out).astype(np.float32)])


def build(network: str, *, deploy: bool = False, seed: int = 0, dynamic_spatial: bool = False) -> keras.Model:
    """The training form (random seeded weights), or an unfilled deploy form (``deploy=True``)."""
    if network not in _BLOCKS:
        raise ValueError(f"unknown network {network!r}; expected one of {NETWORKS}")
    block = _repvgg_block if network == "repvgg" else _acnet_block
    hw = (None, None) if dynamic_spatial else INPUT_HW
    inp = keras.Input((*hw, 3), name="input")
    x = inp
    for name, cin, cout, stride, groups in _BLOCKS[network]:
        x = block(x, name, cin, cout, stride, groups, deploy)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(NUM_CLASSES, name="linear")(x)
    model = keras.Model(inp, out, name=f"{network}_{'deploy' if deploy else 'train'}")
    if not deploy:
        _randomize(model, seed)
    return model


# ---- hand-written deploy fusion (float64 numpy) ------------------------------------------------------
def _same_pad_before(size: int, k: int, s: int) -> int:
    """TF / Keras ``padding="same"``: padding before the data (the extra one goes after)."""
    out = -(-size // s)
    return max((out - 1) * s + k - size, 0) // 2


def _fold_bn(kernel, bn: keras.layers.BatchNormalization):
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
    t = gamma / np.sqrt(var + bn.epsilon)
    return np.asarray(kernel, np.float64) * t, beta - mean * t   # kernel's last axis is "out"


def _identity_kernel(channels: int, groups: int, tap: tuple[int, int]) -> np.ndarray:
    cg = channels // groups
    k = np.zeros((3, 3, cg, channels))
    for o in range(channels):
        k[tap[0], tap[1], o % cg, o] = 1.0
    return k


def to_deploy(train: keras.Model, network: str, *, input_hw: tuple[int, int] = INPUT_HW,
              dynamic_spatial: bool = False) -> keras.Model:
    """Deploy form (one 3x3 conv with bias per block) filled from ``train``'s weights.

    The fusion is computed in float64 and cast to float32. Branch taps follow TF's SAME padding for
    the block's input size, starting from ``input_hw`` (see the module docstring).
    """
    deploy = build(network, deploy=True, dynamic_spatial=dynamic_spatial)
    L = train.get_layer
    h, w = input_hw
    for name, cin, cout, stride, groups in _BLOCKS[network]:
        # tap of a k-wide branch inside the 3-wide window, per axis
        tap_h = _same_pad_before(h, 3, stride) - _same_pad_before(h, 1, stride)
        tap_w = _same_pad_before(w, 3, stride) - _same_pad_before(w, 1, stride)
        if network == "repvgg":
            kernel, bias = _fold_bn(L(f"{name}_dense_conv").kernel.numpy(), L(f"{name}_dense_bn"))
            k1, b1 = _fold_bn(L(f"{name}_1x1_conv").kernel.numpy(), L(f"{name}_1x1_bn"))
            kernel[tap_h, tap_w] += k1[0, 0]
            bias = bias + b1
            if cin == cout and stride == 1:
                kid, bid = _fold_bn(_identity_kernel(cin, groups, (tap_h, tap_w)), L(f"{name}_identity_bn"))
                kernel += kid
                bias = bias + bid
            layer = deploy.get_layer(f"{name}_reparam")
        else:
            kernel, bias = _fold_bn(L(f"{name}_square_conv").kernel.numpy(), L(f"{name}_square_bn"))
            kv, bv = _fold_bn(L(f"{name}_ver_conv").kernel.numpy(), L(f"{name}_ver_bn"))   # (3, 1)
            kh, bh = _fold_bn(L(f"{name}_hor_conv").kernel.numpy(), L(f"{name}_hor_bn"))   # (1, 3)
            kernel[:, tap_w:tap_w + 1] += kv     # 3x1 on column tap_w
            kernel[tap_h:tap_h + 1, :] += kh     # 1x3 on row tap_h
            bias = bias + bv + bh
            layer = deploy.get_layer(f"{name}_fused_conv")
        layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        h, w = -(-h // stride), -(-w // stride)
    deploy.get_layer("linear").set_weights(train.get_layer("linear").get_weights())
    return deploy


def predict(network: str, inputs, *, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Keras' own outputs of the training form and of the deploy form (fused for ``INPUT_HW``) on
    each NHWC input (any spatial size)."""
    train = build(network, seed=seed, dynamic_spatial=True)
    deploy = to_deploy(train, network, dynamic_spatial=True)
    run = lambda m, x: np.asarray(m(x, training=False))  # noqa: E731
    return [run(train, x) for x in inputs], [run(deploy, x) for x in inputs]


# ---- ONNX export -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _traceable_grouped_convs(model: keras.Model):
    """Route grouped ``Conv2D`` layers through plain ``tf.nn.convolution`` while tracing.

    Keras 3 wraps grouped convs in an XLA ``tf.function`` that tf2onnx leaves as an unsupported
    ``StatefulPartitionedCall`` (tensorflow-onnx #2099). The instance attribute shadows
    ``Conv2D.convolution_op`` and is removed afterwards.
    """
    patched = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.groups > 1:
            def op(inputs, kernel, _l=layer):
                return tf.nn.convolution(inputs, kernel, strides=list(_l.strides), padding=_l.padding.upper(),
                                         dilations=list(_l.dilation_rate), data_format="NHWC")
            object.__setattr__(layer, "convolution_op", op)
            patched.append(layer)
    try:
        yield
    finally:
        for layer in patched:
            object.__delattr__(layer, "convolution_op")


def export_model(model: keras.Model, path: str | os.PathLike, *, opset: int = 13,
                 dynamic_spatial: bool = False) -> Path:
    """``tf2onnx.convert.from_keras`` with a dynamic batch dim (and dynamic H, W if asked)."""
    import tf2onnx

    hw = (None, None) if dynamic_spatial else INPUT_HW
    spec = (tf.TensorSpec((None, *hw, 3), tf.float32, name="input"),)
    path = Path(path)
    with _traceable_grouped_convs(model):
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=str(path))
    return path


def export_pair(network: str, out_dir, *, opset: int = 13, seed: int = 0,
                dynamic_spatial: bool = False) -> tuple[Path, Path]:
    """Export the training form and its hand-fused deploy form (same seeded weights) with tf2onnx."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = build(network, seed=seed, dynamic_spatial=dynamic_spatial)
    deploy = to_deploy(train, network, dynamic_spatial=dynamic_spatial)
    stem = f"keras_{network}_op{opset}{'_dyn' if dynamic_spatial else ''}_s{seed}"
    return (export_model(train, out_dir / f"{stem}_train.onnx", opset=opset, dynamic_spatial=dynamic_spatial),
            export_model(deploy, out_dir / f"{stem}_deploy.onnx", opset=opset, dynamic_spatial=dynamic_spatial))


if __name__ == "__main__":  # python -m models.frameworks.keras_nets OUT_DIR
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else "keras_onnx"
    for net in NETWORKS:
        for op in OPSETS:
            for dyn in (False, True):
                t0 = time.perf_counter()
                paths = export_pair(net, out, opset=op, dynamic_spatial=dyn)
                print(f"{time.perf_counter() - t0:6.2f}s", *paths)
