"""ResRep (Ding et al., "ResRep: Lossless CNN Pruning via Decoupling Remembering and Forgetting",
ICCV 2021), after the authors' code (DingXiaoH/ResRep: ``rr/compactor.py``, ``rr/resrep_builder.py``,
``rr/resrep_util.py``, ``rr/resrep_train.py``, ``rr/resrep_convert.py``).

**Training form.** A *target* conv-BN is followed by a *compactor*: a bias-free 1x1 conv ``Q`` initialized
to the identity (``CompactorLayer``), then the ReLU (``ResRepBuilder.Conv2dBN`` + ``Conv2dBNReLU``: children
``conv``, ``bn``, ``compactor``, ``relu``). The network (:class:`ResRepResNet`, CIFAR-style, 10 classes)::

    stem      conv3x3(3->16)-BN-ReLU
    stage1    2 basic blocks, 16 ch, stride 1, identity shortcuts
    stage2    2 basic blocks, 32 ch, first stride 2 with a 1x1 conv-BN projection shortcut
    stage3    2 basic blocks, 64 ch, first stride 2 with a projection shortcut
    head      conv1x1(64->128)-BN-compactor-ReLU
    gap, flatten, linear(128->10)

    basic block: relu(conv2(conv1(x)) + shortcut(x)),
                 conv1 = conv3x3-BN-compactor-ReLU (stride s), conv2 = conv3x3-BN

Compactors sit on the first conv of every block (the "internal layers", the official choice for
ResNet-56 and the only layers its experiments prune: their outputs feed one conv only) and on ``head``.
The residual stream (stem, conv2, projections) carries no compactor: every input of an Add would have to
prune the same channels (the official ``pacesetter_dict`` / ``follow_dict``), which the authors did not use.
``head`` is this reference's addition, so that pruning also reaches a Flatten -> Linear consumer (as in the
official conversion of VGG / MobileNet, where a compactor layer feeds the FC): 7 compactors, 352 rows.

**Deploy conversion** (:func:`resrep_convert`, after ``compactor_convert``): every BN is folded into its conv;
the compactor merges into the folded conv, ``W' = Q . W`` over the output axis and ``b' = Q . b``
(float64); output channels whose compactor row has L2 norm ``<= threshold`` are removed (at least one
kept per layer) and so are the matching input channels of the successor (``conv2``'s kernel columns;
``linear``'s columns ``c*HW .. (c+1)*HW - 1`` after pool + flatten, HW = 1 here). The result has plain
convs with bias, no BN, no compactor, narrower ``conv1`` / ``head``. :func:`resrep_model_convert`
(the registry's ``convert``) uses threshold 0: only exactly-zero rows go, so it is exact.
:func:`resrep_kept_channels` reports the kept channels per layer.

**Registered** as ``resrep_resnet`` (``models/export.py``): the network after :func:`train_resrep` with the
default :class:`ResRepConfig` (seed 0; trained on first use, ~15 s, and cached in memory), BNs randomized
by the registry; 132 of its 352 compactor rows are exactly 0 (6, 6, 12, 12, 24, 24, 48 per layer) on
every machine. Parameters / MACs at 3x32x32: training form 211,482 / 29,803,776; deploy without pruning
(``resrep_convert(m, None)``) 183,658 / 27,182,336; pruned deploy (``resrep_model_convert``) 116,038 /
17,253,152, i.e. the unpruned deploy form has 1.58x the parameters and MACs of the pruned one.

**Trainer** (:func:`train_resrep`, ``resrep_train_main`` + ``resrep_mask_model`` in miniature): SGD with
momentum on seeded synthetic data (``N(0, 1)`` images; label = argmax of a fixed random linear teacher on
the globally pooled ReLU features of a fixed random 3x3 conv), 240 steps of batch 32. After ``backward()``,
for every compactor kernel ``Q`` (:func:`resrep_compactor_grad_`, the official ``train_one_step``)::

    grad_i = mask_i * grad_task_i + lambda * Q_i / ||Q_i||       for every row i

the group-lasso gradient on every row, the task (cross-entropy) gradient zeroed on the rows whose mask is
0. After ``before_mask_iters`` steps, every ``mask_interval`` steps the mask is recomputed as in
``resrep_mask_model``: all rows of all compactors sorted by L2 norm (globally) and deactivated in that
order, skipping rows of layers already at their floor, at most ``begin_granularity`` rows more than
currently masked per update until the target is reached. The official target is global, deploy MACs at
most ``flops_target`` of the original (floor ``num_at_least`` = 1 channel per layer);
``ResRepConfig(flops_target=0.7, layer_prune_fraction=None)`` runs that (seed 0: 183 of 352 rows here).
The registry's default is a per-layer target, ``layer_prune_fraction = 0.375`` of every layer's rows
(6/16, 12/32, 24/64, 48/128: 132 of 352 rows), which fixes the pruned widths, parameters and MACs on
every machine: with the global target, *which* layers lose how many rows depends on float32 rounding in
the CPU's conv kernels (the same seed on another instruction set: 159 rows instead of 183). As in the
official optimizer: no weight decay on compactors (``weight_decay_on_compactor=False``), their own
momentum and learning-rate multiplier (``compactor_momentum``, ``keyword_to_lr_mult``), weight decay 0 on
BN and biases, biases at twice the learning rate, cosine learning rate to 0.

*Exact zeros by construction.* A masked row only feels the lasso gradient: it shrinks along its own
direction by ``lr * lambda`` per step, then flips around 0 with an amplitude of about that step, which
the cosine schedule winds down toward 0 (after 240 steps, norms of ~5e-6). The trainer's last step
(:func:`zero_masked_rows`) sets exactly the masked rows, ResRep's own deletion set, to 0, so the training
form carries exact zeros and the threshold-0 conversion (:func:`resrep_model_convert`, or exact
dead-channel elimination in an ONNX optimizer) removes exactly those rows, losslessly. The official
conversion instead drops the rows under ``CONVERSION_EPSILON = 1e-5``, which need not be the masked
ones: the training is chaotic in float32 (the CPU's kernel paths, ``ATEN_CPU_CAPABILITY`` default / avx2
/ avx512, give different masked rows in every layer, and the smallest unmasked norm varies, 1.5e-4 ..
3e-4 for seed 0, below 1e-5 on one machine). What holds everywhere is checked (``strict``): the masks
reached their target, and every masked row was driven to norm ``<= masked_norm_bound = 1e-4`` before
the zeroing (seed 0: at most 4.8e-6 .. 5.1e-6 across kernel paths). ``ResRepConfig(zero_masked=False)``
leaves the masked rows at those small norms (for a threshold pruner).

Scaled for a few hundred steps instead of ~10^5 (official values in brackets): lambda 2e-3 [1e-4]; on
the compactors no momentum [0.99] and a learning-rate multiplier of 300 [none], i.e. a compactor step
30x that of the other weights (momentum 0.9) [10x, by the momentum], without the ringing that momentum
leaves on the masked rows when the run ends (with momentum 0.9 they end near 1e-4, not below 1e-5); a mask
update every 4 steps [200] of at most 32 more rows [4] after 20 steps [5 epochs]. Also: the mask step
limit counts masked rows (the official loop also counts the rows it skips); training starts from a random
init, not from a trained base model; images are 16x16 (the network is fully convolutional; the registry
exports 32x32); one intra-op thread, so the weights do not depend on the caller's thread count (they do
on the CPU's kernels; ~15 s on one CPU core).

Note that conv1 -> BN -> Q -> ReLU -> conv2 -> BN makes the task loss invariant to the overall scale of
``Q`` (BN behind conv2), so the lasso shrinks *all* rows; the kept ones stop where the norm growth from
their (tangential) task gradient balances it. That is why the kept rows end at ~0.1 rather than ~1.
"""
from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .common import conv_bn, fuse_conv_bn, resnet_stages

