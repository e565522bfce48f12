"""YOLO-family reference networks: YOLOv6 RepVGG/QARepVGG, YOLOv10 (RepVGGDW, PSA, C2fCIB) and
YOLOv7 (RepConv, ImplicitA / ImplicitM in IDetect).

Three small detectors in training form, each with the PyTorch deploy conversion of its authors,
computed in float64 and cast back to the model's dtype:

* **YOLOv6** (Li et al., "YOLOv6: A Single-Stage Object Detection Framework for Industrial
  Applications", arXiv:2209.02976; https://github.com/meituan/YOLOv6, ``yolov6/layers/common.py``,
  ``yolov6/models/{efficientrep,reppan,effidehead}.py``). ``RepVGGBlock``:
  ``act(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))`` (``rbr_dense``, ``rbr_1x1``, ``rbr_identity``;
  ``switch_to_deploy`` -> ``rbr_reparam``). ``QARepVGGBlock`` (Chu et al., "Make RepVGG Greater
  Again: A Quantization-aware Approach", arXiv:2212.01593): ``act(bn(conv3x3-BN(x) + conv1x1(x) +
  x))`` with a bare 1x1 conv, a plain identity and a post-BN ``bn`` after the sum. Network:
  EfficientRep backbone (stride-2 blocks + ``RepBlock`` stacks + SPPF), RepPANNeck (its
  ``RepBlock`` stacks are QARepVGG blocks) and the efficient decoupled head (``EffiDeHead``).
  Deploy (``yolov6_model_convert``) = ``switch_to_deploy`` of every RepVGG-style block plus
  ``fuse_model`` (the Conv-BN fold of every ``ConvModule``).
* **YOLOv10** (Wang et al., "YOLOv10: Real-Time End-to-End Object Detection", NeurIPS 2024,
  arXiv:2405.14458; https://github.com/THU-MIG/yolov10, ``ultralytics/nn/modules/{conv,block,
  head}.py``, ``ultralytics/cfg/models/v10/yolov10n.yaml``). The yolov10n layer table
  (``model.0`` ... ``model.23``) with its scales (depth 0.33, width 0.25, max_channels 1024):
  ``Conv``, ``C2f``/``Bottleneck``, ``SCDown``, ``SPPF``, ``PSA``/``Attention``, ``C2fCIB``/``CIB``
  with ``lk=True`` (hence ``RepVGGDW``: ``act(conv7x7dw-BN(x) + conv3x3dw-BN(x))``) and the
  one-to-one branch of ``v10Detect``. Deploy (``yolov10_model_convert``) = ``BaseModel.fuse()``:
  every ``Conv``'s BN folded into its conv (``fuse_conv_and_bn``), ``RepVGGDW.fuse()`` into one
  depthwise 7x7 conv.
* **YOLOv7** (Wang, Bochkovskiy, Liao, "YOLOv7: Trainable bag-of-freebies sets new state-of-the-art
  for real-time object detectors", CVPR 2023; implicit knowledge from "You Only Learn One
  Representation", arXiv:2105.04206; https://github.com/WongKinYiu/yolov7, ``models/common.py``,
  ``models/yolo.py``, ``cfg/training/yolov7-tiny.yaml``). The yolov7-tiny layer table (ELAN-tiny
  blocks, ``MP``, ``SP`` pyramid, LeakyReLU(0.1)) at half width, whose three 3x3 convs before the
  head are ``RepConv`` as in ``yolov7.yaml``, and ``IDetect``: per level
  ``im[i](m[i](ia[i](x)))`` with ``ImplicitA`` (``x + implicit``), a 1x1 conv with bias and
  ``ImplicitM`` (``x * implicit``). Deploy (``yolov7_model_convert``) = ``Model.fuse()``:
  ``RepConv.fuse_repvgg_block()``, Conv-BN folds and ``IDetect.fuse()`` (ImplicitA into the conv
  bias, ImplicitM into weight and bias).

Attribute names follow the official code. Simplifications (all outside the re-parameterized
structure): the heads return raw predictions as one tensor (no anchor / DFL decode, no NMS, no
``one2many`` branch); activations are not made in-place; prediction-layer bias priors
(``initialize_biases`` / ``bias_init``, which zero some weights) are not applied, so every layer
starts from PyTorch's default init. BatchNorms use the authors' ``initialize_weights`` settings
(``eps=1e-3``, ``momentum=0.03``). The factories then rescale every conv once
(``scale_convs_to_unit_std_``, LSUV-style, on a seeded 1x3x160x160 batch) so that the signal of
these 60-90-conv networks survives randomized BN statistics instead of vanishing into the BN
shifts.

Inputs: any ``N x 3 x H x W`` with H, W multiples of 32 (strides 8/16/32); 64x64 is the small
test size, 320x320 the natural detector size (the authors train at 640), 224x224 works too.
"""
from __future__ import annotations

import copy
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .common import deploy_conv, fuse_conv_bn

__all__ = [
    # YOLOv6
    "ConvModule", "ConvBNSiLU", "SPPFModule", "Transpose", "RepVGGBlock", "QARepVGGBlock", "RepBlock",
    "EfficientRep", "RepPANNeck", "EffiDeHead", "YOLOv6Model", "yolov6_repconv", "yolov6_model_convert",
    # shared by YOLOv10 / YOLOv7
    "autopad", "make_divisible", "fuse_conv_and_bn", "scale_convs_to_unit_std_", "Conv", "Concat", "parse_model",
    "YOLOGraphModel",
    # YOLOv10
    "Bottleneck", "C2f", "SCDown", "SPPF", "RepVGGDW", "CIB", "C2fCIB", "Attention", "PSA", "v10Detect",
    "yolov10n_like", "yolov10_model_convert",
    # YOLOv7
    "MP", "SP", "RepConv", "ImplicitA", "ImplicitM", "IDetect", "yolov7_implicit", "yolov7_model_convert",
    # aliases without the clash with models.repvgg.RepVGGBlock
    "YOLOv6RepVGGBlock", "YOLOv6QARepVGGBlock",
]

_F64 = torch.float64


