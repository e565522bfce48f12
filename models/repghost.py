"""RepGhost (Chen et al., "RepGhost: A Hardware-Efficient Ghost Module via Re-parameterization",
arXiv 2211.06088, 2022).

GhostNet's ghost module concatenates a 1x1 conv's output with a cheap depthwise conv of it;
RepGhost replaces the concatenation by a sum that re-parameterizes away. Training form of a
``RepGhostModule`` (names follow the official code, github ChengpengChen/RepGhost,
``model/repghost.py``)::

    x1 = primary_conv(x)                      1x1 conv -> BN (-> ReLU if relu)
    x2 = cheap_operation(x1) + fusion_bn(x1)  dw 3x3 conv -> BN  +  BN(x1)   (identity branch)
    y  = relu(x2)                             ReLU if relu, else nothing

Deploy form (``switch_to_deploy``): ``cheap_operation`` becomes one depthwise 3x3 conv with bias
holding ``dw3x3-BN + BN(x)``; ``primary_conv`` keeps its conv and BN (the official conversion
merges only the re-parameterizable branch; exporters fold the conv-BN pairs).

``RepGhostBottleneck``: ``ghost1`` (relu) -> [dw ``conv_dw`` stride 2 -> ``bn_dw``] ->
[``SqueezeExcite`` with a hard-sigmoid gate] -> ``ghost2`` (no relu), plus a shortcut (identity,
or dw conv -> BN -> 1x1 conv -> BN when the shape changes). ``RepGhostNet``: ``conv_stem`` 3x3
s2 -> ``bn1`` -> ReLU, the ``cfgs`` stages, a final ``ConvBnAct`` 1x1, global average pooling,
``conv_head`` 1x1 (bias) -> ReLU, dropout, ``classifier`` Linear. The factory here is RepGhostNet
0.5x (``repghostnet_0_5x``: SE enabled, ``reparam_bn=True``, ``reparam_identity=False``,
shortcut on). Every merge is computed in float64 and cast back (the official code computes in
the parameters' dtype).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .common import deploy_conv, fuse_conv_bn, make_divisible as _make_divisible

__all__ = ["hard_sigmoid", "SqueezeExcite", "ConvBnAct", "RepGhostModule", "RepGhostBottleneck",
           "RepGhostNet", "repghostnet", "repghost_0_5", "repghostnet_0_5x",
           "repghost_model_convert"]

_F64 = torch.float64


def hard_sigmoid(x, inplace: bool = False):
    if inplace:
        return x.add_(3.0).clamp_(0.0, 6.0).div_(6.0)
    return F.relu6(x + 3.0) / 6.0


class SqueezeExcite(nn.Module):
    """GhostNet-style SE: ``x * hard_sigmoid(conv_expand(relu(conv_reduce(avg_pool(x)))))``."""

    def __init__(self, in_chs, se_ratio=0.25, reduced_base_chs=None, act_layer=nn.ReLU,
                 gate_fn=hard_sigmoid, divisor=4, **_):
        super().__init__()
        self.gate_fn = gate_fn
        reduced_chs = _make_divisible((reduced_base_chs or in_chs) * se_ratio, divisor)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(in_chs, reduced_chs, 1, bias=True)
        self.act1 = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(reduced_chs, in_chs, 1, bias=True)

    def forward(self, x):
        x_se = self.avg_pool(x)
        x_se = self.conv_reduce(x_se)
        x_se = self.act1(x_se)
        x_se = self.conv_expand(x_se)
        return x * self.gate_fn(x_se)


class ConvBnAct(nn.Module):
    def __init__(self, in_chs, out_chs, kernel_size, stride=1, act_layer=nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = act_layer(inplace=True)

    def forward(self, x):
        return self.act1(self.bn1(self.conv(x)))


class RepGhostModule(nn.Module):
    """The re-parameterizable block: ``relu(cheap_operation(x1) + Σ fusion_bn(fusion_conv(x1)))``
    with ``x1 = primary_conv(x)``; ``switch_to_deploy`` folds the sum into ``cheap_operation``."""

    def __init__(self, inp, oup, kernel_size=1, dw_size=3, stride=1, relu=True, deploy=False,
                 reparam_bn=True, reparam_identity=False):
        super().__init__()
        init_channels = oup
        new_channels = oup
        self.deploy = deploy
        self.primary_conv = nn.Sequential(
            nn.Conv2d(inp, init_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_channels),
            nn.ReLU(inplace=True) if relu else nn.Sequential(),
        )
        fusion_conv = []
        fusion_bn = []
        if not deploy and reparam_bn:
            fusion_conv.append(nn.Identity())
            fusion_bn.append(nn.BatchNorm2d(init_channels))
        if not deploy and reparam_identity:
            fusion_conv.append(nn.Identity())
            fusion_bn.append(nn.Identity())
        self.fusion_conv = nn.Sequential(*fusion_conv)
        self.fusion_bn = nn.Sequential(*fusion_bn)
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_channels, new_channels, dw_size, 1, dw_size // 2, groups=init_channels,
                      bias=deploy),
            nn.BatchNorm2d(new_channels) if not deploy else nn.Sequential(),
        )
        if deploy:
            self.cheap_operation = self.cheap_operation[0]
        self.relu = nn.ReLU(inplace=False) if relu else nn.Sequential()

    def forward(self, x):
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        for conv, bn in zip(self.fusion_conv, self.fusion_bn):
            x2 = x2 + bn(conv(x1))
        return self.relu(x2)

    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent depthwise kernel and bias of ``cheap_operation`` + fusion branches (float64)."""
        kernel, bias = self._fuse_bn_tensor(self.cheap_operation[0], self.cheap_operation[1])
        k = kernel.shape[-1]
        for conv, bn in zip(self.fusion_conv, self.fusion_bn):
            k1, b1 = self._fuse_bn_tensor(conv, bn, kernel.shape[0])
            kernel = kernel + F.pad(k1, [k // 2] * 4)
            bias = bias + b1
        return kernel, bias

    @staticmethod
    def _fuse_bn_tensor(conv, bn, in_channels=None):
        """(kernel, bias) in float64 of ``bn(conv(x))``; ``conv`` may be ``Identity`` (a dw 1x1
        kernel of ones) and ``bn`` may be ``Identity``."""
        in_channels = in_channels if in_channels else bn.running_mean.shape[0]
        if isinstance(conv, nn.Conv2d):
            assert conv.bias is None
            kernel = conv.weight.detach().to(_F64)
        else:
            assert isinstance(conv, nn.Identity)
            kernel = torch.ones(in_channels, 1, 1, 1, dtype=_F64)
        if isinstance(bn, nn.BatchNorm2d):
            return fuse_conv_bn(kernel, bn, out_dtype=_F64)
        assert isinstance(bn, nn.Identity)
        return kernel, torch.zeros(in_channels, dtype=_F64)

    @torch.no_grad()
    def switch_to_deploy(self):
        if len(self.fusion_conv) == 0 and len(self.fusion_bn) == 0:
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        self.cheap_operation = deploy_conv(self.cheap_operation[0], kernel, bias)
        self.__delattr__("fusion_conv")
        self.__delattr__("fusion_bn")
        self.fusion_conv = []
        self.fusion_bn = []
        self.deploy = True


class RepGhostBottleneck(nn.Module):
    """RepGhost bottleneck w/ optional SE."""

    def __init__(self, in_chs, mid_chs, out_chs, dw_kernel_size=3, stride=1, se_ratio=0.0,
                 shortcut=True, reparam=True, reparam_bn=True, reparam_identity=False,
                 deploy=False):
        super().__init__()
        has_se = se_ratio is not None and se_ratio > 0.0
        self.stride = stride
        self.enable_shortcut = shortcut
        self.in_chs = in_chs
        self.out_chs = out_chs
        # point-wise expansion
        self.ghost1 = RepGhostModule(in_chs, mid_chs, relu=True, reparam_bn=reparam and reparam_bn,
                                     reparam_identity=reparam and reparam_identity, deploy=deploy)
        # depth-wise convolution
        if self.stride > 1:
            self.conv_dw = nn.Conv2d(mid_chs, mid_chs, dw_kernel_size, stride=stride,
                                     padding=(dw_kernel_size - 1) // 2, groups=mid_chs, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        # squeeze-and-excitation
        self.se = SqueezeExcite(mid_chs, se_ratio=se_ratio) if has_se else None
        # point-wise linear projection
        self.ghost2 = RepGhostModule(mid_chs, out_chs, relu=False,
                                     reparam_bn=reparam and reparam_bn,
                                     reparam_identity=reparam and reparam_identity, deploy=deploy)
        # shortcut
        if in_chs == out_chs and self.stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, in_chs, dw_kernel_size, stride=stride,
                          padding=(dw_kernel_size - 1) // 2, groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x):
        residual = x
        x1 = self.ghost1(x)
        if self.stride > 1:
            x = self.bn_dw(self.conv_dw(x1))
        else:
            x = x1
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        if not self.enable_shortcut and self.in_chs == self.out_chs and self.stride == 1:
            return x
        return x + self.shortcut(residual)


class RepGhostNet(nn.Module):
    def __init__(self, cfgs, num_classes=1000, width=1.0, dropout=0.2, shortcut=True, reparam=True,
                 reparam_bn=True, reparam_identity=False, deploy=False):
        super().__init__()
        self.cfgs = cfgs
        self.dropout = dropout
        self.num_classes = num_classes
        # first layer
        output_channel = _make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(3, output_channel, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(output_channel)
        self.act1 = nn.ReLU(inplace=True)
        input_channel = output_channel
        # inverted residual blocks
        stages = []
        block = RepGhostBottleneck
        for cfg in self.cfgs:
            layers = []
            for k, exp_size, c, se_ratio, s in cfg:
                output_channel = _make_divisible(c * width, 4)
                hidden_channel = _make_divisible(exp_size * width, 4)
                layers.append(block(input_channel, hidden_channel, output_channel, k, s,
                                    se_ratio=se_ratio, shortcut=shortcut, reparam=reparam,
                                    reparam_bn=reparam_bn, reparam_identity=reparam_identity,
                                    deploy=deploy))
                input_channel = output_channel
            stages.append(nn.Sequential(*layers))
        output_channel = _make_divisible(exp_size * width * 2, 4)
        stages.append(nn.Sequential(ConvBnAct(input_channel, output_channel, 1)))
        input_channel = output_channel
        self.blocks = nn.Sequential(*stages)
        # head
        output_channel = 1280
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.conv_head = nn.Conv2d(input_channel, output_channel, 1, 1, 0, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(output_channel, num_classes)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = self.global_pool(x)
        x = self.act2(self.conv_head(x))
        x = x.view(x.size(0), -1)
        if self.dropout > 0.0:
            x = F.dropout(x, p=self.dropout, training=self.training)
        return self.classifier(x)

    def convert_to_deploy(self):
        repghost_model_convert(self, do_copy=False)


def repghost_model_convert(model: nn.Module, save_path=None, do_copy: bool = True) -> nn.Module:
    """Deep copy (unless ``do_copy=False``) with every ``switch_to_deploy``-capable module
    converted: the official ``repghost_model_convert``."""
    if do_copy:
        model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "switch_to_deploy"):
            module.switch_to_deploy()
    if save_path is not None:
        torch.save(model.state_dict(), save_path)
    return model


def repghostnet(enable_se=True, **kwargs) -> RepGhostNet:
    se = 0.25 if enable_se else 0
    cfgs = [
        # k, t, c, SE, s
        [[3, 8, 16, 0, 1]],                 # stage 1
        [[3, 24, 24, 0, 2]],                # stage 2
        [[3, 36, 24, 0, 1]],
        [[5, 36, 40, se, 2]],               # stage 3
        [[5, 60, 40, se, 1]],
        [[3, 120, 80, 0, 2]],               # stage 4
        [[3, 100, 80, 0, 1],
         [3, 120, 80, 0, 1],
         [3, 120, 80, 0, 1],
         [3, 240, 112, se, 1],
         [3, 336, 112, se, 1]],
        [[5, 336, 160, se, 2]],             # stage 5
        [[5, 480, 160, 0, 1],
         [5, 480, 160, se, 1],
         [5, 480, 160, 0, 1],
         [5, 480, 160, se, 1]],
    ]
    return RepGhostNet(cfgs, **kwargs)


def repghostnet_0_5x(**kwargs) -> RepGhostNet:
    return repghostnet(width=0.5, **kwargs)


def repghost_0_5(num_classes: int = 1000, deploy: bool = False) -> RepGhostNet:
    """RepGhostNet 0.5x (16 bottlenecks, SE in 7 of them, 1000 classes)."""
    return repghostnet_0_5x(num_classes=num_classes, deploy=deploy)
