"""Tests of the FastViT reference network (models/fastvit.py): per-module deploy conversions,
the whole-network conversion of FastViT-T8, and one legacy ONNX export."""
from __future__ import annotations

import collections

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.common import count_convs, randomize_bn_, seed_everything
from models.export import export_onnx
from models.fastvit import (ConvFFN, MobileOneBlock, PatchEmbed, RepCPE, RepMixer,
                            ReparamLargeKernelConv, fastvit_model_convert, fastvit_t8,
                            randomize_layer_scale_)
from torch_ref import assert_relative as _assert_close

pytestmark = pytest.mark.slow  # whole networks: `pytest -m 'not slow'` skips them

torch.set_num_threads(2)


def _prepare(module: nn.Module, seed: int = 0) -> nn.Module:
    randomize_bn_(module, seed)
    randomize_layer_scale_(module)
    return module.eval()


def _switch(module: nn.Module, x: torch.Tensor):
    """(reference output, output after ``reparameterize()``)."""
    with torch.no_grad():
        ref = module(x)
        module.reparameterize()
        y = module(x)
    return ref, y


def _children(m: nn.Module) -> list[str]:
    return [n for n, _ in m.named_children()]


# ---------------------------------------------------------------------------- MobileOneBlock
# (cin, cout, k, stride, groups, use_se, num_conv_branches, use_scale_branch)
MOBILEONE_CASES = [
    (8, 8, 3, 1, 1, False, 1, True),     # dense, all three branch kinds
    (8, 8, 3, 1, 8, False, 2, True),     # depthwise, two conv branches
    (8, 16, 3, 2, 1, False, 1, True),    # dense, stride 2 (no skip)
    (8, 8, 3, 2, 8, False, 1, True),     # depthwise, stride 2 (stem block 2)
    (8, 16, 3, 1, 8, True, 1, True),     # groups = in, 2x out, SE (conv_exp)
    (16, 16, 3, 1, 1, True, 3, True),    # dense with SE and skip
    (8, 8, 1, 1, 1, False, 1, True),     # 1x1: no scale branch, conv + skip
    (8, 8, 3, 1, 8, False, 0, False),    # RepMixer.norm: BN skip only
]


@pytest.mark.parametrize("cin,cout,k,stride,groups,use_se,nb,scale", MOBILEONE_CASES)
def test_mobileone_block_reparameterize(cin, cout, k, stride, groups, use_se, nb, scale):
    seed_everything(0)
    blk = _prepare(MobileOneBlock(cin, cout, k, stride=stride, padding=k // 2, groups=groups,
                                  use_se=use_se, num_conv_branches=nb, use_scale_branch=scale))
    assert (blk.rbr_skip is not None) == (cin == cout and stride == 1)
    assert (blk.rbr_scale is not None) == (k > 1 and scale)
    assert len(blk.rbr_conv or []) == nb
    x = torch.randn(2, cin, 11, 10)
    ref, y = _switch(blk, x)
    assert _children(blk) == ["se", "activation", "reparam_conv"]
    c = blk.reparam_conv
    assert c.kernel_size == (k, k) and c.stride == (stride, stride) and c.groups == groups
    assert c.weight.dtype == torch.float32 and c.bias is not None
    assert sum(isinstance(m, nn.Conv2d) for m in blk.modules()) == (3 if use_se else 1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in blk.modules())
    _assert_close(y, ref, 1e-5)
    blk.reparameterize()  # idempotent
    with torch.no_grad():
        _assert_close(blk(x), ref, 1e-5)


def test_mobileone_block_double_precision_merge():
    seed_everything(1)
    blk = _prepare(MobileOneBlock(6, 6, 3, padding=1, groups=2, num_conv_branches=2)).double()
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    ref, y = _switch(blk, x)
    assert blk.reparam_conv.weight.dtype == torch.float64
    _assert_close(y, ref, 1e-12)


def test_mobileone_inference_mode_constructor():
    blk = MobileOneBlock(8, 16, 3, stride=2, padding=1, groups=8, inference_mode=True, use_se=True)
    assert _children(blk) == ["se", "activation", "reparam_conv"]
    assert blk.reparam_conv.groups == 8 and blk.reparam_conv.stride == (2, 2)


