"""Tests of the DBB reference networks (models/dbb.py): layers, the PyTorch deploy conversion of
single blocks and of the registered networks, and one ONNX export smoke test per exporter mode."""
from __future__ import annotations

import os

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import MODELS, build, export_onnx
from models.common import randomize_bn_, seed_everything
from models.dbb import (BNAndPadLayer, DiverseBranchBlock, IdentityBasedConv1x1,
                        dbb_model_convert, randomize_idconv_, transV_avg)
from torch_ref import assert_relative as _assert_close

pytestmark = pytest.mark.slow  # whole networks: `pytest -m 'not slow'` skips them

torch.set_num_threads(2)


def _convs(m: nn.Module) -> int:
    return sum(isinstance(c, nn.Conv2d) for c in m.modules())


def _random_block(*args, seed=0, **kwargs) -> DiverseBranchBlock:
    seed_everything(seed)
    blk = DiverseBranchBlock(*args, **kwargs)
    randomize_idconv_(blk)
    randomize_bn_(blk, seed)
    return blk.eval()


# ---------------------------------------------------------------------------- layers
def test_bn_and_pad_writes_bn_of_zero_into_the_border():
    layer = BNAndPadLayer(pad_pixels=2, num_features=5)
    randomize_bn_(layer, 4)
    layer.eval()
    x = torch.randn(2, 5, 6, 7)
    with torch.no_grad():
        y = layer(x)
        bn0 = layer.bn(torch.zeros(1, 5, 1, 1)).reshape(1, 5, 1, 1)
    assert y.shape == (2, 5, 10, 11)
    _assert_close(y[:, :, 2:-2, 2:-2], layer.bn(x).detach(), 1e-6)
    border = torch.ones(10, 11, dtype=torch.bool)
    border[2:-2, 2:-2] = False
    expected = bn0.expand(2, 5, 10, 11)
    assert torch.allclose(y[:, :, border], expected[:, :, border], atol=1e-6)
    assert bn0.abs().min() > 0  # random stats: the fill is not zero
    assert layer.weight is layer.bn.weight and layer.eps == layer.bn.eps


def test_identity_based_conv1x1_starts_as_identity():
    conv = IdentityBasedConv1x1(8, groups=2)
    assert conv.weight.abs().max() == 0 and "id_tensor" not in conv.state_dict()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        assert torch.equal(conv(x), x)
        k = conv.get_actual_kernel()
    assert k.shape == (8, 4, 1, 1)
    assert [int(k[i, :, 0, 0].argmax()) for i in range(8)] == [i % 4 for i in range(8)]
    randomize_idconv_(conv)
    assert conv.weight.abs().max() > 0


def test_transv_avg_is_avgpool():
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    k = transV_avg(6, 3, 6)
    _assert_close(F.conv2d(x, k, stride=2, padding=1, groups=6),
                  F.avg_pool2d(x, 3, 2, 1, count_include_pad=True), 1e-12)


# ---------------------------------------------------------------------------- blocks
BLOCK_CASES = [  # (cin, cout, k, stride, groups, internal)
    (8, 8, 3, 1, 1, None), (8, 8, 3, 2, 1, None), (8, 16, 3, 1, 2, None), (8, 8, 3, 2, 2, None),
    (8, 8, 5, 1, 1, None), (8, 12, 5, 2, 2, None), (8, 8, 3, 1, 8, None), (8, 8, 3, 2, 8, None),
    (8, 8, 5, 1, 8, None), (8, 8, 5, 2, 8, None), (8, 16, 3, 1, 1, 12), (8, 8, 3, 2, 8, 8),
    (4, 8, 3, 1, 4, None),
]


