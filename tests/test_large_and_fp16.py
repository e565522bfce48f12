"""External data, the > 2 GB output branch (forced cheaply) and float16 models, through the CLI."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data

import onnxrep
import onnxrep.graph.io as io
import onnxrep.graph.convert as convert
import onnxrep.verification.sessions as runtime
import onnxrep.verification.compare as verification
from onnxrep import cli

C, HW = 8, 8


# --------------------------------------------------------------------------- models


def repvgg_block(dtype=np.float32, seed: int = 0, channels: int = C) -> tuple[onnx.ModelProto, dict]:
    """``Relu(Conv3x3(x) + Conv1x1(x) + BN(x))`` with static input ``1xCx8x8``; returns the model and its
    parameters (in ``dtype``)."""
    rng = np.random.default_rng(seed)
    c = channels
    p = {"w3": rng.normal(0, (1 / (9 * c)) ** 0.5, (c, c, 3, 3)), "b3": rng.normal(0, 0.5, c),
         "w1": rng.normal(0, (1 / c) ** 0.5, (c, c, 1, 1)), "b1": rng.normal(0, 0.5, c),
         "g": rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c), "be": rng.normal(0, 0.5, c),
         "m": rng.normal(0, 0.5, c), "v": rng.uniform(0.5, 2.0, c)}
    p = {k: np.asarray(v, dtype=dtype) for k, v in p.items()}
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("Conv", ["x", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], name="conv3"),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[1, 1], name="conv1"),
             helper.make_node("Add", ["c3", "c1"], ["s1"], name="add1"),
             helper.make_node("BatchNormalization", ["x", "g", "be", "m", "v"], ["bn"], name="bn_id", epsilon=1e-5),
             helper.make_node("Add", ["s1", "bn"], ["s2"], name="add2"),
             helper.make_node("Relu", ["s2"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", elem, [1, c, HW, HW])],
                              [helper.make_tensor_value_info("y", elem, [1, c, HW, HW])],
                              [numpy_helper.from_array(v, k) for k, v in p.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, p


def save_external(model: onnx.ModelProto, path: Path) -> Path:
    """Save with every initializer in ``<name>.data`` beside ``path`` (size_threshold=0)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    return path


def set_location(path: Path, location: str) -> None:
    """Point every external initializer of the model file ``path`` at ``location``."""
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, str(path))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".onnxrep")]


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def external_initializers(path: Path) -> dict[str, str | None]:
    """initializer name -> external location (None when stored inline)."""
    m = onnx.load(str(path), load_external_data=False)
    return {t.name: ({e.key: e.value for e in t.external_data}.get("location") if uses_external_data(t) else None)
            for t in m.graph.initializer}


