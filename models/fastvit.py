"""FastViT (Vasu et al., "FastViT: A Fast Hybrid Vision Transformer using Structural
Reparameterization", ICCV 2023), with its MobileOne blocks (Vasu et al., "MobileOne: An Improved
One millisecond Mobile Backbone", CVPR 2023), RepLKNet-style large-kernel convs (Ding et al.,
"Scaling Up Your Kernels to 31x31", CVPR 2022) and a conditional positional encoding (Chu et al.,
"Conditional Positional Encodings for Vision Transformers", ICLR 2023).

Training form of the re-parameterizable modules (attribute names follow apple/ml-fastvit)::

    MobileOneBlock          act(se(sum_i BN(conv_kxk_i(x)) + BN(conv_1x1(x)) + BN(x)))
                            rbr_conv[i] (num_conv_branches), rbr_scale (only if k > 1),
                            rbr_skip (only if in == out and stride 1)   -> reparam_conv
    RepMixer                x + layer_scale * (mixer(x) - norm(x)); mixer = MobileOneBlock
                            (dw kxk, no act), norm = MobileOneBlock with only the BN skip
                                                                        -> reparam_conv (one dw conv)
    ReparamLargeKernelConv  BN(conv_7x7(x)) + BN(conv_3x3(x)), lkb_origin / small_conv
                                                                        -> lkb_reparam
    RepCPE                  x + pe(x), pe a dw 7x7 conv with bias        -> reparam_conv

``ConvFFN`` (dw 7x7 conv -> BN -> fc1 1x1 -> GELU -> fc2 1x1) has no deploy form, exactly as in
the official code (its conv-BN is not even folded there). The network is FastViT-T8
(layers 2/2/4/2, widths 48/96/192/384, mlp_ratio 3, RepMixer everywhere) plus one ``RepCPE``
before the last stage as in the SA variants. ``fastvit_model_convert`` mirrors the authors'
``reparameterize_model`` (deep copy, ``reparameterize()`` on every module that has it); every
merge is computed in float64 and cast back.

Deviations from the official code, all without effect on the function computed unless noted:

* ``layer_scale`` parameters (official init ``1e-5 * ones``, which makes the RepMixer branch and
  the ConvFFN branch vanish) are drawn from U(0.5, 1.5) with torch's global RNG
  (``random_layer_scale=True``, the default of the factories).
* The official ``ReparamLargeKernelConv.forward`` computes ``self.activation(out)`` and throws
  the result away, so the released FastViT applies *no* activation between the 7x7 large-kernel
  conv of ``PatchEmbed`` and its 1x1 ``MobileOneBlock`` (timm keeps this as ``lkc_use_act=False``,
  "original weights didn't use this act"). This module reproduces that by default; pass
  ``lkc_use_act=True`` for the intended GELU.
* ``SEBlock`` pools with ``adaptive_avg_pool2d(x, 1)`` instead of ``avg_pool2d(x, [h, w])`` (same
  mean; the latter does not export with a dynamic batch dim).
* DropPath / dropout (identity at inference), the MHSA / attention blocks (not in T8), the
  dense-prediction ``fork_feat`` outputs and checkpoint loading are left out. Every block owns its
  own activation module (the official ``MobileOneBlock`` shares one default ``nn.GELU()``).
* ``dilation`` other than 1 is rejected (the official branches ignore it, so its merge would be
  wrong), as is ``padding != kernel_size // 2`` when a 1x1 scale branch must be centred.
"""
from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .common import conv_bn, fuse_conv_bn, identity_kernel

__all__ = ["SEBlock", "MobileOneBlock", "ReparamLargeKernelConv", "RepMixer", "ConvFFN", "RepCPE",
           "RepMixerBlock", "PatchEmbed", "FastViT", "convolutional_stem", "fastvit_t8",
           "fastvit_model_convert", "randomize_layer_scale_"]

F64 = torch.float64


