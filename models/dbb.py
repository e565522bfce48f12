"""DBB (Ding et al., "Diverse Branch Block: Building a Convolution as an Inception-like Unit",
CVPR 2021).

Training form of a Diverse Branch Block (attribute names follow the official code)::

    dbb_origin   KxK conv (stride s, pad p, groups g) -> BN
    dbb_1x1      1x1 conv (stride s, groups g) -> BN                        [only if g < out]
    dbb_avg      1x1 conv (g) -> BNAndPad(p) -> AvgPool(K, s, pad 0) -> BN  [g < out]
                 AvgPool(K, s, pad p, count_include_pad=True) -> BN         [depthwise, g == out]
    dbb_1x1_kxk  IdentityBasedConv1x1 (or a plain 1x1 conv to `internal` channels)
                 -> BNAndPad(p) -> KxK conv (stride s, pad 0, groups g) -> BN

summed, then ``nonlinear`` (identity by default). ``BNAndPadLayer`` pads the BN output with
``BN(0) = beta - mu * gamma / sigma`` per channel (``F.pad`` followed by in-place writes into the
four borders), so that "1x1 conv -> BN -> pad -> KxK conv" equals one KxK conv with zero padding
``p`` on the block input. Deploy form: one KxK conv with bias (``dbb_reparam``). The transforms
``transI``..``transVI`` are those of the official ``dbb_transforms.py`` but computed in float64.

Only ``padding == kernel_size // 2`` (asserted, as in the official code) and ``dilation == 1``
(the 1x1 / AvgPool branches ignore dilation, so the merge would be wrong otherwise) are supported.

The official init leaves ``IdentityBasedConv1x1`` exactly the identity (its weight is zero); the
network factories here re-randomize those weights (``random_idconv=True``) so that every branch
of a freshly built model is non-trivial and the merge is really exercised.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import conv_bn, deploy_conv, fuse_conv_bn, resnet_stages

__all__ = ["IdentityBasedConv1x1", "BNAndPadLayer", "DiverseBranchBlock", "DBBBasicBlock",
           "DBBDWBasicBlock", "DBBResNet", "dbb_resnet18_tiny", "dbb_tiny", "dbb_model_convert",
           "randomize_idconv_", "transI_fusebn", "transII_addbranch", "transIII_1x1_kxk",
           "transIV_depthconcat", "transV_avg", "transVI_multiscale"]

_F64 = torch.float64


# ------------------------------------------------------------------------------ transforms
def transI_fusebn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BN (or a ``BNAndPadLayer``'s BN) into the preceding bias-free conv
    kernel (float64 result)."""
    if isinstance(bn, BNAndPadLayer):
        bn = bn.bn
    return fuse_conv_bn(kernel, bn, out_dtype=_F64)


def transII_addbranch(kernels, biases) -> tuple[torch.Tensor, torch.Tensor]:
    """Parallel branches with equal kernel size, stride and groups: add kernels and biases."""
    return sum(kernels), sum(biases)


