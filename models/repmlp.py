"""RepMLPNet (Ding et al., "RepMLPNet: Hierarchical Vision MLP with Re-parameterized Locality",
CVPR 2022; arXiv:2112.11081).

Training form of a ``RepMLPBlock`` (names and forward ops follow the official code,
DingXiaoH/RepMLP, ``repmlpnet.py``), input ``x`` of shape ``(N, C, H, W)`` cut into
``h_parts x w_parts`` partitions of ``h x w`` pixels (``h_parts = H // h``), the ``C`` channels in
``S = num_sharesets`` share-sets (``C % S == 0``)::

    global_vec = gp(x)                                   GlobalPerceptron: avg pool, 1x1 fc1 (C -> C/r,
                                                         bias), ReLU, 1x1 fc2 (-> C, bias), sigmoid,
                                                         view(-1, C, 1, 1)
    origin_shape = x.size(); h_parts = origin_shape[2] // h; w_parts = origin_shape[3] // w
    p   = x.reshape(-1, C, h_parts, h, w_parts, w).permute(0, 2, 4, 1, 3, 5)     partition
    fc  = p.reshape(-1, S*h*w, 1, 1) -> fc3 -> reshape(-1, S, h, w) -> fc3_bn
          -> reshape(-1, h_parts, w_parts, S, h, w)                               partition_affine
          fc3: 1x1 Conv2d(S*h*w -> S*h*w, groups=S, no bias), fc3_bn: BatchNorm2d(S)
    loc = sum_k repconv{k}(p.reshape(-1, S, h, w)).reshape(-1, h_parts, w_parts, S, h, w)
          repconv{k}: conv_bn(S -> S, k x k, pad k//2, groups=S)  for k in reparam_conv_k
    fc += loc                                                                     (if reparam_conv_k)
    y   = fc.permute(0, 3, 1, 4, 2, 5).reshape(*origin_shape) * global_vec

The un-partition is the inverse of ``partition`` only when ``h_parts * w_parts == 1`` (the official
models at their nominal resolution) or ``C == S``: the ``-1`` of ``reshape(-1, h_parts, w_parts, S,
h, w)`` is ``N*C/S`` while the rows are in memory order ``(N, h_parts, w_parts, C/S)``, so otherwise
partitions and channel groups trade places (row ``L`` goes to sample/group ``L // (h_parts*w_parts)``,
partition ``L % (h_parts*w_parts)``). That is the official behaviour and is kept; the conversion is
exact either way (the conv branches go through the same reshapes as ``fc3``).

Deploy form (``local_inject``, the paper's "locality injection"; ``RepMLPNet.locality_injection``
for a whole network): ``fc3`` becomes a grouped 1x1 conv *with bias* holding ``fc3-BN`` plus every
``repconv{k}``-BN, and ``fc3_bn`` an ``nn.Identity``; the conv branches are deleted. Each branch is
folded with its BN, zero-padded to the largest kernel and summed, then turned into an FC matrix by
``_convert_conv_to_fc`` (:func:`conv_to_fc`): a conv over an ``h x w`` partition with zero padding
is a linear map of the ``h*w`` pixels, so its matrix is the conv applied to the ``h*w`` one-hot
images of the identity. The BN of ``fc3`` (``S`` channels) scales each group's ``h*w`` output rows
(``repeat_interleave(h*w)``). As in the official code the kernels must be odd (centre padding).
The global perceptron, ``prebn1`` / ``prebn2``, the FFN and the embeddings keep their BNs (the
official conversion merges only the local perceptron). Merges are computed in float64 and cast back
(the official code computes in the parameters' dtype).

The deploy form has ``S*h*w`` more parameters per block (the fc3 bias) and ``S*(2 + sum_k(k*k + 2))``
fewer (fc3_bn and the conv-BN branches): with ``reparam_conv_k=(1, 3)`` that is ``S*(h*w - 16)``
more, so the official models *grow* (h*w = 56^2 in stage 1); ``repmlpnet_tiny`` shrinks by 720
thanks to its last stage (h*w = 4).

Around it, as in the official code:

* ``FFNBlock``: 1x1 conv-BN (C -> 4C), GELU, 1x1 conv-BN (4C -> C).
* ``RepMLPNetUnit``: ``y = x + repmlp_block(prebn1(x)); z = y + ffn_block(prebn2(y))``.
* ``RepMLPNet``: ``conv_embedding`` (patch x patch conv-BN-ReLU, stride patch), the ``stages``
  (``nn.ModuleList`` of units) with ``embeds`` between them (2x2 s2 conv-BN-ReLU, C_i -> C_{i+1}),
  ``head_norm`` (BN), ``F.adaptive_avg_pool2d(x, 1)``, ``view(N, -1)``, ``head`` (Linear).

The official factories (``create_RepMLPNet_*``; all ``patch_size=(4, 4)``, ``reparam_conv_k=(1, 3)``,
``globalperceptron_reduce=4``, hs = ws)::

    T224  channels (64, 128, 256, 512)   hs (56, 28, 14, 7)  blocks (2, 2, 6, 2)   sharesets (1, 4, 16, 128)
    T256  channels (64, 128, 256, 512)   hs (64, 32, 16, 8)  blocks (2, 2, 6, 2)   sharesets (1, 4, 16, 128)
    B224  channels (96, 192, 384, 768)   hs (56, 28, 14, 7)  blocks (2, 2, 12, 2)  sharesets (1, 4, 32, 128)
    B256  channels (96, 192, 384, 768)   hs (64, 32, 16, 8)  blocks (2, 2, 12, 2)  sharesets (1, 4, 32, 128)
    D256  channels (80, 160, 320, 640)   hs (64, 32, 16, 8)  blocks (2, 2, 18, 2)  sharesets (1, 4, 16, 128)
    L256  channels (96, 192, 384, 768)   hs (64, 32, 16, 8)  blocks (2, 2, 18, 2)  sharesets (1, 4, 32, 256)

(the official ones take an input of exactly 224 or 256, one partition per stage: ``h_parts = 1``).
``repmlpnet_tiny`` (registered as ``repmlpnet_tiny``) takes 3x64x64: channels (16, 32, 64, 128),
hs = ws = (8, 4, 4, 2) over feature maps of 16, 8, 4, 2 pixels, so stages 1 and 2 have 2x2
partitions (``h_parts = 2``) and stages 3 and 4 one; blocks (1, 1, 2, 1), sharesets (1, 4, 16, 64)
(every C divisible by S), ``reparam_conv_k=(1, 3)``, ``globalperceptron_reduce=4``, 10 classes.
Nothing needed adjusting.

Differences from the official code: none in the forward ops. ``F.sigmoid`` is written
``torch.sigmoid`` (the same op); ``use_checkpoint`` (training memory only) passes
``use_reentrant=False``; ``local_inject`` on a block already in deploy form does nothing (the official
one would fail on ``fc3_bn = Identity``). The registry entry is tagged ``modern`` because its deploy
blocks keep three convs (``gp.fc1``, ``gp.fc2``, ``fc3``), which the generic one-conv check of
``tests/test_models.py`` does not cover; ``tests/test_models_repmlp.py`` checks them.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from torch import nn

from .common import conv_bn, deploy_conv, fuse_conv_bn

__all__ = ["conv_bn_relu", "GlobalPerceptron", "RepMLPBlock", "FFNBlock", "RepMLPNetUnit", "RepMLPNet",
           "conv_to_fc", "repmlp_model_convert", "repmlpnet_tiny", "create_RepMLPNet_T224",
           "create_RepMLPNet_T256", "create_RepMLPNet_B224", "create_RepMLPNet_B256",
           "create_RepMLPNet_D256", "create_RepMLPNet_L256", "model_map"]

_F64 = torch.float64


def conv_bn_relu(in_channels, out_channels, kernel_size, stride, padding, groups=1) -> nn.Sequential:
    result = conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups=groups)
    result.add_module("relu", nn.ReLU())
    return result


def _fuse_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``fuse_bn`` in float64: ``bn`` may have fewer channels than ``weight`` has rows
    (``fc3``: ``S*h*w`` rows, ``BatchNorm2d(S)``); then each BN channel covers a block of consecutive
    rows (``repeat_interleave``)."""
    rows, n = weight.shape[0], bn.num_features
    assert rows % n == 0, (rows, n)
    k, b = fuse_conv_bn(weight.reshape(n, -1), bn, out_dtype=_F64)
    return k.reshape(weight.shape), b.repeat_interleave(rows // n)


@torch.no_grad()
def conv_to_fc(kernel: torch.Tensor, bias: torch.Tensor, h: int, w: int, S: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``RepMLPBlock._convert_conv_to_fc``: the grouped conv ``kernel`` (``(S, 1, k, k)``,
    padding ``k // 2``, groups ``S``) and ``bias`` (``(S,)``) over one ``h x w`` partition as an FC.

    Returns ``(fc_k, fc_bias)``: ``fc_k`` of shape ``(S*h*w, h*w)`` (row ``s*h*w + output pixel``,
    column ``input pixel`` of share-set ``s``; ``fc3``'s weight is its ``reshape_as``) and ``fc_bias``
    of shape ``(S*h*w,)``. Computed in the dtype of ``kernel`` (the block passes float64).
    """
    I = torch.eye(h * w, dtype=kernel.dtype, device=kernel.device).repeat(1, S).reshape(h * w, S, h, w)
    fc_k = F.conv2d(I, kernel, padding=(kernel.size(2) // 2, kernel.size(3) // 2), groups=S)
    fc_k = fc_k.reshape(h * w, S * h * w).t()
    fc_bias = bias.repeat_interleave(h * w)
    return fc_k, fc_bias


class GlobalPerceptron(nn.Module):
    def __init__(self, input_channels, internal_neurons):
        super().__init__()
        self.fc1 = nn.Conv2d(input_channels, internal_neurons, kernel_size=1, stride=1, bias=True)
        self.fc2 = nn.Conv2d(internal_neurons, input_channels, kernel_size=1, stride=1, bias=True)
        self.input_channels = input_channels

    def forward(self, inputs):
        x = F.adaptive_avg_pool2d(inputs, output_size=(1, 1))
        x = self.fc1(x)
        x = F.relu(x, inplace=True)
        x = self.fc2(x)
        x = torch.sigmoid(x)
        x = x.view(-1, self.input_channels, 1, 1)
        return x


class RepMLPBlock(nn.Module):
    """Global perceptron x (partition FC ``fc3``-BN + local perceptron ``repconv{k}``); ``local_inject``
    merges the local perceptron and ``fc3_bn`` into ``fc3``."""

    def __init__(self, in_channels, out_channels, h, w, reparam_conv_k=None, globalperceptron_reduce=4,
                 num_sharesets=1, deploy=False):
        super().__init__()
        self.C = in_channels
        self.O = out_channels
        self.S = num_sharesets
        self.h, self.w = h, w
        self.deploy = deploy

        assert in_channels == out_channels
        self.gp = GlobalPerceptron(input_channels=in_channels,
                                   internal_neurons=in_channels // globalperceptron_reduce)

        self.fc3 = nn.Conv2d(self.h * self.w * num_sharesets, self.h * self.w * num_sharesets, 1, 1, 0,
                             bias=deploy, groups=num_sharesets)
        if deploy:
            self.fc3_bn = nn.Identity()
        else:
            self.fc3_bn = nn.BatchNorm2d(num_sharesets)

        self.reparam_conv_k = reparam_conv_k
        if not deploy and reparam_conv_k is not None:
            for k in reparam_conv_k:
                conv_branch = conv_bn(num_sharesets, num_sharesets, kernel_size=k, stride=1, padding=k // 2,
                                      groups=num_sharesets)
                self.__setattr__("repconv{}".format(k), conv_branch)

    def partition(self, x, h_parts, w_parts):
        x = x.reshape(-1, self.C, h_parts, self.h, w_parts, self.w)
        x = x.permute(0, 2, 4, 1, 3, 5)
        return x

    def partition_affine(self, x, h_parts, w_parts):
        fc_inputs = x.reshape(-1, self.S * self.h * self.w, 1, 1)
        out = self.fc3(fc_inputs)
        out = out.reshape(-1, self.S, self.h, self.w)
        out = self.fc3_bn(out)
        out = out.reshape(-1, h_parts, w_parts, self.S, self.h, self.w)
        return out

    def forward(self, inputs):
        # Global Perceptron
        global_vec = self.gp(inputs)

        origin_shape = inputs.size()
        h_parts = origin_shape[2] // self.h
        w_parts = origin_shape[3] // self.w

        partitions = self.partition(inputs, h_parts, w_parts)

        # Channel Perceptron
        fc3_out = self.partition_affine(partitions, h_parts, w_parts)

        # Local Perceptron
        if self.reparam_conv_k is not None and not self.deploy:
            conv_inputs = partitions.reshape(-1, self.S, self.h, self.w)
            conv_out = 0
            for k in self.reparam_conv_k:
                conv_branch = self.__getattr__("repconv{}".format(k))
                conv_out += conv_branch(conv_inputs)
            conv_out = conv_out.reshape(-1, h_parts, w_parts, self.S, self.h, self.w)
            fc3_out += conv_out

        fc3_out = fc3_out.permute(0, 3, 1, 4, 2, 5)  # N, O, h_parts, out_h, w_parts, out_w
        out = fc3_out.reshape(*origin_shape)
        out = out * global_vec
        return out

    @torch.no_grad()
    def get_equivalent_fc3(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` of the deploy ``fc3`` in float64: weight ``(S*h*w, h*w, 1, 1)``."""
        fc_weight, fc_bias = _fuse_bn(self.fc3.weight.detach().to(_F64), self.fc3_bn)
        if self.reparam_conv_k is not None:
            largest_k = max(self.reparam_conv_k)
            largest_branch = self.__getattr__("repconv{}".format(largest_k))
            total_kernel, total_bias = _fuse_bn(largest_branch.conv.weight.detach().to(_F64), largest_branch.bn)
            for k in self.reparam_conv_k:
                if k != largest_k:
                    k_branch = self.__getattr__("repconv{}".format(k))
                    kernel, bias = _fuse_bn(k_branch.conv.weight.detach().to(_F64), k_branch.bn)
                    total_kernel = total_kernel + F.pad(kernel, [(largest_k - k) // 2] * 4)
                    total_bias = total_bias + bias
            rep_weight, rep_bias = self._convert_conv_to_fc(total_kernel, total_bias)
            final_fc3_weight = rep_weight.reshape_as(fc_weight) + fc_weight
            final_fc3_bias = rep_bias + fc_bias
        else:
            final_fc3_weight = fc_weight
            final_fc3_bias = fc_bias
        return final_fc3_weight, final_fc3_bias

    @torch.no_grad()
    def local_inject(self):
        """Locality injection: ``fc3`` with bias holds everything, ``fc3_bn`` is Identity, no branches."""
        if self.deploy:
            return
        self.deploy = True
        fc3_weight, fc3_bias = self.get_equivalent_fc3()
        # Remove Local Perceptron
        if self.reparam_conv_k is not None:
            for k in self.reparam_conv_k:
                self.__delattr__("repconv{}".format(k))
        template = self.fc3
        self.__delattr__("fc3")
        self.__delattr__("fc3_bn")
        self.fc3 = deploy_conv(template, fc3_weight, fc3_bias)
        self.fc3_bn = nn.Identity()

    def _convert_conv_to_fc(self, conv_kernel, conv_bias):
        return conv_to_fc(conv_kernel, conv_bias, self.h, self.w, self.S)


class FFNBlock(nn.Module):
    """The common FFN block of Transformer and MLP models (1x1 conv-BNs with GELU between)."""

    def __init__(self, in_channels, hidden_channels=None, out_channels=None, act_layer=nn.GELU):
        super().__init__()
        out_features = out_channels or in_channels
        hidden_features = hidden_channels or in_channels
        self.ffn_fc1 = conv_bn(in_channels, hidden_features, 1, 1, 0)
        self.ffn_fc2 = conv_bn(hidden_features, out_features, 1, 1, 0)
        self.act = act_layer()

    def forward(self, x):
        x = self.ffn_fc1(x)
        x = self.act(x)
        x = self.ffn_fc2(x)
        return x


class RepMLPNetUnit(nn.Module):
    def __init__(self, channels, h, w, reparam_conv_k, globalperceptron_reduce, ffn_expand=4,
                 num_sharesets=1, deploy=False):
        super().__init__()
        self.repmlp_block = RepMLPBlock(in_channels=channels, out_channels=channels, h=h, w=w,
                                        reparam_conv_k=reparam_conv_k,
                                        globalperceptron_reduce=globalperceptron_reduce,
                                        num_sharesets=num_sharesets, deploy=deploy)
        self.ffn_block = FFNBlock(channels, channels * ffn_expand)
        self.prebn1 = nn.BatchNorm2d(channels)
        self.prebn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = x + self.repmlp_block(self.prebn1(x))
        z = y + self.ffn_block(self.prebn2(y))
        return z


class RepMLPNet(nn.Module):
    def __init__(self, in_channels=3, num_class=1000, patch_size=(4, 4), num_blocks=(2, 2, 6, 2),
                 channels=(192, 384, 768, 1536), hs=(64, 32, 16, 8), ws=(64, 32, 16, 8),
                 sharesets_nums=(4, 8, 16, 32), reparam_conv_k=(3,), globalperceptron_reduce=4,
                 use_checkpoint=False, deploy=False):
        super().__init__()
        num_stages = len(num_blocks)
        assert num_stages == len(channels) == len(hs) == len(ws) == len(sharesets_nums)

        self.conv_embedding = conv_bn_relu(in_channels, channels[0], kernel_size=patch_size, stride=patch_size,
                                           padding=0)
        stages = []
        embeds = []
        for stage_idx in range(num_stages):
            stage_blocks = [RepMLPNetUnit(channels=channels[stage_idx], h=hs[stage_idx], w=ws[stage_idx],
                                          reparam_conv_k=reparam_conv_k,
                                          globalperceptron_reduce=globalperceptron_reduce, ffn_expand=4,
                                          num_sharesets=sharesets_nums[stage_idx], deploy=deploy)
                            for _ in range(num_blocks[stage_idx])]
            stages.append(nn.ModuleList(stage_blocks))
            if stage_idx < num_stages - 1:
                embeds.append(conv_bn_relu(channels[stage_idx], channels[stage_idx + 1], kernel_size=2, stride=2,
                                           padding=0))
        self.stages = nn.ModuleList(stages)
        self.embeds = nn.ModuleList(embeds)
        self.head_norm = nn.BatchNorm2d(channels[-1])
        self.head = nn.Linear(channels[-1], num_class)
        self.use_checkpoint = use_checkpoint

    def forward(self, x):
        x = self.conv_embedding(x)
        for i, stage in enumerate(self.stages):
            for block in stage:
                if self.use_checkpoint:
                    x = checkpoint.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            if i < len(self.stages) - 1:
                embed = self.embeds[i]
                if self.use_checkpoint:
                    x = checkpoint.checkpoint(embed, x, use_reentrant=False)
                else:
                    x = embed(x)
        x = self.head_norm(x)
        x = F.adaptive_avg_pool2d(x, 1)
        x = x.view(x.size(0), -1)
        x = self.head(x)
        return x

    def locality_injection(self):
        for m in list(self.modules()):
            if hasattr(m, "local_inject"):
                m.local_inject()


def repmlp_model_convert(model: nn.Module) -> nn.Module:
    """Deep copy with every ``RepMLPBlock`` locality-injected (``RepMLPNet.locality_injection``), in
    eval mode; works on a bare block or unit too."""
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        if hasattr(m, "local_inject"):
            m.local_inject()
    return model.eval()


def repmlpnet_tiny(num_class: int = 10, deploy: bool = False) -> RepMLPNet:
    """3x64x64 input; 2x2 partitions in stages 1 and 2 (see the module docstring)."""
    return RepMLPNet(num_class=num_class, patch_size=(4, 4), channels=(16, 32, 64, 128), hs=(8, 4, 4, 2),
                     ws=(8, 4, 4, 2), num_blocks=(1, 1, 2, 1), sharesets_nums=(1, 4, 16, 64),
                     reparam_conv_k=(1, 3), globalperceptron_reduce=4, deploy=deploy)


def create_RepMLPNet_T224(deploy=False):
    return RepMLPNet(channels=(64, 128, 256, 512), hs=(56, 28, 14, 7), ws=(56, 28, 14, 7),
                     num_blocks=(2, 2, 6, 2), reparam_conv_k=(1, 3), sharesets_nums=(1, 4, 16, 128), deploy=deploy)


def create_RepMLPNet_T256(deploy=False):
    return RepMLPNet(channels=(64, 128, 256, 512), hs=(64, 32, 16, 8), ws=(64, 32, 16, 8),
                     num_blocks=(2, 2, 6, 2), reparam_conv_k=(1, 3), sharesets_nums=(1, 4, 16, 128), deploy=deploy)


def create_RepMLPNet_B224(deploy=False):
    return RepMLPNet(channels=(96, 192, 384, 768), hs=(56, 28, 14, 7), ws=(56, 28, 14, 7),
                     num_blocks=(2, 2, 12, 2), reparam_conv_k=(1, 3), sharesets_nums=(1, 4, 32, 128), deploy=deploy)


def create_RepMLPNet_B256(deploy=False):
    return RepMLPNet(channels=(96, 192, 384, 768), hs=(64, 32, 16, 8), ws=(64, 32, 16, 8),
                     num_blocks=(2, 2, 12, 2), reparam_conv_k=(1, 3), sharesets_nums=(1, 4, 32, 128), deploy=deploy)


def create_RepMLPNet_D256(deploy=False):
    return RepMLPNet(channels=(80, 160, 320, 640), hs=(64, 32, 16, 8), ws=(64, 32, 16, 8),
                     num_blocks=(2, 2, 18, 2), reparam_conv_k=(1, 3), sharesets_nums=(1, 4, 16, 128), deploy=deploy)


def create_RepMLPNet_L256(deploy=False):
    return RepMLPNet(channels=(96, 192, 384, 768), hs=(64, 32, 16, 8), ws=(64, 32, 16, 8),
                     num_blocks=(2, 2, 18, 2), reparam_conv_k=(1, 3), sharesets_nums=(1, 4, 32, 256), deploy=deploy)


model_map = {
    "RepMLPNet-T256": create_RepMLPNet_T256,
    "RepMLPNet-T224": create_RepMLPNet_T224,
    "RepMLPNet-B224": create_RepMLPNet_B224,
    "RepMLPNet-B256": create_RepMLPNet_B256,
    "RepMLPNet-D256": create_RepMLPNet_D256,
    "RepMLPNet-L256": create_RepMLPNet_L256,
}