# ---------------------------------------------------------------------------- helpers
@torch.no_grad()
def _new_conv(in_c: int, out_c: int, kernel_size, stride, padding, groups: int,
              kernel: torch.Tensor, bias: torch.Tensor, like: torch.Tensor) -> nn.Conv2d:
    """A biased Conv2d holding the float64 ``kernel`` / ``bias`` cast to ``like``'s dtype/device."""
    conv = nn.Conv2d(in_c, out_c, kernel_size, stride=stride, padding=padding, groups=groups,
                     bias=True).to(device=like.device, dtype=like.dtype)
    conv.weight.copy_(kernel.to(like.dtype))
    conv.bias.copy_(bias.to(like.dtype))
    return conv


def _layer_scale(dim: int, init_value: float) -> nn.Parameter:
    return nn.Parameter(init_value * torch.ones((dim, 1, 1)), requires_grad=True)


@torch.no_grad()
def randomize_layer_scale_(model: nn.Module, low: float = 0.5, high: float = 1.5) -> nn.Module:
    """Redraw every ``layer_scale`` parameter from U(low, high) with torch's global RNG."""
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] == "layer_scale":
            p.copy_(torch.rand(p.shape, dtype=p.dtype) * (high - low) + low)
    return model


# ---------------------------------------------------------------------------- MobileOne
class SEBlock(nn.Module):
    """Squeeze-and-Excitation (Hu et al.), as in the MobileOne code: global average pool, 1x1
    reduce, ReLU, 1x1 expand, sigmoid, channel-wise product. The official code pools with
    ``F.avg_pool2d(x, kernel_size=[h, w])``, which the legacy exporter rejects once the batch dim
    is dynamic (the sizes become tensors); ``adaptive_avg_pool2d(x, 1)`` is the same mean and
    exports as GlobalAveragePool."""

    def __init__(self, in_channels: int, rd_ratio: float = 0.0625) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, int(in_channels * rd_ratio), kernel_size=1, bias=True)
        self.expand = nn.Conv2d(int(in_channels * rd_ratio), in_channels, kernel_size=1, bias=True)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        c = inputs.size(1)
        x = F.adaptive_avg_pool2d(inputs, 1)
        x = torch.sigmoid(self.expand(F.relu(self.reduce(x))))
        return inputs * x.view(-1, c, 1, 1)


