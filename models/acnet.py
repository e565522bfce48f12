"""ACNet (Ding et al., "ACNet: Strengthening the Kernel Skeletons for Powerful CNN via Asymmetric
Convolution Blocks", ICCV 2019).

Training form of an Asymmetric Convolution Block (ACB):
``BN(conv_KxK(x)) + BN(conv_Kx1(x)) + BN(conv_1xK(x))``. The 1xK / Kx1 convs are padded
``(p - K//2, p)`` / ``(p, p - K//2)`` so their sliding windows align with the KxK one; when
``p < K//2`` (negative padding) the input of the asymmetric convs is cropped instead, as in the
official code (exports as Slice). Deploy form: one KxK conv with bias (``fused_conv``), the 1xK
and Kx1 kernels added on the centre row / column. Attribute names follow the official code.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .common import conv_bn, deploy_conv, fuse_conv_bn, resnet_stages

__all__ = ["ACBlock", "ACBasicBlock", "ACResNet", "acnet_resnet18_tiny", "acnet_k5_tiny",
           "acnet_crop_tiny", "acnet_model_convert"]


class ACBlock(nn.Module):
    def __init__(self, in_c: int, out_c: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, groups: int = 1, deploy: bool = False):
        super().__init__()
        assert kernel_size % 2 == 1, "ACBlock needs an odd kernel size"
        self.deploy = deploy
        self.in_channels, self.out_channels = in_c, out_c
        self.kernel_size, self.stride, self.padding, self.groups = kernel_size, stride, padding, groups
        if deploy:
            self.fused_conv = nn.Conv2d(in_c, out_c, kernel_size, stride=stride, padding=padding,
                                        groups=groups, bias=True)
            return
        self.square_conv = nn.Conv2d(in_c, out_c, (kernel_size, kernel_size), stride=stride,
                                     padding=padding, groups=groups, bias=False)
        self.square_bn = nn.BatchNorm2d(out_c)
        if padding - kernel_size // 2 >= 0:
            self.crop = 0
            hor_padding = (padding - kernel_size // 2, padding)
            ver_padding = (padding, padding - kernel_size // 2)
        else:  # "negative padding": crop the input of the asymmetric branches
            self.crop = kernel_size // 2 - padding
            hor_padding = (0, padding)
            ver_padding = (padding, 0)
        self.ver_conv = nn.Conv2d(in_c, out_c, (kernel_size, 1), stride=stride,
                                  padding=ver_padding, groups=groups, bias=False)
        self.hor_conv = nn.Conv2d(in_c, out_c, (1, kernel_size), stride=stride,
                                  padding=hor_padding, groups=groups, bias=False)
        self.ver_bn = nn.BatchNorm2d(out_c)
        self.hor_bn = nn.BatchNorm2d(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "fused_conv"):
            return self.fused_conv(x)
        square = self.square_bn(self.square_conv(x))
        if self.crop > 0:
            ver_input = x[:, :, :, self.crop:-self.crop]
            hor_input = x[:, :, self.crop:-self.crop, :]
        else:
            ver_input = hor_input = x
        vertical = self.ver_bn(self.ver_conv(ver_input))
        horizontal = self.hor_bn(self.hor_conv(hor_input))
        return square + vertical + horizontal

    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent KxK kernel and bias (float64)."""
        f64 = torch.float64
        k_sq, b_sq = fuse_conv_bn(self.square_conv.weight, self.square_bn, out_dtype=f64)
        k_hor, b_hor = fuse_conv_bn(self.hor_conv.weight, self.hor_bn, out_dtype=f64)
        k_ver, b_ver = fuse_conv_bn(self.ver_conv.weight, self.ver_bn, out_dtype=f64)
        c = self.kernel_size // 2
        kernel = k_sq.clone()
        kernel[:, :, c:c + 1, :] += k_hor   # 1xK on the centre row
        kernel[:, :, :, c:c + 1] += k_ver   # Kx1 on the centre column
        return kernel, b_sq + b_hor + b_ver

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        if hasattr(self, "fused_conv"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        self.fused_conv = deploy_conv(self.square_conv, kernel, bias)
        for name in ("square_conv", "square_bn", "hor_conv", "hor_bn", "ver_conv", "ver_bn"):
            delattr(self, name)
        self.deploy = True


class ACBasicBlock(nn.Module):
    """ResNet BasicBlock with both 3x3 conv-BN pairs replaced by ACBs (BN lives in the ACB)."""
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, kernel_size: int = 3,
                 deploy: bool = False):
        super().__init__()
        p = kernel_size // 2
        self.conv1 = ACBlock(in_planes, planes, kernel_size, stride, p, deploy=deploy)
        self.relu = nn.ReLU()
        self.conv2 = ACBlock(planes, planes, kernel_size, 1, p, deploy=deploy)
        if stride != 1 or in_planes != planes:
            self.shortcut = conv_bn(in_planes, planes, 1, stride, 0)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        return self.relu(out + self.shortcut(x))