@pytest.mark.parametrize("cin,cout,k,stride,groups,internal", BLOCK_CASES)
def test_dbb_switch_to_deploy(cin, cout, k, stride, groups, internal):
    blk = _random_block(cin, cout, k, stride, k // 2, groups=groups,
                        internal_channels_1x1_3x3=internal, nonlinear=nn.ReLU())
    depthwise = groups >= cout
    assert hasattr(blk, "dbb_1x1") == (not depthwise)
    assert hasattr(blk.dbb_avg, "conv") == (not depthwise)
    avg = blk.dbb_avg.avg
    assert avg.padding == (0 if not depthwise else k // 2) and avg.count_include_pad
    internal_eff = internal if internal is not None else (2 * cin if depthwise else cin)
    first = "idconv1" if internal_eff == cin else "conv1"
    assert hasattr(blk.dbb_1x1_kxk, first) and blk.dbb_1x1_kxk.bn1.bn.num_features == internal_eff
    x = torch.randn(2, cin, 13, 12)
    with torch.no_grad():
        ref = blk(x)
        # every branch contributes (none is trivially zero)
        for name in ("dbb_origin", "dbb_avg", "dbb_1x1_kxk") + (() if depthwise else ("dbb_1x1",)):
            assert getattr(blk, name)(x).abs().max() > 1e-2, name
        blk.switch_to_deploy()
        y = blk(x)
    assert [n for n, _ in blk.named_children()] == ["nonlinear", "dbb_reparam"]
    conv = blk.dbb_reparam
    assert conv.kernel_size == (k, k) and conv.padding == (k // 2, k // 2)
    assert conv.stride == (stride, stride) and conv.groups == groups and conv.bias is not None
    _assert_close(y, ref)


def test_border_fill_matters():
    """Sanity check that the block test is sensitive: zero borders instead of BN(0) break parity."""
    blk = _random_block(8, 8, 3, 1, 1)
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        ref = blk(x)
        merged = dbb_model_convert(blk)
        blk.dbb_1x1_kxk.bn1.pad_pixels = 0
        blk.dbb_avg.bn.pad_pixels = 0
        kxk = blk.dbb_1x1_kxk
        zero_pad = kxk.bn2(kxk.conv2(F.pad(kxk.bn1(kxk.idconv1(x)), [1] * 4)))
        wrong = (blk.dbb_origin(x) + blk.dbb_1x1(x) + zero_pad
                 + blk.dbb_avg.avgbn(F.avg_pool2d(blk.dbb_avg.bn(blk.dbb_avg.conv(x)), 3, 1, 1)))
    _assert_close(merged(x), ref)
    assert (wrong - ref).abs().max() > 1e-2 * ref.abs().max()


def test_deploy_constructor_and_double():
    blk = DiverseBranchBlock(4, 4, 3, 1, 1, groups=4, deploy=True)
    assert [n for n, _ in blk.named_children()] == ["nonlinear", "dbb_reparam"]
    blk = _random_block(6, 6, 3, 2, 1, groups=2).double()
    x = torch.randn(1, 6, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = blk(x)
        blk.switch_to_deploy()
        assert blk.dbb_reparam.weight.dtype == torch.float64
        _assert_close(blk(x), ref, 1e-10)


# ---------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", ["dbb_tiny", "dbb_resnet18"])
def test_registered_network_deploy_conversion(name):
    spec = MODELS[name]
    assert spec.block_type is DiverseBranchBlock and tuple(spec.input_shape) == (1, 3, 64, 64)
    train, deploy, shape = build(name, seed=0)
    assert not train.training and not deploy.training
    x = torch.randn((2,) + tuple(shape[1:]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, y = train(x), deploy(x)
    _assert_close(y, ref)
    assert float(ref.std()) > 1e-3

    tblocks = [m for m in train.modules() if isinstance(m, DiverseBranchBlock)]
    dblocks = [m for m in deploy.modules() if isinstance(m, DiverseBranchBlock)]
    assert len(tblocks) == len(dblocks) == {"dbb_tiny": 5, "dbb_resnet18": 17}[name]
    n_dw = sum(b.groups == b.out_channels for b in tblocks)
    assert n_dw == {"dbb_tiny": 2, "dbb_resnet18": 4}[name]
    if name == "dbb_tiny":
        assert sorted({b.groups for b in tblocks}) == [1, 2, 16, 32]
        assert sorted({b.kernel_size for b in tblocks}) == [3, 5]
    for t in tblocks:  # training form untouched by the (copying) conversion; idconv randomized
        assert not hasattr(t, "dbb_reparam")
        assert _convs(t) == (3 if t.groups == t.out_channels else 5)
        if hasattr(t.dbb_1x1_kxk, "idconv1"):
            assert t.dbb_1x1_kxk.idconv1.weight.abs().max() > 0
    for d in dblocks:  # exactly one conv per DBB, no BN
        assert _convs(d) == 1 and hasattr(d, "dbb_reparam")
        assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    # no non-DBB conv was touched
    assert _convs(deploy) - len(dblocks) == _convs(train) - sum(_convs(t) for t in tblocks)


# ---------------------------------------------------------------------------- export
EXPORT_MODES = {
    "legacy": dict(dynamo=False, constant_folding=True),
    "dynamo": dict(dynamo=True, constant_folding=True),
    "legacy_nofold": dict(dynamo=False, constant_folding=False),
}


@pytest.mark.parametrize("mode", sorted(EXPORT_MODES))
def test_export_smoke(mode, tmp_path):
    train, _, shape = build("dbb_tiny", seed=0)
    path = export_onnx(train, tmp_path / f"{mode}.onnx", shape, **EXPORT_MODES[mode])
    assert os.listdir(tmp_path) == [f"{mode}.onnx"]
    m = onnx.load(path)
    onnx.checker.check_model(m)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.randn((3,) + tuple(shape[1:]), generator=torch.Generator().manual_seed(2))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = train(x)
    _assert_close(y, ref)
    ops = [n.op_type for n in m.graph.node]
    n_convs = sum(_convs(b) for b in train.modules() if isinstance(b, DiverseBranchBlock))
    assert ops.count("Conv") == n_convs
    assert ops.count("AveragePool") == 5 and ops.count("Pad") > 0
    if mode == "legacy_nofold":  # every BN survives
        assert ops.count("BatchNormalization") == sum(isinstance(b, nn.BatchNorm2d)
                                                      for b in train.modules())
