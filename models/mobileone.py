"""MobileOne (Vasu et al., "MobileOne: An Improved One millisecond Mobile Backbone", CVPR 2023;
arXiv:2206.04040).

Training form of a MobileOneBlock (attribute names follow the official code, apple/ml-mobileone,
``mobileone.py``)::

    rbr_conv[0..k-1]  k over-parameterized KxK conv -> BN branches (stride s, pad p, groups g)
    rbr_scale         1x1 conv -> BN (stride s, groups g)                 [only if K > 1]
    rbr_skip          BN(x)                                               [only if in == out, s == 1]

summed (in the official order: ``scale + skip``, then each conv branch), then ``se`` (identity
unless ``use_se``) and ReLU (``activation``). Deploy form (``reparameterize``): one KxK conv with
bias (``reparam_conv``); the 1x1 kernel is zero-padded to KxK at the centre and the identity is
a KxK kernel with a 1 at ``[i, i mod (in/g), K//2, K//2]``. Merges are computed in float64 and
cast back (the official code works in the model's dtype).

The network: ``stage0`` (a dense 3x3 stride-2 block, 3 -> min(64, 64 w0) channels, with the
default ``num_conv_branches=1`` as in the official code), ``stage1..4`` built from pairs of a
depthwise 3x3 block (stride 2 for the first pair of a stage, else 1) and a pointwise 1x1 block,
then ``gap`` (AdaptiveAvgPool2d), ``x.view(N, -1)`` and ``linear``. MobileOne-S0: blocks per
stage ``[2, 8, 10, 1]``, width multipliers ``(0.75, 1.0, 1.0, 2.0)``, ``num_conv_branches=4``,
no SE; i.e. 43 MobileOneBlocks, widths 48/128/256/1024.

Kept from the official code: ``SEBlock`` (``use_se``, S4's SE-ReLU), ``inference_mode``
constructors, the ``PARAMS`` table of S0..S4 and ``mobileone(variant=...)``. Left out: nothing
architectural; the cached ``id_tensor`` attribute is not kept on the block (it would otherwise
be a plain float tensor attribute that survives ``reparameterize``).
"""
from __future__ import annotations

import copy
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import conv_bn, deploy_conv, fuse_conv_bn, identity_kernel

__all__ = ["SEBlock", "MobileOneBlock", "MobileOne", "PARAMS", "mobileone", "mobileone_s0",
           "reparameterize_model", "mobileone_model_convert"]

_F64 = torch.float64


class SEBlock(nn.Module):
    """Squeeze and Excite (Hu et al., https://arxiv.org/abs/1709.01507), as in the official code:
    ``x * sigmoid(expand(relu(reduce(avg_pool(x)))))``."""

    def __init__(self, in_channels: int, rd_ratio: float = 0.0625) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, int(in_channels * rd_ratio), kernel_size=1, stride=1,
                                bias=True)
        self.expand = nn.Conv2d(int(in_channels * rd_ratio), in_channels, kernel_size=1, stride=1,
                                bias=True)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        b, c, h, w = inputs.size()
        x = F.avg_pool2d(inputs, kernel_size=[h, w])
        x = self.reduce(x)
        x = F.relu(x)
        x = self.expand(x)
        x = torch.sigmoid(x)
        x = x.view(-1, c, 1, 1)
        return inputs * x


