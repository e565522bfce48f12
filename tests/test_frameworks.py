"""Acceptance on other frameworks' exports: Keras (tf2onnx), PaddlePaddle (paddle2onnx), JAX/Flax (jax2onnx).

Each framework's reference networks (``models.frameworks``: RepVGG and ACNet blocks with stride-2
stages and grouped convs, in the framework's own layout and 'same' padding) are exported in
training form and in the deploy form fused by hand in that framework, at opsets 13 and 17, with a
static and a dynamic spatial size; the framework's own outputs on the reference inputs come with
them. All of it is made once per framework, in a subprocess (``python -m models.frameworks``):
TensorFlow and PaddlePaddle crash each other in one process.

* The references: the hand fusion equals the training form in the framework (on the stated size
  and on any size whose stride-2 blocks all see even sizes; not on odd ones, where 'same' padding
  moves the small kernels' taps), and onnxruntime runs each export as the framework does.
* On the static size the export states, onnxrep's output is at deploy cost (Convs, nodes,
  parameters, MACs no more than the hand-fused form's) and matches the training form within
  1e-4 * max|y|, the batch still dynamic.
* With a dynamic spatial size, a stride-2 'same' block has no single conv for every size: it is
  declined with the reason, the other blocks merged, and the output is exact on even and odd
  sizes alike (the hand-fused form is not).

A framework that is not installed is skipped, unless ``ONNXREP_REQUIRE_FRAMEWORKS=1`` (``.ci/run``
sets it): then its absence fails. The pytest-xdist workers share each framework's files (made by the
first worker that needs them, under a file lock).
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from filelock import FileLock

from models.frameworks.__main__ import PACKAGES as FRAMEWORKS, exported, missing
from onnxrep import optimize, verify
from onnxrep.graph.stats import graph_stats

NETWORKS = ("repvgg", "acnet")
OPSETS = (13, 17)
REQUIRED = os.environ.get("ONNXREP_REQUIRE_FRAMEWORKS") == "1"
SAME_DYNAMIC = "auto_pad=SAME_UPPER with stride > 1 depends on the input size, which is dynamic"


def _params(*axes, packed: bool = False):
    """Cases whose first item is the framework (``packed``: each case one tuple, for an indirect fixture)."""
    return [pytest.param(*((case,) if packed else case), id="-".join(map(str, case)), marks=pytest.mark.slow)
            for case in itertools.product(FRAMEWORKS, *axes)]


_MADE: dict[str, dict] = {}


def made(framework: str, tmp_path_factory) -> dict:
    """The framework's manifest (``models/frameworks/__main__.py``): made once per test run, in the
    temporary folder all xdist workers share, by the first worker that asks (the others wait)."""
    if framework not in _MADE:
        absent = missing(framework)
        if absent:
            if REQUIRED:
                pytest.fail(f"{framework}: {', '.join(absent)} not installed (ONNXREP_REQUIRE_FRAMEWORKS=1)")
            pytest.skip(f"{framework}: {', '.join(absent)} not installed")
        shared = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            shared = shared.parent  # the run's folder, above each worker's own
        out = shared / f"frameworks-{framework}"
        with FileLock(str(out) + ".lock"):
            _MADE[framework] = exported(framework, out)
    return _MADE[framework]


def models_of(manifest, network, opset, spatial):
    paths = manifest["exports"][f"{network}-{opset}-{spatial}"]
    return onnx.load(paths["train"]), onnx.load(paths["deploy"])


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def rel_err(y, ref) -> float:
    return float(np.abs(np.asarray(y, np.float64) - ref).max() / np.abs(ref).max())


def input_dims(model):
    return [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


# ------------------------------------------------------------------ the references themselves
@pytest.mark.parametrize("framework,network", _params(NETWORKS))
def test_hand_fusion_is_exact_in_the_framework(framework, network, tmp_path_factory):
    a = made(framework, tmp_path_factory)["arrays"]
    for name in ("stated-b1", "stated-b3", "even"):
        train, deploy = a[f"{network}-train-{name}"], a[f"{network}-deploy-{name}"]
        assert train.shape == (a[f"x-{name}"].shape[0], 10) and np.abs(train).max() > 0.1
        assert rel_err(deploy, train) <= 1e-5, name
    # 'same' padding on an odd size moves the small kernels' taps: one fused kernel cannot follow
    assert rel_err(a[f"{network}-deploy-odd"], a[f"{network}-train-odd"]) > 1e-2


@pytest.mark.parametrize("framework,network,opset", _params(NETWORKS, OPSETS))
def test_onnx_exports_run_as_the_framework(framework, network, opset, tmp_path_factory):
    manifest = made(framework, tmp_path_factory)
    a = manifest["arrays"]
    train, deploy = models_of(manifest, network, opset, "static")
    for m in (train, deploy):
        assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [opset]
        dims = input_dims(m)
        assert isinstance(dims[0], str) and sum(isinstance(d, int) for d in dims) == 3  # only the batch dynamic
    for name in ("stated-b1", "stated-b3"):
        x = a[f"x-{name}"]
        assert rel_err(run_ort(train, x), a[f"{network}-train-{name}"]) <= 1e-4
        assert rel_err(run_ort(deploy, x), a[f"{network}-deploy-{name}"]) <= 1e-4
    train_dyn, _ = models_of(manifest, network, opset, "dynamic")
    assert sum(isinstance(d, str) for d in input_dims(train_dyn)) == 3  # N, H, W
    for name in ("stated-b3", "even", "odd"):
        assert rel_err(run_ort(train_dyn, a[f"x-{name}"]), a[f"{network}-train-{name}"]) <= 1e-4, name


# ------------------------------------------------------------------ onnxrep on the static size
@pytest.fixture
def static_case(request, tmp_path_factory):
    framework, network, opset = request.param
    train, deploy = models_of(made(framework, tmp_path_factory), network, opset, "static")
    optimized, report = optimize(train)
    return train, deploy, optimized, report


STATIC = _params(NETWORKS, OPSETS, packed=True)


@pytest.mark.parametrize("static_case", STATIC, indirect=True)
def test_static_at_deploy_cost(static_case):
    train, deploy, optimized, _ = static_case
    t, d, o = graph_stats(train), graph_stats(deploy), graph_stats(optimized)
    assert o.convs <= d.convs < t.convs, (o.convs, d.convs, t.convs)
    assert o.nodes <= d.nodes, (o.nodes, d.nodes)
    assert t.macs_unknown == d.macs_unknown == o.macs_unknown == 0
    assert o.params <= d.params and o.macs <= d.macs, (o.params, d.params, o.macs, d.macs)
    assert o.ops.get("BatchNormalization", 0) == 0


@pytest.mark.parametrize("static_case", STATIC, indirect=True)
def test_static_matches_training_form(static_case):
    train, _, optimized, _ = static_case
    dims = input_dims(train)
    assert input_dims(optimized) == dims  # the batch stays dynamic, the rest as stated
    for batch in (1, 3):
        result = verify(train, optimized, input_shapes={train.graph.input[0].name: (batch, *dims[1:])},
                        rtol=1e-4, atol=0.0)
        assert result.passed, result.to_dict()
        out = result.outputs[0]
        assert out.ref_max_abs > 0 and out.max_abs <= 1e-4 * out.ref_max_abs
        assert out.shape[0] == batch


# ------------------------------------------------------------------ onnxrep on a dynamic size
@pytest.mark.parametrize("framework,network", _params(NETWORKS))
def test_dynamic_spatial_merged_where_provable_and_exact(framework, network, tmp_path_factory):
    manifest = made(framework, tmp_path_factory)
    train, deploy = models_of(manifest, network, 17, "dynamic")
    optimized, report = optimize(train)
    t, d, o = graph_stats(train), graph_stats(deploy), graph_stats(optimized)
    assert d.convs < o.convs < t.convs, (d.convs, o.convs, t.convs)  # stride-1 blocks merged, stride-2 not
    assert o.params <= t.params and o.macs <= t.macs
    assert o.ops.get("BatchNormalization", 0) == 0  # a BN folds into a 'same' conv of any size
    reasons = [dec.reason for r in report.rules for dec in r.declines]
    assert any(SAME_DYNAMIC in why for why in reasons), reasons
    assert input_dims(optimized) == input_dims(train)  # N, H, W stay dynamic
    a = manifest["arrays"]
    for name in ("stated-b3", "even", "odd"):
        x = a[f"x-{name}"]
        assert rel_err(run_ort(optimized, x), a[f"{network}-train-{name}"]) <= 1e-4, name
