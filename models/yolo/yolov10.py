"""YOLOv10 reference network: the yolov10n layer table (``yolov10n_like``) with RepVGGDW, SCDown,
PSA, C2fCIB and the one-to-one ``v10Detect``, and its deploy conversion (``yolov10_model_convert``).

YOLOv10 (Wang et al., "YOLOv10: Real-Time End-to-End Object Detection", NeurIPS 2024,
arXiv:2405.14458; https://github.com/THU-MIG/yolov10, ``ultralytics/nn/modules/{conv,block,
head}.py``, ``ultralytics/cfg/models/v10/yolov10n.yaml``). The yolov10n layer table
(``model.0`` ... ``model.23``) with its scales (depth 0.33, width 0.25, max_channels 1024):
``Conv``, ``C2f``/``Bottleneck``, ``SCDown``, ``SPPF``, ``PSA``/``Attention``, ``C2fCIB``/``CIB``
with ``lk=True`` (hence ``RepVGGDW``: ``act(conv7x7dw-BN(x) + conv3x3dw-BN(x))``) and the
one-to-one branch of ``v10Detect``. Deploy (``yolov10_model_convert``) = ``BaseModel.fuse()``:
every ``Conv``'s BN folded into its conv (``fuse_conv_and_bn``), ``RepVGGDW.fuse()`` into one
depthwise 7x7 conv.

Conventions shared with the other families (heads return raw predictions, BN settings,
``scale_convs_to_unit_std_``, input sizes) are described in ``common.py``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..common import deploy_conv, fuse_conv_bn
from .common import _F64, Concat, Conv, YOLOGraphModel, scale_convs_to_unit_std_


class Bottleneck(nn.Module):
    """Standard bottleneck (ultralytics)."""
    table_args = "channels"  # parse_model: [c1, c2, *args]

    def __init__(self, c1, c2, shortcut=True, g=1, k=(3, 3), e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """Faster Implementation of CSP Bottleneck with 2 convolutions (ultralytics)."""
    table_args = "repeat"  # parse_model: [c1, c2, n, *args] (C2fCIB inherits it)

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=((3, 3), (3, 3)), e=1.0) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SCDown(nn.Module):
    """Spatial-channel decoupled downsampling (YOLOv10): 1x1 Conv, then depthwise KxK stride-s
    Conv without activation."""
    table_args = "channels"  # parse_model: [c1, c2, *args]

    def __init__(self, c1, c2, k, s):
        super().__init__()
        self.cv1 = Conv(c1, c2, 1, 1)
        self.cv2 = Conv(c2, c2, k=k, s=s, g=c2, act=False)

    def forward(self, x):
        return self.cv2(self.cv1(x))


class SPPF(nn.Module):
    """Spatial Pyramid Pooling - Fast (ultralytics)."""
    table_args = "channels"  # parse_model: [c1, c2, *args]

    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class RepVGGDW(nn.Module):
    """YOLOv10 RepVGGDW: ``act(conv(x) + conv1(x))``, ``conv`` a depthwise 7x7 Conv-BN,
    ``conv1`` a depthwise 3x3 Conv-BN (no activations inside). ``fuse()`` turns ``conv`` into
    one depthwise 7x7 ``nn.Conv2d`` with bias and deletes ``conv1``."""

    def __init__(self, ed) -> None:
        super().__init__()
        self.conv = Conv(ed, ed, 7, 1, 3, g=ed, act=False)
        self.conv1 = Conv(ed, ed, 3, 1, 1, g=ed, act=False)
        self.dim = ed
        self.act = nn.SiLU()

    def forward(self, x):
        if not hasattr(self, "conv1"):
            return self.forward_fuse(x)
        return self.act(self.conv(x) + self.conv1(x))

    def forward_fuse(self, x):
        return self.act(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> None:
        if not hasattr(self, "conv1"):
            return
        conv_w, conv_b = fuse_conv_bn(self.conv.conv.weight, self.conv.bn, out_dtype=_F64)
        conv1_w, conv1_b = fuse_conv_bn(self.conv1.conv.weight, self.conv1.bn, out_dtype=_F64)
        conv1_w = F.pad(conv1_w, [2, 2, 2, 2])
        self.conv = deploy_conv(self.conv.conv, conv_w + conv1_w, conv_b + conv1_b).requires_grad_(False)
        del self.conv1


class CIB(nn.Module):
    """Compact inverted block (YOLOv10); ``lk=True`` uses ``RepVGGDW`` as the middle conv."""

    def __init__(self, c1, c2, shortcut=True, e=0.5, lk=False):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = nn.Sequential(
            Conv(c1, c1, 3, g=c1),
            Conv(c1, 2 * c_, 1),
            Conv(2 * c_, 2 * c_, 3, g=2 * c_) if not lk else RepVGGDW(2 * c_),
            Conv(2 * c_, c2, 1),
            Conv(c2, c2, 3, g=c2),
        )
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv1(x) if self.add else self.cv1(x)


class C2fCIB(C2f):
    """C2f with CIB blocks (YOLOv10)."""

    def __init__(self, c1, c2, n=1, shortcut=False, lk=False, g=1, e=0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        self.m = nn.ModuleList(CIB(self.c, self.c, shortcut, e=1.0, lk=lk) for _ in range(n))


class Attention(nn.Module):
    """Multi-head self-attention of PSA (YOLOv10): ``qkv`` / ``proj`` 1x1 Conv and the depthwise
    3x3 positional conv ``pe``, all without activation."""

    def __init__(self, dim, num_heads=8, attn_ratio=0.5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        nh_kd = self.key_dim * num_heads
        h = dim + nh_kd * 2
        self.qkv = Conv(dim, h, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x):
        B, C, H, W = x.shape
        N = H * W
        qkv = self.qkv(x)
        q, k, v = qkv.view(B, self.num_heads, self.key_dim * 2 + self.head_dim, N).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = (q.transpose(-2, -1) @ k) * self.scale
        attn = attn.softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(B, C, H, W) + self.pe(v.reshape(B, C, H, W))
        return self.proj(x)


class PSA(nn.Module):
    """Partial self-attention (YOLOv10)."""
    table_args = "channels"  # parse_model: [c1, c2, *args]

    def __init__(self, c1, c2, e=0.5):
        super().__init__()
        assert c1 == c2
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.attn = Attention(self.c, attn_ratio=0.5, num_heads=self.c // 64)
        self.ffn = nn.Sequential(Conv(self.c, self.c * 2, 1), Conv(self.c * 2, self.c, 1, act=False))

    def forward(self, x):
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        b = b + self.attn(b)
        b = b + self.ffn(b)
        return self.cv2(torch.cat((a, b), 1))


class v10Detect(nn.Module):  # noqa: N801 (official name)
    """YOLOv10 detection head, one-to-one branch only (the export path of ``v10Detect``).

    ``one2one_cv2``: box branch ``Conv 3x3, Conv 3x3, Conv2d 1x1 (4 * reg_max)``;
    ``one2one_cv3``: class branch ``(dw 3x3 Conv, 1x1 Conv), (dw 3x3 Conv, 1x1 Conv), Conv2d 1x1
    (nc)``. Returns the raw per-level outputs concatenated, ``(B, 4 * reg_max + nc, N)`` (what
    ``Detect.inference`` calls ``x_cat``); DFL, box decode and ``v10postprocess`` are left out.
    """
    table_args, table_head_at = "head", None  # parse_model appends the input channels

    def __init__(self, nc=80, ch=()):
        super().__init__()
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = 16
        self.no = nc + self.reg_max * 4
        c2, c3 = max((16, ch[0] // 4, self.reg_max * 4)), max(ch[0], min(self.nc, 100))
        self.one2one_cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1)) for x in ch)
        self.one2one_cv3 = nn.ModuleList(
            nn.Sequential(nn.Sequential(Conv(x, x, 3, g=x), Conv(x, c3, 1)),
                          nn.Sequential(Conv(c3, c3, 3, g=c3), Conv(c3, c3, 1)),
                          nn.Conv2d(c3, self.nc, 1)) for x in ch)

    def forward(self, x):
        y = [torch.cat((self.one2one_cv2[i](x[i]), self.one2one_cv3[i](x[i])), 1) for i in range(self.nl)]
        shape = y[0].shape
        return torch.cat([yi.view(shape[0], self.no, -1) for yi in y], 2)


def yolov10n_like(num_classes: int = 80) -> YOLOGraphModel:
    """yolov10n.yaml (scale n: depth 0.33, width 0.25, max_channels 1024) with the one-to-one
    v10Detect head. One ``RepVGGDW`` (in the last C2fCIB, ``lk=True``), one PSA, two SCDown in
    the backbone and one in the neck. Output ``(B, 64 + num_classes, N)``,
    ``N = (H/8)(W/8) + (H/16)(W/16) + (H/32)(W/32)``; the input side must be a multiple of 32.
    """
    rows = [
        # backbone
        [-1, 1, Conv, [64, 3, 2]],            # 0-P1/2
        [-1, 1, Conv, [128, 3, 2]],           # 1-P2/4
        [-1, 3, C2f, [128, True]],
        [-1, 1, Conv, [256, 3, 2]],           # 3-P3/8
        [-1, 6, C2f, [256, True]],
        [-1, 1, SCDown, [512, 3, 2]],         # 5-P4/16
        [-1, 6, C2f, [512, True]],
        [-1, 1, SCDown, [1024, 3, 2]],        # 7-P5/32
        [-1, 3, C2f, [1024, True]],
        [-1, 1, SPPF, [1024, 5]],             # 9
        [-1, 1, PSA, [1024]],                 # 10
        # head
        [-1, 1, nn.Upsample, [None, 2, "nearest"]],
        [[-1, 6], 1, Concat, [1]],            # cat backbone P4
        [-1, 3, C2f, [512]],                  # 13
        [-1, 1, nn.Upsample, [None, 2, "nearest"]],
        [[-1, 4], 1, Concat, [1]],            # cat backbone P3
        [-1, 3, C2f, [256]],                  # 16 (P3/8-small)
        [-1, 1, Conv, [256, 3, 2]],
        [[-1, 13], 1, Concat, [1]],           # cat head P4
        [-1, 3, C2f, [512]],                  # 19 (P4/16-medium)
        [-1, 1, SCDown, [512, 3, 2]],
        [[-1, 10], 1, Concat, [1]],           # cat head P5
        [-1, 3, C2fCIB, [1024, True, True]],  # 22 (P5/32-large)
        [[16, 19, 22], 1, v10Detect, [num_classes]],  # Detect(P3, P4, P5)
    ]
    return scale_convs_to_unit_std_(YOLOGraphModel(rows, num_classes, depth=0.33, width=0.25, max_channels=1024))


@torch.no_grad()
def yolov10_model_convert(model: nn.Module) -> nn.Module:
    """Deep copy in YOLOv10's deploy form (``BaseModel.fuse()``): ``RepVGGDW.fuse()`` (one dw 7x7
    conv) and every ``Conv``'s BN folded into its conv. float64 merges, cast back."""
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        if isinstance(m, RepVGGDW):
            m.fuse()
    for m in list(model.modules()):
        if isinstance(m, Conv):
            m.fuse()
    return model.eval()