class MobileOneBlock(nn.Module):
    """MobileOne building block: multi-branch at train time, one conv (+ SE, ReLU) at inference."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1,
                 inference_mode: bool = False, use_se: bool = False,
                 num_conv_branches: int = 1) -> None:
        super().__init__()
        self.inference_mode = inference_mode
        self.groups = groups
        self.stride = stride
        self.kernel_size = kernel_size
        self.padding = padding
        self.dilation = dilation
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_conv_branches = num_conv_branches

        self.se = SEBlock(out_channels) if use_se else nn.Identity()
        self.activation = nn.ReLU()

        if inference_mode:
            self.reparam_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                          padding=padding, dilation=dilation, groups=groups,
                                          bias=True)
        else:
            # Re-parameterizable skip connection
            self.rbr_skip = (nn.BatchNorm2d(num_features=in_channels)
                             if out_channels == in_channels and stride == 1 else None)
            # Re-parameterizable conv branches (the official ``_conv_bn`` ignores ``dilation``)
            self.rbr_conv = nn.ModuleList(
                [self._conv_bn(kernel_size=kernel_size, padding=padding)
                 for _ in range(self.num_conv_branches)])
            # Re-parameterizable scale branch
            self.rbr_scale = None
            if kernel_size > 1:
                self.rbr_scale = self._conv_bn(kernel_size=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inference_mode:
            return self.activation(self.se(self.reparam_conv(x)))
        # the official summation order: (scale + skip), then each conv branch
        identity_out = 0
        if self.rbr_skip is not None:
            identity_out = self.rbr_skip(x)
        scale_out = 0
        if self.rbr_scale is not None:
            scale_out = self.rbr_scale(x)
        out = scale_out + identity_out
        for ix in range(self.num_conv_branches):
            out += self.rbr_conv[ix](x)
        return self.activation(self.se(out))

    # ---- deploy conversion (the PyTorch reference) -------------------------------------------
    def _fuse_bn_tensor(self, branch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(kernel, bias) of a conv-BN branch or of the BN identity branch, in float64."""
        if isinstance(branch, nn.Sequential):
            return fuse_conv_bn(branch.conv.weight, branch.bn, out_dtype=_F64)
        assert isinstance(branch, nn.BatchNorm2d)
        return fuse_conv_bn(identity_kernel(self.in_channels, self.groups, self.kernel_size), branch, out_dtype=_F64)

    @torch.no_grad()
    def _get_kernel_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Equivalent KxK kernel and bias of the whole block before SE/ReLU (float64)."""
        kernel_scale, bias_scale = 0, 0
        if self.rbr_scale is not None:
            kernel_scale, bias_scale = self._fuse_bn_tensor(self.rbr_scale)
            pad = self.kernel_size // 2
            kernel_scale = F.pad(kernel_scale, [pad, pad, pad, pad])
        kernel_identity, bias_identity = 0, 0
        if self.rbr_skip is not None:
            kernel_identity, bias_identity = self._fuse_bn_tensor(self.rbr_skip)
        kernel_conv, bias_conv = 0, 0
        for ix in range(self.num_conv_branches):
            _kernel, _bias = self._fuse_bn_tensor(self.rbr_conv[ix])
            kernel_conv = kernel_conv + _kernel
            bias_conv = bias_conv + _bias
        return (kernel_conv + kernel_scale + kernel_identity,
                bias_conv + bias_scale + bias_identity)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one conv ``reparam_conv`` (in place)."""
        if self.inference_mode:
            return
        kernel, bias = self._get_kernel_bias()
        self.reparam_conv = deploy_conv(self.rbr_conv[0].conv, kernel, bias)
        for para in self.parameters():
            para.detach_()
        del self.rbr_conv
        del self.rbr_scale
        if hasattr(self, "rbr_skip"):
            del self.rbr_skip
        self.inference_mode = True

    def _conv_bn(self, kernel_size: int, padding: int) -> nn.Sequential:
        return conv_bn(self.in_channels, self.out_channels, kernel_size, self.stride, padding,
                       groups=self.groups)


