"""Tests of the RepLKNet reference network (models/replknet.py): the PyTorch deploy conversion of
single ReparamLargeKernelConvs / RepLKBlocks and of the small RepLKNet, and a legacy-exporter
ONNX round trip."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.common import count_convs, fuse_conv_bn, randomize_bn_, seed_everything
from models.export import export_onnx
from models.replknet import (ConvFFN, DropPath, RepLKBlock, ReparamLargeKernelConv,
                             replknet_31b, replknet_model_convert, replknet_tiny)
from torch_ref import assert_relative as _assert_close, count_modules as _n

pytestmark = pytest.mark.slow  # whole networks: `pytest -m 'not slow'` skips them

torch.set_num_threads(2)


def _seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    return randomize_bn_(module, seed).eval()


@pytest.fixture(scope="module")
def tiny():
    seed_everything(0)
    model = _seeded(replknet_tiny())
    return model, replknet_model_convert(model).eval()


# ---------------------------------------------------------------------------- blocks
LK_CASES = [  # (channels, K, k, stride, groups, input hw)
    (8, 31, 5, 1, 8, (16, 16)),   # stage-1 kernel on a map smaller than the kernel
    (8, 31, 5, 1, 8, (40, 37)),   # ... and on a larger one
    (8, 27, 5, 1, 8, (4, 4)),     # a 64x64 input reaches stage 3 as 4x4
    (8, 13, 5, 1, 8, (2, 2)),     # ... and stage 4 as 2x2
    (8, 13, 5, 2, 8, (15, 14)),   # stride 2
    (8, 9, 3, 2, 2, (11, 12)),    # grouped, stride 2
    (6, 7, 3, 1, 1, (9, 9)),      # dense
    (8, 5, 5, 1, 8, (7, 7)),      # equal kernel sizes
    (8, 13, None, 1, 8, (9, 9)),  # no small kernel (RepLKNet-XL): conv-BN fold only
]


@pytest.mark.parametrize("c,K,k,stride,groups,hw", LK_CASES)
def test_large_kernel_merge(c, K, k, stride, groups, hw):
    seed_everything(0)
    blk = _seeded(ReparamLargeKernelConv(c, c, K, stride, groups, small_kernel=k))
    assert hasattr(blk, "small_conv") == (k is not None)
    assert blk.lkb_origin.conv.padding == (K // 2, K // 2)
    if k is not None:
        assert blk.small_conv.conv.padding == (k // 2, k // 2)
    assert count_convs(blk) == 1 + (k is not None)
    x = torch.randn(2, c, *hw)
    with torch.no_grad():
        ref = blk(x)
        assert blk.lkb_origin(x).abs().max() > 1e-2
        if k is not None:
            assert blk.small_conv(x).abs().max() > 1e-2
        blk.merge_kernel()
        y = blk(x)
    assert [n for n, _ in blk.named_children()] == ["lkb_reparam"]
    conv = blk.lkb_reparam
    assert conv.kernel_size == (K, K) and conv.padding == (K // 2, K // 2)
    assert conv.stride == (stride, stride) and conv.groups == groups and conv.bias is not None
    assert count_convs(blk) == 1 and _n(blk, nn.BatchNorm2d) == 0
    _assert_close(y, ref, 1e-5)
    blk.merge_kernel()  # idempotent
    assert torch.equal(blk(x), y)


def test_small_kernel_lands_at_the_centre():
    """The merge is sensitive to placement: the 5x5 kernel one column off-centre breaks parity."""
    seed_everything(1)
    blk = _seeded(ReparamLargeKernelConv(4, 4, 13, 1, 4, small_kernel=5), 1)
    x = torch.randn(1, 4, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        ref = blk.double()(x)
        k, b = blk.get_equivalent_kernel_bias()
        assert k.dtype == torch.float64 and k.shape == (4, 1, 13, 13)
        k_large, _ = fuse_conv_bn(blk.lkb_origin.conv.weight, blk.lkb_origin.bn)
        k_small, _ = fuse_conv_bn(blk.small_conv.conv.weight, blk.small_conv.bn)
        assert torch.allclose(k, k_large + F.pad(k_small, [4] * 4), rtol=0, atol=1e-12)
        good = F.conv2d(x, k, b, padding=6, groups=4)
        shifted = F.conv2d(x, k_large + F.pad(k_small, [3, 5, 4, 4]), b, padding=6, groups=4)
    _assert_close(good, ref, 1e-12)
    assert (shifted - ref).abs().max() > 1e-2 * ref.abs().max()


@pytest.mark.parametrize("hw", [(16, 16), (2, 2)])
def test_replk_block_and_convffn(hw):
    """The RepLKBlock (pre-BN, pw1-ReLU, large kernel, ReLU, pw2, residual) after the merge:
    only the large kernel changes; ``prelkb_bn`` and the pointwise conv-BNs stay, as in the
    official ``structural_reparam``."""
    seed_everything(2)
    blk = _seeded(RepLKBlock(16, 16, 27, 5, drop_path=0.2), 2)
    ffn = _seeded(ConvFFN(16, 64, 16, drop_path=0.2), 3)
    assert isinstance(blk.drop_path, DropPath) and isinstance(blk.prelkb_bn, nn.BatchNorm2d)
    assert [n for n, _ in blk.pw1.named_children()] == ["conv", "bn", "nonlinear"]
    assert count_convs(blk) == 4 and count_convs(ffn) == 2
    x = torch.randn(2, 16, *hw)
    with torch.no_grad():
        ref = blk(x)
        assert (ref - x).abs().max() > 1e-2  # the residual branch is not negligible
        merged = replknet_model_convert(blk)
        y = merged(x)
        out_ffn = ffn(x)
    assert count_convs(merged) == 3 and hasattr(merged.large_kernel, "lkb_reparam")
    assert isinstance(merged.prelkb_bn, nn.BatchNorm2d) and isinstance(merged.pw1.bn, nn.BatchNorm2d)
    assert merged.pw1.conv.bias is None and merged.pw2.conv.bias is None
    assert not hasattr(blk.large_kernel, "lkb_reparam")  # the conversion copies
    _assert_close(y, ref, 1e-5)
    assert isinstance(ffn.nonlinear, nn.GELU) and out_ffn.shape == x.shape


def test_small_kernel_merged_constructor_and_double():
    blk = ReparamLargeKernelConv(8, 8, 31, 1, 8, small_kernel=5, small_kernel_merged=True)
    assert [n for n, _ in blk.named_children()] == ["lkb_reparam"]
    assert blk.lkb_reparam.padding == (15, 15) and blk.lkb_reparam.bias is not None
    seed_everything(5)
    blk = _seeded(ReparamLargeKernelConv(6, 6, 13, 1, 6, small_kernel=5), 5).double()
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = blk(x)
        blk.merge_kernel()
        assert blk.lkb_reparam.weight.dtype == torch.float64
        _assert_close(blk(x), ref, 1e-12)


def test_drop_path_is_identity_in_eval():
    dp = DropPath(0.5)
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(dp.eval()(x), x)
    dp.train()
    torch.manual_seed(0)
    y = dp(x)
    kept = [bool((y[i] != 0).any()) for i in range(4)]
    for i in range(4):
        assert torch.allclose(y[i], 2 * x[i]) if kept[i] else torch.equal(y[i], torch.zeros_like(x[i]))


# ---------------------------------------------------------------------------- network
def test_tiny_structure(tiny):
    train, deploy = tiny
    tblocks = [m for m in train.modules() if isinstance(m, ReparamLargeKernelConv)]
    dblocks = [m for m in deploy.modules() if isinstance(m, ReparamLargeKernelConv)]
    assert len(tblocks) == len(dblocks) == 5
    assert [b.kernel_size for b in tblocks] == [31, 29, 27, 27, 13]
    assert [b.lkb_origin.conv.in_channels for b in tblocks] == [32, 64, 128, 128, 256]
    assert all(b.lkb_origin.conv.groups == b.lkb_origin.conv.in_channels for b in tblocks)
    assert all(b.small_kernel == 5 for b in tblocks)
    assert _n(train, RepLKBlock) == 5 and _n(train, ConvFFN) == 5
    assert len(train.stem) == 4 and len(train.transitions) == 3
    assert [s.conv.groups for s in train.stem] == [1, 32, 1, 32]
    assert [s.conv.stride for s in train.stem] == [(2, 2), (1, 1), (1, 1), (2, 2)]
    # Conv2d: stem 4 + transitions 6 + 5 x (RepLKBlock 4 + ConvFFN 2) = 40 -> 35
    assert count_convs(train) == 40 and count_convs(deploy) == 35
    assert all(count_convs(d) == 1 and hasattr(d, "lkb_reparam") for d in dblocks)
    # BatchNorm2d: every conv-BN (40), pre-BNs (5 + 5), final norm; the deploy form keeps all
    # but the 10 of the large-kernel branches
    assert _n(train, nn.BatchNorm2d) == 51 and _n(deploy, nn.BatchNorm2d) == 41
    assert _n(train, DropPath) == 8  # drop_path_rate 0.3 over 5 blocks: the first rate is 0
    assert sum(p.numel() for p in train.parameters()) == 1_686_344
    assert sum(p.numel() for p in deploy.parameters()) == 1_669_320
    assert not any(hasattr(b, "lkb_reparam") for b in tblocks)  # the conversion copies


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 224, 224)])
def test_tiny_train_vs_deploy(tiny, shape):
    train, deploy = tiny
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, y = train(x), deploy(x)
        feats = train.forward_features(x)
    assert ref.shape == (shape[0], 1000)
    assert feats.shape[-2:] == (shape[2] // 32, shape[3] // 32)
    assert float(ref.std()) > 1e-3
    _assert_close(y, ref, 1e-5)


def test_structural_reparam_in_place_matches_convert(tiny):
    train, deploy = tiny
    seed_everything(0)
    other = _seeded(replknet_tiny())
    other.structural_reparam()
    for (n1, p1), (n2, p2) in zip(other.state_dict().items(), deploy.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert len(other.state_dict()) == len(deploy.state_dict())


def test_31b_layout():
    with torch.device("meta"):  # layout and parameter count only: no allocation, no init
        m = replknet_31b()
    assert _n(m, ReparamLargeKernelConv) == 24 and count_convs(m) == 4 + 6 + 24 * 6
    assert sum(p.numel() for p in m.parameters()) == 79_864_168


# ---------------------------------------------------------------------------- export
def test_legacy_export_roundtrip(tiny, tmp_path):
    train, deploy = tiny
    x = torch.randn((2, 3, 64, 64), generator=torch.Generator().manual_seed(2))
    for tag, model, n_conv in (("train", train, 40), ("deploy", deploy, 35)):
        path = export_onnx(model, tmp_path / f"{tag}.onnx", (1, 3, 64, 64), dynamo=False)
        m = onnx.load(path)
        onnx.checker.check_model(m)
        ops = [n.op_type for n in m.graph.node]
        assert ops.count("Conv") == n_conv
        assert ops.count("BatchNormalization") == 11  # prelkb_bn, preffn_bn, norm survive
        assert ops.count("Erf") == 5 and ops.count("Relu") == 4 + 6 + 2 * 5
        # residuals 10, exact GELU (Div, Erf, Add, Mul, Mul) 5, large + small kernel 5 (train)
        assert ops.count("Add") == 10 + 5 + (5 if tag == "train" else 0)
        assert not {"Dropout", "RandomUniformLike", "Bernoulli"} & set(ops)
        kernels = sorted({tuple(a.ints) for n in m.graph.node if n.op_type == "Conv"
                          for a in n.attribute if a.name == "kernel_shape"})
        assert (31, 31) in kernels and (13, 13) in kernels
        assert ((5, 5) in kernels) == (tag == "train")
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            _assert_close(y, model(x))
