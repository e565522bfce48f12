"""Tests of the ResRep reference family (models/resrep.py): compactor layers, the deploy conversion (BN fold,
compactor merge, pruning of output channels and of the successors' input channels), the trainer's update and
mask selection, and the registered trained network ``resrep_resnet``. torch (and onnx for one export) only.

The tests on the trained network are marked slow (the trainer runs ~15 s; the registry caches its result per
process; the any-CPU test trains 4 more times, 2 of them in subprocesses under other ATEN_CPU_CAPABILITY
kernel paths); the unit tests on untrained networks are not.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import resrep
from models.common import randomize_bn_, seed_everything
from models.export import MODELS, build, export_onnx
from models.resrep import (CONVERSION_EPSILON, CompactorConvBN, CompactorLayer, ResRepConfig, ResRepResNet,
                           compactor_layers, count_params_macs, resrep_compactor_grad_, resrep_convert,
                           resrep_kept_channels, resrep_model_convert, resrep_resnet, resrep_trained_result,
                           train_resrep, zero_masked_rows)

slow = pytest.mark.slow  # the trained network: `pytest -m 'not slow'` skips these

ROOT = Path(__file__).resolve().parent.parent

SHAPE = (1, 3, 32, 32)
LAYERS = ["stage1.0.conv1", "stage1.1.conv1", "stage2.0.conv1", "stage2.1.conv1", "stage3.0.conv1",
          "stage3.1.conv1", "head"]
WIDTHS = [16, 16, 32, 32, 64, 64, 128]
#: parameters / MACs (32x32 input) per channel of each compactor layer in the deploy form: its conv's output
#: channel (weights + bias) plus its successor's input channel (conv2's kernel column, the Linear's column)
PARAMS_PER_CHANNEL = [16 * 9 + 1 + 16 * 9, 16 * 9 + 1 + 16 * 9, 16 * 9 + 1 + 32 * 9, 32 * 9 + 1 + 32 * 9,
                      32 * 9 + 1 + 64 * 9, 64 * 9 + 1 + 64 * 9, 64 + 1 + 10]
MACS_PER_CHANNEL = [(16 + 16) * 9 * 32 * 32, (16 + 16) * 9 * 32 * 32, (16 + 32) * 9 * 16 * 16,
                    (32 + 32) * 9 * 16 * 16, (32 + 64) * 9 * 8 * 8, (64 + 64) * 9 * 8 * 8, 64 * 8 * 8 + 10]
TRAIN_COUNTS = (211_482, 29_803_776)      # training form: BNs and compactors included
UNPRUNED_COUNTS = (183_658, 27_182_336)   # deploy, every channel kept (threshold None)
#: the registry's trainer prunes 3/8 of every layer: 6/16, 12/32, 24/64, 48/128 rows (132 of 352)
ZEROED = [6, 6, 12, 12, 24, 24, 48]
PRUNED_COUNTS = (116_038, 17_253_152)     # deploy of the trained network (exactly-zero rows removed)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one intra-op thread is as fast, and immune to OpenMP spin-waits on a busy machine
    (a forward at batch 3 took 0.9 s on 2 threads here, 6 ms on one); restored afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _x(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _assert_relative(y, ref, rtol):
    y, ref = y.detach().double(), ref.detach().double()
    assert y.shape == ref.shape
    err, scale = float((y - ref).abs().max()), float(ref.abs().max())
    assert scale > 0 and err <= rtol * scale, f"max abs err {err:.3e} > {rtol:g} * {scale:.3e}"


def _net(seed=0) -> ResRepResNet:
    """An untrained network with random BNs and random (non-identity) compactors."""
    seed_everything(seed)
    model = resrep_resnet()
    randomize_bn_(model, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in compactor_layers(model).values():
            q = layer.compactor.pwc.weight
            q.copy_(torch.eye(q.shape[0]).reshape(q.shape) + 0.3 * torch.randn(q.shape, generator=g))
    return model.eval()


def _rows(model, name):
    return model.get_submodule(name).compactor.pwc.weight


def _pruned_counts(removed):
    return (UNPRUNED_COUNTS[0] - sum(r * c for r, c in zip(removed, PARAMS_PER_CHANNEL)),
            UNPRUNED_COUNTS[1] - sum(r * c for r, c in zip(removed, MACS_PER_CHANNEL)))


# ---------------------------------------------------------------------------------------------- layers
def test_compactor_starts_as_identity():
    layer = CompactorLayer(6)
    assert layer.pwc.bias is None and layer.pwc.kernel_size == (1, 1)
    assert torch.equal(layer.pwc.weight[:, :, 0, 0], torch.eye(6))
    assert torch.equal(layer.mask, torch.ones(6)) and layer.get_num_mask_ones() == 6
    x = _x(2, 6, 5, 5)
    assert torch.equal(layer(x), x)
    layer.set_mask([1, 4])
    assert layer.mask.tolist() == [1, 0, 1, 1, 0, 1] and layer.get_num_mask_ones() == 4
    assert torch.allclose(layer.row_norms(), torch.ones(6, dtype=torch.float64))


def test_architecture():
    model = resrep_resnet()
    layers = compactor_layers(model)
    assert list(layers) == LAYERS
    assert [m.compactor.num_features for m in layers.values()] == WIDTHS  # 352 rows
    for m in layers.values():  # ResRepBuilder.Conv2dBN + ReLU on a target layer
        assert [n for n, _ in m.named_children()] == ["conv", "bn", "compactor", "relu"]
        assert m.conv.bias is None and not m.deploy
    assert model.successors == {n: n.replace("conv1", "conv2") for n in LAYERS[:-1]} | {"head": "linear"}
    # projections where the shape changes; no compactor on the residual stream
    assert [b.shortcut is not None for s in (model.stage1, model.stage2, model.stage3) for b in s] == \
        [False, False, True, False, True, False]
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 23
    assert count_params_macs(model, SHAPE) == TRAIN_COUNTS
    assert model(_x(2, 3, 32, 32)).shape == (2, 10)


def test_untrained_network_is_the_network_without_compactors():
    model = resrep_resnet().eval()
    randomize_bn_(model, 0)
    x = _x(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        for layer in compactor_layers(model).values():
            layer.compactor = nn.Identity()
        assert torch.equal(model(x), ref)


# ---------------------------------------------------------------------------------------------- conversion
def test_merge_without_pruning_is_exact():
    model = _net()
    deploy = resrep_convert(model, threshold=None)
    assert not any(isinstance(m, (nn.BatchNorm2d, CompactorLayer)) for m in deploy.modules())
    assert all(m.bias is not None for m in deploy.modules() if isinstance(m, nn.Conv2d))
    assert sum(isinstance(m, nn.Conv2d) for m in deploy.modules()) == 16
    assert count_params_macs(deploy, SHAPE) == UNPRUNED_COUNTS
    assert resrep_model_convert(model).get_submodule("head").conv.out_channels == 128  # no zero row: all kept
    x = _x(3, 3, 32, 32)
    with torch.no_grad():
        _assert_relative(deploy(x), model(x), 1e-5)
    assert isinstance(model.stem.bn, nn.BatchNorm2d)  # the training form is left alone


def test_merge_in_float64():
    model = _net().double()
    deploy = resrep_convert(model, threshold=None)
    assert deploy.head.conv.weight.dtype == torch.float64
    x = _x(2, 3, 16, 16).double()
    with torch.no_grad():
        _assert_relative(deploy(x), model(x), 1e-12)


def test_exactly_zero_rows_are_removed_with_the_successors_inputs():
    model = _net(1)
    zero = {"stage1.0.conv1": [0, 5, 15], "stage2.1.conv1": list(range(0, 32, 2)),
            "stage3.0.conv1": list(range(64)),  # every row: one channel stays
            "head": [3, 64, 127]}
    with torch.no_grad():
        for name, rows in zero.items():
            _rows(model, name)[rows] = 0.0
    kept = resrep_kept_channels(model, 0.0)
    assert kept["stage1.0.conv1"] == [i for i in range(16) if i not in (0, 5, 15)]
    assert kept["stage2.1.conv1"] == list(range(1, 32, 2))
    assert kept["stage3.0.conv1"] == [0]  # all norms 0: the first largest is kept
    assert kept["head"] == [i for i in range(128) if i not in (3, 64, 127)]
    assert kept["stage1.1.conv1"] == list(range(16))
    assert resrep_kept_channels(model, None)["head"] == list(range(128))

    deploy = resrep_model_convert(model)
    removed = [16 - 13, 0, 0, 16, 63, 0, 3]
    assert [deploy.get_submodule(n).conv.out_channels for n in LAYERS] == \
        [w - r for w, r in zip(WIDTHS, removed)]
    assert deploy.stage1[0].conv2.conv.in_channels == 13 and deploy.stage3[0].conv2.conv.in_channels == 1
    assert deploy.linear.in_features == 125
    head_w = model.linear.weight.detach()
    assert torch.equal(deploy.linear.weight, head_w[:, kept["head"]])
    assert count_params_macs(deploy, SHAPE) == _pruned_counts(removed)
    x = _x(3, 3, 32, 32)
    with torch.no_grad():
        _assert_relative(deploy(x), model(x), 1e-5)


def test_threshold_prunes_small_rows_and_changes_the_output():
    model = _net(2)
    t = 2.0 ** -10
    with torch.no_grad():
        _rows(model, "stage2.0.conv1")[[1, 2]] *= 1e-4
        q = _rows(model, "head")
        q[7] = 0.0
        q[7, 5] = t  # norm exactly at the threshold: removed (<=)
    kept = resrep_kept_channels(model, t)
    assert [i for i in range(32) if i not in kept["stage2.0.conv1"]] == [1, 2]
    assert [i for i in range(128) if i not in kept["head"]] == [7]
    assert resrep_kept_channels(model, 0.0)["head"] == list(range(128))
    deploy = resrep_convert(model, t)
    assert deploy.stage2[0].conv1.conv.out_channels == 30 and deploy.linear.in_features == 127
    x = _x(3, 3, 32, 32)
    with torch.no_grad():
        ref, y = model(x), deploy(x)
    err = float((y - ref).abs().max() / ref.abs().max())
    assert 0 < err < 1e-2  # not exact: small but nonzero rows were dropped


def test_convert_needs_the_reference_network():
    with pytest.raises(TypeError):
        resrep_convert(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_count_params_macs():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    params, macs = count_params_macs(m, (1, 3, 10, 10))
    assert params == (3 * 8 * 9 + 8) + (2 * 8 * 9 + 8) + (8 * 5 + 5)
    assert macs == 25 * 8 * 27 + 25 * 8 * 18 + 40


# ---------------------------------------------------------------------------------------------- trainer parts
def test_compactor_gradient_masks_the_task_gradient_and_adds_the_lasso():
    model = _net(3).train()
    layer = model.stage2[1].conv1.compactor
    layer.set_mask([0, 3, 31])
    F.cross_entropy(model(_x(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    task = layer.pwc.weight.grad.clone()
    q = layer.pwc.weight.detach()
    resrep_compactor_grad_(model, 0.5)
    lasso = 0.5 * q / q.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    grad = layer.pwc.weight.grad
    torch.testing.assert_close(grad[[0, 3, 31]], lasso[[0, 3, 31]], rtol=1e-6, atol=0)
    keep = [i for i in range(32) if i not in (0, 3, 31)]
    torch.testing.assert_close(grad[keep], task[keep] + lasso[keep], rtol=1e-5, atol=1e-8)
    assert task[[0, 3, 31]].abs().max() > 0  # there was a task gradient to mask


def _masks(model):
    return {n: [int(i) for i in torch.nonzero(l.compactor.mask == 0).flatten()]
            for n, l in compactor_layers(model).items()}


def _graded_norms(model):
    """Row norms 1, 2, 3, ... in model order: the global order of the rows is known."""
    k = 0
    with torch.no_grad():
        for layer in compactor_layers(model).values():
            q = layer.compactor.pwc.weight
            for i in range(q.shape[0]):
                k += 1
                q[i] = q[i] / q[i].norm() * k


def test_mask_selection_is_progressive_global_and_stops_at_the_flops_target():
    model = _net(4)
    _graded_norms(model)  # the smallest rows are stage1.0's, then stage1.1's, ...
    cfg = ResRepConfig(flops_target=0.5, layer_prune_fraction=None, begin_granularity=10)
    cost, total = resrep._deploy_mac_costs(model, (1, 3, 16, 16))
    assert total == (UNPRUNED_COUNTS[1] - 1280) // 4 + 1280  # at 16x16: the convs 1/4, the Linear the same
    assert [cost[n] for n in LAYERS[:-1]] == [c // 4 for c in MACS_PER_CHANNEL[:-1]]
    base = total - sum(cost[n] * w for n, w in zip(LAYERS, WIDTHS))
    counts = []
    for _ in range(9):
        resrep._update_masks(cfg, compactor_layers(model), cost, base)
        counts.append(sum(map(len, _masks(model).values())))
    assert counts == [10, 20, 30, 40, 50, 60, 70, 70, 70]  # 10 more rows per update, then the target
    # globally smallest first, at least one channel per layer: 15 + 15 + 31 + 9 rows
    assert _masks(model) == {n: list(range(z)) for n, z in zip(LAYERS, [15, 15, 31, 9, 0, 0, 0])}
    deps = {n: w - z for n, w, z in zip(LAYERS, WIDTHS, [15, 15, 31, 9, 0, 0, 0])}
    flops = base + sum(cost[n] * d for n, d in deps.items())
    assert flops <= 0.5 * total < flops + cost["stage2.1.conv1"]


def test_mask_selection_per_layer_fraction():
    model = _net(5)
    _graded_norms(model)
    cfg = ResRepConfig()  # the registry's: 3/8 of every layer, 32 more rows per update
    assert cfg.flops_target is None and cfg.layer_prune_fraction == 0.375
    cost, total = resrep._deploy_mac_costs(model, (1, 3, 16, 16))
    base = total - sum(cost[n] * w for n, w in zip(LAYERS, WIDTHS))
    counts = []
    for _ in range(6):
        resrep._update_masks(cfg, compactor_layers(model), cost, base)
        counts.append(sum(map(len, _masks(model).values())))
    assert counts == [32, 64, 96, 128, 132, 132]
    assert _masks(model) == {n: list(range(z)) for n, z in zip(LAYERS, ZEROED)}


def test_zero_masked_rows_zeroes_the_masked_rows_only():
    model = _net(6)
    layers = compactor_layers(model)
    layers["stage1.1.conv1"].compactor.set_mask(range(15))
    layers["head"].compactor.set_mask([2, 9])
    with torch.no_grad():
        _rows(model, "stage2.0.conv1")[4] *= 1e-7  # small but not masked: left alone
    before = {n: _rows(model, n).detach().clone() for n in LAYERS}
    zeroed = zero_masked_rows(model)
    assert zeroed == {n: {"stage1.1.conv1": list(range(15)), "head": [2, 9]}.get(n, []) for n in LAYERS}
    for n in LAYERS:
        after, rows = _rows(model, n).detach(), zeroed[n]
        others = [i for i in range(after.shape[0]) if i not in rows]
        assert not after[rows].any() and torch.equal(after[others], before[n][others]), n
    assert float(compactor_layers(model)["stage2.0.conv1"].compactor.row_norms()[4]) > 0


def test_short_training_is_deterministic():
    """Two runs of the trainer (10 steps) are bit for bit the same; the global RNG and thread count are
    restored."""
    cfg = ResRepConfig(steps=10, before_mask_iters=4, mask_interval=2)
    before = torch.get_num_threads(), torch.random.get_rng_state()
    a = train_resrep(cfg, strict=False)
    assert (torch.get_num_threads(), torch.random.get_rng_state().tolist()) == (before[0], before[1].tolist())
    b = train_resrep(cfg, strict=False)
    assert a.losses == b.losses and len(a.losses) == 10
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.masked == b.masked and sum(map(len, a.masked.values())) == 2 * 32  # updates at steps 6 and 8


def test_strict_training_raises_one_line_errors():
    """``strict``: the masks must reach their target and every masked row must end under the bound."""
    short = ResRepConfig(steps=10, before_mask_iters=4, mask_interval=2)  # 2 updates of 32 rows: 64 < 132
    with pytest.raises(RuntimeError, match=r"the masks \(64 rows\) did not reach their target") as e1:
        train_resrep(short)
    quick = dataclasses.replace(short, before_mask_iters=1, mask_interval=1)  # 132 rows by step 6, not small
    with pytest.raises(RuntimeError, match=r"(\d+) of 132 masked rows have norm > 0.0001 \(largest ") as e2:
        train_resrep(quick)
    assert "\n" not in str(e1.value) + str(e2.value) and len(str(e2.value)) < 200
    result = train_resrep(dataclasses.replace(quick, masked_norm_bound=10.0))  # a bound they meet
    assert result.zeroed == result.masked and sum(map(len, result.zeroed.values())) == 132
    assert result.max_masked_norm > 1e-4


# ---------------------------------------------------------------------------------------------- trained
@pytest.fixture(scope="module")
def trained():
    """The registry's training run (once per process; the registry's build copies its model)."""
    return resrep_trained_result()


@pytest.fixture(scope="module")
def built():
    return build("resrep_resnet", seed=0)


@slow
def test_trained_rows(trained):
    layers = compactor_layers(trained.model)
    zero = [int((l.compactor.row_norms() == 0).sum()) for l in layers.values()]
    assert zero == ZEROED and sum(zero) == 132  # 132 / 352 = 37.5 % of the rows, 3/8 of every layer
    for name, layer in layers.items():  # exactly the rows selected for removal
        norms = layer.compactor.row_norms()
        assert torch.nonzero(norms == 0).flatten().tolist() == trained.masked[name] == trained.zeroed[name]
        assert torch.equal(layer.compactor.mask == 0, norms == 0)
    # before the zeroing, the masked rows oscillated around 0 with the last steps' amplitude, lr * lambda
    # (5.1e-6 at step 238): every machine, while which rows and the unmasked norms are the machine's
    assert 0 < trained.max_masked_norm < CONVERSION_EPSILON and trained.min_kept_norm > 0
    # deploy MACs at 16x16 after / before pruning 3/8 of every layer: fixed by the counts
    assert trained.flops_ratio == pytest.approx(0.634718, abs=1e-6)
    assert np.mean(trained.losses[-20:]) < np.mean(trained.losses[:20]) - 0.2  # it learned something
    assert 0 < trained.seconds


@slow
def test_registry_build_is_the_trained_network(trained, built):
    train, deploy, shape = built
    assert shape == SHAPE and not train.training and not deploy.training
    spec = MODELS["resrep_resnet"]
    assert spec.convert is resrep_model_convert and spec.block_type is CompactorConvBN
    mine = trained.model.state_dict()
    for k, v in train.state_dict().items():
        if ".bn." not in k:  # BNs are randomized by the registry's build
            assert torch.equal(v, mine[k]), k
    assert all(p.grad is None for p in trained.model.parameters())


@slow
def test_builds_are_deterministic(built):
    train = built[0]
    again, _, _ = build("resrep_resnet", seed=0)
    other, _, _ = build("resrep_resnet", seed=1)
    for k, v in train.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
        if ".bn." not in k:  # another seed: other BNs only
            assert torch.equal(v, other.state_dict()[k]), k
    assert not torch.equal(train.stem.bn.running_var, other.stem.bn.running_var)


@slow
def test_trained_deploy_matches(built):
    train, deploy, _ = built
    for shape in ((4, 3, 32, 32), (2, 3, 16, 16), (1, 3, 40, 24)):
        x = _x(*shape, seed=sum(shape))
        with torch.no_grad():
            ref = train(x)
            _assert_relative(deploy(x), ref, 1e-5)
        assert float(ref.std()) > 1e-3


@slow
def test_trained_kept_channels_and_counts(trained, built):
    train, deploy, _ = built
    kept = resrep_kept_channels(train)
    assert [len(kept[n]) for n in LAYERS] == [w - z for w, z in zip(WIDTHS, ZEROED)]  # 10 10 20 20 40 40 80
    for n, layer in compactor_layers(train).items():  # the unmasked rows, all of them nonzero
        assert kept[n] == [i for i in range(layer.compactor.num_features) if i not in trained.masked[n]]
        assert kept[n] == torch.nonzero(layer.compactor.row_norms() > 0).flatten().tolist()
    assert [deploy.get_submodule(n).conv.out_channels for n in LAYERS] == [len(kept[n]) for n in LAYERS]
    assert deploy.linear.in_features == 80

    assert count_params_macs(train, SHAPE) == TRAIN_COUNTS
    assert count_params_macs(resrep_convert(train, None), SHAPE) == UNPRUNED_COUNTS
    assert count_params_macs(deploy, SHAPE) == PRUNED_COUNTS == _pruned_counts(ZEROED)
    # unpruned deploy / pruned deploy: 1.58x the parameters, 1.58x the MACs
    assert UNPRUNED_COUNTS[0] / PRUNED_COUNTS[0] == pytest.approx(1.5828, abs=1e-4)
    assert UNPRUNED_COUNTS[1] / PRUNED_COUNTS[1] == pytest.approx(1.5755, abs=1e-4)


@slow
def test_trained_export(built, tmp_path):
    import onnx

    train, deploy, shape = built
    ops = {}
    for tag, model in (("train", train), ("deploy", deploy)):
        m = onnx.load(export_onnx(model, tmp_path / f"{tag}.onnx", shape))
        ops[tag] = [n.op_type for n in m.graph.node]
        gemm = [n for n in m.graph.node if n.op_type == "Gemm"]
        inits = {i.name: i for i in m.graph.initializer}
        assert len(gemm) == 1 and list(inits[gemm[0].input[1]].dims) == [10, 128 if tag == "train" else 80]
    assert ops["train"].count("Conv") == 23 and ops["deploy"].count("Conv") == 16
    assert "BatchNormalization" not in ops["deploy"]


@slow
def test_official_global_flops_target():
    """The official selection (global, by MACs): the same guarantees; the per-layer split is the
    machine's (float32 rounding in the conv kernels decides close calls)."""
    cfg = dataclasses.replace(ResRepConfig(), flops_target=0.7, layer_prune_fraction=None)
    result = train_resrep(cfg)
    # a row costs at most 0.27 % of the MACs (stage3.1 at 16x16): by construction the ratio ends within 0.27 %
    # of the target and at least 111 rows go; which layers lose them is the machine's
    assert 0.69 < result.flops_ratio <= 0.7
    assert result.zeroed == result.masked and sum(map(len, result.zeroed.values())) > 100
    assert 0 < result.max_masked_norm < CONVERSION_EPSILON
    model = result.model
    randomize_bn_(model, 0)
    deploy = resrep_model_convert(model)
    x = _x(2, 3, 32, 32)
    with torch.no_grad():
        _assert_relative(deploy(x), model(x), 1e-5)
    removed = [len(result.zeroed[n]) for n in LAYERS]
    assert count_params_macs(deploy, SHAPE) == _pruned_counts(removed)