@pytest.fixture
def ext_model(tmp_path):
    """A small RepVGG block saved with all initializers external, in its own folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    model, _ = repvgg_block()
    path = save_external(model, folder / "block.onnx")
    assert set(external_initializers(path).values()) == {"block.onnx.data"}
    return path


# --------------------------------------------------------------------------- external data input


def test_external_data_input_is_loaded_optimized_verified_and_written(ext_model, tmp_path, capsys):
    before = snapshot(ext_model.parent)
    out = tmp_path / "out" / "deploy.onnx"
    out.parent.mkdir()
    code, stdout, err = run(["optimize", ext_model, out, "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    assert err == ""
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["written"] is True
    assert (report["before"]["nodes"], report["after"]["nodes"]) == (6, 2)
    assert (report["before"]["convs"], report["after"]["convs"]) == (2, 1)
    assert report["before"]["params"] == 9 * C * C + C * C + 6 * C
    assert report["after"]["params"] == 9 * C * C + C
    assert report["verification"]["passed"] is True
    # the output loads (with whatever external data it has) and verifies against the input
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]
    result = onnxrep.verify(str(ext_model), str(out))
    assert result.passed and result.max_rel < 1e-5
    # the input files are byte-for-byte unchanged; no temporary folder anywhere
    assert snapshot(ext_model.parent) == before
    assert leftovers(ext_model.parent) == [] and leftovers(out.parent) == []
    assert sorted(p.name for p in out.parent.iterdir()) in (["deploy.onnx"], ["deploy.onnx", "deploy.onnx.data"])


def test_external_data_input_gives_external_data_output(ext_model, tmp_path, capsys):
    out = tmp_path / "deploy.onnx"
    code, _, err = run(["optimize", ext_model, out, "-q"], capsys)
    assert code == 0, err
    assert (tmp_path / "deploy.onnx.data").is_file()
    locations = external_initializers(out)
    merged = [n for n in locations if n.endswith("_weight")]
    assert merged and all(locations[n] == "deploy.onnx.data" for n in merged)


def test_missing_external_data_file_is_exit_3_naming_it(ext_model, tmp_path, capsys):
    (ext_model.parent / "block.onnx.data").unlink()
    out = tmp_path / "deploy.onnx"
    code, stdout, err = run(["optimize", ext_model, out], capsys)
    assert code == 3
    assert err.count("\n") == 1 and err.startswith("onnxrep: error: ")
    assert "block.onnx.data" in err and "missing" in err
    assert "Traceback" not in err
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("location, expect", [
    ("../block.onnx.data", "points outside"),        # an existing file outside the model's folder
    ("../no-such.data", "'../no-such.data'"),        # outside and missing
    ("nested/no-such.data", "'nested/no-such.data'"),  # inside, missing
    ("ABSOLUTE", "absolute path"),                   # an absolute path to an existing file
])
def test_external_data_location_outside_or_missing_is_exit_3(ext_model, tmp_path, capsys, location, expect):
    folder = ext_model.parent
    (folder / "block.onnx.data").rename(tmp_path / "block.onnx.data")  # the data now lives one level up
    if location == "ABSOLUTE":
        location = str(tmp_path / "block.onnx.data")
    set_location(ext_model, location)
    out = tmp_path / "deploy.onnx"
    code, _, err = run(["optimize", ext_model, out], capsys)
    assert code == 3, err
    assert err.count("\n") == 1 and err.startswith("onnxrep: error: ") and "Traceback" not in err
    assert expect in err
    assert not out.exists() and leftovers(tmp_path) == [] and leftovers(folder) == []


def test_truncated_external_data_is_exit_3(ext_model, tmp_path, capsys):
    data = ext_model.parent / "block.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    code, _, err = run(["optimize", ext_model, tmp_path / "deploy.onnx"], capsys)
    assert code == 3
    assert err.count("\n") == 1 and "external data" in err and "1000" in err


# --------------------------------------------------------------------------- the > 2 GB branch, forced


@pytest.fixture
def tiny_limits(monkeypatch):
    """Make every model count as 'over 2 GB' for writing and for in-memory verification."""
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 16)


def test_forced_large_branch_writes_external_data_and_verifies(tmp_path, capsys, tiny_limits):
    model, _ = repvgg_block()
    src = tmp_path / "block.onnx"
    onnx.save(model, str(src))  # plain, no external data
    before = src.read_bytes()
    out = tmp_path / "deploy.onnx"
    code, _, err = run(["optimize", src, out, "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["verification"]["passed"] is True
    assert (tmp_path / "deploy.onnx.data").is_file()
    locations = external_initializers(out)
    weight = next(n for n in locations if n.endswith("_weight"))
    bias = next(n for n in locations if n.endswith("_bias"))
    assert locations[weight] == "deploy.onnx.data"   # 8*8*3*3*4 = 2304 bytes >= the 1 KiB threshold
    assert locations[bias] is None                  # 32 bytes stay inline
    assert (tmp_path / "deploy.onnx.data").stat().st_size == 9 * C * C * 4
    assert onnxrep.verify(str(src), str(out)).passed
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block.onnx", "deploy.onnx", "deploy.onnx.data", "r.json"]


def test_forced_large_branch_without_shape_inference(tmp_path, capsys, tiny_limits, monkeypatch):
    """Shape inference only helps: when it yields nothing the block still collapses."""
    monkeypatch.setattr(convert, "inferred_shapes", lambda m: {})
    model, _ = repvgg_block()
    src = save_external(model, tmp_path / "block.onnx")
    out = tmp_path / "deploy.onnx"
    code, _, err = run(["optimize", src, out, "-q"], capsys)
    assert code == 0, err
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Conv", "Relu"]
    assert onnxrep.verify(str(src), str(out)).passed


def test_forced_large_in_memory_verification(tmp_path, capsys, tiny_limits, monkeypatch):
    """An in-memory candidate 'over the limit' goes to ORT through a temporary external-data copy: the
    caller's model is not modified and the temporary folder is removed."""
    sys_tmp = tmp_path / "systmp"
    sys_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sys_tmp))
    made = []
    real = runtime.tempfile.TemporaryDirectory

    def spy(*a, **k):
        d = real(*a, **k)
        made.append(d.name)
        return d

    monkeypatch.setattr(runtime.tempfile, "TemporaryDirectory", spy)
    model, _ = repvgg_block()
    src = tmp_path / "block.onnx"
    onnx.save(model, str(src))
    optimized, _ = onnxrep.optimize(model)
    n_bytes = optimized.ByteSize()
    result = onnxrep.verify(str(src), optimized)
    assert result.passed and len(made) == 1 and made[0].startswith(str(sys_tmp))
    assert optimized.ByteSize() == n_bytes  # the copy, not the caller's model, was externalized
    assert not any(uses_external_data(t) for t in optimized.graph.initializer)
    code, stdout, err = run(["inspect", src, "--verify"], capsys)
    assert code == 0, err
    assert len(made) == 2 and " ok" in stdout
    assert list(sys_tmp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block.onnx", "systmp"]


def test_rerun_into_existing_external_output_from_its_folder(tmp_path, capsys, tiny_limits, monkeypatch):
    model, _ = repvgg_block()
    onnx.save(model, str(tmp_path / "block.onnx"))
    monkeypatch.chdir(tmp_path)
    assert run(["optimize", "block.onnx", "deploy.onnx", "-q"], capsys)[0] == 0
    code, _, err = run(["optimize", "block.onnx", "deploy.onnx", "-q"], capsys)
    assert code == 0, err


def test_unrelated_file_in_cwd_does_not_block_external_output(tmp_path, capsys, tiny_limits, monkeypatch):
    model, _ = repvgg_block()
    onnx.save(model, str(tmp_path / "block.onnx"))
    (tmp_path / "out").mkdir()
    (tmp_path / "deploy.onnx.data").write_text("not ours")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["optimize", "block.onnx", tmp_path / "out" / "deploy.onnx", "-q"], capsys)
    assert code == 0, err
    assert (tmp_path / "deploy.onnx.data").read_text() == "not ours"