__all__ = ["CONVERSION_EPSILON", "CompactorLayer", "CompactorConvBN", "ResRepBasicBlock", "ResRepResNet",
           "resrep_resnet", "resrep_resnet_trained", "resrep_trained_result", "ResRepConfig", "ResRepTrainResult", "train_resrep",
           "resrep_compactor_grad_", "zero_masked_rows", "compactor_layers", "resrep_kept_channels", "resrep_convert",
           "resrep_model_convert", "count_params_macs"]

#: the official conversion's threshold on compactor row norms (``rr/resrep_train.py``)
CONVERSION_EPSILON = 1e-5


# ---------------------------------------------------------------------------------------------- layers
class CompactorLayer(nn.Module):
    """ResRep's compactor: a bias-free 1x1 conv ``pwc`` (C -> C) initialized to the identity, and a
    ``mask`` buffer (1 = row kept, 0 = row selected for removal; its task gradient is masked)."""

    def __init__(self, num_features: int, conv_idx: int = 0):
        super().__init__()
        self.conv_idx = conv_idx
        self.num_features = num_features
        self.pwc = nn.Conv2d(num_features, num_features, kernel_size=1, stride=1, padding=0, bias=False)
        with torch.no_grad():
            self.pwc.weight.copy_(torch.eye(num_features).reshape(num_features, num_features, 1, 1))
        self.register_buffer("mask", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwc(x)

    @torch.no_grad()
    def set_mask(self, zero_indices) -> None:
        self.mask.fill_(1.0)
        if len(zero_indices):
            self.mask[torch.as_tensor(list(zero_indices), dtype=torch.long)] = 0.0

    def get_num_mask_ones(self) -> int:
        return int((self.mask == 1).sum())

    @torch.no_grad()
    def row_norms(self) -> torch.Tensor:
        """L2 norm of every row of ``Q`` (the official ``get_metric_vector``), float64."""
        return self.pwc.weight.detach().double().flatten(1).norm(dim=1)


class CompactorConvBN(nn.Sequential):
    """A target layer: ``conv`` (no bias) -> ``bn`` -> ``compactor`` -> ``relu`` (if ``relu``).

    ``deploy=True`` builds the converted form: ``conv`` with bias -> ``relu``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, conv_idx: int = 0, relu: bool = True, deploy: bool = False):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                          padding=padding, bias=deploy))
        if not deploy:
            self.add_module("bn", nn.BatchNorm2d(out_channels))
            self.add_module("compactor", CompactorLayer(out_channels, conv_idx))
        if relu:
            self.add_module("relu", nn.ReLU())

    @property
    def deploy(self) -> bool:
        return not hasattr(self, "compactor")

    @torch.no_grad()
    def merged_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q . W_bn, Q . b_bn)`` in float64: the BN folded into the conv, then the compactor."""
        kernel, bias = fuse_conv_bn(self.conv.weight, self.bn, out_dtype=torch.float64)
        q = self.compactor.pwc.weight.detach().double()[:, :, 0, 0]
        return torch.einsum("oc,cikl->oikl", q, kernel), q @ bias


class ResRepBasicBlock(nn.Module):
    """``relu(conv2(conv1(x)) + shortcut(x))``; ``conv1`` is a :class:`CompactorConvBN` (the official
    ``BasicBranch.conv1`` on a target layer), ``conv2`` a conv-BN, ``shortcut`` a 1x1 conv-BN projection
    when the shape changes, else the identity (``None``)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, conv_idx: int = 0):
        super().__init__()
        self.conv1 = CompactorConvBN(in_planes, planes, 3, stride, 1, conv_idx=conv_idx)
        self.conv2 = conv_bn(planes, planes, 3, 1, 1)
        self.shortcut = conv_bn(in_planes, planes, 1, stride, 0) if stride != 1 or in_planes != planes else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return self.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResRepResNet(nn.Module):
    """The ResRep reference network (see the module docstring). ``successors`` maps the name of each
    compactor layer to the one module reading its output (the official ``succeeding_strategy``)."""

    def __init__(self, widths=(16, 32, 64), num_blocks=(2, 2, 2), head_width: int = 128,
                 num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, widths[0], 3, 1, 1)
        self.relu = nn.ReLU()
        counter = iter(range(1, 10 ** 6))
        stages, last = resnet_stages(lambda i, cin, w, s: ResRepBasicBlock(cin, w, s, next(counter)),
                                     widths[0], widths, num_blocks)
        self.stages = len(stages)
        for i, stage in enumerate(stages):
            self.add_module(f"stage{i + 1}", stage)
        self.head = CompactorConvBN(last, head_width, 1, 1, 0, conv_idx=next(counter))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(head_width, num_classes)
        self.successors = {f"stage{i + 1}.{j}.conv1": f"stage{i + 1}.{j}.conv2"
                           for i, n in enumerate(num_blocks) for j in range(n)}
        self.successors["head"] = "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.stem(x))
        for i in range(self.stages):
            out = getattr(self, f"stage{i + 1}")(out)
        out = self.head(out)
        return self.linear(self.flatten(self.gap(out)))


def resrep_resnet(num_classes: int = 10) -> ResRepResNet:
    """The untrained training form: every compactor the identity."""
    return ResRepResNet(num_classes=num_classes)


def compactor_layers(model: nn.Module) -> dict[str, CompactorConvBN]:
    """The target layers that still carry a compactor, by module name, in model order."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, CompactorConvBN) and not m.deploy}


# ---------------------------------------------------------------------------------------------- counting
def _layer_macs(m: nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates of one Conv2d or Linear call per sample (``out``: its batch-1 output)."""
    if isinstance(m, nn.Conv2d):
        return out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
    return out[0].numel() * m.in_features


def _forward_with_hook(model: nn.Module, input_shape, hook) -> None:
    """One forward pass in eval mode on zeros of ``input_shape`` (batch 1) with ``hook`` on every Conv2d and
    Linear; the hooks and the training flag are restored."""
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            model(torch.zeros((1,) + tuple(input_shape[1:]), dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def count_params_macs(model: nn.Module, input_shape=(1, 3, 32, 32)) -> tuple[int, int]:
    """``(parameters, MACs per sample)``: every parameter of ``model``; the multiply-accumulates of its
    Conv2d and Linear layers on one input of ``input_shape`` (batch size divided out)."""
    macs = [0]

    def hook(m, inp, out):
        macs[0] += _layer_macs(m, out)

    _forward_with_hook(model, input_shape, hook)
    return sum(p.numel() for p in model.parameters()), macs[0]


def _deploy_mac_costs(model: ResRepResNet, input_shape) -> tuple[dict[str, int], int]:
    """The deploy MACs as ``base + sum(cost[name] * width[name])`` over the compactor layers: the MACs per
    kept channel of each (its own conv's output channel plus its successor's input channel), and the
    MACs of the unpruned deploy form. Exact: no two compactor layers are adjacent."""
    per_out, per_in, total = {}, {}, [0]
    layers = compactor_layers(model)
    merged = {id(layers[n].compactor.pwc) for n in layers}
    convs = {layers[n].conv: n for n in layers}
    succ = {model.get_submodule(s): n for n, s in model.successors.items()}
    succ = {(m.conv if hasattr(m, "conv") else m): n for m, n in succ.items()}

    def hook(m, inp, out):
        if id(m) in merged:
            return  # merged away in the deploy form
        macs = _layer_macs(m, out)
        cin, cout = (m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features)
        total[0] += macs
        if m in convs:
            per_out[convs[m]] = macs // cout
        if m in succ:
            per_in[succ[m]] = macs // cin * (cin // layers[succ[m]].conv.out_channels)

    _forward_with_hook(model, input_shape, hook)
    return {n: per_out[n] + per_in[n] for n in layers}, total[0]


# ---------------------------------------------------------------------------------------------- conversion
@torch.no_grad()
def resrep_kept_channels(model: nn.Module, threshold: float | None = 0.0) -> dict[str, list[int]]:
    """Kept output channels of every compactor layer: rows of ``Q`` with L2 norm ``> threshold``; if none,
    the one with the largest norm (at least one channel per layer). ``threshold=None`` keeps all."""
    kept = {}
    for name, layer in compactor_layers(model).items():
        norms = layer.compactor.row_norms()
        if threshold is None:
            idx = torch.arange(norms.numel())
        else:
            idx = torch.nonzero(norms > threshold).flatten()
            if idx.numel() == 0:
                idx = norms.argmax().reshape(1)
        kept[name] = [int(i) for i in idx]
    return kept


def _conv(template: nn.Conv2d, kernel: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A Conv2d with ``template``'s geometry and the channel counts of ``kernel`` (groups 1)."""
    assert template.groups == 1
    conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], template.kernel_size, stride=template.stride,
                     padding=template.padding, dilation=template.dilation, bias=True)
    conv.to(device=template.weight.device, dtype=template.weight.dtype)
    conv.weight.copy_(kernel.to(conv.weight.dtype))
    conv.bias.copy_(bias.to(conv.weight.dtype))
    return conv