# =============================================================================== shared helpers
def make_divisible(x, divisor: int) -> int:
    """Upward revision of ``x`` to a multiple of ``divisor`` (YOLOv6 / v7 / ultralytics)."""
    return int(math.ceil(x / divisor) * divisor)


def autopad(k, p=None, d: int = 1):
    """Pad to 'same' output size (ultralytics ``autopad``; YOLOv7's without dilation)."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def _initialize_weights(model: nn.Module) -> nn.Module:
    """The authors' ``initialize_weights``: BN ``eps=1e-3``, ``momentum=0.03`` (convs keep the
    PyTorch default; activations are left out-of-place)."""
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.eps = 1e-3
            m.momentum = 0.03
    return model


@torch.no_grad()
def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Conv2d with the eval-mode ``bn`` folded in (float64, cast to the conv's dtype), bias=True."""
    k, b = fuse_conv_bn(conv.weight, bn, out_dtype=_F64)
    if conv.bias is not None:
        t = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        b = b + conv.bias.detach().double() * t
    return deploy_conv(conv, k, b).requires_grad_(False)


@torch.no_grad()
def scale_convs_to_unit_std_(model: nn.Module, input_shape=(1, 3, 160, 160), seed: int = 0) -> nn.Module:
    """Data-driven init (LSUV-style, in place): one eval-mode forward pass on a seeded N(0, 1)
    batch in which every Conv2d / ConvTranspose2d, in execution order, has its weight (and bias)
    divided by the std of its output, so that each conv's output has unit std.

    With PyTorch's default conv init and BatchNorms that do not normalize (eval mode with
    default or randomized statistics), the signal of these 60-90-conv detectors decays by about
    10x per Conv-BN-SiLU: the output then no longer depends on the input (relative change 1e-5
    for a new input) and activations reach float32 denormals. After this, with the
    ``randomize_bn_`` statistics applied on top, every layer stays O(1). Returns ``model``.
    """
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(int(seed)))

    def hook(mod, inputs, out):
        s = float(out.double().std())
        if not math.isfinite(s) or s <= 0:
            return None
        mod.weight.mul_(1.0 / s)
        if mod.bias is not None:
            mod.bias.mul_(1.0 / s)
        return out / s

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return model


def _pad_1x1_to_3x3_tensor(kernel1x1):
    return F.pad(kernel1x1, [1, 1, 1, 1])


