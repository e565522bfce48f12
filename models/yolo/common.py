"""Parts shared by the YOLO reference networks (``yolov6``, ``yolov10``, ``yolov7``): helpers
(``make_divisible``, ``autopad``, ``fuse_conv_and_bn``, ``scale_convs_to_unit_std_``, the
authors' BN ``initialize_weights`` and the float64 kernel helpers of the rep-style blocks), the
ultralytics / YOLOv7 ``Conv`` and ``Concat``, and the layer-table builder (``parse_model``,
``YOLOGraphModel``) of YOLOv10 and YOLOv7.

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

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..common import deploy_conv, fuse_conv_bn

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


# =============================================================================== ultralytics / YOLOv7 Conv
class Conv(nn.Module):
    """Standard convolution ``act(bn(conv(x)))`` (ultralytics ``Conv``; YOLOv7's ``Conv`` is the
    same module with ``d=1``). ``act=True`` is SiLU, ``act=False`` identity, or a module."""
    table_args = "channels"

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


# =============================================================================== layer-table models
#: how :func:`parse_model` completes a row's args, by the layer type's ``table_args`` attribute (each family
#: module states it on its own layer types, so this module imports none of them):
#:   "channels"  ``[c1, c2 * width, *args]`` (c2 rounded to a multiple of 8)
#:   "repeat"    the same, and the repeat count ``n`` as the third argument (the layer repeats itself)
#:   "head"      the list of input channels inserted at ``table_head_at`` (``None``: appended)
#:   absent      args as written; the output channels are the input's (nn.Upsample, MP, SP)
def parse_model(rows, nc: int, depth: float, width: float, max_channels: float = float("inf"),
                ch: int = 3) -> tuple[nn.Sequential, list[int]]:
    """Build ``model.0 .. model.N`` from ``[from, repeats, module, args]`` rows like the official
    ``parse_model`` (ultralytics / YOLOv7): channel scaling, depth gain, Concat, heads."""
    layers, save, chs = [], [], [ch]
    for i, (f, n, m, args) in enumerate(rows):
        args = list(args)
        n = max(round(n * depth), 1) if n > 1 else n
        kind = getattr(m, "table_args", None)
        if kind in ("channels", "repeat"):
            c1, c2 = chs[f], args[0]
            c2 = make_divisible(min(c2, max_channels) * width, 8)
            args = [c1, c2, *args[1:]]
            if kind == "repeat":
                args.insert(2, n)
                n = 1
        elif m is Concat:
            c2 = sum(chs[x] for x in f)
        elif kind == "head":
            at = m.table_head_at
            args.insert(len(args) if at is None else at, [chs[x] for x in f])
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
