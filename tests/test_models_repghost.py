"""Tests of the RepGhost reference network (models/repghost.py): ``RepGhostModule.switch_to_deploy``,
the official ``repghost_model_convert`` on bottlenecks and on RepGhostNet 0.5x, the ``deploy=True``
constructor, and legacy ONNX exports of a small RepGhostNet."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.common import count_convs, seed_everything
from models.export import export_onnx
from models.repghost import (RepGhostBottleneck, RepGhostModule, RepGhostNet, SqueezeExcite,
                             hard_sigmoid, repghost_0_5, repghost_model_convert)
from torch_ref import (assert_relative, count_modules as _n, param_count as _params,
                       randomized_eval as _random, seeded_input as _x)

pytestmark = pytest.mark.slow  # whole networks: `pytest -m 'not slow'` skips them

torch.set_num_threads(2)



@pytest.fixture(scope="module")
def net():
    seed_everything(0)
    train = _random(repghost_0_5(), 0)
    return train, repghost_model_convert(train).eval()


# ---------------------------------------------------------------------------- module
@pytest.mark.parametrize("inp,oup,relu,reparam_bn,reparam_identity", [
    (8, 16, True, True, False), (16, 8, False, True, False), (8, 8, True, False, True),
    (8, 12, False, True, True)])
def test_repghost_module_switch_to_deploy(inp, oup, relu, reparam_bn, reparam_identity):
    seed_everything(0)
    mod = _random(RepGhostModule(inp, oup, relu=relu, reparam_bn=reparam_bn,
                                 reparam_identity=reparam_identity))
    assert len(mod.fusion_bn) == reparam_bn + reparam_identity
    x = _x(2, inp, 10, 9)
    with torch.no_grad():
        ref = mod(x)
        x1 = mod.primary_conv(x)
        if reparam_bn:  # the BN(x1) branch contributes
            assert mod.fusion_bn[0](x1).abs().max() > 1e-2
        mod.switch_to_deploy()
        y = mod(x)
    assert_relative(y, ref, 1e-5)
    cheap = mod.cheap_operation
    assert isinstance(cheap, nn.Conv2d) and cheap.bias is not None and cheap.groups == oup
    assert cheap.kernel_size == (3, 3) and cheap.padding == (1, 1) and cheap.stride == (1, 1)
    assert mod.fusion_conv == [] and mod.fusion_bn == [] and mod.deploy
    assert count_convs(mod) == 2 and _n(mod, nn.BatchNorm2d) == 1  # primary conv-BN stays


def test_module_without_fusion_is_left_alone():
    mod = RepGhostModule(4, 8, reparam_bn=False)
    cheap = mod.cheap_operation
    mod.switch_to_deploy()
    assert mod.cheap_operation is cheap and not mod.deploy


def test_module_switch_to_deploy_in_float64():
    seed_everything(0)
    mod = _random(RepGhostModule(6, 10, relu=False)).double()
    x = _x(1, 6, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        ref = mod(x)
        mod.switch_to_deploy()
        assert mod.cheap_operation.weight.dtype == torch.float64
        assert_relative(mod(x), ref, 1e-12)


def test_se_uses_hard_sigmoid():
    seed_everything(0)
    se = SqueezeExcite(36, se_ratio=0.25).eval()
    assert se.conv_reduce.out_channels == 12  # _make_divisible(9, 4): 8 < 0.9 * 9, so 12
    x = _x(2, 36, 5, 5)
    with torch.no_grad():
        s = se.conv_expand(F.relu(se.conv_reduce(x.mean((2, 3), keepdim=True))))
        assert_relative(se(x), x * torch.clamp(s + 3, 0, 6) / 6, 1e-6)
    t = torch.linspace(-5, 5, 41)
    assert torch.allclose(hard_sigmoid(t), F.hardsigmoid(t))


# ---------------------------------------------------------------------------- bottleneck
@pytest.mark.parametrize("cin,mid,cout,k,stride,se", [(8, 16, 8, 3, 1, 0.0), (8, 24, 12, 3, 2, 0.0),
                                                      (12, 36, 20, 5, 2, 0.25), (20, 32, 20, 5, 1, 0.25)])
def test_bottleneck_deploy(cin, mid, cout, k, stride, se):
    seed_everything(0)
    blk = _random(RepGhostBottleneck(cin, mid, cout, k, stride, se_ratio=se))
    x = _x(2, cin, 12, 11)
    with torch.no_grad():
        ref = blk(x)
        dep = repghost_model_convert(blk).eval()
        y = dep(x)
    assert_relative(y, ref, 1e-5)
    n_convs = 4 + (stride > 1) + 2 * (se > 0) + 2 * (cin != cout or stride > 1)
    assert count_convs(blk) == count_convs(dep) == n_convs  # the merge removes BNs, not convs
    assert _n(blk, nn.BatchNorm2d) - _n(dep, nn.BatchNorm2d) == 4
    assert not blk.ghost1.deploy and dep.ghost1.deploy and dep.ghost2.deploy


# ---------------------------------------------------------------------------- RepGhostNet 0.5x
def test_net_structure(net):
    train, deploy = net
    bottlenecks = [m for m in train.modules() if isinstance(m, RepGhostBottleneck)]
    assert len(bottlenecks) == 16 and _n(train, RepGhostModule) == _n(deploy, RepGhostModule) == 32
    assert [b.stride for b in bottlenecks].count(2) == 4 and _n(train, SqueezeExcite) == 7
    assert sum(len(b.shortcut) > 0 for b in bottlenecks) == 5
    assert train.conv_stem.out_channels == 8 and train.blocks[-1][0].conv.out_channels == 480
    assert [b.ghost1.primary_conv[0].out_channels for b in bottlenecks][:4] == [4, 12, 20, 20]
    assert _params(train) == 2_313_968 and _params(deploy) == 2_306_528
    # per module: cheap BN and fusion BN (weight + bias each) go, a conv bias comes
    ghost_channels = sum(m.cheap_operation[1].num_features for m in train.modules()
                         if isinstance(m, RepGhostModule))
    assert _params(train) - _params(deploy) == 3 * ghost_channels == 7_440


def test_net_deploy_form(net):
    train, deploy = net
    assert count_convs(train) == count_convs(deploy) == 95
    assert _n(train, nn.BatchNorm2d) == 112 and _n(deploy, nn.BatchNorm2d) == 112 - 2 * 32
    for m in deploy.modules():
        if isinstance(m, RepGhostModule):
            assert isinstance(m.cheap_operation, nn.Conv2d) and m.fusion_bn == []
    for m in train.modules():  # training form untouched by the (copying) conversion
        if isinstance(m, RepGhostModule):
            assert isinstance(m.cheap_operation, nn.Sequential) and len(m.fusion_bn) == 1
    # the official deploy=True constructor holds exactly the converted weights
    fresh = repghost_0_5(deploy=True).eval()
    fresh.load_state_dict(deploy.state_dict(), strict=True)
    x = _x(1, 3, 64, 64)
    with torch.no_grad():
        assert_relative(fresh(x), deploy(x), 0)


@pytest.mark.parametrize("size,batch", [(64, 2), (224, 1)])
def test_net_train_vs_deploy(net, size, batch):
    train, deploy = net
    x = _x(batch, 3, size, size)
    with torch.no_grad():
        ref, y = train(x), deploy(x)
    assert ref.shape == (batch, 1000) and float(ref.std()) > 1e-2
    assert_relative(y, ref, 1e-5)


# ---------------------------------------------------------------------------- export
SMALL_CFGS = [[[3, 8, 16, 0, 1]], [[3, 24, 24, 0, 2]], [[5, 36, 40, 0.25, 2]], [[3, 60, 40, 0.25, 1]]]


@pytest.mark.parametrize("constant_folding", [True, False])
def test_small_net_legacy_export(constant_folding, tmp_path):
    seed_everything(0)
    train = _random(RepGhostNet(SMALL_CFGS, num_classes=10, width=0.5))
    deploy = repghost_model_convert(train).eval()
    x = _x(3, 3, 64, 64, seed=2)
    ops = {}
    for tag, model in (("train", train), ("deploy", deploy)):
        path = export_onnx(model, tmp_path / f"{tag}.onnx", (1, 3, 64, 64), constant_folding=constant_folding)
        m = onnx.load(path)
        onnx.checker.check_model(m)
        ops[tag] = [n.op_type for n in m.graph.node]
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"input": x.numpy()})
        with torch.no_grad():
            assert_relative(y, model(x), 1e-4)
    # 4 bottlenecks (2 with stride 2 and a conv shortcut, 2 with SE): 8 RepGhostModules
    assert ops["train"].count("Conv") == ops["deploy"].count("Conv") == count_convs(train) == 29
    n_bn = _n(train, nn.BatchNorm2d)
    assert n_bn == 32
    if constant_folding:  # only the fusion BNs (identity branches) survive the Conv-BN folding
        assert ops["train"].count("BatchNormalization") == 8
        assert ops["deploy"].count("BatchNormalization") == 0
    else:
        assert ops["train"].count("BatchNormalization") == n_bn
        assert ops["deploy"].count("BatchNormalization") == n_bn - 2 * 8
    assert ops["train"].count("Add") - ops["deploy"].count("Add") == 8
    assert ops["deploy"].count("Clip") == 2  # hard-sigmoid gates