def _is_conv_bn(m: nn.Module) -> bool:
    return (type(m) is nn.Sequential and isinstance(getattr(m, "conv", None), nn.Conv2d)
            and isinstance(getattr(m, "bn", None), nn.BatchNorm2d))


@torch.no_grad()
def resrep_convert(model: ResRepResNet, threshold: float | None = CONVERSION_EPSILON) -> ResRepResNet:
    """Deploy copy of ``model``: BNs folded, compactors merged, channels whose compactor row has norm
    ``<= threshold`` removed with the successors' matching input channels (``None``: merge only, keep
    every channel). Exact when the removed rows are exactly zero; else the output changes."""
    if not isinstance(model, ResRepResNet):
        raise TypeError(f"resrep_convert needs a ResRepResNet, got {type(model).__name__}")
    kept = resrep_kept_channels(model, threshold)
    deploy = copy.deepcopy(model).eval()
    for p in deploy.parameters():
        p.requires_grad_(False)
    folded = {name: [*fuse_conv_bn(m.conv.weight, m.bn, out_dtype=torch.float64), m.conv]
              for name, m in deploy.named_modules() if _is_conv_bn(m)}
    for name, layer in compactor_layers(deploy).items():
        idx = torch.as_tensor(kept[name], dtype=torch.long)
        kernel, bias = layer.merged_kernel_bias()
        conv = _conv(layer.conv, kernel[idx], bias[idx])
        new = CompactorConvBN(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                              conv.padding[0], relu=hasattr(layer, "relu"), deploy=True)
        new.conv = conv
        deploy.set_submodule(name, new)
        succ = deploy.successors[name]
        if succ in folded:  # the next conv(-BN): its input channels
            folded[succ][0] = folded[succ][0][:, idx]
        else:  # pool + flatten -> Linear: column blocks of H*W
            fc = deploy.get_submodule(succ)
            assert isinstance(fc, nn.Linear), succ
            per = fc.in_features // layer.conv.out_channels
            cols = (idx[:, None] * per + torch.arange(per)).flatten()
            new_fc = nn.Linear(cols.numel(), fc.out_features, bias=fc.bias is not None)
            new_fc.to(device=fc.weight.device, dtype=fc.weight.dtype)
            new_fc.weight.copy_(fc.weight[:, cols])
            if fc.bias is not None:
                new_fc.bias.copy_(fc.bias)
            deploy.set_submodule(succ, new_fc)
    for name, (kernel, bias, template) in folded.items():
        deploy.set_submodule(name, nn.Sequential())
        deploy.get_submodule(name).add_module("conv", _conv(template, kernel, bias))
    for p in deploy.parameters():
        p.requires_grad_(False)
    return deploy.eval()


