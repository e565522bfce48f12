"""Assertions and report helpers shared by the graph-level tests."""
from __future__ import annotations

from contextlib import contextmanager

import onnx
import pytest
from onnx import helper

from onnxrep import NotRepresentable, optimize, verify

COLLAPSE = "collapse-linear-regions"


@contextmanager
def not_representable(code: str):
    """``pytest.raises(NotRepresentable)`` whose reason has the kind ``code`` (not a message text)."""
    with pytest.raises(NotRepresentable) as info:
        yield info
    assert info.value.code == code, f"code {info.value.code!r}, expected {code!r} ({info.value})"


def run_opt(model: onnx.ModelProto, **kw):
    """optimize + checker on both sides + "the input model is not modified" + consistent counts."""
    onnx.checker.check_model(model, full_check=True)  # the test model itself is valid
    before = model.SerializeToString()
    out, report = optimize(model, **kw)
    assert model.SerializeToString() == before, "optimize() modified its input model"
    onnx.checker.check_model(out, full_check=True)
    assert report.before.nodes == len(model.graph.node) and report.after.nodes == len(out.graph.node)
    return out, report


def assert_verifies(ref, cand, allow_zero=False, **kw):
    """onnxruntime agrees within 1e-4 * max|y| on every output (which must not be all zero)."""
    res = verify(ref, cand, **kw)
    for d in res.outputs:
        if allow_zero and d.ref_max_abs == 0:  # random blocks may cancel (x - x), or Relu kills all
            assert d.max_abs <= 1e-6, (d.name, d.max_abs)
            continue
        assert d.ref_max_abs > 0, f"degenerate test: output {d.name} is all zero"
        assert d.max_abs <= 1e-4 * d.ref_max_abs, (
            f"{d.name}: max abs err {d.max_abs:.3e} > 1e-4 * {d.ref_max_abs:.3e}")
    assert res.passed
    return res


def rule(report, name):
    found = [r for r in report.rules if r.name == name]
    assert len(found) == 1, [r.name for r in report.rules]
    return found[0]


def rewrites(report) -> dict[str, int]:
    return {r.name: r.rewrites for r in report.rules if r.rewrites}


def reasons(report, name=COLLAPSE) -> list[str]:
    return [d.reason for d in rule(report, name).declines]


def conv_nodes(model):
    return [n for n in model.graph.node if n.op_type == "Conv"]


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def declined_once(model: onnx.ModelProto, rule_name: str):
    """Optimize; the rule rewrote nothing and declined exactly once: ``(out, report, that decline)``."""
    out, rep = run_opt(model)
    record = rule(rep, rule_name)
    assert record.rewrites == 0 and len(record.declines) == 1, record.declines
    return out, rep, record.declines[0]


def tensor_values(model: onnx.ModelProto, names: list[str], inputs: dict) -> list:
    """The tensors ``names`` of ``model`` (graph outputs or not) on ``inputs``, from onnxruntime."""
    from onnxrep.verification import run
    m = onnx.ModelProto()
    m.CopyFrom(model)
    declared = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in declared)
    out = run(m, inputs)
    return [out[n] for n in names]
