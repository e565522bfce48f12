"""RepLKNet (Ding et al., "Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in
CNNs", CVPR 2022; arXiv:2203.06717).

Training form of a ReparamLargeKernelConv (attribute names follow the official code,
DingXiaoH/RepLKNet-pytorch, ``replknet.py``)::

    lkb_origin   depthwise KxK conv -> BN (K = 31, 29, 27, 13 per stage; stride 1, pad K//2)
    small_conv   depthwise kxk conv -> BN (k = 5, pad k//2)                 [if small_kernel]

summed. Deploy form (``merge_kernel``): one depthwise KxK conv with bias (``lkb_reparam``), the
5x5 kernel zero-padded to KxK at the centre. Merges are computed in float64 and cast back.

Around it, as in the official code:

* ``RepLKBlock``: ``x + drop_path(pw2(lk_nonlinear(large_kernel(pw1(prelkb_bn(x))))))`` with
  ``pw1`` 1x1 conv-BN-ReLU (C -> dw_ratio*C), ``pw2`` 1x1 conv-BN. ``prelkb_bn`` is a pre-BN
  that could be folded into ``pw1`` (a 1x1 conv without padding, so the fold is exact), but the
  official deploy conversion leaves it, and so does ``replknet_model_convert``.
* ``ConvFFN``: ``x + drop_path(pw2(GELU(pw1(preffn_bn(x)))))``, 1x1 conv-BNs C -> 4C -> C.
* ``stem``: 3x3 s2 conv-BN-ReLU, dw 3x3 conv-BN-ReLU, 1x1 conv-BN-ReLU, dw 3x3 s2 conv-BN-ReLU.
* ``transitions``: 1x1 conv-BN-ReLU (C_i -> C_{i+1}), dw 3x3 s2 conv-BN-ReLU.
* head: ``norm`` (BN), ``avgpool`` (AdaptiveAvgPool2d(1)), ``torch.flatten(x, 1)``, ``head``
  (Linear).

The reference deploy form is exactly what the official ``structural_reparam()`` produces: only
the large-kernel convs are merged; every other conv keeps its BN (the official
``deep_fuse_BN`` is an optional extra and is not applied). ``replknet_tiny`` is a small
RepLKNet-31-like network (channels 32/64/128/256, layers 1/1/2/1, kernels 31/29/27/13, small
kernel 5) that exports in seconds; ``replknet_31b`` is the paper's RepLKNet-31B.

Left out of the official code: the CUDA implicit-GEMM depthwise conv (``LARGE_KERNEL_CONV_IMPL``;
plain ``nn.Conv2d`` here), ``SyncBatchNorm`` (plain ``BatchNorm2d``: the same op in eval mode),
``torch.utils.checkpoint`` (training memory only), the downstream-task outputs
(``out_indices``, ``norm_intermediate_features``), ``deep_fuse_BN`` and the debug print of the
drop-path rate. ``DropPath`` is a local copy of timm's (identity in eval mode).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .common import conv_bn as _conv_bn, deploy_conv, fuse_conv_bn

__all__ = ["DropPath", "conv_bn", "conv_bn_relu", "ReparamLargeKernelConv", "ConvFFN",
           "RepLKBlock", "RepLKNetStage", "RepLKNet", "replknet_tiny", "replknet_31b",
           "replknet_model_convert"]

_F64 = torch.float64


def conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups, dilation=1):
    if padding is None:
        padding = kernel_size // 2
    return _conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                    dilation=dilation)


def conv_bn_relu(in_channels, out_channels, kernel_size, stride, padding, groups, dilation=1):
    """conv-BN with a third child ``nonlinear`` (ReLU), as in the official code."""
    result = conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups, dilation)
    result.add_module("nonlinear", nn.ReLU())
    return result


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's ``DropPath``); the identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
        if keep_prob > 0.0 and self.scale_by_keep:
            random_tensor.div_(keep_prob)
        return x * random_tensor

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class ReparamLargeKernelConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, groups, small_kernel,
                 small_kernel_merged=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        # The official code assumes the conv keeps the feature map size: padding = k // 2.
        padding = kernel_size // 2
        if small_kernel_merged:
            self.lkb_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                         padding=padding, dilation=1, groups=groups, bias=True)
        else:
            self.lkb_origin = conv_bn(in_channels, out_channels, kernel_size, stride, padding,
                                      groups=groups, dilation=1)
            if small_kernel is not None:
                assert small_kernel <= kernel_size, \
                    "The kernel size for re-param cannot be larger than the large kernel!"
                self.small_conv = conv_bn(in_channels, out_channels, small_kernel, stride,
                                          small_kernel // 2, groups=groups, dilation=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "lkb_reparam"):
            out = self.lkb_reparam(inputs)
        else:
            out = self.lkb_origin(inputs)
            if hasattr(self, "small_conv"):
                out += self.small_conv(inputs)
        return out

    # ---- deploy conversion (the PyTorch reference) -------------------------------------------
    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent KxK kernel and bias (float64)."""
        eq_k, eq_b = fuse_conv_bn(self.lkb_origin.conv.weight, self.lkb_origin.bn, out_dtype=_F64)
        if hasattr(self, "small_conv"):
            small_k, small_b = fuse_conv_bn(self.small_conv.conv.weight, self.small_conv.bn,
                                            out_dtype=_F64)
            eq_b = eq_b + small_b
            # add to the central part
            eq_k = eq_k + F.pad(small_k, [(self.kernel_size - self.small_kernel) // 2] * 4)
        return eq_k, eq_b

    @torch.no_grad()
    def merge_kernel(self) -> None:
        """Replace ``lkb_origin`` (+ ``small_conv``) by one conv ``lkb_reparam`` (in place)."""
        if hasattr(self, "lkb_reparam"):
            return
        eq_k, eq_b = self.get_equivalent_kernel_bias()
        self.lkb_reparam = deploy_conv(self.lkb_origin.conv, eq_k, eq_b)
        del self.lkb_origin
        if hasattr(self, "small_conv"):
            del self.small_conv


class ConvFFN(nn.Module):
    def __init__(self, in_channels, internal_channels, out_channels, drop_path):
        super().__init__()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.preffn_bn = nn.BatchNorm2d(in_channels)
        self.pw1 = conv_bn(in_channels, internal_channels, 1, 1, 0, groups=1)
        self.pw2 = conv_bn(internal_channels, out_channels, 1, 1, 0, groups=1)
        self.nonlinear = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.preffn_bn(x)
        out = self.pw1(out)
        out = self.nonlinear(out)
        out = self.pw2(out)
        return x + self.drop_path(out)


class RepLKBlock(nn.Module):
    def __init__(self, in_channels, dw_channels, block_lk_size, small_kernel, drop_path,
                 small_kernel_merged=False):
        super().__init__()
        self.pw1 = conv_bn_relu(in_channels, dw_channels, 1, 1, 0, groups=1)
        self.pw2 = conv_bn(dw_channels, in_channels, 1, 1, 0, groups=1)
        self.large_kernel = ReparamLargeKernelConv(in_channels=dw_channels, out_channels=dw_channels,
                                                   kernel_size=block_lk_size, stride=1,
                                                   groups=dw_channels, small_kernel=small_kernel,
                                                   small_kernel_merged=small_kernel_merged)
        self.lk_nonlinear = nn.ReLU()
        self.prelkb_bn = nn.BatchNorm2d(in_channels)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelkb_bn(x)
        out = self.pw1(out)
        out = self.large_kernel(out)
        out = self.lk_nonlinear(out)
        out = self.pw2(out)
        return x + self.drop_path(out)


class RepLKNetStage(nn.Module):
    def __init__(self, channels, num_blocks, stage_lk_size, drop_path, small_kernel, dw_ratio=1,
                 ffn_ratio=4, small_kernel_merged=False):
        super().__init__()
        blks = []
        for i in range(num_blocks):
            block_drop_path = drop_path[i] if isinstance(drop_path, list) else drop_path
            # all RepLK blocks of a stage share the same lk_size, as in the official code
            blks.append(RepLKBlock(in_channels=channels, dw_channels=int(channels * dw_ratio),
                                   block_lk_size=stage_lk_size, small_kernel=small_kernel,
                                   drop_path=block_drop_path,
                                   small_kernel_merged=small_kernel_merged))
            blks.append(ConvFFN(in_channels=channels, internal_channels=int(channels * ffn_ratio),
                                out_channels=channels, drop_path=block_drop_path))
        self.blocks = nn.ModuleList(blks)
        self.norm = nn.Identity()  # the official BN here is for RepLKNet-XL downstream only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


class RepLKNet(nn.Module):
    def __init__(self, large_kernel_sizes, layers, channels, drop_path_rate, small_kernel,
                 dw_ratio=1, ffn_ratio=4, in_channels=3, num_classes=1000,
                 small_kernel_merged=False):
        super().__init__()
        base_width = channels[0]
        self.num_stages = len(layers)
        self.stem = nn.ModuleList([
            conv_bn_relu(in_channels, base_width, kernel_size=3, stride=2, padding=1, groups=1),
            conv_bn_relu(base_width, base_width, kernel_size=3, stride=1, padding=1,
                         groups=base_width),
            conv_bn_relu(base_width, base_width, kernel_size=1, stride=1, padding=0, groups=1),
            conv_bn_relu(base_width, base_width, kernel_size=3, stride=2, padding=1,
                         groups=base_width)])
        # stochastic depth: block-wise drop-path rates increasing with depth (as in Swin)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(layers), device="cpu")]
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for stage_idx in range(self.num_stages):
            self.stages.append(RepLKNetStage(
                channels=channels[stage_idx], num_blocks=layers[stage_idx],
                stage_lk_size=large_kernel_sizes[stage_idx],
                drop_path=dpr[sum(layers[:stage_idx]):sum(layers[:stage_idx + 1])],
                small_kernel=small_kernel, dw_ratio=dw_ratio, ffn_ratio=ffn_ratio,
                small_kernel_merged=small_kernel_merged))
            if stage_idx < len(layers) - 1:
                self.transitions.append(nn.Sequential(
                    conv_bn_relu(channels[stage_idx], channels[stage_idx + 1], 1, 1, 0, groups=1),
                    conv_bn_relu(channels[stage_idx + 1], channels[stage_idx + 1], 3, stride=2,
                                 padding=1, groups=channels[stage_idx + 1])))
        self.norm = nn.BatchNorm2d(channels[-1])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem[0](x)
        for stem_layer in self.stem[1:]:
            x = stem_layer(x)
        for stage_idx in range(self.num_stages):
            x = self.stages[stage_idx](x)
            if stage_idx < self.num_stages - 1:
                x = self.transitions[stage_idx](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.norm(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.head(x)

    def structural_reparam(self) -> None:
        """The official in-place deploy conversion: merge every large kernel."""
        for m in self.modules():
            if hasattr(m, "merge_kernel"):
                m.merge_kernel()


def replknet_tiny(num_classes: int = 1000, drop_path_rate: float = 0.3,
                  small_kernel_merged: bool = False) -> RepLKNet:
    """A small RepLKNet-31-like network: channels 32/64/128/256, layers 1/1/2/1, large kernels
    31/29/27/13, small kernel 5 (5 ReparamLargeKernelConvs)."""
    return RepLKNet(large_kernel_sizes=[31, 29, 27, 13], layers=[1, 1, 2, 1],
                    channels=[32, 64, 128, 256], drop_path_rate=drop_path_rate, small_kernel=5,
                    num_classes=num_classes, small_kernel_merged=small_kernel_merged)


def replknet_31b(num_classes: int = 1000, drop_path_rate: float = 0.3,
                 small_kernel_merged: bool = False) -> RepLKNet:
    """RepLKNet-31B as in the paper (``create_RepLKNet31B``; 79M parameters)."""
    return RepLKNet(large_kernel_sizes=[31, 29, 27, 13], layers=[2, 2, 18, 2],
                    channels=[128, 256, 512, 1024], drop_path_rate=drop_path_rate, small_kernel=5,
                    num_classes=num_classes, small_kernel_merged=small_kernel_merged)


def replknet_model_convert(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` in the authors' deploy form (``structural_reparam``: every
    ``merge_kernel``-capable module merged, nothing else changed)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "merge_kernel"):
            module.merge_kernel()
    return model