def resrep_model_convert(model: ResRepResNet) -> ResRepResNet:
    """:func:`resrep_convert` with threshold 0: removes exactly-zero compactor rows only (lossless)."""
    return resrep_convert(model, threshold=0.0)


# ---------------------------------------------------------------------------------------------- trainer
@dataclass(frozen=True)
class ResRepConfig:
    """Trainer settings (names after the official ``ResRepConfig`` / base config)."""
    steps: int = 240
    batch_size: int = 32
    image_size: int = 16
    base_lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_bias: float = 0.0
    lasso_strength: float = 2e-3
    compactor_momentum: float = 0.0
    compactor_lr_mult: float = 300.0
    weight_decay_on_compactor: bool = False
    flops_target: float | None = None
    layer_prune_fraction: float | None = 0.375
    before_mask_iters: int = 20
    mask_interval: int = 4
    begin_granularity: int = 32
    num_at_least: int = 1
    zero_masked: bool = True
    masked_norm_bound: float = 1e-4
    teacher_channels: int = 32
    seed: int = 0
    threads: int = 1


@dataclass
class ResRepTrainResult:
    model: ResRepResNet
    masked: dict[str, list[int]]            # rows whose mask is 0 at the end, per compactor layer
    zeroed: dict[str, list[int]]            # rows set to exactly 0 (the masked ones; none if not zero_masked)
    max_masked_norm: float                  # largest norm among the masked rows after training, before zeroing
    min_kept_norm: float                    # smallest norm among the unmasked rows
    flops_ratio: float                      # deploy MACs after / before pruning the masked rows (at image_size)
    losses: list[float] = field(default_factory=list)
    accuracy: float = 0.0                   # on the last 20 batches
    seconds: float = 0.0


