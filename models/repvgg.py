"""RepVGG (Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021).

Training form of a block: ``ReLU(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))`` where the identity
branch ``BN(x)`` exists only if ``in == out`` and ``stride == 1``. Deploy form: one 3x3 conv with
bias (``rbr_reparam``). Follows the structure and attribute names of the official code
(``rbr_dense``, ``rbr_1x1``, ``rbr_identity``, ``rbr_reparam``; ``stage0..stage4``, ``gap``,
``linear``); SE blocks and checkpointing are left out.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .common import conv_bn, deploy_conv, fuse_conv_bn, identity_kernel

__all__ = ["RepVGGBlock", "RepVGG", "repvgg_a0", "repvgg_a0_g4", "repvgg_tiny",
           "repvgg_model_convert", "optional_groupwise_layers", "g2_map", "g4_map"]


class RepVGGBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, groups: int = 1, deploy: bool = False):
        super().__init__()
        assert kernel_size == 3 and padding == 1, "RepVGGBlock supports kernel_size=3, padding=1"
        self.deploy = deploy
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.groups = groups
        padding_11 = padding - kernel_size // 2
        self.nonlinearity = nn.ReLU()
        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                         padding=padding, groups=groups, bias=True)
        else:
            self.rbr_identity = (nn.BatchNorm2d(in_channels)
                                 if out_channels == in_channels and stride == 1 else None)
            self.rbr_dense = conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups)
            self.rbr_1x1 = conv_bn(in_channels, out_channels, 1, stride, padding_11, groups)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.rbr_reparam(inputs))
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(inputs)
        return self.nonlinearity(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out)

    # ---- deploy conversion (the PyTorch reference) -------------------------------------------
    def _fuse_bn_tensor(self, branch):
        if branch is None:
            return 0, 0
        if isinstance(branch, nn.Sequential):
            return fuse_conv_bn(branch.conv.weight, branch.bn, out_dtype=torch.float64)
        assert isinstance(branch, nn.BatchNorm2d)
        return fuse_conv_bn(identity_kernel(self.in_channels, self.groups), branch, out_dtype=torch.float64)

    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent 3x3 kernel and bias (float64)."""
        k3, b3 = self._fuse_bn_tensor(self.rbr_dense)
        k1, b1 = self._fuse_bn_tensor(self.rbr_1x1)
        kid, bid = self._fuse_bn_tensor(self.rbr_identity)
        return k3 + F.pad(k1, [1, 1, 1, 1]) + kid, b3 + b1 + bid

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        if hasattr(self, "rbr_reparam"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        self.rbr_reparam = deploy_conv(self.rbr_dense.conv, kernel, bias)
        for p in self.parameters():
            p.detach_()
        del self.rbr_dense
        del self.rbr_1x1
        if hasattr(self, "rbr_identity"):
            del self.rbr_identity
        self.deploy = True


class RepVGG(nn.Module):
    def __init__(self, num_blocks, num_classes: int = 1000, width_multiplier=None,
                 override_groups_map: dict | None = None, deploy: bool = False):
        super().__init__()
        assert len(width_multiplier) == 4
        self.deploy = deploy
        self.override_groups_map = override_groups_map or dict()
        assert 0 not in self.override_groups_map
        self.in_planes = min(64, int(64 * width_multiplier[0]))
        self.stage0 = RepVGGBlock(3, self.in_planes, kernel_size=3, stride=2, padding=1,
                                  deploy=deploy)
        self.cur_layer_idx = 1
        self.stage1 = self._make_stage(int(64 * width_multiplier[0]), num_blocks[0], stride=2)
        self.stage2 = self._make_stage(int(128 * width_multiplier[1]), num_blocks[1], stride=2)
        self.stage3 = self._make_stage(int(256 * width_multiplier[2]), num_blocks[2], stride=2)
        self.stage4 = self._make_stage(int(512 * width_multiplier[3]), num_blocks[3], stride=2)
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(int(512 * width_multiplier[3]), num_classes)

    def _make_stage(self, planes: int, num_blocks: int, stride: int) -> nn.ModuleList:
        strides = [stride] + [1] * (num_blocks - 1)
        blocks = []
        for s in strides:
            cur_groups = self.override_groups_map.get(self.cur_layer_idx, 1)
            blocks.append(RepVGGBlock(self.in_planes, planes, kernel_size=3, stride=s, padding=1,
                                      groups=cur_groups, deploy=self.deploy))
            self.in_planes = planes
            self.cur_layer_idx += 1
        return nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage0(x)
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            for block in stage:
                out = block(out)
        out = self.gap(out)
        out = out.view(out.size(0), -1)  # as in the official code: exports as Reshape
        return self.linear(out)


optional_groupwise_layers = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26]
g2_map = {layer: 2 for layer in optional_groupwise_layers}
g4_map = {layer: 4 for layer in optional_groupwise_layers}


def repvgg_a0(num_classes: int = 1000, deploy: bool = False) -> RepVGG:
    return RepVGG([2, 4, 14, 1], num_classes=num_classes,
                  width_multiplier=[0.75, 0.75, 0.75, 2.5], override_groups_map=None,
                  deploy=deploy)


def repvgg_a0_g4(num_classes: int = 1000, deploy: bool = False) -> RepVGG:
    """RepVGG-A0 with the paper's ``g4_map`` (groups=4 on layers 2, 4, ..., 26; A0 has layers
    0..21, so layers 2, 4, ..., 20 are grouped)."""
    return RepVGG([2, 4, 14, 1], num_classes=num_classes,
                  width_multiplier=[0.75, 0.75, 0.75, 2.5], override_groups_map=g4_map,
                  deploy=deploy)


def repvgg_tiny(num_classes: int = 10, deploy: bool = False) -> RepVGG:
    """A small RepVGG (7 blocks, widths 16/32/64/128, groups=2 on layers 2 and 4) for fast tests."""
    return RepVGG([1, 2, 2, 1], num_classes=num_classes,
                  width_multiplier=[0.25, 0.25, 0.25, 0.25], override_groups_map={2: 2, 4: 2},
                  deploy=deploy)


def repvgg_model_convert(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` with every ``switch_to_deploy``-capable module converted."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "switch_to_deploy"):
            module.switch_to_deploy()
    return model
