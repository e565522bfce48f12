"""Tests of the RepMLPNet reference network (models/repmlp.py): ``RepMLPBlock.local_inject`` (locality
injection) on single blocks, the official conv -> FC conversion (``conv_to_fc``), and, on the whole
``repmlpnet_tiny`` (marked slow), the deploy conversion, the parameter count and ONNX exports with
the three export modes."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.common import count_convs, seed_everything
from models.export import MODELS, build, export_onnx
from models.repmlp import (GlobalPerceptron, RepMLPBlock, RepMLPNet, RepMLPNetUnit, conv_to_fc,
                           repmlp_model_convert, repmlpnet_tiny)
from torch_ref import (assert_relative, count_modules as _n, param_count as _params,
                       randomized_eval as _random, seeded_input as _x)

slow = pytest.mark.slow  # whole networks: `pytest -m 'not slow'` skips them; the block tests are fast

torch.set_num_threads(2)

KS = [(1, 3), (1, 3, 5), (3,), None]
# (h, w, H, W): h_parts = H // h, w_parts = W // w
GEOMETRIES = [(4, 4, 4, 4), (4, 4, 8, 8), (3, 5, 6, 5), (4, 2, 4, 6)]


def _block(C, h, w, ks, S, seed=0):
    seed_everything(seed)
    return _random(RepMLPBlock(C, C, h, w, reparam_conv_k=ks, num_sharesets=S), seed)


# ---------------------------------------------------------------------------- block
@pytest.mark.parametrize("ks", KS, ids=str)
@pytest.mark.parametrize("S", [1, 2, 4])
@pytest.mark.parametrize("h,w,H,W", GEOMETRIES)
def test_block_local_inject(ks, S, h, w, H, W):
    C = 8
    blk = _block(C, h, w, ks, S)
    x = _x(2, C, H, W)
    with torch.no_grad():
        ref = blk(x)
        if ks is not None:  # the local perceptron contributes
            p = blk.partition(x, H // h, W // w).reshape(-1, S, h, w)
            assert sum(getattr(blk, f"repconv{k}")(p) for k in ks).abs().max() > 1e-2
        dep = repmlp_model_convert(blk)
        y = dep(x)
    assert y.shape == ref.shape == (2, C, H, W)
    assert_relative(y, ref, 1e-5)
    # deploy form: fc3 (with bias) and the global perceptron's two convs, nothing else
    assert dep.deploy and not blk.deploy
    assert not any(hasattr(dep, f"repconv{k}") for k in (1, 3, 5))
    assert isinstance(dep.fc3_bn, nn.Identity) and _n(dep, nn.BatchNorm2d) == 0
    assert dep.fc3.bias is not None and dep.fc3.groups == S
    assert dep.fc3.weight.shape == (S * h * w, h * w, 1, 1) and dep.fc3.weight.dtype == torch.float32
    assert count_convs(dep) == 3 and count_convs(blk) == 3 + len(ks or ())
    # training form untouched by the (copying) conversion
    assert isinstance(blk.fc3_bn, nn.BatchNorm2d) and blk.fc3.bias is None


def test_block_local_inject_in_place_and_deploy_constructor():
    blk = _block(8, 4, 4, (1, 3), 4)
    x = _x(3, 8, 8, 8)
    with torch.no_grad():
        ref = blk(x)
        w64, b64 = blk.get_equivalent_fc3()
        assert w64.dtype == b64.dtype == torch.float64 and b64.shape == (64,)
        blk.local_inject()
        assert_relative(blk(x), ref, 1e-5)
        fc3 = blk.fc3
        blk.local_inject()  # already deploy: left alone
        assert blk.fc3 is fc3
        fresh = RepMLPBlock(8, 8, 4, 4, reparam_conv_k=(1, 3), num_sharesets=4, deploy=True).eval()
        fresh.load_state_dict(blk.state_dict(), strict=True)
        assert_relative(fresh(x), blk(x), 0)


def test_block_local_inject_in_float64():
    blk = _block(8, 3, 5, (1, 3, 5), 2).double()
    x = _x(2, 8, 6, 10, dtype=torch.float64)
    with torch.no_grad():
        ref = blk(x)
        dep = repmlp_model_convert(blk)
        assert dep.fc3.weight.dtype == torch.float64
        assert_relative(dep(x), ref, 1e-12)


@pytest.mark.parametrize("C,S,h,w,H,W", [(8, 2, 4, 3, 8, 6), (8, 2, 4, 3, 4, 3), (4, 4, 2, 2, 4, 6)])
def test_block_forward_written_out(C, S, h, w, H, W):
    """The training-form block written out row by row. A *row* is one (partition, share-set group):
    ``(S, h, w)`` pixels, rows in memory order ``(n, i, j, c // S)``; each row goes through the
    share-set's FC-BN plus the convs. The official un-partition (reshape to ``(-1, h_parts, w_parts,
    S, h, w)``, permute, reshape) puts row ``L`` back at ``(n', (c'*S + s), b*h + y, d*w + x)`` with
    ``L = (n'*C/S + c')*h_parts*w_parts + b*w_parts + d``: the inverse of the partition only when
    ``h_parts*w_parts == 1`` or ``C == S``; otherwise partitions and channel groups are exchanged
    (the official code's behaviour, kept)."""
    N, hp, wp, G = 2, H // h, W // w, C // S
    blk = _block(C, h, w, (1, 3), S)
    x = _x(N, C, H, W)
    with torch.no_grad():
        gate = torch.sigmoid(blk.gp.fc2(F.relu(blk.gp.fc1(x.mean((2, 3), keepdim=True)))))
        wt = blk.fc3.weight.reshape(S, h * w, h * w)  # one FC per share-set
        rows = []
        for n in range(N):
            for i in range(hp):
                for j in range(wp):
                    part = x[n, :, i * h:(i + 1) * h, j * w:(j + 1) * w].reshape(G, S, h, w)
                    fc = torch.einsum("soi,gsi->gso", wt, part.reshape(G, S, h * w)).reshape(G, S, h, w)
                    conv = sum(getattr(blk, f"repconv{k}")(part) for k in (1, 3))
                    rows += list(blk.fc3_bn(fc) + conv)
        out = torch.empty_like(x)
        for L, r in enumerate(rows):
            a, rest = divmod(L, hp * wp)
            b, d = divmod(rest, wp)
            n_o, c_o = divmod(a, G)
            out[n_o, c_o * S:(c_o + 1) * S, b * h:(b + 1) * h, d * w:(d + 1) * w] = r
        assert_relative(blk(x), out * gate, 1e-5)


@pytest.mark.parametrize("C,S,h,w,H,W,inverse", [(16, 1, 8, 8, 16, 16, False), (32, 4, 4, 4, 8, 8, False),
                                                 (8, 2, 4, 4, 8, 4, False), (8, 8, 4, 4, 8, 8, True),
                                                 (8, 2, 4, 4, 4, 4, True), (8, 2, 3, 5, 3, 5, True)])
def test_official_unpartition_is_inverse_only_for_one_partition_or_c_eq_s(C, S, h, w, H, W, inverse):
    """The block's reshapes without FC: the identity iff ``h_parts*w_parts == 1`` or ``C == S``
    (repmlpnet_tiny's stages 1 and 2, C/S = 16 and 8 with 2x2 partitions: not the identity)."""
    blk = RepMLPBlock(C, C, h, w, num_sharesets=S)
    x = torch.arange(2 * C * H * W, dtype=torch.float64).reshape(2, C, H, W)
    hp, wp = H // h, W // w
    p = blk.partition(x, hp, wp).reshape(-1, S, h, w).reshape(-1, hp, wp, S, h, w)
    y = p.permute(0, 3, 1, 4, 2, 5).reshape(*x.size())
    assert torch.equal(y, x) == inverse


def test_global_perceptron():
    seed_everything(0)
    gp = GlobalPerceptron(16, 4).eval()
    x = _x(3, 16, 5, 7)
    with torch.no_grad():
        ref = torch.sigmoid(gp.fc2(torch.relu(gp.fc1(x.mean((2, 3), keepdim=True)))))
        assert gp(x).shape == (3, 16, 1, 1)
        assert_relative(gp(x), ref, 1e-6)


def test_unit_convert_keeps_prebns():
    seed_everything(0)
    unit = _random(RepMLPNetUnit(16, 4, 4, (1, 3), 4, num_sharesets=4))
    x = _x(2, 16, 8, 8)
    with torch.no_grad():
        ref = unit(x)
        dep = repmlp_model_convert(unit)
        assert_relative(dep(x), ref, 1e-5)
    # prebn1, prebn2, the FFN's two BNs stay; fc3_bn and the two branch BNs go
    assert _n(unit, nn.BatchNorm2d) == 7 and _n(dep, nn.BatchNorm2d) == 4


# ---------------------------------------------------------------------------- conv -> FC
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("S", [1, 2, 4])
@pytest.mark.parametrize("h,w", [(1, 1), (3, 3), (4, 5), (6, 2), (2, 7)])
def test_conv_to_fc(k, S, h, w):
    g = torch.Generator().manual_seed(k * 100 + S * 10 + h)
    kernel = torch.randn(S, 1, k, k, generator=g, dtype=torch.float64)
    bias = torch.randn(S, generator=g, dtype=torch.float64)
    fc_k, fc_b = conv_to_fc(kernel, bias, h, w, S)
    assert fc_k.shape == (S * h * w, h * w) and fc_b.shape == (S * h * w,) and fc_k.dtype == torch.float64
    x = torch.randn(5, S, h, w, generator=g, dtype=torch.float64)  # 5 partitions of S channels
    ref = F.conv2d(x, kernel, bias, padding=k // 2, groups=S)
    # the FC row s*h*w + o, column i: output pixel o of share-set s from input pixel i of s
    y = torch.einsum("soi,nsi->nso", fc_k.reshape(S, h * w, h * w), x.reshape(5, S, h * w)) \
        + fc_b.reshape(S, h * w)
    torch.testing.assert_close(y.reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)
    # ... which is fc3's grouped 1x1 conv on the flattened partition
    y3 = F.conv2d(x.reshape(5, S * h * w, 1, 1), fc_k.reshape(S * h * w, h * w, 1, 1), fc_b, groups=S)
    torch.testing.assert_close(y3.reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- repmlpnet_tiny
@pytest.fixture(scope="module")
def net():
    train, deploy, shape = build("repmlpnet_tiny", seed=0)
    return train, deploy, shape


@slow
def test_net_structure(net):
    train, deploy, shape = net
    assert shape == (1, 3, 64, 64) and MODELS["repmlpnet_tiny"].block_type is RepMLPBlock
    blocks = [m for m in train.modules() if isinstance(m, RepMLPBlock)]
    assert [(b.C, b.S, b.h, b.w) for b in blocks] == [(16, 1, 8, 8), (32, 4, 4, 4), (64, 16, 4, 4),
                                                      (64, 16, 4, 4), (128, 64, 2, 2)]
    sizes = []
    hook = [b.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[2] // m.h)) for b in blocks]
    with torch.no_grad():
        train(_x(1, 3, 64, 64))
    for hk in hook:
        hk.remove()
    assert sizes == [2, 2, 1, 1, 1]  # h_parts per block
    dblocks = [m for m in deploy.modules() if isinstance(m, RepMLPBlock)]
    assert all(d.deploy and isinstance(d.fc3_bn, nn.Identity) and d.fc3.bias is not None for d in dblocks)
    assert not any(b.deploy for b in blocks)
    # per block the deploy form gains the fc3 bias (S*h*w) and loses fc3_bn + conv1-BN + conv3-BN (16*S)
    assert _params(train) - _params(deploy) == sum(b.S * (16 - b.h * b.w) for b in blocks) == 720
    assert _params(deploy) < _params(train)
    assert count_convs(train) - count_convs(deploy) == 2 * len(blocks)
    fresh = repmlpnet_tiny(deploy=True).eval()
    fresh.load_state_dict(deploy.state_dict(), strict=True)
    x = _x(2, 3, 64, 64)
    with torch.no_grad():
        assert_relative(fresh(x), deploy(x), 0)


@slow
def test_net_train_vs_deploy(net):
    train, deploy, _ = net
    x = _x(4, 3, 64, 64)
    with torch.no_grad():
        ref, y = train(x), deploy(x)
    assert ref.shape == (4, 10) and float(ref.std()) > 1e-2
    assert_relative(y, ref, 1e-5)


def test_official_network_converts():
    """A RepMLPNet with the official defaults' structure (one partition per stage) at a small size."""
    seed_everything(0)
    m = _random(RepMLPNet(num_class=7, channels=(8, 16), hs=(6, 3), ws=(6, 3), num_blocks=(1, 1),
                          sharesets_nums=(2, 4), reparam_conv_k=(3,)))
    x = _x(2, 3, 24, 24)
    with torch.no_grad():
        ref = m(x)
        m.locality_injection()
        assert_relative(m(x), ref, 1e-5)
    assert all(b.deploy for b in m.modules() if isinstance(b, RepMLPBlock))


EXPORT_MODES = {
    "legacy": dict(dynamo=False, constant_folding=True),
    "dynamo": dict(dynamo=True, constant_folding=True),
    "legacy_nofold": dict(dynamo=False, constant_folding=False),
}


@slow
@pytest.mark.parametrize("form", ["train", "deploy"])
@pytest.mark.parametrize("mode", sorted(EXPORT_MODES))
def test_net_export(net, mode, form, tmp_path):
    train, deploy, shape = net
    model = train if form == "train" else deploy
    path = export_onnx(model, tmp_path / f"{form}.onnx", shape, **EXPORT_MODES[mode])
    m = onnx.load(path)
    onnx.checker.check_model(m)
    for vi in (m.graph.input[0], m.graph.output[0]):
        assert vi.type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = _x(batch, 3, 64, 64, seed=2)
        (y,) = sess.run(None, {"input": x.numpy()})
        with torch.no_grad():
            ref = model(x)
        assert y.shape == (batch, 10)
        assert_relative(y, ref, 1e-4)
    ops = [n.op_type for n in m.graph.node]
    # per block: fc3, gp.fc1, gp.fc2 (+ conv1, conv3 in training form); 2 FFN convs; 4 embedding convs
    n_conv = ops.count("Conv")
    assert n_conv == count_convs(model) == (4 + 5 * (3 + 2) + 5 * 2 if form == "train" else 4 + 5 * 3 + 5 * 2)