class _Teacher:
    """Seeded synthetic data: ``x ~ N(0, 1)``; label = argmax of a fixed random linear map of the
    centred, globally pooled ``relu(conv3x3(x))`` of a fixed random conv."""

    def __init__(self, cfg: ResRepConfig, num_classes: int):
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.shape = (cfg.batch_size, 3, cfg.image_size, cfg.image_size)
        self.conv = torch.randn(cfg.teacher_channels, 3, 3, 3, generator=self.gen) / math.sqrt(27)
        self.fc = torch.randn(cfg.teacher_channels, num_classes, generator=self.gen)
        self.mean = self._features(torch.randn((512,) + self.shape[1:], generator=self.gen)).mean(0)

    def _features(self, x):
        return F.relu(F.conv2d(x, self.conv, padding=1)).mean(dim=(2, 3))

    def batch(self):
        x = torch.randn(self.shape, generator=self.gen)
        y = ((self._features(x) - self.mean) @ self.fc).argmax(1)
        return x, y


def _optimizer(cfg: ResRepConfig, model: nn.Module) -> torch.optim.SGD:
    """The official ``sgd_optimizer``: per-parameter lr / weight decay / momentum."""
    groups = []
    for key, value in model.named_parameters():
        wd = cfg.weight_decay_bias if ("bias" in key or "bn" in key) else cfg.weight_decay
        if "compactor" in key and not cfg.weight_decay_on_compactor:
            wd = 0.0
        lr = 2 * cfg.base_lr if "bias" in key else cfg.base_lr
        if "compactor" in key:  # keyword_to_lr_mult={"compactor": ...}
            lr *= cfg.compactor_lr_mult
        mom = cfg.compactor_momentum if "compactor" in key else cfg.momentum
        groups.append({"params": [value], "lr": lr, "weight_decay": wd, "momentum": mom, "base": lr})
    return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum)