def transIII_1x1_kxk(k1: torch.Tensor, b1: torch.Tensor, k2: torch.Tensor, b2: torch.Tensor,
                     groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential ``1x1 (k1, b1) -> KxK (k2, b2)`` with the same ``groups`` as one KxK conv.

    ``W[o, i] = sum_m k2[o, m] * k1[m, i]`` per group; ``b = b2 + sum_{m, spatial} k2[o, m] b1[m]``.
    Exact if the intermediate tensor is padded with ``b1`` (``BNAndPadLayer``).
    """
    k1, b1, k2, b2 = (t.detach().to(_F64) for t in (k1, b1, k2, b2))
    if groups == 1:
        k = F.conv2d(k2, k1.permute(1, 0, 2, 3))
        b_hat = (k2 * b1.reshape(1, -1, 1, 1)).sum((1, 2, 3))
        return k, b_hat + b2
    k_slices, b_slices = [], []
    k1_t = k1.permute(1, 0, 2, 3)
    k1_group_width = k1.size(0) // groups
    k2_group_width = k2.size(0) // groups
    for g in range(groups):
        k1_t_slice = k1_t[:, g * k1_group_width:(g + 1) * k1_group_width, :, :]
        k2_slice = k2[g * k2_group_width:(g + 1) * k2_group_width, :, :, :]
        k_slices.append(F.conv2d(k2_slice, k1_t_slice))
        b_slices.append((k2_slice * b1[g * k1_group_width:(g + 1) * k1_group_width]
                         .reshape(1, -1, 1, 1)).sum((1, 2, 3)))
    k, b_hat = transIV_depthconcat(k_slices, b_slices)
    return k, b_hat + b2


def transIV_depthconcat(kernels, biases) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate per-group kernels / biases along the output axis."""
    return torch.cat(kernels, dim=0), torch.cat(biases)


def transV_avg(channels: int, kernel_size: int, groups: int) -> torch.Tensor:
    """AvgPool(K) on ``channels`` as a grouped KxK conv kernel: ``1/K^2`` at ``[c, c mod (C/g)]``.

    Exact with zero padding counted in the divisor (``count_include_pad=True``) or no padding.
    """
    input_dim = channels // groups
    k = torch.zeros((channels, input_dim, kernel_size, kernel_size), dtype=_F64)
    k[np.arange(channels), np.tile(np.arange(input_dim), groups), :, :] = 1.0 / kernel_size ** 2
    return k


def transVI_multiscale(kernel: torch.Tensor, target_kernel_size: int) -> torch.Tensor:
    """Zero-pad a smaller (odd, square) kernel at the centre to ``target_kernel_size``."""
    h = (target_kernel_size - kernel.size(2)) // 2
    w = (target_kernel_size - kernel.size(3)) // 2
    return F.pad(kernel, [w, w, h, h])


# ------------------------------------------------------------------------------ layers
class IdentityBasedConv1x1(nn.Conv2d):
    """Square 1x1 conv whose effective kernel is ``weight + I`` (``I[i, i mod (C/g)] = 1``).

    ``weight`` is zero-initialized as in the official code (so the layer starts as the identity).
    ``id_tensor`` is a non-persistent buffer: it follows ``.to()`` and stays out of the state dict.
    """

    def __init__(self, channels: int, groups: int = 1):
        super().__init__(in_channels=channels, out_channels=channels, kernel_size=1, stride=1,
                         padding=0, groups=groups, bias=False)
        assert channels % groups == 0
        input_dim = channels // groups
        id_value = np.zeros((channels, input_dim, 1, 1))
        for i in range(channels):
            id_value[i, i % input_dim, 0, 0] = 1
        self.register_buffer("id_tensor", torch.from_numpy(id_value).type_as(self.weight),
                             persistent=False)
        nn.init.zeros_(self.weight)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        kernel = self.weight + self.id_tensor.to(self.weight.device)
        return F.conv2d(input, kernel, None, stride=1, padding=0, dilation=self.dilation,
                        groups=self.groups)

    def get_actual_kernel(self) -> torch.Tensor:
        return self.weight + self.id_tensor.to(self.weight.device)


class BNAndPadLayer(nn.Module):
    """BN, then (if ``pad_pixels > 0``) pad every border with the per-channel value ``BN(0)``.

    As in the official code: ``F.pad`` with zeros, then in-place writes of
    ``pad_values = beta - mu * gamma / sigma`` (``-mu / sigma`` without affine) into the top,
    bottom, left and right ``pad_pixels`` rows / columns.
    """

    def __init__(self, pad_pixels: int, num_features: int, eps: float = 1e-5,
                 momentum: float = 0.1, affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats)
        self.pad_pixels = pad_pixels

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        output = self.bn(input)
        if self.pad_pixels > 0:
            if self.bn.affine:
                pad_values = (self.bn.bias.detach() - self.bn.running_mean * self.bn.weight.detach()
                              / torch.sqrt(self.bn.running_var + self.bn.eps))
            else:
                pad_values = -self.bn.running_mean / torch.sqrt(self.bn.running_var + self.bn.eps)
            output = F.pad(output, [self.pad_pixels] * 4)
            pad_values = pad_values.view(1, -1, 1, 1)
            output[:, :, 0:self.pad_pixels, :] = pad_values
            output[:, :, -self.pad_pixels:, :] = pad_values
            output[:, :, :, 0:self.pad_pixels] = pad_values
            output[:, :, :, -self.pad_pixels:] = pad_values
        return output

    @property
    def weight(self):
        return self.bn.weight

    @property
    def bias(self):
        return self.bn.bias

    @property
    def running_mean(self):
        return self.bn.running_mean

    @property
    def running_var(self):
        return self.bn.running_var

    @property
    def eps(self):
        return self.bn.eps


class DiverseBranchBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1,
                 internal_channels_1x1_3x3: int | None = None, deploy: bool = False,
                 nonlinear: nn.Module | None = None, single_init: bool = False):
        super().__init__()
        self.deploy = deploy
        self.nonlinear = nn.Identity() if nonlinear is None else nonlinear
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        self.out_channels = out_channels
        self.groups = groups
        assert padding == kernel_size // 2, "DiverseBranchBlock needs padding == kernel_size // 2"

        if deploy:
            self.dbb_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                         padding=padding, dilation=dilation, groups=groups,
                                         bias=True)
            return
        assert dilation == 1, "the training-form DBB supports dilation=1 only"
        self.dbb_origin = conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups,
                                  dilation)

        self.dbb_avg = nn.Sequential()
        if groups < out_channels:
            self.dbb_avg.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size=1,
                                                      stride=1, padding=0, groups=groups,
                                                      bias=False))
            self.dbb_avg.add_module("bn", BNAndPadLayer(pad_pixels=padding,
                                                        num_features=out_channels))
            self.dbb_avg.add_module("avg", nn.AvgPool2d(kernel_size=kernel_size, stride=stride,
                                                        padding=0))
            self.dbb_1x1 = conv_bn(in_channels, out_channels, 1, stride, 0, groups)
        else:  # depthwise: the pool reads the block input directly (zero padding, counted)
            assert in_channels == out_channels, "depthwise DBB needs in_channels == out_channels"
            self.dbb_avg.add_module("avg", nn.AvgPool2d(kernel_size=kernel_size, stride=stride,
                                                        padding=padding))
        self.dbb_avg.add_module("avgbn", nn.BatchNorm2d(out_channels))

        if internal_channels_1x1_3x3 is None:
            # for MobileNet-style depthwise blocks the official code widens to 2x
            internal_channels_1x1_3x3 = in_channels if groups < out_channels else 2 * in_channels
        self.dbb_1x1_kxk = nn.Sequential()
        if internal_channels_1x1_3x3 == in_channels:
            self.dbb_1x1_kxk.add_module("idconv1", IdentityBasedConv1x1(in_channels, groups))
        else:
            self.dbb_1x1_kxk.add_module("conv1", nn.Conv2d(in_channels, internal_channels_1x1_3x3,
                                                           kernel_size=1, stride=1, padding=0,
                                                           groups=groups, bias=False))
        self.dbb_1x1_kxk.add_module("bn1", BNAndPadLayer(pad_pixels=padding,
                                                         num_features=internal_channels_1x1_3x3,
                                                         affine=True))
        self.dbb_1x1_kxk.add_module("conv2", nn.Conv2d(internal_channels_1x1_3x3, out_channels,
                                                       kernel_size=kernel_size, stride=stride,
                                                       padding=0, groups=groups, bias=False))
        self.dbb_1x1_kxk.add_module("bn2", nn.BatchNorm2d(out_channels))

        # the paper's experiments use the default BN init (all gammas 1); single_init is optional
        if single_init:
            self.single_init()

    # ---- deploy conversion (the PyTorch reference) -------------------------------------------
    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent KxK kernel and bias (float64)."""
        k_origin, b_origin = transI_fusebn(self.dbb_origin.conv.weight, self.dbb_origin.bn)

        if hasattr(self, "dbb_1x1"):
            k_1x1, b_1x1 = transI_fusebn(self.dbb_1x1.conv.weight, self.dbb_1x1.bn)
            k_1x1 = transVI_multiscale(k_1x1, self.kernel_size)
        else:
            k_1x1, b_1x1 = 0, 0

        if hasattr(self.dbb_1x1_kxk, "idconv1"):
            k_first = self.dbb_1x1_kxk.idconv1.get_actual_kernel()
        else:
            k_first = self.dbb_1x1_kxk.conv1.weight
        k_first, b_first = transI_fusebn(k_first, self.dbb_1x1_kxk.bn1)
        k_second, b_second = transI_fusebn(self.dbb_1x1_kxk.conv2.weight, self.dbb_1x1_kxk.bn2)
        k_1x1_kxk, b_1x1_kxk = transIII_1x1_kxk(k_first, b_first, k_second, b_second,
                                                groups=self.groups)

        k_avg = transV_avg(self.out_channels, self.kernel_size, self.groups)
        k_avg_second, b_avg_second = transI_fusebn(k_avg, self.dbb_avg.avgbn)
        if hasattr(self.dbb_avg, "conv"):
            k_avg_first, b_avg_first = transI_fusebn(self.dbb_avg.conv.weight, self.dbb_avg.bn)
            k_1x1_avg, b_1x1_avg = transIII_1x1_kxk(k_avg_first, b_avg_first, k_avg_second,
                                                    b_avg_second, groups=self.groups)
        else:
            k_1x1_avg, b_1x1_avg = k_avg_second, b_avg_second

        return transII_addbranch((k_origin, k_1x1, k_1x1_kxk, k_1x1_avg),
                                 (b_origin, b_1x1, b_1x1_kxk, b_1x1_avg))

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        if hasattr(self, "dbb_reparam"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        self.dbb_reparam = deploy_conv(self.dbb_origin.conv, kernel, bias)
        for p in self.parameters():
            p.detach_()
        del self.dbb_origin
        del self.dbb_avg
        if hasattr(self, "dbb_1x1"):
            del self.dbb_1x1
        del self.dbb_1x1_kxk
        self.deploy = True

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "dbb_reparam"):
            return self.nonlinear(self.dbb_reparam(inputs))
        out = self.dbb_origin(inputs)
        if hasattr(self, "dbb_1x1"):
            out = out + self.dbb_1x1(inputs)
        out = out + self.dbb_avg(inputs)
        out = out + self.dbb_1x1_kxk(inputs)
        return self.nonlinear(out)

    @torch.no_grad()
    def init_gamma(self, gamma_value: float) -> None:
        if hasattr(self, "dbb_origin"):
            nn.init.constant_(self.dbb_origin.bn.weight, gamma_value)
        if hasattr(self, "dbb_1x1"):
            nn.init.constant_(self.dbb_1x1.bn.weight, gamma_value)
        if hasattr(self, "dbb_avg"):
            nn.init.constant_(self.dbb_avg.avgbn.weight, gamma_value)
        if hasattr(self, "dbb_1x1_kxk"):
            nn.init.constant_(self.dbb_1x1_kxk.bn2.weight, gamma_value)

    def single_init(self) -> None:
        """BN gammas of every branch 0 except ``dbb_origin`` (1): not the paper's default."""
        self.init_gamma(0.0)
        if hasattr(self, "dbb_origin"):
            nn.init.constant_(self.dbb_origin.bn.weight, 1.0)


