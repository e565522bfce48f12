"""YOLOv7 reference network: the yolov7-tiny layer table (``yolov7_implicit``) with RepConv and
IDetect (ImplicitA / ImplicitM), and its deploy conversion (``yolov7_model_convert``).

YOLOv7 (Wang, Bochkovskiy, Liao, "YOLOv7: Trainable bag-of-freebies sets new state-of-the-art
for real-time object detectors", CVPR 2023; implicit knowledge from "You Only Learn One
Representation", arXiv:2105.04206; https://github.com/WongKinYiu/yolov7, ``models/common.py``,
``models/yolo.py``, ``cfg/training/yolov7-tiny.yaml``). The yolov7-tiny layer table (ELAN-tiny
blocks, ``MP``, ``SP`` pyramid, LeakyReLU(0.1)) at half width, whose three 3x3 convs before the
head are ``RepConv`` as in ``yolov7.yaml``, and ``IDetect``: per level
``im[i](m[i](ia[i](x)))`` with ``ImplicitA`` (``x + implicit``), a 1x1 conv with bias and
``ImplicitM`` (``x * implicit``). Deploy (``yolov7_model_convert``) = ``Model.fuse()``:
``RepConv.fuse_repvgg_block()``, Conv-BN folds and ``IDetect.fuse()`` (ImplicitA into the conv
bias, ImplicitM into weight and bias).

Conventions shared with the other families (heads return raw predictions, BN settings,
``scale_convs_to_unit_std_``, input sizes) are described in ``common.py``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..common import deploy_conv, fuse_conv_bn, identity_kernel
from .common import (_F64, Concat, Conv, YOLOGraphModel, _pad_1x1_to_3x3_tensor, autopad,
                     scale_convs_to_unit_std_)


class MP(nn.Module):
    def __init__(self, k=2):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x):
        return self.m(x)


class SP(nn.Module):
    def __init__(self, k=3, s=1):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x):
        return self.m(x)


class RepConv(nn.Module):
    """YOLOv7 RepConv: ``act(rbr_dense(x) + rbr_1x1(x) + rbr_identity(x))`` with
    ``nn.Sequential(conv, BN)`` branches; ``fuse_repvgg_block()`` -> ``rbr_reparam``."""
    table_args = "channels"  # parse_model: [c1, c2, *args]

    def __init__(self, c1, c2, k=3, s=1, p=None, g=1, act=True, deploy=False):
        super().__init__()
        self.deploy = deploy
        self.groups = g
        self.in_channels = c1
        self.out_channels = c2
        assert k == 3
        assert autopad(k, p) == 1
        padding_11 = autopad(k, p) - k // 2
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())
        if deploy:
            self.rbr_reparam = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=True)
        else:
            self.rbr_identity = nn.BatchNorm2d(num_features=c1) if c2 == c1 and s == 1 else None
            self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False),
                                           nn.BatchNorm2d(num_features=c2))
            self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, padding_11, groups=g, bias=False),
                                         nn.BatchNorm2d(num_features=c2))

    def forward(self, inputs):
        if hasattr(self, "rbr_reparam"):
            return self.act(self.rbr_reparam(inputs))
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(inputs)
        return self.act(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out)

    def _fuse_bn_tensor(self, branch):
        if branch is None:
            return 0, 0
        if isinstance(branch, nn.Sequential):
            return fuse_conv_bn(branch[0].weight, branch[1], out_dtype=_F64)
        assert isinstance(branch, nn.BatchNorm2d)
        return fuse_conv_bn(identity_kernel(self.in_channels, self.groups), branch, out_dtype=_F64)

    @torch.no_grad()
    def get_equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent 3x3 kernel and bias (float64)."""
        kernel3x3, bias3x3 = self._fuse_bn_tensor(self.rbr_dense)
        kernel1x1, bias1x1 = self._fuse_bn_tensor(self.rbr_1x1)
        kernelid, biasid = self._fuse_bn_tensor(self.rbr_identity)
        return kernel3x3 + _pad_1x1_to_3x3_tensor(kernel1x1) + kernelid, bias3x3 + bias1x1 + biasid

    @torch.no_grad()
    def fuse_repvgg_block(self) -> None:
        if hasattr(self, "rbr_reparam"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        self.rbr_reparam = deploy_conv(self.rbr_dense[0], kernel, bias)
        for name in ("rbr_dense", "rbr_1x1", "rbr_identity"):
            delattr(self, name)
        self.deploy = True

    switch_to_deploy = fuse_repvgg_block


class ImplicitA(nn.Module):
    """YOLOR implicit addition: ``implicit + x``, ``implicit`` of shape ``(1, C, 1, 1)``."""

    def __init__(self, channel, mean=0.0, std=0.02):
        super().__init__()
        self.channel = channel
        self.mean = mean
        self.std = std
        self.implicit = nn.Parameter(torch.zeros(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=self.mean, std=self.std)

    def forward(self, x):
        return self.implicit + x


class ImplicitM(nn.Module):
    """YOLOR implicit multiplication: ``implicit * x``, ``implicit`` of shape ``(1, C, 1, 1)``."""

    def __init__(self, channel, mean=1.0, std=0.02):
        super().__init__()
        self.channel = channel
        self.mean = mean
        self.std = std
        self.implicit = nn.Parameter(torch.ones(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=self.mean, std=self.std)

    def forward(self, x):
        return self.implicit * x


class IDetect(nn.Module):
    """YOLOv7 IDetect: per level ``x = im[i](m[i](ia[i](x)))``, ``m[i]`` a 1x1 conv with bias.

    Returns the raw predictions of all levels as one ``(B, na * sum(ny * nx), no)`` tensor (the
    ``x[i].view(bs, na, no, ny, nx).permute(0, 1, 3, 4, 2)`` of the official forward, flattened
    and concatenated); the sigmoid / grid / anchor decode is left out. ``fuse()`` folds
    ImplicitA into ``m[i].bias`` and ImplicitM into ``m[i]``'s weight and bias (float64) and
    deletes ``ia`` / ``im``.
    """
    table_args, table_head_at = "head", 2  # parse_model: [nc, anchors, input channels]

    def __init__(self, nc=80, anchors=(), ch=(), implicit_std=0.02):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        a = torch.tensor(anchors).float().view(self.nl, -1, 2)
        self.register_buffer("anchors", a)
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.ia = nn.ModuleList(ImplicitA(x, std=implicit_std) for x in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na, std=implicit_std) for _ in ch)

    def forward(self, x):
        fused = not hasattr(self, "ia")
        z = []
        for i in range(self.nl):
            xi = self.m[i](x[i]) if fused else self.im[i](self.m[i](self.ia[i](x[i])))
            bs, _, ny, nx = xi.shape
            xi = xi.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            z.append(xi.view(bs, -1, self.no))
        return torch.cat(z, 1)

    @torch.no_grad()
    def fuse(self) -> None:
        if not hasattr(self, "ia"):
            return
        for i in range(self.nl):
            conv = self.m[i]
            assert conv.kernel_size == (1, 1) and conv.groups == 1
            w = conv.weight.detach().double()
            b = conv.bias.detach().double()
            a = self.ia[i].implicit.detach().double().reshape(-1)    # ImplicitA: conv(x + a)
            mm = self.im[i].implicit.detach().double().reshape(-1)   # ImplicitM: m * conv(.)
            b = (b + w.reshape(w.shape[0], -1) @ a) * mm
            w = w * mm.reshape(-1, 1, 1, 1)
            self.m[i] = deploy_conv(conv, w, b).requires_grad_(False)
        del self.ia
        del self.im


_YOLOV7_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def yolov7_implicit(num_classes: int = 80, width_multiple: float = 0.5, implicit_std: float = 0.5,
                    repconv: bool = True) -> YOLOGraphModel:
    """yolov7-tiny.yaml (LeakyReLU(0.1), ELAN-tiny blocks, MP, SP 5/9/13 pyramid) at
    ``width_multiple`` (default 0.5), IDetect head with ImplicitA / ImplicitM initialized
    ``normal(0 / 1, implicit_std)`` (official std 0.02; 0.5 makes the fold visible).

    With ``repconv=True`` the three 3x3 convs feeding IDetect (layers 74-76) are ``RepConv`` as in
    ``yolov7.yaml`` (no identity branch: their channels grow); ``False`` keeps tiny's plain Conv.
    Output ``(B, 3 * N, num_classes + 5)``, ``N = (H/8)(W/8) + (H/16)(W/16) + (H/32)(W/32)``.
    """
    def c(c2, k=1, s=1, f=-1):  # YOLOv7's Conv(c1, c2, k, s, p, g, act); this Conv has d before act
        return [f, 1, Conv, [c2, k, s, None, 1, 1, nn.LeakyReLU(0.1)]]

    def elan(c_mid, c_out):  # 2 x 1x1, 2 x 3x3, concat, 1x1
        return [c(c_mid), c(c_mid, f=-2), c(c_mid, 3), c(c_mid, 3), [[-1, -2, -3, -4], 1, Concat, [1]],
                c(c_out)]

    head_conv = RepConv if repconv else Conv
    rows = [
        # backbone
        c(32, 3, 2),                               # 0-P1/2
        c(64, 3, 2),                               # 1-P2/4
        *elan(32, 64),                             # 7
        [-1, 1, MP, []],                           # 8-P3/8
        *elan(64, 128),                            # 14
        [-1, 1, MP, []],                           # 15-P4/16
        *elan(128, 256),                           # 21
        [-1, 1, MP, []],                           # 22-P5/32
        *elan(256, 512),                           # 28
        # head: SPPCSP-tiny
        c(256), c(256, f=-2),
        [-1, 1, SP, [5]], [-2, 1, SP, [9]], [-3, 1, SP, [13]],
        [[-1, -2, -3, -4], 1, Concat, [1]],
        c(256),
        [[-1, -7], 1, Concat, [1]],
        c(256),                                    # 37
        c(128), [-1, 1, nn.Upsample, [None, 2, "nearest"]], c(128, f=21),
        [[-1, -2], 1, Concat, [1]],
        *elan(64, 128),                            # 47
        c(64), [-1, 1, nn.Upsample, [None, 2, "nearest"]], c(64, f=14),
        [[-1, -2], 1, Concat, [1]],
        *elan(32, 64),                             # 57
        c(128, 3, 2), [[-1, 47], 1, Concat, [1]],
        *elan(64, 128),                            # 65
        c(256, 3, 2), [[-1, 37], 1, Concat, [1]],
        *elan(128, 256),                           # 73
        [57, 1, head_conv, [128, 3, 1, None, 1, nn.LeakyReLU(0.1)]],
        [65, 1, head_conv, [256, 3, 1, None, 1, nn.LeakyReLU(0.1)]],
        [73, 1, head_conv, [512, 3, 1, None, 1, nn.LeakyReLU(0.1)]],
        [[74, 75, 76], 1, IDetect, [num_classes, _YOLOV7_ANCHORS, implicit_std]],
    ]
    assert len(rows) == 78
    return scale_convs_to_unit_std_(YOLOGraphModel(rows, num_classes, depth=1.0, width=width_multiple))


@torch.no_grad()
def yolov7_model_convert(model: nn.Module) -> nn.Module:
    """Deep copy in YOLOv7's deploy form (``Model.fuse()``): ``RepConv.fuse_repvgg_block()``,
    Conv-BN folds, ``IDetect.fuse()`` (ImplicitA -> bias, ImplicitM -> weight and bias).
    float64 merges, cast back."""
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        if isinstance(m, RepConv):
            m.fuse_repvgg_block()
        elif isinstance(m, Conv):
            m.fuse()
        elif isinstance(m, IDetect):
            m.fuse()
    return model.eval()