@torch.no_grad()
def _layer_floors(cfg: ResRepConfig, layers: dict[str, CompactorConvBN]) -> dict[str, int]:
    """The fewest channels each layer may keep: ``num_at_least``, and ``n - round(layer_prune_fraction * n)``
    when a per-layer target is set."""
    floors = {}
    for n, l in layers.items():
        width = l.compactor.num_features
        floor = cfg.num_at_least
        if cfg.layer_prune_fraction is not None:
            floor = max(floor, width - round(cfg.layer_prune_fraction * width))
        floors[n] = min(floor, width)
    return floors


def _mask_target_reached(cfg: ResRepConfig, layers: dict[str, CompactorConvBN], cost: dict[str, int],
                         base: int) -> bool:
    """Whether the current masks reach the target: deploy MACs at most ``flops_target`` of the original
    (if set), or every layer at its floor (:func:`_layer_floors`)."""
    floors = _layer_floors(cfg, layers)
    cur = {n: l.compactor.get_num_mask_ones() for n, l in layers.items()}
    if all(cur[n] <= floors[n] for n in layers):
        return True
    if cfg.flops_target is None:
        return False
    flops = lambda deps: base + sum(cost[n] * d for n, d in deps.items())  # noqa: E731
    return flops(cur) <= cfg.flops_target * flops({n: l.compactor.num_features for n, l in layers.items()})