@torch.no_grad()
def randomize_idconv_(model: nn.Module) -> nn.Module:
    """Re-initialize every ``IdentityBasedConv1x1.weight`` like a fresh ``nn.Conv2d`` (kaiming
    uniform, global RNG) instead of the official zeros, so the effective kernel is ``I + noise``.
    In place; returns ``model``."""
    for m in model.modules():
        if isinstance(m, IdentityBasedConv1x1):
            nn.Conv2d.reset_parameters(m)
    return model


# ------------------------------------------------------------------------------ networks
def _dbb(in_c: int, out_c: int, stride: int = 1, groups: int = 1, kernel_size: int = 3,
         relu: bool = False, deploy: bool = False) -> DiverseBranchBlock:
    return DiverseBranchBlock(in_c, out_c, kernel_size, stride, kernel_size // 2, groups=groups,
                              deploy=deploy, nonlinear=nn.ReLU() if relu else None)


class DBBBasicBlock(nn.Module):
    """ResNet BasicBlock with both 3x3 conv-BN pairs replaced by DBBs (BN lives in the DBB);
    the first DBB carries the ReLU as its ``nonlinear`` (as the official ``conv_bn_relu``)."""
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, deploy: bool = False):
        super().__init__()
        self.conv1 = _dbb(in_planes, planes, stride, relu=True, deploy=deploy)
        self.conv2 = _dbb(planes, planes, 1, deploy=deploy)
        self.relu = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut = conv_bn(in_planes, planes, 1, stride, 0)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return self.relu(out + self.shortcut(x))