def _identity_kernel(channels: int, groups: int, k: int = 3) -> torch.Tensor:
    """``x`` as a KxK grouped conv kernel (float64): 1 at ``[i, i % (C/g), k//2, k//2]``."""
    input_dim = channels // groups
    kernel = torch.zeros(channels, input_dim, k, k, dtype=_F64)
    for i in range(channels):
        kernel[i, i % input_dim, k // 2, k // 2] = 1.0
    return kernel


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gamma / sigma, beta - mu * gamma / sigma)`` in float64."""
    t = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    return t, bn.bias.detach().double() - bn.running_mean.detach().double() * t


# =============================================================================== YOLOv6
_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "hardswish": nn.Hardswish}


def _make_act(act) -> nn.Module:
    if isinstance(act, nn.Module):
        return act
    return _ACTIVATIONS[act]()


class ConvModule(nn.Module):
    """A combination of Conv + BN + Activation (YOLOv6)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, activation_type, padding=None,
                 groups=1, bias=False):
        super().__init__()
        if padding is None:
            padding = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                              padding=padding, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels)
        if activation_type is not None:
            self.act = _make_act(activation_type)
        self.activation_type = activation_type

    def forward(self, x):
        if not hasattr(self, "bn"):
            return self.forward_fuse(x)
        if self.activation_type is None:
            return self.bn(self.conv(x))
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        if self.activation_type is None:
            return self.conv(x)
        return self.act(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> None:
        """``fuse_model`` for one module: fold ``bn`` into ``conv`` and drop it."""
        if hasattr(self, "bn"):
            self.conv = fuse_conv_and_bn(self.conv, self.bn)
            del self.bn


class ConvBNSiLU(nn.Module):
    """Conv and BN with SiLU activation (YOLOv6)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, groups=1,
                 bias=False):
        super().__init__()
        self.block = ConvModule(in_channels, out_channels, kernel_size, stride, "silu", padding, groups, bias)

    def forward(self, x):
        return self.block(x)


class SPPFModule(nn.Module):
    """YOLOv6 SPPF (``SPPF`` wraps this as ``.sppf``; used directly here)."""

    def __init__(self, in_channels, out_channels, kernel_size=5, block=ConvBNSiLU):
        super().__init__()
        c_ = in_channels // 2
        self.cv1 = block(in_channels, c_, 1, 1)
        self.cv2 = block(c_ * 4, out_channels, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))


class Transpose(nn.Module):
    """Normal Transpose, default for upsampling (YOLOv6): ConvTranspose2d k2 s2 with bias."""

    def __init__(self, in_channels, out_channels, kernel_size=2, stride=2):
        super().__init__()
        self.upsample_transpose = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=kernel_size,
                                                     stride=stride, bias=True)

    def forward(self, x):
        return self.upsample_transpose(x)


class RepVGGBlock(nn.Module):
    """YOLOv6 RepVGGBlock: ``act(rbr_dense(x) + rbr_1x1(x) + rbr_identity(x))``.

    ``rbr_dense`` / ``rbr_1x1`` are ``ConvModule`` (conv-BN, no activation), ``rbr_identity`` a
    BN (only if in == out and stride 1). The official block hard-codes ``nn.ReLU()``; ``act``
    (``"relu"``, ``"silu"``, ``"hardswish"`` or a module) selects it here.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, dilation=1, groups=1,
                 padding_mode="zeros", deploy=False, use_se=False, act="relu"):
        super().__init__()
        self.deploy = deploy
        self.groups = groups
        self.in_channels = in_channels
        self.out_channels = out_channels
        assert kernel_size == 3
        assert padding == 1
        assert dilation == 1, "the 1x1 branch would ignore the dilation"
        padding_11 = padding - kernel_size // 2
        self.nonlinearity = _make_act(act)
        if use_se:
            raise NotImplementedError("se block not supported yet")
        self.se = nn.Identity()
        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                         dilation=dilation, groups=groups, bias=True, padding_mode=padding_mode)
        else:
            self.rbr_identity = (nn.BatchNorm2d(in_channels)
                                 if out_channels == in_channels and stride == 1 else None)
            self.rbr_dense = ConvModule(in_channels, out_channels, kernel_size, stride, activation_type=None,
                                        padding=padding, groups=groups)
            self.rbr_1x1 = ConvModule(in_channels, out_channels, 1, stride, activation_type=None,
                                      padding=padding_11, groups=groups)

    def forward(self, inputs):
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.se(self.rbr_reparam(inputs)))
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(inputs)
        return self.nonlinearity(self.se(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out))

    # ---- deploy conversion (float64) --------------------------------------------------------
    def _fuse_bn_tensor(self, branch):
        if branch is None:
            return 0, 0
        if isinstance(branch, ConvModule):
            if hasattr(branch, "bn"):
                return fuse_conv_bn(branch.conv.weight, branch.bn, out_dtype=_F64)
            # already fused by ``fuse_model`` (the official order: fuse_model, then switch_to_deploy)
            w = branch.conv.weight.detach().double()
            b = branch.conv.bias.detach().double() if branch.conv.bias is not None else w.new_zeros(w.shape[0])
            return w, b
        assert isinstance(branch, nn.BatchNorm2d)
        return fuse_conv_bn(_identity_kernel(self.in_channels, self.groups), branch, out_dtype=_F64)

    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent 3x3 kernel and bias (float64)."""
        kernel3x3, bias3x3 = self._fuse_bn_tensor(self.rbr_dense)
        kernel1x1, bias1x1 = self._fuse_bn_tensor(self.rbr_1x1)
        kernelid, biasid = self._fuse_bn_tensor(self.rbr_identity)
        return kernel3x3 + _pad_1x1_to_3x3_tensor(kernel1x1) + kernelid, bias3x3 + bias1x1 + biasid

    def _drop_branches(self) -> None:
        for p in self.parameters():
            p.detach_()
        for name in ("rbr_dense", "rbr_1x1", "rbr_identity", "id_tensor"):
            if hasattr(self, name):
                delattr(self, name)
        self.deploy = True

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        if hasattr(self, "rbr_reparam"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        self.rbr_reparam = deploy_conv(self.rbr_dense.conv, kernel, bias)
        self._drop_branches()


class QARepVGGBlock(RepVGGBlock):
    """YOLOv6 QARepVGGBlock: ``act(bn(rbr_dense(x) + rbr_1x1(x) + x))`` with a bare (bias-free,
    BN-free) 1x1 conv ``rbr_1x1``, a plain ``nn.Identity`` and the post-BN ``bn``.

    The official ``switch_to_deploy`` keeps ``bn`` after ``rbr_reparam`` ("keep post bn for QAT").
    Here it is folded in (``_fuse_extra_bn_tensor``, which the official class defines for this)
    unless ``keep_post_bn=True``: the deploy block is one conv followed by the activation.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, dilation=1, groups=1,
                 padding_mode="zeros", deploy=False, use_se=False, act="relu"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         padding_mode, deploy, use_se, act)
        if not deploy:
            self.bn = nn.BatchNorm2d(out_channels)
            self.rbr_1x1 = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, groups=groups,
                                     bias=False)
            self.rbr_identity = nn.Identity() if out_channels == in_channels and stride == 1 else None

    def forward(self, inputs):
        if hasattr(self, "rbr_reparam"):
            y = self.se(self.rbr_reparam(inputs))
            return self.nonlinearity(self.bn(y) if hasattr(self, "bn") else y)
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(inputs)
        return self.nonlinearity(self.bn(self.se(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out)))

    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel and bias of the branch sum, before the post-BN (float64)."""
        kernel3x3, bias3x3 = self._fuse_bn_tensor(self.rbr_dense)
        kernel = kernel3x3 + _pad_1x1_to_3x3_tensor(self.rbr_1x1.weight.detach().double())
        if self.rbr_identity is not None:
            kernel = kernel + _identity_kernel(self.in_channels, self.groups)
        return kernel, bias3x3

    @staticmethod
    def _fuse_extra_bn_tensor(kernel, bias, branch: nn.BatchNorm2d):
        """Fold the post-BN into ``(kernel, bias)`` (float64)."""
        assert isinstance(branch, nn.BatchNorm2d)
        t, shift = _bn_scale_shift(branch)
        return kernel * t.reshape(-1, 1, 1, 1), bias * t + shift

    @torch.no_grad()
    def switch_to_deploy(self, keep_post_bn: bool = False) -> None:
        if hasattr(self, "rbr_reparam"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        if not keep_post_bn:
            kernel, bias = self._fuse_extra_bn_tensor(kernel, bias, self.bn)
        self.rbr_reparam = deploy_conv(self.rbr_dense.conv, kernel, bias)
        self._drop_branches()
        if not keep_post_bn:
            del self.bn


YOLOv6RepVGGBlock = RepVGGBlock
YOLOv6QARepVGGBlock = QARepVGGBlock


class RepBlock(nn.Module):
    """RepBlock: a stage of ``n`` rep-style blocks (YOLOv6; the ``BottleRep`` variant left out)."""

    def __init__(self, in_channels, out_channels, n=1, block=RepVGGBlock):
        super().__init__()
        self.conv1 = block(in_channels, out_channels)
        self.block = nn.Sequential(*(block(out_channels, out_channels) for _ in range(n - 1))) if n > 1 else None

    def forward(self, x):
        x = self.conv1(x)
        if self.block is not None:
            x = self.block(x)
        return x


class EfficientRep(nn.Module):
    """EfficientRep backbone (YOLOv6): ``stem`` and ``ERBlock_2..5`` (stride-2 block + RepBlock,
    SPPF at the end); returns the P3, P4, P5 features."""

    def __init__(self, in_channels=3, channels_list=None, num_repeats=None, block=RepVGGBlock,
                 channel_merge_layer=SPPFModule):
        super().__init__()
        assert channels_list is not None and num_repeats is not None
        self.stem = block(in_channels=in_channels, out_channels=channels_list[0], kernel_size=3, stride=2)
        stages = []
        for i in range(1, 5):
            stages.append([
                block(in_channels=channels_list[i - 1], out_channels=channels_list[i], kernel_size=3, stride=2),
                RepBlock(channels_list[i], channels_list[i], n=num_repeats[i], block=block),
            ])
        stages[-1].append(channel_merge_layer(channels_list[4], channels_list[4], kernel_size=5))
        self.ERBlock_2, self.ERBlock_3, self.ERBlock_4, self.ERBlock_5 = (nn.Sequential(*s) for s in stages)

    def forward(self, x):
        outputs = []
        x = self.stem(x)
        x = self.ERBlock_2(x)
        x = self.ERBlock_3(x)
        outputs.append(x)
        x = self.ERBlock_4(x)
        outputs.append(x)
        x = self.ERBlock_5(x)
        outputs.append(x)
        return tuple(outputs)


class RepPANNeck(nn.Module):
    """RepPANNeck (YOLOv6): top-down with ConvTranspose upsampling, bottom-up with stride-2 convs,
    four RepBlocks on the concatenations."""

    def __init__(self, channels_list=None, num_repeats=None, block=RepVGGBlock, conv=ConvBNSiLU):
        super().__init__()
        assert channels_list is not None and num_repeats is not None
        cl, nr = channels_list, num_repeats
        self.Rep_p4 = RepBlock(cl[3] + cl[5], cl[5], n=nr[5], block=block)
        self.Rep_p3 = RepBlock(cl[2] + cl[6], cl[6], n=nr[6], block=block)
        self.Rep_n3 = RepBlock(cl[6] + cl[7], cl[8], n=nr[7], block=block)
        self.Rep_n4 = RepBlock(cl[5] + cl[9], cl[10], n=nr[8], block=block)
        self.reduce_layer0 = conv(cl[4], cl[5], kernel_size=1, stride=1)
        self.upsample0 = Transpose(cl[5], cl[5])
        self.reduce_layer1 = conv(cl[5], cl[6], kernel_size=1, stride=1)
        self.upsample1 = Transpose(cl[6], cl[6])
        self.downsample2 = conv(cl[6], cl[7], kernel_size=3, stride=2)
        self.downsample1 = conv(cl[8], cl[9], kernel_size=3, stride=2)

    def forward(self, input):
        (x2, x1, x0) = input
        fpn_out0 = self.reduce_layer0(x0)
        f_out0 = self.Rep_p4(torch.cat([self.upsample0(fpn_out0), x1], 1))
        fpn_out1 = self.reduce_layer1(f_out0)
        pan_out2 = self.Rep_p3(torch.cat([self.upsample1(fpn_out1), x2], 1))
        pan_out1 = self.Rep_n3(torch.cat([self.downsample2(pan_out2), fpn_out1], 1))
        pan_out0 = self.Rep_n4(torch.cat([self.downsample1(pan_out1), fpn_out0], 1))
        return [pan_out2, pan_out1, pan_out0]


class EffiDeHead(nn.Module):
    """Efficient decoupled head (YOLOv6 ``Detect``, ``use_dfl=False``, ``reg_max=0``).

    Per level: ``stems`` (1x1), then ``cls_convs`` -> ``cls_preds`` and ``reg_convs`` ->
    ``reg_preds``. Returns ``cat([reg, sigmoid(cls)])`` of all levels as one ``(B, N, 4 + nc)``
    tensor: the anchor-point decode (``dist2bbox``) is left out.
    """

    def __init__(self, num_classes=80, in_channels=(32, 64, 128), num_anchors=1, reg_max=0):
        super().__init__()
        self.nc = num_classes
        self.nl = len(in_channels)
        self.reg_max = reg_max
        self.stems = nn.ModuleList(ConvBNSiLU(c, c, 1, 1) for c in in_channels)
        self.cls_convs = nn.ModuleList(ConvBNSiLU(c, c, 3, 1) for c in in_channels)
        self.reg_convs = nn.ModuleList(ConvBNSiLU(c, c, 3, 1) for c in in_channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(c, num_classes * num_anchors, 1) for c in in_channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(c, 4 * (reg_max + num_anchors), 1) for c in in_channels)

    def forward(self, x):
        cls_score_list, reg_dist_list = [], []
        for i in range(self.nl):
            xi = self.stems[i](x[i])
            cls_output = torch.sigmoid(self.cls_preds[i](self.cls_convs[i](xi)))
            reg_output = self.reg_preds[i](self.reg_convs[i](xi))
            cls_score_list.append(cls_output.flatten(2))
            reg_dist_list.append(reg_output.flatten(2))
        cls_score = torch.cat(cls_score_list, -1)
        reg_dist = torch.cat(reg_dist_list, -1)
        return torch.cat([reg_dist, cls_score], 1).permute(0, 2, 1)


class YOLOv6Model(nn.Module):
    """YOLOv6 ``Model``: ``backbone`` (EfficientRep), ``neck`` (RepPANNeck), ``detect``."""

    def __init__(self, num_classes=80, depth_multiple=0.33, width_multiple=0.25, act="silu",
                 neck_block="qarepvgg", deploy=False):
        super().__init__()
        # configs/yolov6n (RepPAN version): backbone [1, 6, 12, 18, 6] x [64 .. 1024],
        # neck [12, 12, 12, 12] x [256, 128, 128, 256, 256, 512]
        num_repeats = [1, 6, 12, 18, 6] + [12, 12, 12, 12]
        out_channels = [64, 128, 256, 512, 1024] + [256, 128, 128, 256, 256, 512]
        num_repeat = [(max(round(i * depth_multiple), 1) if i > 1 else i) for i in num_repeats]
        channels_list = [make_divisible(i * width_multiple, 8) for i in out_channels]
        block = partial(RepVGGBlock, act=act, deploy=deploy)
        nblock = {"qarepvgg": partial(QARepVGGBlock, act=act, deploy=deploy), "repvgg": block}[neck_block]
        self.channels_list, self.num_repeats = channels_list, num_repeat
        self.backbone = EfficientRep(3, channels_list, num_repeat, block=block)
        self.neck = RepPANNeck(channels_list, num_repeat, block=nblock)
        self.detect = EffiDeHead(num_classes, [channels_list[6], channels_list[8], channels_list[10]])
        _initialize_weights(self)

    def forward(self, x):
        return self.detect(self.neck(self.backbone(x)))


def yolov6_repconv(num_classes: int = 80, depth_multiple: float = 0.33, width_multiple: float = 0.25,
                   act: str = "silu", neck_block: str = "qarepvgg", deploy: bool = False) -> YOLOv6Model:
    """YOLOv6n-sized (depth 0.33, width 0.25) EfficientRep + RepPAN + EffiDeHead with SiLU.

    Backbone: 19 ``RepVGGBlock`` (stem, 4 stride-2 blocks, RepBlocks of 2/4/6/2) and an SPPF;
    neck: 16 ``QARepVGGBlock`` (four RepBlocks of 4) with ConvTranspose upsampling; head: 3 levels
    of 1x1 stem + 3x3 cls/reg convs + 1x1 predictions. Output ``(B, N, 4 + num_classes)``,
    ``N = (H/8)(W/8) + (H/16)(W/16) + (H/32)(W/32)``; the input side must be a multiple of 32.
    """
    model = YOLOv6Model(num_classes, depth_multiple, width_multiple, act, neck_block, deploy)
    return scale_convs_to_unit_std_(model)


@torch.no_grad()
def yolov6_model_convert(model: nn.Module, keep_post_bn: bool = False) -> nn.Module:
    """Deep copy in YOLOv6's deploy form: every RepVGGBlock / QARepVGGBlock ``switch_to_deploy``
    (one 3x3 conv each; QARepVGG's post-BN folded unless ``keep_post_bn``) and ``fuse_model``
    (Conv-BN fold of every ``ConvModule``). float64 merges, cast back."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, QARepVGGBlock):
            m.switch_to_deploy(keep_post_bn=keep_post_bn)
        elif isinstance(m, RepVGGBlock):
            m.switch_to_deploy()
    for m in model.modules():
        if type(m) is ConvModule:
            m.fuse()
    return model.eval()


# =============================================================================== ultralytics / YOLOv7 Conv
class Conv(nn.Module):
    """Standard convolution ``act(bn(conv(x)))`` (ultralytics ``Conv``; YOLOv7's ``Conv`` is the
    same module with ``d=1``). ``act=True`` is SiLU, ``act=False`` identity, or a module."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x):
        if not hasattr(self, "bn"):
            return self.forward_fuse(x)
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        return self.act(self.conv(x))

    fuseforward = forward_fuse  # YOLOv7's name

    @torch.no_grad()
    def fuse(self) -> None:
        """What ``BaseModel.fuse()`` / YOLOv7 ``Model.fuse()`` do for a Conv."""
        if hasattr(self, "bn"):
            self.conv = fuse_conv_and_bn(self.conv, self.bn)
            del self.bn


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension``."""

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


# =============================================================================== YOLOv10
class Bottleneck(nn.Module):
    """Standard bottleneck (ultralytics)."""

    def __init__(self, c1, c2, shortcut=True, g=1, k=(3, 3), e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """Faster Implementation of CSP Bottleneck with 2 convolutions (ultralytics)."""

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=((3, 3), (3, 3)), e=1.0) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SCDown(nn.Module):
    """Spatial-channel decoupled downsampling (YOLOv10): 1x1 Conv, then depthwise KxK stride-s
    Conv without activation."""

    def __init__(self, c1, c2, k, s):
        super().__init__()
        self.cv1 = Conv(c1, c2, 1, 1)
        self.cv2 = Conv(c2, c2, k=k, s=s, g=c2, act=False)

    def forward(self, x):
        return self.cv2(self.cv1(x))


class SPPF(nn.Module):
    """Spatial Pyramid Pooling - Fast (ultralytics)."""

    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class RepVGGDW(nn.Module):
    """YOLOv10 RepVGGDW: ``act(conv(x) + conv1(x))``, ``conv`` a depthwise 7x7 Conv-BN,
    ``conv1`` a depthwise 3x3 Conv-BN (no activations inside). ``fuse()`` turns ``conv`` into
    one depthwise 7x7 ``nn.Conv2d`` with bias and deletes ``conv1``."""

    def __init__(self, ed) -> None:
        super().__init__()
        self.conv = Conv(ed, ed, 7, 1, 3, g=ed, act=False)
        self.conv1 = Conv(ed, ed, 3, 1, 1, g=ed, act=False)
        self.dim = ed
        self.act = nn.SiLU()

    def forward(self, x):
        if not hasattr(self, "conv1"):
            return self.forward_fuse(x)
        return self.act(self.conv(x) + self.conv1(x))

    def forward_fuse(self, x):
        return self.act(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> None:
        if not hasattr(self, "conv1"):
            return
        conv_w, conv_b = fuse_conv_bn(self.conv.conv.weight, self.conv.bn, out_dtype=_F64)
        conv1_w, conv1_b = fuse_conv_bn(self.conv1.conv.weight, self.conv1.bn, out_dtype=_F64)
        conv1_w = F.pad(conv1_w, [2, 2, 2, 2])
        self.conv = deploy_conv(self.conv.conv, conv_w + conv1_w, conv_b + conv1_b).requires_grad_(False)
        del self.conv1


class CIB(nn.Module):
    """Compact inverted block (YOLOv10); ``lk=True`` uses ``RepVGGDW`` as the middle conv."""

    def __init__(self, c1, c2, shortcut=True, e=0.5, lk=False):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = nn.Sequential(
            Conv(c1, c1, 3, g=c1),
            Conv(c1, 2 * c_, 1),
            Conv(2 * c_, 2 * c_, 3, g=2 * c_) if not lk else RepVGGDW(2 * c_),
            Conv(2 * c_, c2, 1),
            Conv(c2, c2, 3, g=c2),
        )
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv1(x) if self.add else self.cv1(x)


class C2fCIB(C2f):
    """C2f with CIB blocks (YOLOv10)."""

    def __init__(self, c1, c2, n=1, shortcut=False, lk=False, g=1, e=0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        self.m = nn.ModuleList(CIB(self.c, self.c, shortcut, e=1.0, lk=lk) for _ in range(n))


class Attention(nn.Module):
    """Multi-head self-attention of PSA (YOLOv10): ``qkv`` / ``proj`` 1x1 Conv and the depthwise
    3x3 positional conv ``pe``, all without activation."""

    def __init__(self, dim, num_heads=8, attn_ratio=0.5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        nh_kd = self.key_dim * num_heads
        h = dim + nh_kd * 2
        self.qkv = Conv(dim, h, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x):
        B, C, H, W = x.shape
        N = H * W
        qkv = self.qkv(x)
        q, k, v = qkv.view(B, self.num_heads, self.key_dim * 2 + self.head_dim, N).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = (q.transpose(-2, -1) @ k) * self.scale
        attn = attn.softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(B, C, H, W) + self.pe(v.reshape(B, C, H, W))
        return self.proj(x)


class PSA(nn.Module):
    """Partial self-attention (YOLOv10)."""

    def __init__(self, c1, c2, e=0.5):
        super().__init__()
        assert c1 == c2
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.attn = Attention(self.c, attn_ratio=0.5, num_heads=self.c // 64)
        self.ffn = nn.Sequential(Conv(self.c, self.c * 2, 1), Conv(self.c * 2, self.c, 1, act=False))

    def forward(self, x):
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        b = b + self.attn(b)
        b = b + self.ffn(b)
        return self.cv2(torch.cat((a, b), 1))


class v10Detect(nn.Module):  # noqa: N801 (official name)
    """YOLOv10 detection head, one-to-one branch only (the export path of ``v10Detect``).

    ``one2one_cv2``: box branch ``Conv 3x3, Conv 3x3, Conv2d 1x1 (4 * reg_max)``;
    ``one2one_cv3``: class branch ``(dw 3x3 Conv, 1x1 Conv), (dw 3x3 Conv, 1x1 Conv), Conv2d 1x1
    (nc)``. Returns the raw per-level outputs concatenated, ``(B, 4 * reg_max + nc, N)`` (what
    ``Detect.inference`` calls ``x_cat``); DFL, box decode and ``v10postprocess`` are left out.
    """

    def __init__(self, nc=80, ch=()):
        super().__init__()
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = 16
        self.no = nc + self.reg_max * 4
        c2, c3 = max((16, ch[0] // 4, self.reg_max * 4)), max(ch[0], min(self.nc, 100))
        self.one2one_cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1)) for x in ch)
        self.one2one_cv3 = nn.ModuleList(
            nn.Sequential(nn.Sequential(Conv(x, x, 3, g=x), Conv(x, c3, 1)),
                          nn.Sequential(Conv(c3, c3, 3, g=c3), Conv(c3, c3, 1)),
                          nn.Conv2d(c3, self.nc, 1)) for x in ch)

    def forward(self, x):
        y = [torch.cat((self.one2one_cv2[i](x[i]), self.one2one_cv3[i](x[i])), 1) for i in range(self.nl)]
        shape = y[0].shape
        return torch.cat([yi.view(shape[0], self.no, -1) for yi in y], 2)


# =============================================================================== YOLOv7
class MP(nn.Module):
    def __init__(self, k=2):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x):
        return self.m(x)


class SP(nn.Module):
    def __init__(self, k=3, s=1):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x):
        return self.m(x)


class RepConv(nn.Module):
    """YOLOv7 RepConv: ``act(rbr_dense(x) + rbr_1x1(x) + rbr_identity(x))`` with
    ``nn.Sequential(conv, BN)`` branches; ``fuse_repvgg_block()`` -> ``rbr_reparam``."""

    def __init__(self, c1, c2, k=3, s=1, p=None, g=1, act=True, deploy=False):
        super().__init__()
        self.deploy = deploy
        self.groups = g
        self.in_channels = c1
        self.out_channels = c2
        assert k == 3
        assert autopad(k, p) == 1
        padding_11 = autopad(k, p) - k // 2
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())
        if deploy:
            self.rbr_reparam = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=True)
        else:
            self.rbr_identity = nn.BatchNorm2d(num_features=c1) if c2 == c1 and s == 1 else None
            self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False),
                                           nn.BatchNorm2d(num_features=c2))
            self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, padding_11, groups=g, bias=False),
                                         nn.BatchNorm2d(num_features=c2))

    def forward(self, inputs):
        if hasattr(self, "rbr_reparam"):
            return self.act(self.rbr_reparam(inputs))
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(inputs)
        return self.act(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out)

    def _fuse_bn_tensor(self, branch):
        if branch is None:
            return 0, 0
        if isinstance(branch, nn.Sequential):
            return fuse_conv_bn(branch[0].weight, branch[1], out_dtype=_F64)
        assert isinstance(branch, nn.BatchNorm2d)
        return fuse_conv_bn(_identity_kernel(self.in_channels, self.groups), branch, out_dtype=_F64)

    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent 3x3 kernel and bias (float64)."""
        kernel3x3, bias3x3 = self._fuse_bn_tensor(self.rbr_dense)
        kernel1x1, bias1x1 = self._fuse_bn_tensor(self.rbr_1x1)
        kernelid, biasid = self._fuse_bn_tensor(self.rbr_identity)
        return kernel3x3 + _pad_1x1_to_3x3_tensor(kernel1x1) + kernelid, bias3x3 + bias1x1 + biasid

    @torch.no_grad()
    def fuse_repvgg_block(self) -> None:
        if hasattr(self, "rbr_reparam"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        self.rbr_reparam = deploy_conv(self.rbr_dense[0], kernel, bias)
        for name in ("rbr_dense", "rbr_1x1", "rbr_identity"):
            delattr(self, name)
        self.deploy = True

    switch_to_deploy = fuse_repvgg_block


class ImplicitA(nn.Module):
    """YOLOR implicit addition: ``implicit + x``, ``implicit`` of shape ``(1, C, 1, 1)``."""

    def __init__(self, channel, mean=0.0, std=0.02):
        super().__init__()
        self.channel = channel
        self.mean = mean
        self.std = std
        self.implicit = nn.Parameter(torch.zeros(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=self.mean, std=self.std)

    def forward(self, x):
        return self.implicit + x


class ImplicitM(nn.Module):
    """YOLOR implicit multiplication: ``implicit * x``, ``implicit`` of shape ``(1, C, 1, 1)``."""

    def __init__(self, channel, mean=1.0, std=0.02):
        super().__init__()
        self.channel = channel
        self.mean = mean
        self.std = std
        self.implicit = nn.Parameter(torch.ones(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=self.mean, std=self.std)

    def forward(self, x):
        return self.implicit * x


class IDetect(nn.Module):
    """YOLOv7 IDetect: per level ``x = im[i](m[i](ia[i](x)))``, ``m[i]`` a 1x1 conv with bias.

    Returns the raw predictions of all levels as one ``(B, na * sum(ny * nx), no)`` tensor (the
    ``x[i].view(bs, na, no, ny, nx).permute(0, 1, 3, 4, 2)`` of the official forward, flattened
    and concatenated); the sigmoid / grid / anchor decode is left out. ``fuse()`` folds
    ImplicitA into ``m[i].bias`` and ImplicitM into ``m[i]``'s weight and bias (float64) and
    deletes ``ia`` / ``im``.
    """

    def __init__(self, nc=80, anchors=(), ch=(), implicit_std=0.02):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        a = torch.tensor(anchors).float().view(self.nl, -1, 2)
        self.register_buffer("anchors", a)
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.ia = nn.ModuleList(ImplicitA(x, std=implicit_std) for x in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na, std=implicit_std) for _ in ch)

    def forward(self, x):
        fused = not hasattr(self, "ia")
        z = []
        for i in range(self.nl):
            xi = self.m[i](x[i]) if fused else self.im[i](self.m[i](self.ia[i](x[i])))
            bs, _, ny, nx = xi.shape
            xi = xi.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            z.append(xi.view(bs, -1, self.no))
        return torch.cat(z, 1)

    @torch.no_grad()
    def fuse(self) -> None:
        if not hasattr(self, "ia"):
            return
        for i in range(self.nl):
            conv = self.m[i]
            assert conv.kernel_size == (1, 1) and conv.groups == 1
            w = conv.weight.detach().double()
            b = conv.bias.detach().double()
            a = self.ia[i].implicit.detach().double().reshape(-1)    # ImplicitA: conv(x + a)
            mm = self.im[i].implicit.detach().double().reshape(-1)   # ImplicitM: m * conv(.)
            b = (b + w.reshape(w.shape[0], -1) @ a) * mm
            w = w * mm.reshape(-1, 1, 1, 1)
            self.m[i] = deploy_conv(conv, w, b).requires_grad_(False)
        del self.ia
        del self.im


# =============================================================================== layer-table models
def parse_model(rows, nc: int, depth: float, width: float, max_channels: float = float("inf"),
                ch: int = 3) -> tuple[nn.Sequential, list[int]]:
    """Build ``model.0 .. model.N`` from ``[from, repeats, module, args]`` rows like the official
    ``parse_model`` (ultralytics / YOLOv7): channel scaling, depth gain, Concat, heads."""
    channel_modules = (Conv, C2f, C2fCIB, SCDown, SPPF, PSA, RepConv, Bottleneck)
    repeat_modules = (C2f, C2fCIB)
    layers, save, chs = [], [], [ch]
    for i, (f, n, m, args) in enumerate(rows):
        args = list(args)
        n = max(round(n * depth), 1) if n > 1 else n
        if m in channel_modules:
            c1, c2 = chs[f], args[0]
            c2 = make_divisible(min(c2, max_channels) * width, 8)
            args = [c1, c2, *args[1:]]
            if m in repeat_modules:
                args.insert(2, n)
                n = 1
        elif m is Concat:
            c2 = sum(chs[x] for x in f)
        elif m in (v10Detect, IDetect):
            args.insert(len(args) if m is v10Detect else 2, [chs[x] for x in f])
            c2 = None
        else:  # nn.Upsample, MP, SP
            c2 = chs[f]
        module = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        module.i, module.f = i, f
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        if i == 0:
            chs = []
        chs.append(c2)
    return nn.Sequential(*layers), sorted(save)


class YOLOGraphModel(nn.Module):
    """``model`` (an ``nn.Sequential`` of layers with ``.f`` / ``.i``) run like ultralytics'
    ``BaseModel._predict_once`` / YOLOv7's ``Model.forward_once``."""

    def __init__(self, rows, nc: int, depth: float, width: float, max_channels: float = float("inf")):
        super().__init__()
        self.model, self.save = parse_model(rows, nc, depth, width, max_channels)
        _initialize_weights(self)

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