@torch.no_grad()
def _update_masks(cfg: ResRepConfig, layers: dict[str, CompactorConvBN], cost: dict[str, int],
                  base: int) -> None:
    """``resrep_mask_model``: walk all rows of all compactors by increasing norm (globally) and deactivate
    each unless its layer is at its floor (:func:`_layer_floors`), until the deploy MACs are at most
    ``flops_target`` of the original (if set) or every layer is at its floor; at most ``begin_granularity``
    rows more than now masked while the target is not reached yet."""
    origin = {n: l.compactor.num_features for n, l in layers.items()}
    floors = _layer_floors(cfg, layers)
    flops = lambda deps: base + sum(cost[n] * d for n, d in deps.items())  # noqa: E731
    target = -math.inf if cfg.flops_target is None else cfg.flops_target * flops(origin)
    cur = {n: l.compactor.get_num_mask_ones() for n, l in layers.items()}
    reached = _mask_target_reached(cfg, layers, cost, base)
    deactivated = sum(origin[n] - cur[n] for n in layers)
    limit = math.inf if reached else deactivated + cfg.begin_granularity
    metric = sorted((float(v), li, n, c) for li, (n, l) in enumerate(layers.items())
                    for c, v in enumerate(l.compactor.row_norms()))
    attempt, chosen = dict(origin), {n: [] for n in layers}
    n_chosen = 0
    for _, _, n, c in metric:
        if flops(attempt) <= target or n_chosen >= limit:
            break
        if attempt[n] <= floors[n]:
            continue
        attempt[n] -= 1
        chosen[n].append(c)
        n_chosen += 1
    for n, l in layers.items():
        l.compactor.set_mask(chosen[n])


@torch.no_grad()
def resrep_compactor_grad_(model: nn.Module, lasso_strength: float) -> None:
    """ResRep's update of the compactor gradients (``train_one_step``), in place, after ``backward()``:
    ``grad_i = mask_i * grad_i + lasso_strength * Q_i / ||Q_i||`` for every row ``i`` of every compactor."""
    for layer in compactor_layers(model).values():
        q, mask = layer.compactor.pwc.weight, layer.compactor.mask
        if q.grad is None:
            q.grad = torch.zeros_like(q)
        q.grad.mul_(mask.reshape(-1, 1, 1, 1))
        norm = q.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-30)
        q.grad.add_(q / norm, alpha=lasso_strength)


@torch.no_grad()
def zero_masked_rows(model: nn.Module) -> dict[str, list[int]]:
    """Set every compactor row whose mask is 0 to exactly 0 (the rows ResRep selected for removal);
    returns them per layer."""
    zeroed = {}
    for name, layer in compactor_layers(model).items():
        rows = torch.nonzero(layer.compactor.mask == 0).flatten()
        layer.compactor.pwc.weight[rows] = 0.0
        zeroed[name] = [int(r) for r in rows]
    return zeroed


def train_resrep(cfg: ResRepConfig = ResRepConfig(), model: ResRepResNet | None = None, *,
                 strict: bool = True) -> ResRepTrainResult:
    """Train ``model`` (default: a fresh :func:`resrep_resnet` seeded with ``cfg.seed``) with the ResRep
    update for ``cfg.steps`` steps on synthetic data, then (``cfg.zero_masked``) set the masked rows to
    exactly 0. ``strict``: raise unless the masks reached their target and every masked row ended with
    norm ``<= cfg.masked_norm_bound``. Deterministic given ``cfg`` and the CPU's kernels (not the
    caller's thread count); the global RNG and thread count are left as they were."""
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.threads)
        try:
            if model is None:
                model = resrep_resnet()
            result = _train(cfg, model, strict)
        finally:
            torch.set_num_threads(threads)
    result.seconds = time.perf_counter() - t0
    return result


