"""Tests of the reference networks (models/): PyTorch deploy conversions and the ONNX export helper."""
from __future__ import annotations

import os

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models import MODELS, ACBlock, RepVGGBlock, build, export_onnx, export_pair
from models.common import conv_bn, fuse_conv_bn, randomize_bn_, seed_everything
from torch_ref import assert_relative as _assert_close

pytestmark = pytest.mark.slow  # whole networks: `pytest -m 'not slow'` skips them

torch.set_num_threads(2)


# ---------------------------------------------------------------------------- common
def test_fuse_conv_bn_matches_conv_then_bn():
    seed_everything(1)
    cb = conv_bn(6, 8, 3, 1, 1, groups=2)
    randomize_bn_(cb, 1)
    cb.eval()
    k, b = fuse_conv_bn(cb.conv.weight, cb.bn)
    assert k.dtype == torch.float32 and k.shape == cb.conv.weight.shape
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        _assert_close(F.conv2d(x, k, b, padding=1, groups=2), cb(x), 1e-5)


def test_randomize_bn_is_deterministic_and_nontrivial():
    a, b = nn.BatchNorm2d(16), nn.BatchNorm2d(16)
    randomize_bn_(a, 3)
    randomize_bn_(b, 3)
    for name in ("weight", "bias", "running_mean", "running_var"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert torch.equal(ta, tb)
    assert not torch.allclose(a.running_var, torch.ones(16))
    assert not torch.allclose(a.running_mean, torch.zeros(16))
    assert (a.running_var >= 0.5).all() and (a.weight >= 0.5).all()


# ---------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("cin,cout,stride,groups", [(8, 8, 1, 1), (8, 8, 1, 4), (8, 16, 2, 2),
                                                     (8, 8, 2, 1), (4, 4, 1, 4)])
def test_repvgg_block_switch_to_deploy(cin, cout, stride, groups):
    seed_everything(0)
    blk = RepVGGBlock(cin, cout, 3, stride, 1, groups)
    assert (blk.rbr_identity is not None) == (cin == cout and stride == 1)
    randomize_bn_(blk, 0)
    blk.eval()
    x = torch.randn(2, cin, 11, 11)
    with torch.no_grad():
        ref = blk(x)
        blk.switch_to_deploy()
        y = blk(x)
    assert [n for n, _ in blk.named_children()] == ["nonlinearity", "rbr_reparam"]
    assert blk.rbr_reparam.groups == groups and blk.rbr_reparam.bias is not None
    _assert_close(y, ref, 1e-5)


@pytest.mark.parametrize("k,p,stride,groups", [(3, 1, 1, 1), (3, 1, 2, 2), (5, 2, 1, 1),
                                               (5, 2, 2, 4), (3, 0, 1, 1), (5, 1, 2, 2),
                                               (5, 0, 1, 1)])