# ---------------------------------------------------------------------------------------------- any CPU
#: what a training run (default config) gives, summarized as JSON-able values; run in this process and in
#: subprocesses (``summary(train_resrep())``), so it is source text
_SUMMARY = '''
import torch
from models.common import randomize_bn_
from models.resrep import compactor_layers, count_params_macs, resrep_model_convert


def summary(result):
    model = result.model
    layers = compactor_layers(model)
    randomize_bn_(model, 0)  # as the registry does
    deploy = resrep_model_convert(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref, y = model(x).double(), deploy(x).double()
    return dict(
        capability=torch.backends.cpu.get_cpu_capability(),
        zeroed_is_masked=result.zeroed == result.masked,
        zeroed=[len(result.zeroed[n]) for n in layers],
        zero_rows=[int((l.compactor.row_norms() == 0).sum()) for l in layers.values()],
        counts=[list(count_params_macs(model)), list(count_params_macs(deploy))],
        deploy_rel_err=float((y - ref).abs().max() / ref.abs().max()),
        max_masked_norm=result.max_masked_norm,
        losses=[sum(result.losses[:20]) / 20, sum(result.losses[-20:]) / 20])
'''


def _assert_reference(s):
    """What every CPU gives by construction (the rows, weights and losses are the machine's)."""
    assert s["zeroed_is_masked"] and s["zeroed"] == s["zero_rows"] == ZEROED, s
    assert s["counts"] == [list(TRAIN_COUNTS), list(PRUNED_COUNTS)], s
    assert s["deploy_rel_err"] <= 1e-5, s
    assert 0 < s["max_masked_norm"] < CONVERSION_EPSILON, s  # the trainer's own bound is 1e-4
    assert s["losses"][1] < s["losses"][0] - 0.2, s


