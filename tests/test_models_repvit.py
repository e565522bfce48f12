"""Tests of the RepViT reference network (models/repvit.py): the fuse() of every layer, the
official ``replace_batchnorm`` deploy conversion of blocks and of RepViT-M0.9, and ONNX exports of
a small RepViT with the legacy exporter."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.common import count_convs, seed_everything
from models.export import export_onnx
from models.repvit import (M0_9_CFGS, BN_Linear, Classfier, Conv2d_BN, RepVGGDW, RepViT,
                           RepViTBlock, Residual, SqueezeExcite, repvit_m0_9,
                           repvit_model_convert)
from torch_ref import (assert_relative, count_modules as _n, param_count as _params,
                       randomized_eval as _random, seeded_input as _x)

pytestmark = pytest.mark.slow  # whole networks: `pytest -m 'not slow'` skips them

torch.set_num_threads(2)



@pytest.fixture(scope="module")
def m0_9():
    seed_everything(0)
    fresh = repvit_m0_9()
    zero_init = [m.m[2].bn.weight.abs().max().item() for m in fresh.modules() if isinstance(m, Residual)]
    train = _random(fresh, 0)
    return train, repvit_model_convert(train).eval(), zero_init


# ---------------------------------------------------------------------------- layers
@pytest.mark.parametrize("a,b,ks,stride,pad,groups", [(8, 16, 1, 1, 0, 1), (8, 8, 3, 2, 1, 8),
                                                      (3, 12, 3, 2, 1, 1), (8, 8, 3, 1, 1, 8)])
def test_conv2d_bn_fuse(a, b, ks, stride, pad, groups):
    seed_everything(0)
    cb = Conv2d_BN(a, b, ks, stride, pad, groups=groups, bn_weight_init=0)
    assert cb.bn.weight.abs().max() == 0  # official zero init ...
    _random(cb)
    assert cb.bn.weight.abs().min() >= 0.5  # ... randomized
    x = _x(2, a, 11, 10)
    conv = cb.fuse()
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None and conv.weight.dtype == torch.float32
    assert (conv.kernel_size, conv.stride, conv.padding, conv.groups) == ((ks, ks), (stride,) * 2, (pad,) * 2, groups)
    with torch.no_grad():
        assert_relative(conv(x), cb(x), 1e-5)


def test_repvggdw_fuse():
    seed_everything(0)
    blk = _random(RepVGGDW(16))
    x = _x(2, 16, 9, 12)
    with torch.no_grad():
        ref = blk(x)
        for branch in (blk.conv(x), blk.conv1(x)):  # every branch contributes
            assert branch.abs().max() > 1e-2
        conv = blk.fuse()
        y = conv(x)
        y2 = repvit_model_convert(blk)(x)
    assert isinstance(conv, nn.Conv2d) and conv.groups == 16 and conv.kernel_size == (3, 3)
    assert conv.padding == (1, 1) and conv.bias is not None
    assert_relative(y, ref, 1e-5)
    assert_relative(y2, ref, 1e-5)
    # the post-BN matters: dropping it changes the output
    with torch.no_grad():
        assert (blk.conv(x) + blk.conv1(x) + x - ref).abs().max() > 1e-2 * ref.abs().max()


def test_repvggdw_fuse_in_float64():
    seed_everything(0)
    blk = _random(RepVGGDW(8)).double()
    x = _x(1, 8, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        ref = blk(x)
        conv = blk.fuse()
        assert conv.weight.dtype == torch.float64
        assert_relative(conv(x), ref, 1e-12)


def test_residual_fuse():
    seed_everything(0)
    x = _x(2, 8, 9, 9)
    dw = _random(Residual(Conv2d_BN(8, 8, 3, 1, 1, groups=8)))
    conv = nn.Conv2d(8, 8, 3, 1, 1, groups=2).eval()
    res_conv = Residual(conv)
    with torch.no_grad():
        ref_dw, ref_conv = dw(x), res_conv(x)
        fused_dw, fused_conv = dw.fuse(), res_conv.fuse()
        assert_relative(fused_dw(x), ref_dw, 1e-5)
        assert_relative(fused_conv(x), ref_conv, 1e-5)
    assert isinstance(fused_dw, nn.Conv2d) and fused_conv is conv  # official: in place
    other = Residual(nn.Sequential(Conv2d_BN(8, 8), nn.GELU()))
    assert other.fuse() is other


@pytest.mark.parametrize("distillation", [False, True])
def test_bn_linear_and_classifier_fuse(distillation):
    seed_everything(0)
    head = _random(Classfier(24, 10, distillation=distillation))
    x = _x(3, 24)
    with torch.no_grad():
        ref = head(x)
        lin = head.fuse()
        y = lin(x)
    assert isinstance(lin, nn.Linear) and lin.weight.shape == (10, 24)
    assert_relative(y, ref, 1e-5)
    bl = _random(BN_Linear(24, 10, bias=False))
    with torch.no_grad():
        assert_relative(bl.fuse()(x), bl(x), 1e-5)


@pytest.mark.parametrize("channels,rd", [(48, 16), (96, 24), (192, 48), (384, 96)])
def test_squeeze_excite_is_timms(channels, rd):
    seed_everything(0)
    se = SqueezeExcite(channels, 0.25).eval()
    assert se.fc1.out_channels == rd and isinstance(se.bn, nn.Identity)
    x = _x(2, channels, 5, 6)
    with torch.no_grad():
        s = se.fc2(F.relu(se.fc1(x.mean((2, 3), keepdim=True))))
        assert_relative(se(x), x * torch.sigmoid(s), 1e-6)


# ---------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("inp,oup,stride,use_se", [(16, 16, 1, 1), (16, 16, 1, 0), (16, 32, 2, 0),
                                                   (16, 24, 2, 1)])
def test_repvit_block_deploy(inp, oup, stride, use_se):
    seed_everything(0)
    blk = _random(RepViTBlock(inp, 2 * inp, oup, 3, stride, use_se, 1))
    x = _x(2, inp, 12, 11)
    with torch.no_grad():
        ref = blk(x)
        assert blk.channel_mixer.m(blk.token_mixer(x)).abs().max() > 1e-2  # randomized zero-init BN
        dep = repvit_model_convert(blk).eval()
        y = dep(x)
    assert_relative(y, ref, 1e-5)
    assert _n(blk, RepVGGDW) == (stride == 1) and _n(dep, RepVGGDW) == 0
    assert _n(dep, nn.modules.batchnorm._BatchNorm) == 0
    n_se_convs = 2 * use_se
    assert count_convs(blk) == 4 + n_se_convs
    assert count_convs(dep) == (3 if stride == 1 else 4) + n_se_convs
    assert isinstance(dep.channel_mixer, Residual)  # official Residual.fuse returns itself here


# ---------------------------------------------------------------------------- RepViT-M0.9
def test_m0_9_structure(m0_9):
    train, deploy, zero_init = m0_9
    blocks = [m for m in train.modules() if isinstance(m, RepViTBlock)]
    assert len(blocks) == len(M0_9_CFGS) == 26
    assert [b.token_mixer[0].c.stride[0] for b in blocks if not b.identity] == [2, 2, 2]
    assert _n(train, RepVGGDW) == 23 and _n(train, SqueezeExcite) == 10
    assert zero_init == [0.0] * 26  # the official bn_weight_init=0 ...
    assert all(float(m.m[2].bn.weight.detach().min()) >= 0.5 for m in train.modules() if isinstance(m, Residual))
    assert not train.classifier.distillation and train.features[0][0].c.out_channels == 24
    assert [b.channel_mixer.m[0].c.out_channels for b in blocks][::6] == [96, 192, 384, 384, 768]
    assert _params(train) == 5_103_560 and _params(deploy) == 5_067_056
    assert _n(train, nn.BatchNorm2d) == 106 and _n(train, nn.BatchNorm1d) == 1


def test_m0_9_deploy_form(m0_9):
    train, deploy, _ = m0_9
    # conv counts: 23 RepVGGDW lose their 1x1 branch; every Conv2d_BN becomes one Conv2d
    assert count_convs(train) == 126 and count_convs(deploy) == 103
    assert count_convs(train) - count_convs(deploy) == _n(train, RepVGGDW)
    assert _n(deploy, nn.modules.batchnorm._BatchNorm) == 0 and _n(deploy, RepVGGDW) == 0
    assert _n(deploy, Conv2d_BN) == 0 and _n(deploy, nn.Identity) == _n(train, nn.Identity)
    assert isinstance(deploy.classifier, nn.Linear)
    assert _n(train, RepVGGDW) == 23 and _n(train, Conv2d_BN) == 2 + 23 * 3 + 3 * 4  # untouched
    dw = [m for m in deploy.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(dw) == 26 and all(m.kernel_size == (3, 3) and m.bias is not None for m in dw)


@pytest.mark.parametrize("size,batch", [(64, 2), (224, 1)])
def test_m0_9_train_vs_deploy(m0_9, size, batch):
    train, deploy, _ = m0_9
    x = _x(batch, 3, size, size)
    with torch.no_grad():
        ref, y = train(x), deploy(x)
    assert ref.shape == (batch, 1000) and float(ref.std()) > 1e-2
    assert_relative(y, ref, 1e-5)


# ---------------------------------------------------------------------------- export
@pytest.mark.parametrize("constant_folding", [True, False])
def test_small_repvit_legacy_export(constant_folding, tmp_path):
    seed_everything(0)
    train = _random(RepViT([list(M0_9_CFGS[i]) for i in (0, 1, 3, 4)], num_classes=10))
    deploy = repvit_model_convert(train).eval()
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
    # 3 RepVGGDW (dw 3x3 + dw 1x1 + post-BN each), 1 stride-2 block, 2 SE
    assert ops["train"].count("Conv") == count_convs(train) == 22
    assert ops["deploy"].count("Conv") == count_convs(deploy) == 19
    assert ops["deploy"].count("BatchNormalization") == 0
    n_bn = 3 + 1 if constant_folding else 18 + 1  # post-BNs and the BN1d survive the folding
    assert ops["train"].count("BatchNormalization") == n_bn
    assert ops["train"].count("Erf") == ops["deploy"].count("Erf") == 5  # exact GELU