# ---------------------------------------------------------------------------- RepMixer
@pytest.mark.parametrize("dim,k,use_ls", [(8, 3, True), (12, 5, True), (8, 3, False)])
def test_repmixer_reparameterize(dim, k, use_ls):
    seed_everything(0)
    mix = _prepare(RepMixer(dim, kernel_size=k, use_layer_scale=use_ls))
    if use_ls:  # randomized, not the official 1e-5 (which makes the branch vanish)
        ls = mix.layer_scale.detach()
        assert float(ls.min()) >= 0.5 and float(ls.max()) <= 1.5
    assert mix.norm.rbr_conv is None and mix.norm.rbr_scale is None
    assert mix.norm.rbr_skip is not None and isinstance(mix.norm.activation, nn.Identity)
    assert len(mix.mixer.rbr_conv) == 1 and mix.mixer.rbr_scale is not None
    x = torch.randn(2, dim, 9, 11)
    ref, y = _switch(mix, x)
    assert _children(mix) == ["reparam_conv"] and not hasattr(mix, "layer_scale")
    c = mix.reparam_conv
    assert c.groups == dim and c.kernel_size == (k, k) and c.padding == (k // 2, k // 2)
    assert float((ref - x).abs().max()) > 0.1 * float(ref.abs().max())  # mixer branch is alive
    _assert_close(y, ref, 1e-5)


def test_repmixer_after_inner_blocks_converted():
    """Children converted first (e.g. a bottom-up walk) must give the same merge."""
    seed_everything(2)
    mix = _prepare(RepMixer(8, kernel_size=3))
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        ref = mix(x)
        mix.mixer.reparameterize()
        mix.norm.reparameterize()
        _assert_close(mix(x), ref, 1e-5)
        mix.reparameterize()
        _assert_close(mix(x), ref, 1e-5)
    assert _children(mix) == ["reparam_conv"]


# ---------------------------------------------------------------------------- RepCPE
@pytest.mark.parametrize("dim,k", [(8, 7), (6, 3)])
def test_repcpe_reparameterize(dim, k):
    seed_everything(0)
    cpe = RepCPE(dim, dim, spatial_shape=(k, k)).eval()
    x = torch.randn(2, dim, 5, 6)
    ref, y = _switch(cpe, x)
    assert _children(cpe) == ["reparam_conv"]
    assert cpe.reparam_conv.groups == dim and cpe.reparam_conv.kernel_size == (k, k)
    _assert_close(y, ref, 1e-5)


# ---------------------------------------------------------------------------- large kernel
@pytest.mark.parametrize("cin,cout,k,small,stride,use_act", [
    (8, 16, 7, 3, 2, False),   # PatchEmbed: groups = in, 2x out, stride 2
    (8, 8, 7, 3, 1, True),
    (8, 8, 7, 5, 2, False),
    (6, 12, 5, None, 2, False),
])
def test_reparam_large_kernel_conv(cin, cout, k, small, stride, use_act):
    seed_everything(0)
    lk = _prepare(ReparamLargeKernelConv(cin, cout, k, stride, groups=cin, small_kernel=small,
                                         use_act=use_act))
    x = torch.randn(2, cin, 13, 12)
    ref, y = _switch(lk, x)
    assert _children(lk) == ["activation", "lkb_reparam"]
    c = lk.lkb_reparam
    assert c.kernel_size == (k, k) and c.stride == (stride, stride) and c.groups == cin
    _assert_close(y, ref, 1e-5)


def test_large_kernel_conv_activation_flag():
    """The official forward drops the activation's result; ``use_act=False`` reproduces that."""
    seed_everything(0)
    lk = _prepare(ReparamLargeKernelConv(4, 8, 7, 2, groups=4, small_kernel=3))
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        raw = lk.lkb_origin(x) + lk.small_conv(x)
        _assert_close(lk(x), raw, 1e-7)
        lk.use_act = True
        _assert_close(lk(x), nn.functional.gelu(raw), 1e-7)
    pe = PatchEmbed(7, 2, 4, 8, lkc_use_act=True)
    assert pe.proj[0].use_act and isinstance(pe.proj[1], MobileOneBlock)


# ---------------------------------------------------------------------------- FastViT-T8
@pytest.fixture(scope="module")
def t8_pair():
    seed_everything(0)
    train = fastvit_t8()
    randomize_bn_(train, 0)
    train.eval()
    return train, fastvit_model_convert(train).eval()


def test_fastvit_t8_structure(t8_pair):
    train, deploy = t8_pair
    assert sum(p.numel() for p in train.parameters()) == 4_045_432
    assert sum(p.numel() for p in deploy.parameters()) == 4_015_240
    kinds = collections.Counter(type(m).__name__ for m in train.modules())
    assert kinds["RepMixerBlock"] == kinds["RepMixer"] == kinds["ConvFFN"] == 10
    assert kinds["PatchEmbed"] == kinds["ReparamLargeKernelConv"] == 3 and kinds["RepCPE"] == 1
    # stem 3 + PatchEmbed 3 + conv_exp 1 + RepMixer.mixer/.norm 20
    assert kinds["MobileOneBlock"] == 27 and kinds["SEBlock"] == 1
    assert [type(m).__name__ for m in train.network] == [
        "Sequential", "PatchEmbed", "Sequential", "PatchEmbed", "Sequential", "PatchEmbed",
        "RepCPE", "Sequential"]
    assert [len(s) for s in train.network if isinstance(s, nn.Sequential)] == [2, 2, 4, 2]
    ls = torch.cat([p.detach().reshape(-1) for n, p in train.named_parameters()
                    if n.endswith("layer_scale")])
    assert ls.numel() == 2 * (2 * 48 + 2 * 96 + 4 * 192 + 2 * 384)
    assert float(ls.min()) >= 0.5 and float(ls.max()) <= 1.5 and float(ls.std()) > 0.1


def test_fastvit_t8_deploy_equivalence(t8_pair):
    train, deploy = t8_pair
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, y = train(x), deploy(x)
    assert ref.shape == (2, 1000)
    assert float(ref.std()) > 1e-2  # not a collapsed network
    _assert_close(y, ref, 1e-5)


def test_fastvit_t8_deploy_form(t8_pair):
    train, deploy = t8_pair
    # conversion works on a copy: the training form is untouched
    assert not any(hasattr(m, "reparam_conv") or hasattr(m, "lkb_reparam") for m in train.modules())
    # Conv2d: stem 5, 10 x (RepMixer 2 + ConvFFN 3), 3 x (large kernel 2 + 1x1 block 1), RepCPE 1,
    # conv_exp 2 + SE 2  ->  stem 3, 10 x (1 + 3), 3 x (1 + 1), 1, 1 + 2
    assert count_convs(train) == 69 and count_convs(deploy) == 53
    bns = [n for n, m in deploy.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 10 and all(n.endswith("convffn.conv.bn") for n in bns)  # ConvFFN kept as is
    for m in deploy.modules():
        if isinstance(m, (MobileOneBlock, RepMixer, RepCPE)):
            assert hasattr(m, "reparam_conv")
        if isinstance(m, ReparamLargeKernelConv):
            assert _children(m) == ["activation", "lkb_reparam"]
        if isinstance(m, RepMixer):
            assert _children(m) == ["reparam_conv"] and m.reparam_conv.groups == m.dim
        if isinstance(m, ConvFFN):
            assert _children(m) == ["conv", "fc1", "act", "fc2", "drop"]
    assert sum(isinstance(m, MobileOneBlock) for m in deploy.modules()) == 7
    # the deploy form is the authors' inference_mode architecture
    ref = fastvit_t8(inference_mode=True)
    ref.load_state_dict(deploy.state_dict(), strict=True)


def test_fastvit_t8_224(t8_pair):
    train, deploy = t8_pair
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, y = train(x), deploy(x)
    _assert_close(y, ref, 1e-5)


def test_fastvit_t8_legacy_export(t8_pair, tmp_path):
    train, _ = t8_pair
    path = export_onnx(train, tmp_path / "fastvit_t8.onnx", (1, 3, 64, 64), dynamo=False)
    m = onnx.load(path)
    onnx.checker.check_model(m)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    assert ops["Conv"] == 69 and ops["Sub"] == 10  # conv-BN pairs folded by the exporter;
    assert ops["BatchNormalization"] == 24         # standalone BN skips survive (1 + 20 + 3)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = train(x)
    _assert_close(y, ref, 1e-4)