def yolov10n_like(num_classes: int = 80) -> YOLOGraphModel:
    """yolov10n.yaml (scale n: depth 0.33, width 0.25, max_channels 1024) with the one-to-one
    v10Detect head. One ``RepVGGDW`` (in the last C2fCIB, ``lk=True``), one PSA, two SCDown in
    the backbone and one in the neck. Output ``(B, 64 + num_classes, N)``,
    ``N = (H/8)(W/8) + (H/16)(W/16) + (H/32)(W/32)``; the input side must be a multiple of 32.
    """
    rows = [
        # backbone
        [-1, 1, Conv, [64, 3, 2]],            # 0-P1/2
        [-1, 1, Conv, [128, 3, 2]],           # 1-P2/4
        [-1, 3, C2f, [128, True]],
        [-1, 1, Conv, [256, 3, 2]],           # 3-P3/8
        [-1, 6, C2f, [256, True]],
        [-1, 1, SCDown, [512, 3, 2]],         # 5-P4/16
        [-1, 6, C2f, [512, True]],
        [-1, 1, SCDown, [1024, 3, 2]],        # 7-P5/32
        [-1, 3, C2f, [1024, True]],
        [-1, 1, SPPF, [1024, 5]],             # 9
        [-1, 1, PSA, [1024]],                 # 10
        # head
        [-1, 1, nn.Upsample, [None, 2, "nearest"]],
        [[-1, 6], 1, Concat, [1]],            # cat backbone P4
        [-1, 3, C2f, [512]],                  # 13
        [-1, 1, nn.Upsample, [None, 2, "nearest"]],
        [[-1, 4], 1, Concat, [1]],            # cat backbone P3
        [-1, 3, C2f, [256]],                  # 16 (P3/8-small)
        [-1, 1, Conv, [256, 3, 2]],
        [[-1, 13], 1, Concat, [1]],           # cat head P4
        [-1, 3, C2f, [512]],                  # 19 (P4/16-medium)
        [-1, 1, SCDown, [512, 3, 2]],
        [[-1, 10], 1, Concat, [1]],           # cat head P5
        [-1, 3, C2fCIB, [1024, True, True]],  # 22 (P5/32-large)
        [[16, 19, 22], 1, v10Detect, [num_classes]],  # Detect(P3, P4, P5)
    ]
    return scale_convs_to_unit_std_(YOLOGraphModel(rows, num_classes, depth=0.33, width=0.25, max_channels=1024))