class MobileOne(nn.Module):
    def __init__(self, num_blocks_per_stage: List[int] = (2, 8, 10, 1), num_classes: int = 1000,
                 width_multipliers: Optional[List[float]] = None, inference_mode: bool = False,
                 use_se: bool = False, num_conv_branches: int = 1) -> None:
        super().__init__()
        assert len(width_multipliers) == 4
        self.inference_mode = inference_mode
        self.in_planes = min(64, int(64 * width_multipliers[0]))
        self.use_se = use_se
        self.num_conv_branches = num_conv_branches

        # stage0 uses the block's default num_conv_branches=1, as in the official code
        self.stage0 = MobileOneBlock(in_channels=3, out_channels=self.in_planes, kernel_size=3,
                                     stride=2, padding=1, inference_mode=self.inference_mode)
        self.cur_layer_idx = 1
        self.stage1 = self._make_stage(int(64 * width_multipliers[0]), num_blocks_per_stage[0],
                                       num_se_blocks=0)
        self.stage2 = self._make_stage(int(128 * width_multipliers[1]), num_blocks_per_stage[1],
                                       num_se_blocks=0)
        self.stage3 = self._make_stage(int(256 * width_multipliers[2]), num_blocks_per_stage[2],
                                       num_se_blocks=int(num_blocks_per_stage[2] // 2) if use_se else 0)
        self.stage4 = self._make_stage(int(512 * width_multipliers[3]), num_blocks_per_stage[3],
                                       num_se_blocks=num_blocks_per_stage[3] if use_se else 0)
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(int(512 * width_multipliers[3]), num_classes)

    def _make_stage(self, planes: int, num_blocks: int, num_se_blocks: int) -> nn.Sequential:
        strides = [2] + [1] * (num_blocks - 1)
        blocks = []
        for ix, stride in enumerate(strides):
            if num_se_blocks > num_blocks:
                raise ValueError("Number of SE blocks cannot exceed number of layers.")
            use_se = ix >= (num_blocks - num_se_blocks)
            # Depthwise conv
            blocks.append(MobileOneBlock(in_channels=self.in_planes, out_channels=self.in_planes,
                                         kernel_size=3, stride=stride, padding=1,
                                         groups=self.in_planes, inference_mode=self.inference_mode,
                                         use_se=use_se, num_conv_branches=self.num_conv_branches))
            # Pointwise conv
            blocks.append(MobileOneBlock(in_channels=self.in_planes, out_channels=planes,
                                         kernel_size=1, stride=1, padding=0, groups=1,
                                         inference_mode=self.inference_mode, use_se=use_se,
                                         num_conv_branches=self.num_conv_branches))
            self.in_planes = planes
            self.cur_layer_idx += 1
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage0(x)
        x = self.stage1(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.gap(x)
        x = x.view(x.size(0), -1)  # as in the official code
        return self.linear(x)


PARAMS = {
    "s0": {"width_multipliers": (0.75, 1.0, 1.0, 2.0), "num_conv_branches": 4},
    "s1": {"width_multipliers": (1.5, 1.5, 2.0, 2.5)},
    "s2": {"width_multipliers": (1.5, 2.0, 2.5, 4.0)},
    "s3": {"width_multipliers": (2.0, 2.5, 3.0, 4.0)},
    "s4": {"width_multipliers": (3.0, 3.5, 3.5, 4.0), "use_se": True},
}


def mobileone(num_classes: int = 1000, inference_mode: bool = False,
              variant: str = "s0") -> MobileOne:
    """The official factory: MobileOne ``variant`` in {s0, s1, s2, s3, s4}."""
    return MobileOne(num_classes=num_classes, inference_mode=inference_mode, **PARAMS[variant])


def mobileone_s0(num_classes: int = 1000, inference_mode: bool = False) -> MobileOne:
    """MobileOne-S0: 43 MobileOneBlocks (k=4 conv branches except stage0), no SE."""
    return mobileone(num_classes=num_classes, inference_mode=inference_mode, variant="s0")


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` with every ``reparameterize``-capable module converted (the
    official deploy conversion)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "reparameterize"):
            module.reparameterize()
    return model


def mobileone_model_convert(model: nn.Module) -> nn.Module:
    """The PyTorch deploy reference (same as ``reparameterize_model``)."""
    return reparameterize_model(model)