class DBBDWBasicBlock(nn.Module):
    """BasicBlock built from MobileNet-V1 pairs: each 3x3 conv becomes a depthwise DBB (+ReLU)
    followed by a pointwise 1x1 conv-BN, i.e. ``relu(pw2(dw2(relu(pw1(dw1(x))))) + shortcut)``."""
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, deploy: bool = False):
        super().__init__()
        self.dw1 = _dbb(in_planes, in_planes, stride, groups=in_planes, relu=True, deploy=deploy)
        self.pw1 = conv_bn(in_planes, planes, 1, 1, 0)
        self.dw2 = _dbb(planes, planes, 1, groups=planes, relu=True, deploy=deploy)
        self.pw2 = conv_bn(planes, planes, 1, 1, 0)
        self.relu = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut = conv_bn(in_planes, planes, 1, stride, 0)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.pw1(self.dw1(x)))
        out = self.pw2(self.dw2(out))
        return self.relu(out + self.shortcut(x))


class DBBResNet(nn.Module):
    """ResNet-18-like: DBB stem (stride 2) + 4 stages of BasicBlocks + avgpool + Linear.

    Stages listed in ``dw_stages`` use :class:`DBBDWBasicBlock` (depthwise DBBs) instead.
    """

    def __init__(self, num_blocks=(2, 2, 2, 2), widths=(32, 64, 128, 256), num_classes: int = 100,
                 dw_stages=(2,), deploy: bool = False):
        super().__init__()
        self.stem = _dbb(3, widths[0], 2, relu=True, deploy=deploy)
        stages, in_planes = resnet_stages(
            lambda i, c_in, c_out, s: (DBBDWBasicBlock if i in dw_stages else DBBBasicBlock)(c_in, c_out, s,
                                                                                            deploy=deploy),
            widths[0], widths, num_blocks)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def dbb_resnet18_tiny(num_classes: int = 100, deploy: bool = False,
                      random_idconv: bool = True) -> DBBResNet:
    """ResNet-18 layout (2-2-2-2), widths 32/64/128/256, 17 DBBs: the stem and the 3x3 convs of
    stages 1, 2, 4 (13 regular DBBs, groups=1) and, in stage 3, 4 depthwise DBBs (MobileNet-style
    dw DBB + pointwise conv-BN pairs; internal channels 2x)."""
    model = DBBResNet((2, 2, 2, 2), (32, 64, 128, 256), num_classes=num_classes, dw_stages=(2,),
                      deploy=deploy)
    return randomize_idconv_(model) if random_idconv else model


