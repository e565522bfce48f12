"""Tests of the MobileOne reference network (models/mobileone.py): the PyTorch deploy conversion of
single MobileOneBlocks and of MobileOne-S0, and a legacy-exporter ONNX round trip."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.common import count_convs, randomize_bn_, seed_everything
from models.export import export_onnx
from models.mobileone import (PARAMS, MobileOne, MobileOneBlock, SEBlock, mobileone,
                              mobileone_model_convert, mobileone_s0, reparameterize_model)
from torch_ref import assert_relative as _assert_close

pytestmark = pytest.mark.slow  # whole networks: `pytest -m 'not slow'` skips them

torch.set_num_threads(2)


def _branch_convs(m: nn.Module) -> int:
    """Conv2d modules of a block outside its SE."""
    se = set(m.se.modules()) if isinstance(m, MobileOneBlock) else set()
    return sum(isinstance(c, nn.Conv2d) and c not in se for c in m.modules())


def _random_block(*args, seed=0, **kwargs) -> MobileOneBlock:
    seed_everything(seed)
    blk = MobileOneBlock(*args, **kwargs)
    randomize_bn_(blk, seed)
    return blk.eval()


@pytest.fixture(scope="module")
def s0():
    seed_everything(0)
    model = randomize_bn_(mobileone_s0(), 0).eval()
    return model, mobileone_model_convert(model).eval()


# ---------------------------------------------------------------------------- blocks
BLOCK_CASES = [  # (cin, cout, k, stride, groups, num_conv_branches, use_se)
    (8, 8, 3, 1, 8, 4, False),    # depthwise 3x3, identity (S0 stage body)
    (8, 8, 3, 2, 8, 4, False),    # depthwise 3x3 stride 2, no identity (S0 stage entry)
    (8, 8, 1, 1, 1, 4, False),    # pointwise, identity, no scale branch
    (8, 16, 1, 1, 1, 4, False),   # pointwise widening: conv branches only
    (3, 16, 3, 2, 1, 1, False),   # stage0: dense 3x3 stride 2, one conv branch + scale
    (8, 8, 3, 1, 1, 2, False),    # dense 3x3 with identity
    (8, 16, 3, 2, 1, 3, False),   # dense stride 2
    (8, 8, 3, 1, 2, 3, False),    # grouped with identity (identity at i mod (in/g))
    (12, 12, 5, 1, 12, 2, False), # depthwise 5x5 (scale padded by 2)
    (32, 32, 3, 1, 32, 4, True),  # S4-style SE-ReLU
]


@pytest.mark.parametrize("cin,cout,k,stride,groups,nb,use_se", BLOCK_CASES)
def test_mobileone_block_reparameterize(cin, cout, k, stride, groups, nb, use_se):
    blk = _random_block(cin, cout, k, stride, k // 2, groups=groups, num_conv_branches=nb,
                        use_se=use_se)
    has_skip, has_scale = cin == cout and stride == 1, k > 1
    assert (blk.rbr_skip is not None) == has_skip
    assert (blk.rbr_scale is not None) == has_scale
    assert len(blk.rbr_conv) == nb
    assert _branch_convs(blk) == nb + has_scale
    assert isinstance(blk.se, SEBlock if use_se else nn.Identity)
    x = torch.randn(2, cin, 11, 10)
    with torch.no_grad():
        ref = blk(x)
        branches = list(blk.rbr_conv) + [b for b in (blk.rbr_scale, blk.rbr_skip) if b is not None]
        for b in branches:  # every branch contributes
            assert b(x).abs().max() > 1e-2
        blk.reparameterize()
        y = blk(x)
    assert [n for n, _ in blk.named_children()] == ["se", "activation", "reparam_conv"]
    assert blk.inference_mode and not hasattr(blk, "rbr_skip") and not hasattr(blk, "id_tensor")
    conv = blk.reparam_conv
    assert conv.kernel_size == (k, k) and conv.padding == (k // 2, k // 2)
    assert conv.stride == (stride, stride) and conv.groups == groups and conv.bias is not None
    assert _branch_convs(blk) == 1 and count_convs(blk) == 1 + 2 * use_se
    assert not any(isinstance(m, nn.BatchNorm2d) for m in blk.modules())
    _assert_close(y, ref, 1e-5)
    blk.reparameterize()  # idempotent
    assert torch.equal(blk(x), y)


def test_identity_branch_matters():
    """The identity kernel is really exercised: dropping it breaks parity."""
    blk = _random_block(8, 8, 3, 1, 1, groups=2, num_conv_branches=2)
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        ref = blk(x)
        skip = blk.rbr_skip
        blk.rbr_skip = None
        no_skip = mobileone_model_convert(blk)(x)
        blk.rbr_skip = skip
        y = mobileone_model_convert(blk)(x)
    _assert_close(y, ref, 1e-5)
    assert (no_skip - ref).abs().max() > 1e-2 * ref.abs().max()


def test_inference_mode_constructor_and_double():
    blk = MobileOneBlock(6, 6, 3, 1, 1, groups=6, inference_mode=True, num_conv_branches=4)
    assert [n for n, _ in blk.named_children()] == ["se", "activation", "reparam_conv"]
    assert blk.reparam_conv.bias is not None
    blk = _random_block(6, 6, 3, 1, 1, groups=3, num_conv_branches=4).double()
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = blk(x)
        blk.reparameterize()
        assert blk.reparam_conv.weight.dtype == torch.float64
        _assert_close(blk(x), ref, 1e-12)


# ---------------------------------------------------------------------------- network
def test_s0_structure(s0):
    train, deploy = s0
    tblocks = [m for m in train.modules() if isinstance(m, MobileOneBlock)]
    dblocks = [m for m in deploy.modules() if isinstance(m, MobileOneBlock)]
    assert len(tblocks) == len(dblocks) == 43  # stage0 + 2 * (2 + 8 + 10 + 1)
    assert [len(s) for s in (train.stage1, train.stage2, train.stage3, train.stage4)] == [4, 16, 20, 2]
    assert [train.stage1[-1].out_channels, train.stage2[-1].out_channels,
            train.stage3[-1].out_channels, train.stage4[-1].out_channels] == [48, 128, 256, 1024]
    assert train.stage0.out_channels == 48 and train.stage0.num_conv_branches == 1
    assert all(b.num_conv_branches == 4 for b in tblocks[1:])
    assert not any(isinstance(m, SEBlock) for m in train.modules())
    dw, pw = tblocks[1::2], tblocks[2::2]
    assert all(b.groups == b.in_channels == b.out_channels and b.kernel_size == 3 for b in dw)
    assert all(b.groups == 1 and b.kernel_size == 1 and b.rbr_scale is None for b in pw)
    assert sum(b.rbr_skip is not None for b in tblocks) == 35
    assert [b.stride for b in dw].count(2) == 4
    # Conv2d counts: stage0 1 + 1, dw 4 + 1, pw 4; deploy one per block, no BN left
    assert [_branch_convs(b) for b in tblocks[:3]] == [2, 5, 4]
    assert count_convs(train) == 2 + 21 * 5 + 21 * 4 == 191
    assert count_convs(deploy) == 43
    assert all(_branch_convs(d) == 1 and d.inference_mode for d in dblocks)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in train.modules()) == 191 + 35
    # parameters: 5.29M training form, 2.08M deploy (the paper's 2.1M)
    assert sum(p.numel() for p in train.parameters()) == 5_293_272
    assert sum(p.numel() for p in deploy.parameters()) == 2_078_504
    # the (copying) conversion leaves the training form untouched
    assert not any(b.inference_mode or hasattr(b, "reparam_conv") for b in tblocks)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 224, 224)])
def test_s0_train_vs_deploy(s0, shape):
    train, deploy = s0
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, y = train(x), deploy(x)
    assert ref.shape == (shape[0], 1000)
    assert float(ref.std()) > 1e-3
    _assert_close(y, ref, 1e-5)


def test_official_names_and_variants():
    assert PARAMS["s0"] == {"width_multipliers": (0.75, 1.0, 1.0, 2.0), "num_conv_branches": 4}
    with torch.device("meta"):  # layout only: no allocation, no init
        s4 = mobileone(num_classes=10, variant="s4")
        d = mobileone(num_classes=1000, inference_mode=True, variant="s0")
    # SE on the dw and pw blocks of the last 5 stage-3 pairs and the stage-4 pair
    se_blocks = [n for n, b in s4.named_modules()
                 if isinstance(b, MobileOneBlock) and isinstance(b.se, SEBlock)]
    assert se_blocks == [f"stage3.{i}" for i in range(10, 20)] + ["stage4.0", "stage4.1"]
    assert all(b.num_conv_branches == 1 for b in s4.modules() if isinstance(b, MobileOneBlock))
    assert count_convs(d) == 43 and not any(isinstance(b, nn.BatchNorm2d) for b in d.modules())
    assert sum(p.numel() for p in d.parameters()) == 2_078_504
    seed_everything(3)
    small = randomize_bn_(MobileOne([1, 1, 1, 1], num_classes=10, width_multipliers=(0.25,) * 4,
                                    use_se=True, num_conv_branches=2), 3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _assert_close(reparameterize_model(small)(x), small(x), 1e-5)


# ---------------------------------------------------------------------------- export
def test_legacy_export_roundtrip(tmp_path):
    """A small MobileOne (same block kinds as S0: 13 blocks, k=4) through the legacy exporter.

    The full S0 is exported by the registry tests; its numbers are in the module docstring.
    """
    seed_everything(4)
    train = randomize_bn_(MobileOne([1, 2, 2, 1], num_classes=10, width_multipliers=(0.25,) * 4,
                                    num_conv_branches=4), 4).eval()
    deploy = mobileone_model_convert(train).eval()
    blocks = [b for b in train.modules() if isinstance(b, MobileOneBlock)]
    assert len(blocks) == 13 and count_convs(train) == 2 + 6 * 5 + 6 * 4 and count_convs(deploy) == 13
    n_skip = sum(b.rbr_skip is not None for b in blocks)
    # the official forward starts each sum with `scale_out + identity_out`, where a missing
    # branch is the int 0: the legacy exporter records `Add(x, 0)` for those blocks
    n_add0 = sum(b.rbr_scale is None or b.rbr_skip is None for b in blocks)
    assert (n_skip, n_add0) == (5, 11)
    x = torch.randn((3, 3, 64, 64), generator=torch.Generator().manual_seed(2))
    for tag, model in (("train", train), ("deploy", deploy)):
        path = export_onnx(model, tmp_path / f"{tag}.onnx", (1, 3, 64, 64), dynamo=False)
        m = onnx.load(path)
        onnx.checker.check_model(m)
        assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        ops = [n.op_type for n in m.graph.node]
        assert ops.count("Relu") == 13
        if tag == "train":  # conv-BNs folded by the exporter; the identity BNs stay
            assert ops.count("Conv") == count_convs(train)
            assert ops.count("BatchNormalization") == n_skip
            n_branches = sum(len(b.rbr_conv) + (b.rbr_scale is not None) + (b.rbr_skip is not None)
                             for b in blocks)
            assert ops.count("Add") == n_branches - len(blocks) + n_add0
        else:
            assert ops.count("Conv") == 13
            assert ops.count("BatchNormalization") == 0 and ops.count("Add") == 0
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            _assert_close(y, model(x))