def test_acblock_switch_to_deploy(k, p, stride, groups):
    seed_everything(0)
    blk = ACBlock(8, 8, k, stride, p, groups)
    assert blk.crop == max(0, k // 2 - p)
    randomize_bn_(blk, 0)
    blk.eval()
    x = torch.randn(2, 8, 13, 12)
    with torch.no_grad():
        ref = blk(x)
        blk.switch_to_deploy()
        y = blk(x)
    assert [n for n, _ in blk.named_children()] == ["fused_conv"]
    assert blk.fused_conv.kernel_size == (k, k) and blk.fused_conv.padding == (p, p)
    assert y.shape == ref.shape
    _assert_close(y, ref, 1e-5)


# ---------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", sorted(MODELS))
def test_deploy_conversion_matches(name):
    spec = MODELS[name]
    train, deploy, shape = build(name, seed=0)
    assert not train.training and not deploy.training
    x = torch.randn((2,) + tuple(shape[1:]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, y = train(x), deploy(x)
    _assert_close(y, ref)
    assert float(ref.std()) > 1e-3  # not a degenerate (collapsed) network

    if "modern" in spec.tags:  # their blocks convert in several ways: tests/test_models_<family>.py
        return
    tblocks = [m for m in train.modules() if isinstance(m, spec.block_type)]
    dblocks = [m for m in deploy.modules() if isinstance(m, spec.block_type)]
    assert len(tblocks) == len(dblocks) > 0
    for t in tblocks:  # training form untouched by the (copying) conversion
        assert not hasattr(t, "rbr_reparam") and not hasattr(t, "fused_conv")
        # RepVGG: 2-3 convs; ACB: 3; DBB: 5 (3 when depthwise; its identity-based 1x1 is a Conv2d)
        assert sum(isinstance(m, nn.Conv2d) for m in t.modules()) in (2, 3, 5)
    for d in dblocks:
        assert sum(isinstance(m, nn.Conv2d) for m in d.modules()) == 1
        assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    if spec.block_type is RepVGGBlock:  # RepVGG deploy has no BN and no other conv at all
        assert models.count_convs(deploy) == len(dblocks)
    if name == "repvgg_a0":
        assert len(dblocks) == 22
    if name == "repvgg_a0_g4":
        assert sorted({b.groups for b in dblocks}) == [1, 4]
        # layers 1..21 exist in A0, so g4_map hits layers 2, 4, ..., 20
        assert [i for i, b in enumerate(dblocks) if b.groups == 4] == list(range(2, 21, 2))
    if name == "acnet_resnet18":
        assert len(dblocks) == 17


def test_build_is_seeded():
    a, _, shape = build("repvgg_tiny", seed=5)
    b, _, _ = build("repvgg_tiny", seed=5)
    c, _, _ = build("repvgg_tiny", seed=6)
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.allclose(a(x), c(x))


# ---------------------------------------------------------------------------- export
EXPORT_MODES = {
    "legacy": dict(dynamo=False, constant_folding=True),
    "dynamo": dict(dynamo=True, constant_folding=True),
    "legacy_nofold": dict(dynamo=False, constant_folding=False),
}


def _check_onnx(path, model, input_shape, batch=3):
    m = onnx.load(path)
    onnx.checker.check_model(m)
    for vi in (m.graph.input[0], m.graph.output[0]):
        d0 = vi.type.tensor_type.shape.dim[0]
        assert d0.HasField("dim_param") and d0.dim_param, f"{vi.name}: batch dim not dynamic"
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.randn((batch,) + tuple(input_shape[1:]), generator=torch.Generator().manual_seed(2))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert y.shape == tuple(ref.shape)
    _assert_close(y, ref)
    return m


@pytest.mark.parametrize("mode", sorted(EXPORT_MODES))
def test_export_smoke(mode, tmp_path):
    train, deploy, shape = build("repvgg_tiny", seed=0)
    path = export_onnx(train, tmp_path / f"{mode}.onnx", shape, **EXPORT_MODES[mode])
    m = _check_onnx(path, train, shape)
    assert os.listdir(tmp_path) == [f"{mode}.onnx"]  # one self-contained file
    ops = [n.op_type for n in m.graph.node]
    n_branch_convs = sum(2 for b in train.modules() if isinstance(b, RepVGGBlock))
    assert ops.count("Conv") == n_branch_convs
    if mode == "legacy_nofold":  # every BN survives
        n_bn = sum(isinstance(b, nn.BatchNorm2d) for b in train.modules())
        assert ops.count("BatchNormalization") == n_bn


def test_export_pair_and_cli(tmp_path, capsys):
    tp, dp = export_pair("acnet_crop", tmp_path, dynamo=False, constant_folding=True)
    assert os.path.basename(tp) == "acnet_crop_train.onnx"
    assert os.path.basename(dp) == "acnet_crop_deploy.onnx"
    train, deploy, shape = build("acnet_crop", seed=0)
    mt = _check_onnx(tp, train, shape)
    md = _check_onnx(dp, deploy, shape)
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    assert count(mt, "Conv") == 12 and count(md, "Conv") == 4
    assert count(mt, "Slice") > 0 and count(md, "Slice") == 0

    from models.__main__ import main
    assert main(["list"]) == 0
    assert "repvgg_a0_g4" in capsys.readouterr().out
    out = tmp_path / "cli.onnx"
    assert main(["export", "acnet_k5", str(out), "--deploy", "--input-shape", "1,3,32,32"]) == 0
    _, deploy, _ = build("acnet_k5", seed=0)
    _check_onnx(str(out), deploy, (1, 3, 32, 32))