@slow
def test_trainer_gives_the_same_reference_on_any_cpu():
    """The ResRep trainer gives the same reference with 1 and 2 caller threads (bit for bit: it pins its
    own) and under ``ATEN_CPU_CAPABILITY=default`` and ``avx2`` (different masked rows and weights, float32
    being chaotic over 240 steps; the same counts, sizes, exact deploy and bound on the masked rows).
    The capabilities run in subprocesses (the variable is read when torch loads), two at a time,
    alongside the in-process runs."""
    code = _SUMMARY + "from models.resrep import train_resrep\nimport json\nprint(json.dumps(summary(train_resrep())))"
    procs = {cap: subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env={**os.environ, "ATEN_CPU_CAPABILITY": cap})
             for cap in ("default", "avx2")}
    try:
        ns = {}
        exec(_SUMMARY, ns)
        saved, runs = torch.get_num_threads(), {}
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                runs[threads] = train_resrep()
        finally:
            torch.set_num_threads(saved)
        a, b = runs[1], runs[2]
        assert a.losses == b.losses and a.masked == b.masked
        for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            assert torch.equal(va, vb), k
        _assert_reference(ns["summary"](a))
        outs = {cap: p.communicate(timeout=600) for cap, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
    native = torch.backends.cpu.get_cpu_capability()
    for cap, (out, err) in outs.items():
        assert procs[cap].returncode == 0, err[-3000:]
        s = json.loads(out.strip().splitlines()[-1])
        _assert_reference(s)
        if cap == "default" or native in ("AVX2", "AVX512"):  # avx2 is only honoured where the CPU has it
            assert s["capability"] == cap.upper(), s