class MobileOneBlock(nn.Module):
    """MobileOne block: ``num_conv_branches`` kxk conv-BN branches, a 1x1 conv-BN scale branch
    (if ``kernel_size > 1`` and ``use_scale_branch``) and a BN skip (if ``in == out`` and stride
    1), summed, then optional SE and activation. Deploy form: one conv ``reparam_conv``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1,
                 inference_mode: bool = False, use_se: bool = False, use_act: bool = True,
                 use_scale_branch: bool = True, num_conv_branches: int = 1,
                 activation: nn.Module | None = None) -> None:
        super().__init__()
        assert dilation == 1, "MobileOneBlock: the branches ignore dilation; only 1 is supported"
        self.inference_mode = inference_mode
        self.groups = groups
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.kernel_size = kernel_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_conv_branches = num_conv_branches

        self.se = SEBlock(out_channels) if use_se else nn.Identity()
        if use_act:
            self.activation = activation if activation is not None else nn.GELU()
        else:
            self.activation = nn.Identity()

        if inference_mode:
            self.reparam_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                          padding=padding, dilation=dilation, groups=groups,
                                          bias=True)
            return
        self.rbr_skip = (nn.BatchNorm2d(in_channels)
                         if out_channels == in_channels and stride == 1 else None)
        if num_conv_branches > 0:
            self.rbr_conv = nn.ModuleList([self._conv_bn(kernel_size, padding)
                                           for _ in range(num_conv_branches)])
        else:
            self.rbr_conv = None
        self.rbr_scale = None
        if kernel_size > 1 and use_scale_branch:
            assert padding == kernel_size // 2, "the 1x1 scale branch must be centred"
            self.rbr_scale = self._conv_bn(1, 0)

    def _conv_bn(self, kernel_size: int, padding: int) -> nn.Sequential:
        return conv_bn(self.in_channels, self.out_channels, kernel_size, self.stride, padding,
                       groups=self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inference_mode:
            return self.activation(self.se(self.reparam_conv(x)))
        identity_out = 0
        if self.rbr_skip is not None:
            identity_out = self.rbr_skip(x)
        scale_out = 0
        if self.rbr_scale is not None:
            scale_out = self.rbr_scale(x)
        out = scale_out + identity_out          # same summation order as the official code
        if self.rbr_conv is not None:
            for ix in range(self.num_conv_branches):
                out = out + self.rbr_conv[ix](x)
        return self.activation(self.se(out))

    # ---- deploy conversion ---------------------------------------------------------------
    @torch.no_grad()
    def _get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent ``kernel_size`` kernel and bias of the branch sum (float64)."""
        k = self.kernel_size
        kernel = torch.zeros(self.out_channels, self.in_channels // self.groups, k, k, dtype=F64)
        bias = torch.zeros(self.out_channels, dtype=F64)
        if self.rbr_scale is not None:
            ks, bs = fuse_conv_bn(self.rbr_scale.conv.weight, self.rbr_scale.bn, out_dtype=F64)
            kernel += F.pad(ks, [k // 2] * 4)
            bias += bs
        if self.rbr_skip is not None:
            kid, bid = fuse_conv_bn(identity_kernel(self.in_channels, self.groups, k, k),
                                    self.rbr_skip, out_dtype=F64)
            kernel += kid
            bias += bid
        if self.rbr_conv is not None:
            for branch in self.rbr_conv:
                kc, bc = fuse_conv_bn(branch.conv.weight, branch.bn, out_dtype=F64)
                kernel += kc
                bias += bc
        return kernel, bias

    @torch.no_grad()
    def get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 kernel and bias of the block's linear part, before or after conversion."""
        if self.inference_mode:
            return (self.reparam_conv.weight.detach().to(F64),
                    self.reparam_conv.bias.detach().to(F64))
        return self._get_kernel_bias()

    def _any_param(self) -> torch.Tensor:
        return next(m for m in self.modules() if isinstance(m, nn.BatchNorm2d)).running_mean

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.inference_mode:
            return
        kernel, bias = self._get_kernel_bias()
        self.reparam_conv = _new_conv(self.in_channels, self.out_channels, self.kernel_size,
                                      self.stride, self.padding, self.groups, kernel, bias,
                                      self._any_param())
        for p in self.parameters():
            p.detach_()
        del self.rbr_conv
        del self.rbr_scale
        del self.rbr_skip
        self.inference_mode = True


# ---------------------------------------------------------------------------- RepLKNet
class ReparamLargeKernelConv(nn.Module):
    """``BN(conv_KxK(x)) + BN(conv_kxk(x))`` (both stride ``stride``, groups ``groups``), then
    ``activation`` only if ``use_act`` (see the module docstring). Deploy form: ``lkb_reparam``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 groups: int, small_kernel: int | None, inference_mode: bool = False,
                 activation: nn.Module | None = None, use_act: bool = False) -> None:
        super().__init__()
        self.stride = stride
        self.groups = groups
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation if activation is not None else nn.GELU()
        self.use_act = use_act
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        self.padding = kernel_size // 2
        if inference_mode:
            self.lkb_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                         padding=self.padding, groups=groups, bias=True)
            return
        self.lkb_origin = conv_bn(in_channels, out_channels, kernel_size, stride, self.padding,
                                  groups=groups)
        if small_kernel is not None:
            assert small_kernel <= kernel_size and small_kernel % 2 == 1
            self.small_conv = conv_bn(in_channels, out_channels, small_kernel, stride,
                                      small_kernel // 2, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "lkb_reparam"):
            out = self.lkb_reparam(x)
        else:
            out = self.lkb_origin(x)
            if hasattr(self, "small_conv"):
                out = out + self.small_conv(x)
        return self.activation(out) if self.use_act else out

    @torch.no_grad()
    def get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent ``kernel_size`` kernel and bias (float64)."""
        eq_k, eq_b = fuse_conv_bn(self.lkb_origin.conv.weight, self.lkb_origin.bn, out_dtype=F64)
        if hasattr(self, "small_conv"):
            small_k, small_b = fuse_conv_bn(self.small_conv.conv.weight, self.small_conv.bn,
                                            out_dtype=F64)
            eq_k = eq_k + F.pad(small_k, [(self.kernel_size - self.small_kernel) // 2] * 4)
            eq_b = eq_b + small_b
        return eq_k, eq_b

    @torch.no_grad()
    def reparameterize(self) -> None:
        if hasattr(self, "lkb_reparam"):
            return
        eq_k, eq_b = self.get_kernel_bias()
        self.lkb_reparam = _new_conv(self.in_channels, self.out_channels, self.kernel_size,
                                     self.stride, self.padding, self.groups, eq_k, eq_b,
                                     self.lkb_origin.conv.weight)
        del self.lkb_origin
        if hasattr(self, "small_conv"):
            del self.small_conv


# ---------------------------------------------------------------------------- FastViT modules
class RepMixer(nn.Module):
    """Re-parameterizable token mixer ``x + layer_scale * (mixer(x) - norm(x))``; ``mixer`` is a
    depthwise ``MobileOneBlock`` (conv + scale + skip branches, no activation), ``norm`` one with
    only its BN skip. Deploy form: one depthwise conv ``reparam_conv``."""

    def __init__(self, dim: int, kernel_size: int = 3, use_layer_scale: bool = True,
                 layer_scale_init_value: float = 1e-5, inference_mode: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.inference_mode = inference_mode
        if inference_mode:
            self.reparam_conv = nn.Conv2d(dim, dim, kernel_size, stride=1,
                                          padding=kernel_size // 2, groups=dim, bias=True)
            return
        self.norm = MobileOneBlock(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim,
                                   use_act=False, use_scale_branch=False, num_conv_branches=0)
        self.mixer = MobileOneBlock(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim,
                                    use_act=False)
        self.use_layer_scale = use_layer_scale
        if use_layer_scale:
            self.layer_scale = _layer_scale(dim, layer_scale_init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "reparam_conv"):
            return self.reparam_conv(x)
        if self.use_layer_scale:
            return x + self.layer_scale * (self.mixer(x) - self.norm(x))
        return x + self.mixer(x) - self.norm(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.inference_mode:
            return
        km, bm = self.mixer.get_kernel_bias()
        kn, bn = self.norm.get_kernel_bias()
        k = self.kernel_size
        w = km - kn
        b = bm - bn
        if self.use_layer_scale:
            ls = self.layer_scale.detach().to(F64).reshape(-1)
            w = w * ls.reshape(-1, 1, 1, 1)
            b = b * ls
        w = w + identity_kernel(self.dim, self.dim, k, k)
        self.reparam_conv = _new_conv(self.dim, self.dim, k, 1, k // 2, self.dim, w, b,
                                      self.mixer.reparam_conv.weight if self.mixer.inference_mode
                                      else self.mixer.rbr_skip.running_mean)
        for p in self.parameters():
            p.detach_()
        del self.mixer
        del self.norm
        if self.use_layer_scale:
            del self.layer_scale
        self.inference_mode = True


class ConvFFN(nn.Module):
    """Convolutional FFN: dw 7x7 conv -> BN -> fc1 (1x1) -> act -> fc2 (1x1). No deploy form."""

    def __init__(self, in_channels: int, hidden_channels: int | None = None,
                 out_channels: int | None = None, act_layer=nn.GELU, drop: float = 0.0) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        hidden_channels = hidden_channels or in_channels
        self.conv = conv_bn(in_channels, out_channels, 7, 1, 3, groups=in_channels)
        self.fc1 = nn.Conv2d(in_channels, hidden_channels, kernel_size=1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_channels, out_channels, kernel_size=1)
        self.drop = nn.Dropout(drop)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(self.conv(x)))
        return self.drop(self.fc2(self.drop(x)))


class RepCPE(nn.Module):
    """Conditional positional encoding ``x + pe(x)`` (``pe``: depthwise conv with bias).
    Deploy form: one depthwise conv ``reparam_conv``."""

    def __init__(self, in_channels: int, embed_dim: int = 768, spatial_shape=(7, 7),
                 inference_mode: bool = False) -> None:
        super().__init__()
        if isinstance(spatial_shape, int):
            spatial_shape = (spatial_shape, spatial_shape)
        spatial_shape = tuple(spatial_shape)
        assert len(spatial_shape) == 2 and all(s % 2 == 1 for s in spatial_shape)
        assert in_channels == embed_dim, "the identity branch needs in_channels == embed_dim"
        self.spatial_shape = spatial_shape
        self.embed_dim = embed_dim
        self.in_channels = in_channels
        self.groups = embed_dim
        # the official code pads both axes by spatial_shape[0] // 2 (square kernels only)
        padding = int(spatial_shape[0] // 2)
        if inference_mode:
            self.reparam_conv = nn.Conv2d(in_channels, embed_dim, spatial_shape, 1, padding,
                                          groups=embed_dim, bias=True)
        else:
            self.pe = nn.Conv2d(in_channels, embed_dim, spatial_shape, 1, padding, bias=True,
                                groups=embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "reparam_conv"):
            return self.reparam_conv(x)
        return self.pe(x) + x

    @torch.no_grad()
    def reparameterize(self) -> None:
        if hasattr(self, "reparam_conv"):
            return
        kh, kw = self.spatial_shape
        w = identity_kernel(self.in_channels, self.groups, kh, kw) + self.pe.weight.detach().to(F64)
        b = self.pe.bias.detach().to(F64)
        self.reparam_conv = _new_conv(self.in_channels, self.embed_dim, self.spatial_shape, 1,
                                      int(kh // 2), self.embed_dim, w, b, self.pe.weight)
        for p in self.parameters():
            p.detach_()
        del self.pe


class RepMixerBlock(nn.Module):
    """MetaFormer block: ``x = token_mixer(x); x = x + layer_scale * convffn(x)``."""

    def __init__(self, dim: int, kernel_size: int = 3, mlp_ratio: float = 4.0, act_layer=nn.GELU,
                 drop: float = 0.0, use_layer_scale: bool = True,
                 layer_scale_init_value: float = 1e-5, inference_mode: bool = False) -> None:
        super().__init__()
        assert mlp_ratio > 0
        self.token_mixer = RepMixer(dim, kernel_size=kernel_size, use_layer_scale=use_layer_scale,
                                    layer_scale_init_value=layer_scale_init_value,
                                    inference_mode=inference_mode)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.use_layer_scale = use_layer_scale
        if use_layer_scale:
            self.layer_scale = _layer_scale(dim, layer_scale_init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x)
        if self.use_layer_scale:
            return x + self.layer_scale * self.convffn(x)
        return x + self.convffn(x)


class PatchEmbed(nn.Module):
    """Downsampling: ``ReparamLargeKernelConv`` (KxK + 3x3, stride, groups=in_channels) then a
    1x1 ``MobileOneBlock`` (conv + BN skip, GELU)."""

    def __init__(self, patch_size: int, stride: int, in_channels: int, embed_dim: int,
                 inference_mode: bool = False, lkc_use_act: bool = False) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            ReparamLargeKernelConv(in_channels, embed_dim, kernel_size=patch_size, stride=stride,
                                   groups=in_channels, small_kernel=3,
                                   inference_mode=inference_mode, use_act=lkc_use_act),
            MobileOneBlock(embed_dim, embed_dim, kernel_size=1, stride=1, padding=0, groups=1,
                           inference_mode=inference_mode, use_se=False, num_conv_branches=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def convolutional_stem(in_channels: int, out_channels: int,
                       inference_mode: bool = False) -> nn.Sequential:
    """MobileOne stem: 3x3 s2 dense, 3x3 s2 depthwise, 1x1, each with GELU."""
    return nn.Sequential(
        MobileOneBlock(in_channels, out_channels, 3, stride=2, padding=1, groups=1,
                       inference_mode=inference_mode, num_conv_branches=1),
        MobileOneBlock(out_channels, out_channels, 3, stride=2, padding=1, groups=out_channels,
                       inference_mode=inference_mode, num_conv_branches=1),
        MobileOneBlock(out_channels, out_channels, 1, stride=1, padding=0, groups=1,
                       inference_mode=inference_mode, num_conv_branches=1),
    )


def basic_blocks(dim: int, num_blocks: int, kernel_size: int = 3, mlp_ratio: float = 4.0,
                 act_layer=nn.GELU, use_layer_scale: bool = True,
                 layer_scale_init_value: float = 1e-5,
                 inference_mode: bool = False) -> nn.Sequential:
    """One stage of ``RepMixerBlock`` (the only token mixer of the T variants)."""
    return nn.Sequential(*[
        RepMixerBlock(dim, kernel_size=kernel_size, mlp_ratio=mlp_ratio, act_layer=act_layer,
                      use_layer_scale=use_layer_scale,
                      layer_scale_init_value=layer_scale_init_value, inference_mode=inference_mode)
        for _ in range(num_blocks)])


class FastViT(nn.Module):
    """FastViT classifier: stem ``patch_embed``, ``network`` (stages, ``PatchEmbed`` between
    them, optional positional encodings before a stage), ``conv_exp`` (dw 3x3 MobileOneBlock with
    SE, width x ``cls_ratio``), ``gap``, ``head``."""

    def __init__(self, layers, embed_dims, mlp_ratios, downsamples=None, repmixer_kernel_size=3,
                 act_layer=nn.GELU, num_classes: int = 1000, pos_embs=None,
                 down_patch_size: int = 7, down_stride: int = 2, use_layer_scale: bool = True,
                 layer_scale_init_value: float = 1e-5, cls_ratio: float = 2.0,
                 inference_mode: bool = False, lkc_use_act: bool = False) -> None:
        super().__init__()
        n = len(layers)
        downsamples = downsamples or [True] * n
        pos_embs = pos_embs or [None] * n
        self.num_classes = num_classes
        self.patch_embed = convolutional_stem(3, embed_dims[0], inference_mode)
        network = []
        for i in range(n):
            if pos_embs[i] is not None:
                network.append(pos_embs[i](embed_dims[i], embed_dims[i],
                                           inference_mode=inference_mode))
            network.append(basic_blocks(embed_dims[i], layers[i], kernel_size=repmixer_kernel_size,
                                        mlp_ratio=mlp_ratios[i], act_layer=act_layer,
                                        use_layer_scale=use_layer_scale,
                                        layer_scale_init_value=layer_scale_init_value,
                                        inference_mode=inference_mode))
            if i == n - 1:
                break
            if downsamples[i] or embed_dims[i] != embed_dims[i + 1]:
                network.append(PatchEmbed(down_patch_size, down_stride, embed_dims[i],
                                          embed_dims[i + 1], inference_mode=inference_mode,
                                          lkc_use_act=lkc_use_act))
        self.network = nn.ModuleList(network)
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.conv_exp = MobileOneBlock(embed_dims[-1], int(embed_dims[-1] * cls_ratio), 3,
                                       stride=1, padding=1, groups=embed_dims[-1],
                                       inference_mode=inference_mode, use_se=True,
                                       num_conv_branches=1)
        self.head = (nn.Linear(int(embed_dims[-1] * cls_ratio), num_classes)
                     if num_classes > 0 else nn.Identity())
        self.apply(self.cls_init_weights)

    @staticmethod
    def cls_init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for block in self.network:
            x = block(x)
        x = self.conv_exp(x)
        x = self.gap(x)
        x = x.view(x.size(0), -1)   # as in the official code: exports as Reshape
        return self.head(x)


def fastvit_t8(num_classes: int = 1000, inference_mode: bool = False,
               random_layer_scale: bool = True, lkc_use_act: bool = False) -> FastViT:
    """FastViT-T8 (layers 2/2/4/2, widths 48/96/192/384, mlp_ratio 3, RepMixer in all stages)
    with a 7x7 ``RepCPE`` before the last stage (as in FastViT-SA). 224x224 is the benchmark
    size; any input divisible by 32 works (64x64 gives a 2x2 last stage)."""
    model = FastViT([2, 2, 4, 2], embed_dims=[48, 96, 192, 384], mlp_ratios=[3, 3, 3, 3],
                    downsamples=[True, True, True, True],
                    pos_embs=[None, None, None, partial(RepCPE, spatial_shape=(7, 7))],
                    num_classes=num_classes, inference_mode=inference_mode,
                    lkc_use_act=lkc_use_act)
    if random_layer_scale:
        randomize_layer_scale_(model)
    return model


def fastvit_model_convert(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` in the authors' deploy form (their ``reparameterize_model``):
    ``reparameterize()`` on every module that has it. ``modules()`` yields a parent before it
    visits its children, so a ``RepMixer`` merges (and drops) its two ``MobileOneBlock``\\ s
    before they are reached."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "reparameterize"):
            module.reparameterize()
    return model
