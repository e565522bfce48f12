"""Tests of the YOLO reference networks (models/yolo/): the authors' deploy conversions of single
blocks (RepVGGBlock, QARepVGGBlock, RepVGGDW, RepConv, Conv, IDetect) and of the three networks
(yolov6_repconv, yolov10n_like, yolov7_implicit), with parameter and Conv2d counts."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from models.common import count_convs, randomize_bn_, seed_everything
from models.yolo import (C2fCIB, ConvModule, IDetect, PSA, QARepVGGBlock, RepConv, RepVGGBlock, RepVGGDW,
                         SCDown, Conv, v10Detect, yolov6_model_convert, yolov6_repconv, yolov7_implicit,
                         yolov7_model_convert, yolov10_model_convert, yolov10n_like)
from torch_ref import assert_relative as _assert_close, param_count as _params

pytestmark = pytest.mark.slow  # whole networks: `pytest -m 'not slow'` skips them



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one intra-op thread is as fast, and immune to OpenMP spin-waits on a busy
    machine (2 threads were 30x slower there); restored afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _convs(m: nn.Module) -> int:
    return sum(isinstance(c, nn.Conv2d) for c in m.modules())


def _bns(m: nn.Module) -> int:
    return sum(isinstance(c, nn.BatchNorm2d) for c in m.modules())


def _ready(module: nn.Module, seed: int = 0) -> nn.Module:
    randomize_bn_(module, seed)
    return module.eval()


# ---------------------------------------------------------------------------- YOLOv6 blocks
@pytest.mark.parametrize("cin,cout,stride,groups,act", [(8, 8, 1, 1, "silu"), (8, 16, 2, 1, "silu"),
                                                        (8, 8, 1, 4, "relu"), (8, 16, 1, 2, "silu"),
                                                        (8, 8, 2, 2, "silu")])
def test_repvgg_block_switch_to_deploy(cin, cout, stride, groups, act):
    seed_everything(0)
    blk = _ready(RepVGGBlock(cin, cout, 3, stride, 1, groups=groups, act=act))
    assert (blk.rbr_identity is not None) == (cin == cout and stride == 1)
    assert _convs(blk) == 2 and _bns(blk) == 2 + (blk.rbr_identity is not None)
    x = torch.randn(2, cin, 11, 12)
    with torch.no_grad():
        ref = blk(x)
        blk.switch_to_deploy()
        y = blk(x)
    assert [n for n, _ in blk.named_children()] == ["nonlinearity", "se", "rbr_reparam"]
    assert blk.rbr_reparam.groups == groups and blk.rbr_reparam.stride == (stride, stride)
    assert isinstance(blk.nonlinearity, nn.SiLU if act == "silu" else nn.ReLU)
    _assert_close(y, ref, 1e-5)


def test_repvgg_block_official_order_fuse_model_then_switch():
    """YOLOv6 runs ``fuse_model`` (ConvModule Conv-BN fold) before ``switch_to_deploy``: same result."""
    seed_everything(1)
    blk = _ready(RepVGGBlock(8, 8, act="silu"), 1)
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        ref = blk(x)
        for m in blk.modules():
            if type(m) is ConvModule:
                m.fuse()
        assert _bns(blk) == 1  # only the identity BN is left
        mid = blk(x)
        blk.switch_to_deploy()
        y = blk(x)
    _assert_close(mid, ref, 1e-5)
    _assert_close(y, ref, 1e-5)


@pytest.mark.parametrize("cin,cout,stride,groups", [(8, 8, 1, 1), (8, 16, 2, 1), (8, 8, 1, 2), (16, 8, 1, 1)])
@pytest.mark.parametrize("keep_post_bn", [False, True])
def test_qarepvgg_block_switch_to_deploy(cin, cout, stride, groups, keep_post_bn):
    seed_everything(2)
    blk = _ready(QARepVGGBlock(cin, cout, 3, stride, 1, groups=groups, act="silu"), 2)
    has_id = cin == cout and stride == 1
    assert isinstance(blk.rbr_identity, nn.Identity) if has_id else blk.rbr_identity is None
    assert isinstance(blk.rbr_1x1, nn.Conv2d) and blk.rbr_1x1.bias is None  # bare 1x1
    assert _convs(blk) == 2 and _bns(blk) == 2  # rbr_dense.bn and the post-BN
    with torch.no_grad():  # the post-BN is not trivial
        assert float((blk.bn.running_var - 1).abs().max()) > 0.1
    x = torch.randn(2, cin, 10, 9)
    with torch.no_grad():
        ref = blk(x)
        blk.switch_to_deploy(keep_post_bn=keep_post_bn)
        y = blk(x)
    assert _convs(blk) == 1 and _bns(blk) == (1 if keep_post_bn else 0)
    assert not hasattr(blk, "rbr_dense") and not hasattr(blk, "rbr_1x1")
    _assert_close(y, ref, 1e-5)


# ---------------------------------------------------------------------------- YOLOv10 blocks
@pytest.mark.parametrize("ed", [8, 32])
def test_repvggdw_fuse(ed):
    seed_everything(3)
    blk = _ready(RepVGGDW(ed), 3)
    assert [m.conv.kernel_size for m in (blk.conv, blk.conv1)] == [(7, 7), (3, 3)]
    assert _convs(blk) == 2 and _bns(blk) == 2
    assert blk.conv.bn.eps == 1e-5  # module default; the networks set 1e-3
    x = torch.randn(2, ed, 13, 11)
    with torch.no_grad():
        ref = blk(x)
        blk.fuse()
        y = blk(x)
    assert [n for n, _ in blk.named_children()] == ["conv", "act"]
    c = blk.conv
    assert isinstance(c, nn.Conv2d) and c.kernel_size == (7, 7) and c.groups == ed and c.padding == (3, 3)
    assert c.bias is not None and _bns(blk) == 0
    _assert_close(y, ref, 1e-5)


@pytest.mark.parametrize("k,s,g,act", [(3, 2, 16, False), (1, 1, 1, True), (3, 1, 1, True), (7, 1, 16, False)])
def test_conv_fuse(k, s, g, act):
    seed_everything(4)
    m = Conv(16, 16, k, s, g=g, act=act)
    m.bn.eps = 1e-3
    _ready(m, 4)
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        ref = m(x)
        m.fuse()
        y = m(x)
    assert not hasattr(m, "bn") and m.conv.bias is not None and m.conv.groups == g
    _assert_close(y, ref, 1e-5)


# ---------------------------------------------------------------------------- YOLOv7 blocks
@pytest.mark.parametrize("c1,c2,s,g", [(8, 8, 1, 1), (8, 16, 1, 1), (8, 16, 2, 2), (8, 8, 1, 4)])
def test_repconv_fuse_repvgg_block(c1, c2, s, g):
    seed_everything(5)
    blk = _ready(RepConv(c1, c2, 3, s, None, g, act=nn.LeakyReLU(0.1)), 5)
    assert (blk.rbr_identity is not None) == (c1 == c2 and s == 1)
    x = torch.randn(2, c1, 10, 10)
    with torch.no_grad():
        ref = blk(x)
        blk.fuse_repvgg_block()
        y = blk(x)
    assert [n for n, _ in blk.named_children()] == ["act", "rbr_reparam"]
    assert blk.rbr_reparam.groups == g and blk.rbr_reparam.bias is not None
    _assert_close(y, ref, 1e-5)


def test_idetect_fuse_folds_implicit_a_and_m():
    seed_everything(6)
    anchors = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]]
    det = IDetect(3, anchors, ch=(8, 16), implicit_std=0.5).eval()
    assert det.no == 8 and det.na == 3 and [m.out_channels for m in det.m] == [24, 24]
    for ia, im in zip(det.ia, det.im):  # non-trivial implicits: the fold is visible
        assert ia.implicit.shape == (1, ia.channel, 1, 1) and float(ia.implicit.detach().abs().max()) > 0.5
        assert im.implicit.shape == (1, 24, 1, 1) and float((im.implicit.detach() - 1).abs().max()) > 0.5
    xs = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    with torch.no_grad():
        ref = det(list(xs))
        plain = torch.cat([m(x).view(2, 3, 8, *x.shape[2:]).permute(0, 1, 3, 4, 2).reshape(2, -1, 8)
                           for m, x in zip(det.m, xs)], 1)
        det.fuse()
        y = det(list(xs))
    assert ref.shape == (2, 3 * (64 + 16), 8)
    assert float((ref - plain).abs().max()) > 0.1 * float(ref.abs().max())  # implicits matter
    assert not hasattr(det, "ia") and not hasattr(det, "im") and _convs(det) == 2
    _assert_close(y, ref, 1e-5)


# ---------------------------------------------------------------------------- networks
NETWORKS = {
    # name: factory, convert, block class, convs train/deploy, blocks, params train/deploy, output (batch 2, 64x64)
    "yolov6_repconv": (yolov6_repconv, yolov6_model_convert, RepVGGBlock, (91, 56), 35,
                       (4_735_420, 4_317_212), (2, 84, 84)),
    "yolov10n_like": (yolov10n_like, yolov10_model_convert, RepVGGDW, (83, 82), 1,
                      (2_310_608, 2_299_248), (2, 144, 84)),
    "yolov7_implicit": (yolov7_implicit, yolov7_model_convert, RepConv, (61, 58), 3,
                        (1_663_498, 1_614_685), (2, 252, 85)),
}


@functools.lru_cache(maxsize=None)
def _build(name):
    factory, convert = NETWORKS[name][:2]
    seed_everything(0)
    train = factory()
    randomize_bn_(train, 0)
    train.eval()
    deploy = convert(train)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, y = train(x), deploy(x)
        ref2 = train(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    return name, train, deploy, ref, y, ref2


@pytest.fixture(params=sorted(NETWORKS))
def network(request):
    return _build(request.param)


def test_network_train_vs_deploy(network):
    name, train, deploy, ref, y, ref2 = network
    assert not train.training and not deploy.training
    assert tuple(ref.shape) == NETWORKS[name][6]
    _assert_close(y, ref, 1e-4)
    assert float(ref.std()) > 1e-2
    # the output depends on the input (the signal neither vanishes nor is swamped by BN shifts)
    assert float((ref - ref2).std()) > 0.1 * float(ref.std())


def test_network_conv_and_block_counts(network):
    name, train, deploy, *_ = network
    _, _, block, (n_train, n_deploy), n_blocks, (p_train, p_deploy), _ = NETWORKS[name]
    assert count_convs(train) == n_train and count_convs(deploy) == n_deploy
    assert _params(train) == p_train and _params(deploy) == p_deploy
    assert _bns(deploy) == 0 and _bns(train) > 0
    assert all(m.eps == 1e-3 for m in train.modules() if isinstance(m, nn.BatchNorm2d))  # initialize_weights
    tblocks = [m for m in train.modules() if isinstance(m, block)]
    dblocks = [m for m in deploy.modules() if isinstance(m, block)]
    assert len(tblocks) == len(dblocks) == n_blocks
    for t in tblocks:  # the copying conversion leaves the training form alone
        assert _convs(t) in (2, 3) and not hasattr(t, "rbr_reparam")
    for d in dblocks:
        assert _convs(d) == 1 and _bns(d) == 0
    # every merged block removes exactly its extra branch convs
    assert n_train - n_deploy == sum(_convs(t) - 1 for t in tblocks)


def test_yolov6_structure():
    _, train, deploy, *_ = _build("yolov6_repconv")
    assert train.channels_list == [16, 32, 64, 128, 256, 64, 32, 32, 64, 64, 128]
    assert train.num_repeats == [1, 2, 4, 6, 2, 4, 4, 4, 4]
    qa = [m for m in train.modules() if isinstance(m, QARepVGGBlock)]
    assert len(qa) == 16 and all(any(m is q for m in train.neck.modules()) for q in qa)
    plain = [m for m in train.modules() if type(m) is RepVGGBlock]
    assert len(plain) == 19 and sum(b.rbr_identity is not None for b in plain) == 14
    assert all(isinstance(b.nonlinearity, nn.SiLU) for b in plain + qa)


def test_yolov10n_structure():
    _, train, deploy, *_ = _build("yolov10n_like")
    layers = list(train.model)
    assert len(layers) == 24
    assert [type(layers[i]).__name__ for i in (5, 7, 10, 20, 22, 23)] == [
        "SCDown", "SCDown", "PSA", "SCDown", "C2fCIB", "v10Detect"]
    assert [len(layers[i].m) for i in (2, 4, 6, 8, 13, 16, 19, 22)] == [1, 2, 2, 1, 1, 1, 1, 1]
    assert isinstance(layers[22], C2fCIB) and isinstance(layers[22].m[0].cv1[2], RepVGGDW)
    assert layers[10].attn.num_heads == 2 and layers[10].attn.qkv.conv.out_channels == 256
    det = layers[23]
    assert isinstance(det, v10Detect) and det.no == 144
    assert [s[0].conv.in_channels for s in det.one2one_cv2] == [64, 128, 256]
    assert isinstance(layers[5], SCDown) and layers[5].cv2.conv.groups == 128
    assert isinstance(layers[10], PSA)
    dw = [m for m in deploy.modules() if isinstance(m, RepVGGDW)][0]
    assert dw.conv.kernel_size == (7, 7) and dw.conv.groups == 256


def test_yolov7_structure():
    _, train, deploy, *_ = _build("yolov7_implicit")
    layers = list(train.model)
    assert len(layers) == 78 and isinstance(layers[77], IDetect)
    det, ddet = layers[77], list(deploy.model)[77]
    assert [c.in_channels for c in det.m] == [64, 128, 256] and det.no == 85 and det.na == 3
    assert [type(layers[i]).__name__ for i in (74, 75, 76)] == ["RepConv"] * 3
    assert not hasattr(ddet, "ia") and not hasattr(ddet, "im")
    with torch.no_grad():  # ImplicitM changed the deploy conv weights
        assert not torch.allclose(ddet.m[0].weight, det.m[0].weight)
        assert float(det.ia[0].implicit.std()) > 0.3 and float(det.im[0].implicit.std()) > 0.3