class _DBBPlain(nn.Sequential):
    """Plain stack of DBBs (ReLU inside) -> avgpool -> flatten -> Linear."""

    def __init__(self, cfg, num_classes: int, deploy: bool = False):
        layers = [_dbb(cin, cout, s, g, k, relu=True, deploy=deploy)
                  for (cin, cout, k, s, g) in cfg]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cfg[-1][1], num_classes)]
        super().__init__(*layers)


def dbb_tiny(num_classes: int = 10, deploy: bool = False, random_idconv: bool = True) -> nn.Module:
    """5 DBBs (ReLU inside each): 3x3 s2 (3->16), depthwise 3x3 (16), 3x3 s2 groups 2 (16->32),
    depthwise 5x5 s2 (32, pad 2), 3x3 (32->32)."""
    cfg = [(3, 16, 3, 2, 1), (16, 16, 3, 1, 16), (16, 32, 3, 2, 2), (32, 32, 5, 2, 32),
           (32, 32, 3, 1, 1)]
    model = _DBBPlain(cfg, num_classes, deploy)
    return randomize_idconv_(model) if random_idconv else model


def dbb_model_convert(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` with every DBB (and any other ``switch_to_deploy`` module) fused."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "switch_to_deploy"):
            module.switch_to_deploy()
    return model
