"""RepViT (Wang et al., "RepViT: Revisiting Mobile CNN From ViT Perspective", CVPR 2024).

A MobileNetV3-style network whose blocks separate a token mixer from a channel mixer:

* stride 1: ``token_mixer = RepVGGDW -> SqueezeExcite | Identity`` with
  ``RepVGGDW(x) = bn((conv(x) + conv1(x)) + x)``: depthwise 3x3 ``Conv2d_BN`` + depthwise 1x1
  conv with bias + identity, followed by a BN on the sum (post-BN);
* stride 2: ``token_mixer = dw 3x3 Conv2d_BN (stride 2) -> SqueezeExcite | Identity -> 1x1
  Conv2d_BN`` (the dw-s2 -> pw downsampling);
* both: ``channel_mixer = Residual(1x1 Conv2d_BN (x2) -> GELU -> 1x1 Conv2d_BN)``.

Stem ``Conv2d_BN 3x3 s2 -> GELU -> Conv2d_BN 3x3 s2``; global average pooling; classifier
``BN_Linear`` (BatchNorm1d then Linear). Structure, names (``Conv2d_BN`` with children ``c`` /
``bn``, ``Residual.m``, ``RepVGGDW.conv`` / ``conv1`` / ``bn``, ``RepViTBlock.token_mixer`` /
``channel_mixer``, ``features``, ``classifier.classifier``), the ``m0_9`` cfg table and
``_make_divisible`` follow the official code (github THU-MIG/RepViT, ``model/repvit.py``);
``SqueezeExcite`` re-implements timm's (``fc1 -> bn(Identity) -> ReLU -> fc2 -> sigmoid`` gate,
``rd_ratio=0.25``, ``rd_divisor=8``) so that timm is not needed.

Deploy form: the official ``utils.replace_batchnorm`` walks the children, replaces every module
that has a ``fuse()`` by what it returns (``Conv2d_BN`` -> Conv2d, ``RepVGGDW`` -> one depthwise
3x3 Conv2d, ``Residual`` -> itself with its content fused, ``Classfier`` / ``BN_Linear`` ->
Linear) and every other ``BatchNorm2d`` by ``Identity`` (RepViT has none left: the only other
BN-like slot is the SE's ``bn``, already an ``Identity``). Every ``fuse()`` here computes in
float64 and casts back (the official code computes in the parameters' dtype).

The official init gives the last BN of every channel mixer ``weight = 0``
(``bn_weight_init=0``), so a freshly built model's channel mixers are exactly zero;
``models.common.randomize_bn_`` (called by the registry) makes them non-trivial.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .common import deploy_conv, fuse_conv_bn, identity_kernel, make_divisible as _make_divisible

__all__ = ["Conv2d_BN", "Residual", "RepVGGDW", "SqueezeExcite", "RepViTBlock", "BN_Linear",
           "Classfier", "RepViT", "repvit_m0_9", "repvit_model_convert", "replace_batchnorm",
           "M0_9_CFGS"]

_F64 = torch.float64


def _timm_make_divisible(v, divisor=8, min_value=None, round_limit=.9):
    """``timm.layers.helpers.make_divisible`` (used by timm's SqueezeExcite with round_limit=0)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


class Conv2d_BN(nn.Sequential):
    """``Conv2d(bias=False)`` (child ``c``) followed by ``BatchNorm2d`` (child ``bn``)."""

    def __init__(self, a, b, ks=1, stride=1, pad=0, dilation=1, groups=1, bn_weight_init=1,
                 resolution=-10000):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, dilation, groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.constant_(self.bn.bias, 0)

    @torch.no_grad()
    def fuse_f64(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent kernel and bias in float64."""
        return fuse_conv_bn(self.c.weight, self.bn, out_dtype=_F64)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        w, b = self.fuse_f64()
        return deploy_conv(self.c, w, b)


class Residual(nn.Module):
    """``x + m(x)`` (with stochastic depth ``drop`` in training, as in the official code)."""

    def __init__(self, m, drop=0.):
        super().__init__()
        self.m = m
        self.drop = drop

    def forward(self, x):
        if self.training and self.drop > 0:
            return x + self.m(x) * torch.rand(x.size(0), 1, 1, 1, device=x.device).ge_(
                self.drop).div(1 - self.drop).detach()
        return x + self.m(x)

    @torch.no_grad()
    def fuse(self):
        """Official semantics: a wrapped depthwise 3x3 ``Conv2d_BN`` / a (non-depthwise) 3x3
        Conv2d absorbs the identity; anything else (RepViT's channel mixers, the only case the
        network uses) is returned as is, and ``replace_batchnorm`` then fuses its content."""
        if isinstance(self.m, Conv2d_BN):
            w, b = self.m.fuse_f64()
            assert self.m.c.groups == self.m.c.in_channels
            return deploy_conv(self.m.c, w + identity_kernel(w.shape[0], w.shape[0]), b)
        if isinstance(self.m, nn.Conv2d):
            # The official code adds ``pad(ones(O, I/g, 1, 1))``: the identity only if I/g == 1,
            # which its own assert excludes (dead code in RepViT). The true identity is used here.
            m = self.m
            assert m.groups != m.in_channels and m.in_channels == m.out_channels
            assert m.kernel_size == (3, 3) and m.padding == (1, 1) and m.stride == (1, 1)
            w = m.weight.to(_F64)
            m.weight.copy_((w + identity_kernel(w.shape[0], m.groups)).to(m.weight.dtype))
            return m
        return self


class RepVGGDW(nn.Module):
    """``bn((conv(x) + conv1(x)) + x)``: dw 3x3 Conv2d_BN + dw 1x1 conv (bias) + identity, post-BN.

    The re-parameterizable block of RepViT; ``fuse()`` returns one depthwise 3x3 Conv2d.
    """

    def __init__(self, ed) -> None:
        super().__init__()
        self.conv = Conv2d_BN(ed, ed, 3, 1, 1, groups=ed)
        self.conv1 = nn.Conv2d(ed, ed, 1, 1, 0, groups=ed)
        self.dim = ed
        self.bn = nn.BatchNorm2d(ed)

    def forward(self, x):
        return self.bn((self.conv(x) + self.conv1(x)) + x)

    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent depthwise 3x3 kernel and bias (float64)."""
        conv_w, conv_b = self.conv.fuse_f64()
        conv1_w = F.pad(self.conv1.weight.to(_F64), [1, 1, 1, 1])
        conv1_b = self.conv1.bias.to(_F64)
        w = conv_w + conv1_w + identity_kernel(self.dim, self.dim)
        b = conv_b + conv1_b
        # post-BN on the sum
        return fuse_conv_bn(w, self.bn, out_dtype=_F64)[0], _bn_after_bias(b, self.bn)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        w, b = self.get_equivalent_kernel_bias()
        return deploy_conv(self.conv.c, w, b)


def _bn_after_bias(b: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """``bn(b)`` for a per-channel constant ``b`` (float64): ``beta + (b - mu) * gamma / sigma``."""
    gamma, beta = bn.weight.to(_F64), bn.bias.to(_F64)
    mean, var = bn.running_mean.to(_F64), bn.running_var.to(_F64)
    return beta + (b - mean) * gamma / torch.sqrt(var + bn.eps)


class SqueezeExcite(nn.Module):
    """timm's ``SqueezeExcite`` (``SEModule``): ``x * sigmoid(fc2(relu(fc1(mean(x)))))``.

    ``rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0)``; timm's
    optional ``add_maxpool`` and ``norm_layer`` are left out (RepViT uses neither), ``bn`` is an
    ``Identity`` as in timm without a norm layer.
    """

    def __init__(self, channels, rd_ratio=1. / 16, rd_channels=None, rd_divisor=8, bias=True,
                 act_layer=nn.ReLU):
        super().__init__()
        if not rd_channels:
            rd_channels = _timm_make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=bias)
        self.bn = nn.Identity()
        self.act = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.fc1(x_se)
        x_se = self.act(self.bn(x_se))
        x_se = self.fc2(x_se)
        return x * self.gate(x_se)


class RepViTBlock(nn.Module):
    def __init__(self, inp, hidden_dim, oup, kernel_size, stride, use_se, use_hs):
        super().__init__()
        assert stride in [1, 2]
        self.identity = stride == 1 and inp == oup
        assert hidden_dim == 2 * inp
        if stride == 2:
            self.token_mixer = nn.Sequential(
                Conv2d_BN(inp, inp, kernel_size, stride, (kernel_size - 1) // 2, groups=inp),
                SqueezeExcite(inp, 0.25) if use_se else nn.Identity(),
                Conv2d_BN(inp, oup, ks=1, stride=1, pad=0),
            )
            self.channel_mixer = Residual(nn.Sequential(
                Conv2d_BN(oup, 2 * oup, 1, 1, 0),                    # pw
                nn.GELU() if use_hs else nn.GELU(),                  # (sic: GELU either way)
                Conv2d_BN(2 * oup, oup, 1, 1, 0, bn_weight_init=0),  # pw-linear
            ))
        else:
            assert self.identity
            self.token_mixer = nn.Sequential(
                RepVGGDW(inp),
                SqueezeExcite(inp, 0.25) if use_se else nn.Identity(),
            )
            self.channel_mixer = Residual(nn.Sequential(
                Conv2d_BN(inp, hidden_dim, 1, 1, 0),
                nn.GELU() if use_hs else nn.GELU(),
                Conv2d_BN(hidden_dim, oup, 1, 1, 0, bn_weight_init=0),
            ))

    def forward(self, x):
        return self.channel_mixer(self.token_mixer(x))


class BN_Linear(nn.Sequential):
    """``BatchNorm1d`` (child ``bn``) then ``Linear`` (child ``l``); ``fuse()`` -> one Linear."""

    def __init__(self, a, b, bias=True, std=0.02):
        super().__init__()
        self.add_module("bn", nn.BatchNorm1d(a))
        self.add_module("l", nn.Linear(a, b, bias=bias))
        nn.init.trunc_normal_(self.l.weight, std=std)  # timm's trunc_normal_ (a=-2, b=2)
        if bias:
            nn.init.constant_(self.l.bias, 0)

    @torch.no_grad()
    def fuse_f64(self) -> tuple[torch.Tensor, torch.Tensor]:
        bn, l = self.bn, self.l
        t = bn.weight.to(_F64) / torch.sqrt(bn.running_var.to(_F64) + bn.eps)
        shift = bn.bias.to(_F64) - bn.running_mean.to(_F64) * t
        lw = l.weight.to(_F64)
        w = lw * t[None, :]
        b = lw @ shift
        if l.bias is not None:
            b = b + l.bias.to(_F64)
        return w, b

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        w, b = self.fuse_f64()
        return _linear(self.l, w, b)


def _linear(template: nn.Linear, w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    m = nn.Linear(w.size(1), w.size(0), device=template.weight.device, dtype=template.weight.dtype)
    m.weight.copy_(w.to(template.weight.dtype))
    m.bias.copy_(b.to(template.weight.dtype))
    return m


class Classfier(nn.Module):
    """The official head (name sic): ``BN_Linear``, plus an averaged distillation head if asked."""

    def __init__(self, dim, num_classes, distillation=True):
        super().__init__()
        self.classifier = BN_Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.distillation = distillation
        if distillation:
            self.classifier_dist = BN_Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x):
        if self.distillation:
            x = self.classifier(x), self.classifier_dist(x)
            if not self.training:
                x = (x[0] + x[1]) / 2
        else:
            x = self.classifier(x)
        return x

    @torch.no_grad()
    def fuse(self):
        if not isinstance(self.classifier, BN_Linear):  # num_classes == 0
            return self.classifier
        w, b = self.classifier.fuse_f64()
        if self.distillation:
            wd, bd = self.classifier_dist.fuse_f64()
            w, b = (w + wd) / 2, (b + bd) / 2
        return _linear(self.classifier.l, w, b)


class RepViT(nn.Module):
    def __init__(self, cfgs, num_classes=1000, distillation=False):
        super().__init__()
        self.cfgs = cfgs
        input_channel = self.cfgs[0][2]
        patch_embed = nn.Sequential(Conv2d_BN(3, input_channel // 2, 3, 2, 1), nn.GELU(),
                                    Conv2d_BN(input_channel // 2, input_channel, 3, 2, 1))
        layers = [patch_embed]
        block = RepViTBlock
        for k, t, c, use_se, use_hs, s in self.cfgs:
            output_channel = _make_divisible(c, 8)
            exp_size = _make_divisible(input_channel * t, 8)
            layers.append(block(input_channel, exp_size, output_channel, k, s, use_se, use_hs))
            input_channel = output_channel
        self.features = nn.ModuleList(layers)
        self.classifier = Classfier(output_channel, num_classes, distillation)

    def forward(self, x):
        for f in self.features:
            x = f(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


M0_9_CFGS = [
    # k, t, c, SE, HS, s
    [3, 2, 48, 1, 0, 1],
    [3, 2, 48, 0, 0, 1],
    [3, 2, 48, 0, 0, 1],
    [3, 2, 96, 0, 0, 2],
    [3, 2, 96, 1, 0, 1],
    [3, 2, 96, 0, 0, 1],
    [3, 2, 96, 0, 0, 1],
    [3, 2, 192, 0, 1, 2],
    [3, 2, 192, 1, 1, 1],
    [3, 2, 192, 0, 1, 1],
    [3, 2, 192, 1, 1, 1],
    [3, 2, 192, 0, 1, 1],
    [3, 2, 192, 1, 1, 1],
    [3, 2, 192, 0, 1, 1],
    [3, 2, 192, 1, 1, 1],
    [3, 2, 192, 0, 1, 1],
    [3, 2, 192, 1, 1, 1],
    [3, 2, 192, 0, 1, 1],
    [3, 2, 192, 1, 1, 1],
    [3, 2, 192, 0, 1, 1],
    [3, 2, 192, 1, 1, 1],
    [3, 2, 192, 0, 1, 1],
    [3, 2, 192, 0, 1, 1],
    [3, 2, 384, 0, 1, 2],
    [3, 2, 384, 1, 1, 1],
    [3, 2, 384, 0, 1, 1],
]


def repvit_m0_9(num_classes: int = 1000, distillation: bool = False) -> RepViT:
    """RepViT-M0.9 (26 blocks, widths 48/96/192/384; official default ``distillation=False``)."""
    return RepViT([list(c) for c in M0_9_CFGS], num_classes=num_classes, distillation=distillation)


def replace_batchnorm(net: nn.Module) -> None:
    """The official ``utils.replace_batchnorm`` (in place): every child with a ``fuse()`` is
    replaced by its result (then recursed into), every other ``BatchNorm2d`` by ``Identity``."""
    for child_name, child in net.named_children():
        if hasattr(child, "fuse"):
            fused = child.fuse()
            setattr(net, child_name, fused)
            replace_batchnorm(fused)
        elif isinstance(child, nn.BatchNorm2d):
            setattr(net, child_name, nn.Identity())
        else:
            replace_batchnorm(child)


@torch.no_grad()
def repvit_model_convert(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` in the authors' deploy form (``replace_batchnorm``).

    A model that itself has a ``fuse()`` (a single ``RepVGGDW``, ``Conv2d_BN``, ...) is fused
    first; the official helper only looks at children.
    """
    model = copy.deepcopy(model)
    if hasattr(model, "fuse"):
        model = model.fuse()
    replace_batchnorm(model)
    return model