def _train(cfg: ResRepConfig, model: ResRepResNet, strict: bool) -> ResRepTrainResult:
    layers = compactor_layers(model)
    shape = (1, 3, cfg.image_size, cfg.image_size)
    cost, total = _deploy_mac_costs(model, shape)
    base = total - sum(cost[n] * l.compactor.num_features for n, l in layers.items())
    teacher = _Teacher(cfg, model.linear.out_features)
    opt = _optimizer(cfg, model)
    losses, correct = [], []
    model.train()
    for it in range(cfg.steps):
        if it > cfg.before_mask_iters and (it - cfg.before_mask_iters) % cfg.mask_interval == 0:
            _update_masks(cfg, layers, cost, base)
        for g in opt.param_groups:  # cosine to 0 (cosine_minimum=0), per iteration
            g["lr"] = g["base"] * 0.5 * (1.0 + math.cos(math.pi * it / cfg.steps))
        x, y = teacher.batch()
        pred = model(x)
        loss = F.cross_entropy(pred, y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        resrep_compactor_grad_(model, cfg.lasso_strength)
        opt.step()
        losses.append(float(loss.detach()))
        correct.append(float((pred.argmax(1) == y).float().mean()))
    opt.zero_grad(set_to_none=True)
    model.eval()
    masked = {n: [int(i) for i in torch.nonzero(l.compactor.mask == 0).flatten()] for n, l in layers.items()}
    norms = {n: l.compactor.row_norms() for n, l in layers.items()}
    low = [float(norms[n][r]) for n in layers for r in masked[n]]
    kept = [float(v) for n in layers for r, v in enumerate(norms[n]) if r not in masked[n]]
    if strict:
        _check(cfg, layers, cost, base, low)
    zeroed = zero_masked_rows(model) if cfg.zero_masked else {n: [] for n in layers}
    after = base + sum(cost[n] * (l.compactor.num_features - len(masked[n])) for n, l in layers.items())
    return ResRepTrainResult(model=model, masked=masked, zeroed=zeroed, max_masked_norm=max(low, default=0.0),
                             min_kept_norm=min(kept), flops_ratio=after / total, losses=losses,
                             accuracy=sum(correct[-20:]) / len(correct[-20:]))


def _check(cfg: ResRepConfig, layers: dict[str, CompactorConvBN], cost: dict[str, int], base: int,
           low: list[float]) -> None:
    """The trainer's acceptance (``strict``): the masks reached their target and every masked row was
    driven to norm ``<= masked_norm_bound``. Raises a one-line RuntimeError otherwise."""
    if not _mask_target_reached(cfg, layers, cost, base):
        raise RuntimeError(f"ResRep trainer: the masks ({len(low)} rows) did not reach their target after "
                           f"{cfg.steps} steps; train longer or raise begin_granularity")
    above = [v for v in low if v > cfg.masked_norm_bound]
    if above:
        raise RuntimeError(f"ResRep trainer: {len(above)} of {len(low)} masked rows have norm > "
                           f"{cfg.masked_norm_bound:g} (largest {max(above):.3g}) after {cfg.steps} steps; "
                           f"train longer or change lasso_strength")


# ---------------------------------------------------------------------------------------------- registry
def resrep_trained_result(cfg: ResRepConfig = ResRepConfig()) -> ResRepTrainResult:
    """:func:`train_resrep` with ``cfg``, run once per process and cached in memory (do not modify
    ``.model``: :func:`resrep_resnet_trained` copies it)."""
    return _trained_result(cfg)  # one cache key per config, however it was passed


@functools.lru_cache(maxsize=4)
def _trained_result(cfg: ResRepConfig) -> ResRepTrainResult:
    return train_resrep(cfg)


def resrep_resnet_trained(cfg: ResRepConfig = ResRepConfig()) -> ResRepResNet:
    """The registry's training form: :func:`resrep_resnet` after :func:`train_resrep` with ``cfg`` (seed
    0 by default), trained once per process (:func:`resrep_trained_result`); every call returns a fresh
    copy."""
    model = resrep_resnet()
    model.load_state_dict(resrep_trained_result(cfg).model.state_dict())
    return model.eval()
