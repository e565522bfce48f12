"""RepMLPNet (models/repmlp.py) optimized from its training-form exports: every RepMLP block ends as the
authors' deploy block, one FC (fc3) per block with the conv branches and BNs folded in, the global
perceptron left as it is. Deploy parity in general (Convs, nodes, parameters, MACs, error) is asserted for
all networks in tests/test_networks.py."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")

from models.export import export_pair  # noqa: E402
from onnxrep import optimize  # noqa: E402

pytestmark = pytest.mark.slow

MODES = {"legacy": dict(dynamo=False), "dynamo": dict(dynamo=True),
         "legacy-nofold": dict(dynamo=False, constant_folding=False)}
UNITS = 5  # repmlpnet_tiny: num_blocks (1, 1, 2, 1)


@pytest.fixture(scope="module", params=list(MODES))
def case(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"repmlp-{request.param}")
    train_path, deploy_path = export_pair("repmlpnet_tiny", out, seed=1, **MODES[request.param])
    train, deploy = onnx.load(train_path), onnx.load(deploy_path)
    optimized, report = optimize(train)
    return train, deploy, optimized, report


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _fcs(model):
    """fc3 of each block in graph order: grouped 1x1 Convs whose input channels are h·w per group (weight
    (S·h·w, h·w, 1, 1)); with their biases."""
    w = _weights(model)
    found = []
    for n in model.graph.node:
        if n.op_type != "Conv" or n.input[1] not in w:
            continue
        k = w[n.input[1]]
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if k.shape[2:] == (1, 1) and k.shape[0] == group * k.shape[1] and k.shape[1] >= 4:
            found.append((k, w[n.input[2]] if len(n.input) > 2 and n.input[2] else None, group))
    return found


def test_one_fc_per_block_equal_to_the_authors_deploy_fc3(case):
    _, deploy, optimized, report = case
    ours, theirs = _fcs(optimized), _fcs(deploy)
    assert len(ours) == len(theirs) == UNITS
    for (w, b, g), (w_ref, b_ref, g_ref) in zip(ours, theirs):
        assert g == g_ref and w.shape == w_ref.shape and b is not None
        np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-5 * np.abs(w_ref).max())
        np.testing.assert_allclose(b, b_ref, rtol=0, atol=1e-5 * np.abs(b_ref).max())
    assert sum(r.rewrites for r in report.rules if r.name == "fold-conv-into-fc") == UNITS


def test_no_conv_branch_and_no_bn_left_in_blocks(case):
    """The only Convs with a spatial kernel are the patch embeddings (stride = kernel); the only BNs are
    prebn1 of each unit (read by the global perceptron's pooling, as in deploy) and head_norm."""
    _, deploy, optimized, _ = case
    w = _weights(optimized)
    for n in optimized.graph.node:
        if n.op_type == "Conv":
            kernel = list(w[n.input[1]].shape[2:])
            strides = next((list(a.ints) for a in n.attribute if a.name == "strides"), [1, 1])
            assert kernel == [1, 1] or kernel == strides, (n.name, kernel, strides)
    bns = [n for n in optimized.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) == UNITS + 1
    readers = {}
    for n in optimized.graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n.op_type)
    for bn in bns:
        assert {"ReduceMean", "GlobalAveragePool"} & set(readers[bn.output[0]]), readers[bn.output[0]]
