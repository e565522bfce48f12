"""Shared building blocks for the reference networks.

* ``conv_bn``       -- ``nn.Sequential(conv(bias=False), bn)`` with children ``conv`` / ``bn``.
* ``fuse_conv_bn``  -- the standard Conv->BN fold (computed in float64).
* ``randomize_bn_`` -- random BN affine parameters *and* running statistics, so that a BN fold is
  never trivially the identity (with PyTorch defaults ``mean=0, var=1, gamma=1, beta=0``).
* ``seed_everything``.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["conv_bn", "fuse_conv_bn", "randomize_bn_", "seed_everything", "count_convs"]


def conv_bn(in_c: int, out_c: int, kernel_size, stride, padding, groups: int = 1,
            dilation: int = 1) -> nn.Sequential:
    """``Conv2d(bias=False)`` followed by ``BatchNorm2d``; children are named ``conv`` and ``bn``."""
    result = nn.Sequential()
    result.add_module("conv", nn.Conv2d(in_c, out_c, kernel_size=kernel_size, stride=stride,
                                        padding=padding, dilation=dilation, groups=groups,
                                        bias=False))
    result.add_module("bn", nn.BatchNorm2d(out_c))
    return result


@torch.no_grad()
def fuse_conv_bn(kernel: torch.Tensor, bn: _BatchNorm, out_dtype: torch.dtype | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BN into the preceding bias-free conv kernel.

    ``W' = W * (gamma / sigma)[:, None, None, None]``, ``b' = beta - mu * gamma / sigma`` with
    ``sigma = sqrt(var + eps)``. Computed in float64; the result is cast to ``out_dtype``
    (default: the kernel's dtype). Pass ``out_dtype=torch.float64`` to keep full precision when
    several folded branches are summed afterwards.
    """
    out_dtype = kernel.dtype if out_dtype is None else out_dtype
    k = kernel.detach().to(torch.float64)
    n = bn.num_features
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones(n, dtype=torch.float64)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros(n, dtype=torch.float64)
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fuse_conv_bn needs a BatchNorm with running statistics")
    mean = bn.running_mean.detach().double()
    var = bn.running_var.detach().double()
    t = gamma / torch.sqrt(var + bn.eps)
    fused_k = k * t.reshape(-1, *([1] * (k.dim() - 1)))
    fused_b = beta - mean * t
    return fused_k.to(out_dtype), fused_b.to(out_dtype)


@torch.no_grad()
def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random weight, bias, running_mean and running_var (in place).

    weight ~ U(0.5, 1.5), bias ~ N(0, 0.2), running_mean ~ N(0, 0.2), running_var ~ U(0.5, 2.0);
    deterministic given ``seed`` (own generator, the global RNG is untouched). Returns ``model``.
    """
    g = torch.Generator().manual_seed(int(seed))
    for m in model.modules():
        if not isinstance(m, _BatchNorm):
            continue
        n = m.num_features
        if m.weight is not None:
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
        if m.bias is not None:
            m.bias.copy_(torch.randn(n, generator=g) * 0.2)
        if m.running_mean is not None:
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
        if m.running_var is not None:
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
    return model


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def identity_kernel(channels: int, groups: int = 1, kh: int = 3, kw: int | None = None) -> torch.Tensor:
    """The identity map as a float64 (grouped) ``kh x kw`` conv kernel: 1 at ``[i, i % (C/g), centre]``."""
    kw = kh if kw is None else kw
    input_dim = channels // groups
    k = torch.zeros(channels, input_dim, kh, kw, dtype=torch.float64)
    k[torch.arange(channels), torch.arange(channels) % input_dim, kh // 2, kw // 2] = 1.0
    return k


def make_divisible(v, divisor, min_value=None) -> int:
    """Channel rounding of the TF MobileNet code, as the official RepGhost and RepViT code use it: the
    multiple of ``divisor`` nearest to ``v`` (at least ``min_value``), never 10% below ``v``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def count_convs(model: nn.Module) -> int:
    """Number of ``nn.Conv2d`` modules in ``model``."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


@torch.no_grad()
def deploy_conv(template: nn.Conv2d, kernel: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A Conv2d with ``template``'s geometry holding the merged ``kernel`` and ``bias``.

    The merge is computed in float64 by the callers and cast to the template's dtype here.
    """
    dtype = template.weight.dtype
    conv = nn.Conv2d(template.in_channels, template.out_channels, template.kernel_size, stride=template.stride,
                     padding=template.padding, dilation=template.dilation, groups=template.groups, bias=True)
    conv.to(device=template.weight.device, dtype=dtype)
    conv.weight.copy_(kernel.to(dtype))
    conv.bias.copy_(bias.to(dtype))
    return conv


def resnet_stages(make_block, in_planes: int, widths, num_blocks) -> tuple[list[nn.Sequential], int]:
    """ResNet-18-style stages (first block of each stage but the first has stride 2).

    ``make_block(stage_index, in_planes, planes, stride)`` builds one block. Returns the
    stages and the final width.
    """
    stages = []
    for i, (n, w) in enumerate(zip(num_blocks, widths)):
        strides = [1 if i == 0 else 2] + [1] * (n - 1)
        blocks = []
        for s in strides:
            blocks.append(make_block(i, in_planes, w, s))
            in_planes = w
        stages.append(nn.Sequential(*blocks))
    return stages, in_planes