class ACResNet(nn.Module):
    """ResNet-18-like: ACB stem (stride 2) + 4 stages of BasicBlocks + avgpool + Linear."""

    def __init__(self, num_blocks=(2, 2, 2, 2), widths=(32, 64, 128, 256), num_classes: int = 100,
                 stem_kernel: int = 3, deploy: bool = False):
        super().__init__()
        self.stem = ACBlock(3, widths[0], stem_kernel, 2, stem_kernel // 2, deploy=deploy)
        self.stem_relu = nn.ReLU()
        stages, in_planes = resnet_stages(lambda i, c_in, c_out, s: ACBasicBlock(c_in, c_out, s, deploy=deploy),
                                          widths[0], widths, num_blocks)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_relu(self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)  # as torchvision: exports as Flatten
        return self.fc(x)


def acnet_resnet18_tiny(num_classes: int = 100, deploy: bool = False) -> ACResNet:
    """ResNet-18 layout (2-2-2-2 BasicBlocks), widths 32/64/128/256, 17 ACBs (3x3)."""
    return ACResNet((2, 2, 2, 2), (32, 64, 128, 256), num_classes=num_classes, deploy=deploy)


class _ACBPlain(nn.Sequential):
    """Plain stack ACB -> ReLU -> ... -> avgpool -> flatten -> Linear (for kernel/padding variants)."""

    def __init__(self, cfg, num_classes: int, deploy: bool = False):
        layers = []
        for (cin, cout, k, s, p, g) in cfg:
            layers += [ACBlock(cin, cout, k, s, p, g, deploy=deploy), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cfg[-1][1], num_classes)]
        super().__init__(*layers)


def acnet_k5_tiny(num_classes: int = 10, deploy: bool = False) -> nn.Module:
    """4 ACBs with 5x5 kernels (padding 2), one stride-2 and grouped (g=2, g=4) layers."""
    cfg = [(3, 16, 5, 2, 2, 1), (16, 32, 5, 1, 2, 2), (32, 32, 5, 2, 2, 4), (32, 64, 5, 1, 2, 1)]
    return _ACBPlain(cfg, num_classes, deploy)


def acnet_crop_tiny(num_classes: int = 10, deploy: bool = False) -> nn.Module:
    """ACBs with padding < K//2 (3x3 p=0, 5x5 p=1): the asymmetric branches crop their input."""
    cfg = [(3, 16, 3, 1, 1, 1), (16, 32, 3, 2, 0, 1), (32, 32, 5, 1, 1, 2), (32, 64, 3, 1, 0, 1)]
    return _ACBPlain(cfg, num_classes, deploy)


def acnet_model_convert(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` with every ACB (and any other ``switch_to_deploy`` module) fused."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "switch_to_deploy"):
            module.switch_to_deploy()
    return model
