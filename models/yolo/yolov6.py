"""YOLOv6 reference network: EfficientRep + RepPANNeck + EffiDeHead with RepVGG / QARepVGG blocks
(``yolov6_repconv``) and its deploy conversion (``yolov6_model_convert``).

YOLOv6 (Li et al., "YOLOv6: A Single-Stage Object Detection Framework for Industrial
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

Conventions shared with the other families (heads return raw predictions, BN settings,
``scale_convs_to_unit_std_``, input sizes) are described in ``common.py``.
"""
from __future__ import annotations

import copy
from functools import partial

import torch
from torch import nn

from ..common import deploy_conv, fuse_conv_bn, identity_kernel
from .common import (_F64, _initialize_weights, _pad_1x1_to_3x3_tensor, fuse_conv_and_bn,
                     make_divisible, scale_convs_to_unit_std_)


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gamma / sigma, beta - mu * gamma / sigma)`` in float64."""
    t = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    return t, bn.bias.detach().double() - bn.running_mean.detach().double() * t


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
        return fuse_conv_bn(identity_kernel(self.in_channels, self.groups), branch, out_dtype=_F64)

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
            kernel = kernel + identity_kernel(self.in_channels, self.groups)
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