def test_in_memory_verification_ignores_files_in_cwd(tmp_path, tiny_limits, monkeypatch):
    model, _ = repvgg_block()
    src = tmp_path / "block.onnx"
    onnx.save(model, str(src))
    optimized, _ = onnxrep.optimize(model)
    (tmp_path / "model.onnx.data").write_text("not ours")
    monkeypatch.chdir(tmp_path)
    assert onnxrep.verify(str(src), optimized).passed


# --------------------------------------------------------------------------- float16


def merged_reference(p: dict, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """The RepVGG merge in float64 from the (float16) parameters."""
    f = {k: v.astype(np.float64) for k, v in p.items()}
    w = f["w3"].copy()
    w[:, :, 1:2, 1:2] += f["w1"]
    s = f["g"] / np.sqrt(f["v"] + eps)
    w[np.arange(C), np.arange(C), 1, 1] += s
    b = f["b3"] + f["b1"] + f["be"] - f["m"] * s
    return w, b


def merged_in_float16(p: dict, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """The same merge computed naively in float16 arithmetic (what onnxrep must *not* do)."""
    h = np.float16
    w = p["w3"].copy()
    w[:, :, 1:2, 1:2] += p["w1"]
    s = p["g"] / np.sqrt(p["v"] + h(eps))
    w[np.arange(C), np.arange(C), 1, 1] += s
    b = p["b3"] + p["b1"] + p["be"] - p["m"] * s
    return w, b


def ulps16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float16 units in the last place (monotonic integer mapping of the bit patterns)."""
    def key(x):
        i = np.asarray(x, np.float16).view(np.int16).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFF), i)
    return np.abs(key(a) - key(b))


def test_fp16_block_merges_in_float64_then_casts(tmp_path, capsys):
    model, p = repvgg_block(np.float16, seed=3)
    src = tmp_path / "block16.onnx"
    onnx.save(model, str(src))
    out = tmp_path / "deploy16.onnx"
    code, _, err = run(["optimize", src, out, "--rtol", "1e-2", "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    v = report["verification"]
    assert v["passed"] is True and v["rtol"] == 1e-2 and v["max_rel"] < 1e-2
    m = onnx.load(str(out))
    assert [n.op_type for n in m.graph.node] == ["Conv", "Relu"]
    conv = m.graph.node[0]
    inits = {t.name: t for t in m.graph.initializer}
    wt, bt = inits[conv.input[1]], inits[conv.input[2]]
    assert wt.data_type == bt.data_type == TensorProto.FLOAT16
    w, b = numpy_helper.to_array(wt), numpy_helper.to_array(bt)
    assert w.dtype == b.dtype == np.float16 and w.shape == (C, C, 3, 3)
    w64, b64 = merged_reference(p)
    assert np.isfinite(w).all() and np.isfinite(b).all()
    assert ulps16(w, w64.astype(np.float16)).max() <= 1
    assert ulps16(b, b64.astype(np.float16)).max() <= 1
    assert (w == w64.astype(np.float16)).mean() > 0.99 and (b == b64.astype(np.float16)).mean() > 0.99
    # the test can tell float64 arithmetic from float16 arithmetic on these parameters
    w16, b16 = merged_in_float16(p)
    assert (w16 != w64.astype(np.float16)).sum() + (b16 != b64.astype(np.float16)).sum() > 0
    # and the output model runs in onnxruntime, close to the float16 input at fp16 tolerance
    result = onnxrep.verify(str(src), str(out), rtol=1e-2)
    assert result.passed and result.max_rel < 1e-2


def fp16_overflow_model() -> onnx.ModelProto:
    """``t = 0.001 * x`` (also a graph output, so it is a root), then ``BN(Conv(t))`` with
    ``s = gamma / sqrt(var + eps) ~ 3.2e4``. Conv weights reach 4, so ``W * s`` exceeds 65504, while the
    activations stay small (``t`` is small): the float16 model is fine, the merged conv is not."""
    rng = np.random.default_rng(0)
    h = np.float16
    w = rng.normal(0, 0.5, (C, C, 3, 3)).astype(h)
    w[0, 0, 1, 1] = 4.0
    inits = [numpy_helper.from_array(np.asarray(0.001, h), "k"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(C, h), "b"),
             numpy_helper.from_array(np.full(C, 1000, h), "g"), numpy_helper.from_array(np.zeros(C, h), "be"),
             numpy_helper.from_array(np.zeros(C, h), "m"), numpy_helper.from_array(np.full(C, 1e-3, h), "v")]
    nodes = [helper.make_node("Mul", ["x", "k"], ["t"], name="scale"),
             helper.make_node("Conv", ["t", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["bn"], name="bn", epsilon=1e-5),
             helper.make_node("Relu", ["bn"], ["y"], name="relu")]
    f16 = TensorProto.FLOAT16
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("x", f16, [1, C, HW, HW])],
                              [helper.make_tensor_value_info("y", f16, [1, C, HW, HW]),
                               helper.make_tensor_value_info("t", f16, [1, C, HW, HW])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_fp16_overflowing_merge_is_declined(tmp_path, capsys):
    model = fp16_overflow_model()
    s = 1000 / np.sqrt(1e-3 + 1e-5)
    assert 4.0 * s > 65504  # the merged weight would overflow float16
    src = tmp_path / "overflow16.onnx"
    onnx.save(model, str(src))
    out = tmp_path / "deploy16.onnx"
    code, stdout, err = run(["optimize", src, out, "--explain", "--rtol", "1e-2", "--json", tmp_path / "r.json"],
                            capsys)
    assert code == 0, err
    m = onnx.load(str(out))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Conv") == 1 and ops.count("BatchNormalization") == 1  # not merged
    for t in m.graph.initializer:
        assert np.isfinite(numpy_helper.to_array(t).astype(np.float64)).all(), t.name
    report = json.loads((tmp_path / "r.json").read_text())
    reasons = [d["reason"] for r in report["rules"] for d in r["declined"]]
    overflow = [r for r in reasons if "overflow" in r and "float16" in r]
    assert overflow, reasons
    assert any(r in stdout for r in overflow)  # --explain prints it
    assert report["verification"]["passed"] is True
    # the reference itself is finite: this is a real model, not inf == inf
    outs = verification.run(str(src), verification.make_inputs(str(src)))
    assert all(np.isfinite(v.astype(np.float64)).all() for v in outs.values())
    assert float(np.abs(outs["y"].astype(np.float64)).max()) > 1.0
    # the same through the API: report.declines()
    _, rep = onnxrep.optimize(model)
    assert any("overflow" in d.reason and "float16" in d.reason for d in rep.declines())


# --------------------------------------------------------------------------- a real > 2 GB ModelProto (opt-in)


@pytest.mark.skipif(os.environ.get("ONNXREP_LARGE_TESTS") != "1",
                    reason="needs ~7 GB of RAM (a 2.2 GB ModelProto), ~5 s: set ONNXREP_LARGE_TESTS=1 "
                           "(benchmarks/large_model.py runs the full CLI on a 2.18 GB model)")
def test_in_memory_model_over_2gb_optimizes():
    model, _ = repvgg_block()
    big = model.graph.initializer.add()  # unused: gs drops it, the optimized model is small again
    big.name, big.data_type, big.dims[:] = "unused_big", TensorProto.UINT8, [2_200_000_000]
    big.raw_data = bytes(2_200_000_000)
    optimized, report = onnxrep.optimize(model)
    assert (report.before.convs, report.after.convs) == (2, 1)
    assert [n.op_type for n in optimized.graph.node] == ["Conv", "Relu"]


def test_asking_whether_a_conv_output_is_constant_loads_no_weight():
    """GraphContext.constant evaluates small tensors computed from constants (an Expand of a scalar):
    it must read the sizes of a node's inputs before loading any. The first version loaded every
    conv weight of the 2.18 GB model in fold-constants (peak RSS 2.29 -> 4.47 GB in that phase)."""
    import onnx_graphsurgeon as gs
    from onnx import numpy_helper

    from onnxrep.graph import GraphContext
    from onnxrep.rules.fold_constants import FoldConstants

    class NeverLoaded(gs.ir.tensor.LazyValues):
        def load(self):
            raise AssertionError("a weight was loaded")

    w = NeverLoaded(numpy_helper.from_array(np.zeros((4, 4, 3, 3), np.float32), "w"))
    x = gs.Variable("x", dtype=np.float32, shape=[1, 4, 8, 8])
    y = gs.Variable("y", dtype=np.float32, shape=[1, 4, 8, 8])
    z = gs.Variable("z", dtype=np.float32, shape=[1, 4, 8, 8])
    graph = gs.Graph(nodes=[gs.Node("Conv", inputs=[x, gs.Constant("w", w)], outputs=[y], attrs={"pads": [1] * 4}),
                            gs.Node("Relu", inputs=[y], outputs=[z])], inputs=[x], outputs=[z], opset=17)
    ctx = GraphContext(graph, 17)
    assert ctx.constant(y) is None and ctx.constant(z) is None
    FoldConstants().run(ctx)
    assert ctx.constant_info(graph.nodes[0].inputs[1]) == ((4, 4, 3, 3), np.dtype(np.float32))
