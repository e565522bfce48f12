"""Acceptance on whole networks: deploy parity, at deploy cost, for every torch export mode.

For each network and export mode the training form is optimized and compared with the
authors' own deploy-form export of the same weights: no more Convs, nodes, parameters or MACs
(1e-3 slack on the last two), never costlier than the input, max abs error <= 1e-4 * max|y| on
onnxruntime, output shapes and the dynamic batch kept.
"""
from __future__ import annotations

import onnx
import pytest

torch = pytest.importorskip("torch")

from models.export import export_pair  # noqa: E402
from onnxrep import optimize, verify  # noqa: E402
from onnxrep.graph.stats import graph_stats  # noqa: E402

pytestmark = pytest.mark.slow  # whole networks: `pytest -m 'not slow'` skips them

NETWORKS = ["repvgg_a0", "repvgg_a0_g4", "acnet_resnet18", "acnet_k5", "acnet_crop", "dbb_resnet18",
            "mobileone_s0", "fastvit_t8", "repvit_m0_9", "repghost_0_5", "replknet_tiny", "yolov6_repconv",
            "yolov10n", "yolov7_implicit", "resrep_resnet", "repmlpnet_tiny"]
MODES = {
    "legacy": dict(dynamo=False),
    "dynamo": dict(dynamo=True),
    "legacy-nofold": dict(dynamo=False, constant_folding=False),
}


@pytest.fixture(scope="module", params=[(n, m) for n in NETWORKS for m in MODES], ids=lambda p: f"{p[0]}-{p[1]}")
def case(request, tmp_path_factory):
    name, mode = request.param
    out = tmp_path_factory.mktemp(f"{name}-{mode}")
    train_path, deploy_path = export_pair(name, out, seed=1, **MODES[mode])
    train, deploy = onnx.load(train_path), onnx.load(deploy_path)
    optimized, report = optimize(train)
    return train, deploy, optimized, report


def _dims(values):
    return [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values]


def test_no_more_convs_than_deploy(case):
    train, deploy, optimized, report = case
    assert graph_stats(optimized).convs <= graph_stats(deploy).convs <= graph_stats(train).convs


def test_no_more_nodes_than_deploy(case):
    _, deploy, optimized, _ = case
    assert graph_stats(optimized).nodes <= graph_stats(deploy).nodes


def test_deploy_cost(case):
    """Parameters and MACs at most the authors' deploy form's (+0.1%), and never more than the input's."""
    train, deploy, optimized, report = case
    t, d, o = graph_stats(train), graph_stats(deploy), graph_stats(optimized)
    assert t.macs_unknown == d.macs_unknown == o.macs_unknown == 0
    assert o.params <= d.params * 1.001 and o.macs <= d.macs * 1.001, (o.params, d.params, o.macs, d.macs)
    assert o.params <= t.params and o.macs <= t.macs
    assert (report.before.macs, report.after.macs) == (t.macs, o.macs)


def test_no_batchnorm_left_inside_regions(case):
    _, deploy, optimized, _ = case
    assert graph_stats(optimized).ops.get("BatchNormalization", 0) <= graph_stats(deploy).ops.get(
        "BatchNormalization", 0)


@pytest.mark.parametrize("batch", [1, 3])
def test_matches_training_form(case, batch):
    train, _, optimized, _ = case
    dims = [d.dim_value for d in train.graph.input[0].type.tensor_type.shape.dim[1:]]
    result = verify(train, optimized, input_shapes={"input": (batch, *dims)}, rtol=1e-4, atol=0.0)
    assert result.passed, result.to_dict()
    assert result.max_abs <= 1e-4 * result.outputs[0].ref_max_abs
    assert result.outputs[0].shape[0] == batch


def test_interface_and_dynamic_batch_kept(case):
    train, _, optimized, _ = case
    assert _dims(optimized.graph.input) == _dims(train.graph.input)
    assert _dims(optimized.graph.output) == _dims(train.graph.output)
    assert isinstance(_dims(optimized.graph.input)[0][0], str)  # symbolic batch dim
    onnx.checker.check_model(optimized)


def test_report_counts_rewrites(case):
    train, deploy, optimized, report = case
    before, after = graph_stats(train), graph_stats(optimized)
    assert report.before.nodes == before.nodes and report.after.nodes == after.nodes
    removed = sum(r.nodes_removed for r in report.rules)
    assert removed == before.nodes - after.nodes