@torch.no_grad()
def yolov10_model_convert(model: nn.Module) -> nn.Module:
    """Deep copy in YOLOv10's deploy form (``BaseModel.fuse()``): ``RepVGGDW.fuse()`` (one dw 7x7
    conv) and every ``Conv``'s BN folded into its conv. float64 merges, cast back."""
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        if isinstance(m, RepVGGDW):
            m.fuse()
    for m in list(model.modules()):
        if isinstance(m, Conv):
            m.fuse()
    return model.eval()


_YOLOV7_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def yolov7_implicit(num_classes: int = 80, width_multiple: float = 0.5, implicit_std: float = 0.5,
                    repconv: bool = True) -> YOLOGraphModel:
    """yolov7-tiny.yaml (LeakyReLU(0.1), ELAN-tiny blocks, MP, SP 5/9/13 pyramid) at
    ``width_multiple`` (default 0.5), IDetect head with ImplicitA / ImplicitM initialized
    ``normal(0 / 1, implicit_std)`` (official std 0.02; 0.5 makes the fold visible).

    With ``repconv=True`` the three 3x3 convs feeding IDetect (layers 74-76) are ``RepConv`` as in
    ``yolov7.yaml`` (no identity branch: their channels grow); ``False`` keeps tiny's plain Conv.
    Output ``(B, 3 * N, num_classes + 5)``, ``N = (H/8)(W/8) + (H/16)(W/16) + (H/32)(W/32)``.
    """
    def c(c2, k=1, s=1, f=-1):  # YOLOv7's Conv(c1, c2, k, s, p, g, act); this Conv has d before act
        return [f, 1, Conv, [c2, k, s, None, 1, 1, nn.LeakyReLU(0.1)]]

    def elan(c_mid, c_out):  # 2 x 1x1, 2 x 3x3, concat, 1x1
        return [c(c_mid), c(c_mid, f=-2), c(c_mid, 3), c(c_mid, 3), [[-1, -2, -3, -4], 1, Concat, [1]],
                c(c_out)]

    head_conv = RepConv if repconv else Conv
    rows = [
        # backbone
        c(32, 3, 2),                               # 0-P1/2
        c(64, 3, 2),                               # 1-P2/4
        *elan(32, 64),                             # 7
        [-1, 1, MP, []],                           # 8-P3/8
        *elan(64, 128),                            # 14
        [-1, 1, MP, []],                           # 15-P4/16
        *elan(128, 256),                           # 21
        [-1, 1, MP, []],                           # 22-P5/32
        *elan(256, 512),                           # 28
        # head: SPPCSP-tiny
        c(256), c(256, f=-2),
        [-1, 1, SP, [5]], [-2, 1, SP, [9]], [-3, 1, SP, [13]],
        [[-1, -2, -3, -4], 1, Concat, [1]],
        c(256),
        [[-1, -7], 1, Concat, [1]],
        c(256),                                    # 37
        c(128), [-1, 1, nn.Upsample, [None, 2, "nearest"]], c(128, f=21),
        [[-1, -2], 1, Concat, [1]],
        *elan(64, 128),                            # 47
        c(64), [-1, 1, nn.Upsample, [None, 2, "nearest"]], c(64, f=14),
        [[-1, -2], 1, Concat, [1]],
        *elan(32, 64),                             # 57
        c(128, 3, 2), [[-1, 47], 1, Concat, [1]],
        *elan(64, 128),                            # 65
        c(256, 3, 2), [[-1, 37], 1, Concat, [1]],
        *elan(128, 256),                           # 73
        [57, 1, head_conv, [128, 3, 1, None, 1, nn.LeakyReLU(0.1)]],
        [65, 1, head_conv, [256, 3, 1, None, 1, nn.LeakyReLU(0.1)]],
        [73, 1, head_conv, [512, 3, 1, None, 1, nn.LeakyReLU(0.1)]],
        [[74, 75, 76], 1, IDetect, [num_classes, _YOLOV7_ANCHORS, implicit_std]],
    ]
    assert len(rows) == 78
    return scale_convs_to_unit_std_(YOLOGraphModel(rows, num_classes, depth=1.0, width=width_multiple))


@torch.no_grad()
def yolov7_model_convert(model: nn.Module) -> nn.Module:
    """Deep copy in YOLOv7's deploy form (``Model.fuse()``): ``RepConv.fuse_repvgg_block()``,
    Conv-BN folds, ``IDetect.fuse()`` (ImplicitA -> bias, ImplicitM -> weight and bias).
    float64 merges, cast back."""
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        if isinstance(m, RepConv):
            m.fuse_repvgg_block()
        elif isinstance(m, Conv):
            m.fuse()
        elif isinstance(m, IDetect):
            m.fuse()
    return model.eval()
