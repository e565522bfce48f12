"""Benchmark onnxrep against the authors' PyTorch deploy conversion.

For every network (a name in ``models.export.MODELS``):

1. export the training form and the authors' deploy form to ONNX (temp dir);
2. run ``onnxrep.optimize`` on the training form (wall time: median of 3 runs, in memory, load
   and save excluded) and ``onnxrep.verify`` it against the training form;
3. time onnxruntime (CPUExecutionProvider, 1 intra-op + 1 inter-op thread, sequential, default
   ``ORT_ENABLE_ALL``) on train / optimized / deploy, interleaved round-robin after a warm-up;
4. print a table and write ``BENCHMARKS.md``.

A second, latency-free table repeats steps 1-2 for every export mode (legacy, dynamo, nofold)
to show structural parity across exporters.

    python benchmarks/run.py                                  # default full run, writes BENCHMARKS.md
    python benchmarks/run.py --models repvgg_a0 --rounds 50 --no-write

New families are picked up by name once registered in ``models.export.MODELS``
(e.g. ``--models dbb_resnet18``); nothing here is family-specific.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import onnxrep  # noqa: E402
from helpers import cpu_model, git_revision, load_average, md_table, text_table  # noqa: E402
from onnxrep.graph.stats import graph_stats  # noqa: E402

DEFAULT_MODELS = ("repvgg_a0", "repvgg_a0_g4", "acnet_resnet18", "dbb_resnet18", "mobileone_s0", "fastvit_t8",
                  "repvit_m0_9", "repghost_0_5", "replknet_tiny", "yolov6_repconv", "yolov10n", "yolov7_implicit")
DEFAULT_SHAPE = (1, 3, 224, 224)
#: export mode -> keyword arguments of ``models.export.export_onnx``
EXPORT_MODES = {
    "legacy": dict(dynamo=False, constant_folding=True),
    "dynamo": dict(dynamo=True, constant_folding=True),
    "nofold": dict(dynamo=False, constant_folding=False),
}
FORMS = ("train", "opt", "deploy")
PARITY_THRESHOLD_PCT = 2.0
OPT_REPEATS = 3


# --------------------------------------------------------------------------- helpers


def _pct(a: float, b: float) -> float:
    return (a - b) / b * 100.0


def _fmt_err(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def input_name(model: onnx.ModelProto) -> str:
    inits = {t.name for t in model.graph.initializer}
    real = [i.name for i in model.graph.input if i.name not in inits]
    if len(real) != 1:
        raise RuntimeError(f"expected one graph input, found {real}")
    return real[0]


def _is_default(op_type: str, domain: str, opset: int, a: onnx.AttributeProto, value) -> bool:
    """Attribute spelled out with its default value (e.g. the dynamo exporter's auto_pad="NOTSET")."""
    if a.name in ("dilations", "strides") and isinstance(value, list) and value and all(x == 1 for x in value):
        return True
    if a.name == "pads" and isinstance(value, list) and all(x == 0 for x in value):
        return True
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
        default = schema.attributes[a.name].default_value
    except Exception:
        return False
    if default is None or not default.name:
        return False
    return onnx.helper.get_attribute_value(default) == value


def graph_signature(model: onnx.ModelProto) -> Counter:
    """Name-free multiset of nodes: op type, attributes, and the shapes of constant inputs.

    Two graphs with the same signature have the same ops with the same attributes and the same
    weight shapes (names, node order and initializer order are ignored; attributes spelled out
    with their default value count as absent).
    """
    init_shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    opsets = {imp.domain: imp.version for imp in model.opset_import}
    sig = Counter()
    for n in model.graph.node:
        attrs = []
        for a in sorted(n.attribute, key=lambda a: a.name):
            v = onnx.helper.get_attribute_value(a)
            if _is_default(n.op_type, n.domain, opsets.get(n.domain, opsets.get("", 17)), a, v):
                continue
            if isinstance(v, onnx.TensorProto):
                v = ("tensor", tuple(v.dims))
            elif isinstance(v, (list, tuple)):
                v = tuple(v)
            elif isinstance(v, bytes):
                v = v.decode(errors="replace")
            attrs.append((a.name, v))
        consts = tuple(init_shapes.get(i, "-") if i else "" for i in n.input)
        sig[(n.op_type, tuple(attrs), consts)] += 1
    return sig


def signature_diff(a: onnx.ModelProto, b: onnx.ModelProto) -> str:
    sa, sb = graph_signature(a), graph_signature(b)
    if sa == sb:
        return "identical"
    only_a, only_b = sa - sb, sb - sa
    def part(c: Counter, where: str) -> str:
        ops = Counter()
        for k, v in c.items():
            ops[k[0]] += v
        return f"{sum(c.values())} node(s) only in {where}" + (
            f" ({', '.join(f'{o} {n}' for o, n in sorted(ops.items()))})" if c else "")
    return f"{part(only_a, 'opt')}, {part(only_b, 'deploy')}"


# --------------------------------------------------------------------------- onnxruntime

def session_options(optimized_model_path: str | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized_model_path:
        so.optimized_model_filepath = optimized_model_path
    return so


def make_session(model: onnx.ModelProto | str, optimized_model_path: str | None = None) -> ort.InferenceSession:
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, session_options(optimized_model_path), providers=["CPUExecutionProvider"])


def ort_fused_graph(model: onnx.ModelProto, path: str) -> tuple[Counter, Counter]:
    """The graph onnxruntime actually runs (after ORT_ENABLE_ALL fusions): op histogram and signature."""
    make_session(model, path)
    m = onnx.load(path)
    hist = Counter(f"{n.domain + '.' if n.domain not in ('', 'ai.onnx') else ''}{n.op_type}" for n in m.graph.node)
    return hist, graph_signature(m)


@dataclass
class Latency:
    times_ms: list[float]

    @property
    def median(self) -> float:
        return float(np.median(self.times_ms))

    @property
    def p10(self) -> float:
        return float(np.percentile(self.times_ms, 10))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.times_ms, 90))

    def cell(self) -> str:
        return f"{self.median:.2f} [{self.p10:.1f}–{self.p90:.1f}]"


def measure_latency(models: dict[str, onnx.ModelProto], shape: tuple[int, ...], rounds: int | None,
                    target_seconds: float, warmup: int, seed: int = 0) -> tuple[dict[str, Latency], int, float]:
    """Interleaved round-robin timing. Returns per-form latencies, rounds run, paired opt/deploy ratio.

    Each round runs every session once; the starting session rotates from round to round so that
    no form always runs right after the same other form. ``rounds=None``: pick the number of
    rounds that makes the measured part take about ``target_seconds``.
    """
    sessions = {k: make_session(m) for k, m in models.items()}
    name = input_name(next(iter(models.values())))
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    feed = {name: x}
    keys = list(sessions)
    for _ in range(warmup):
        for k in keys:
            sessions[k].run(None, feed)
    if rounds is None:
        t0 = time.perf_counter()
        for _ in range(3):
            for k in keys:
                sessions[k].run(None, feed)
        per_round = (time.perf_counter() - t0) / 3
        rounds = int(min(2000, max(20, math.ceil(target_seconds / per_round))))
    times = {k: [] for k in keys}
    pc = time.perf_counter_ns
    for r in range(rounds):
        for j in range(len(keys)):
            k = keys[(r + j) % len(keys)]
            s = sessions[k]
            t0 = pc()
            s.run(None, feed)
            times[k].append((pc() - t0) / 1e6)
    lat = {k: Latency(v) for k, v in times.items()}
    ratio = float("nan")
    if "opt" in times and "deploy" in times:
        ratio = float(np.median(np.asarray(times["opt"]) / np.asarray(times["deploy"])))
    return lat, rounds, ratio


# --------------------------------------------------------------------------- one network, one mode

@dataclass
class Result:
    network: str
    mode: str
    stats: dict  # form -> GraphStats
    max_abs: float
    max_rel: float
    passed: bool
    opt_seconds: float
    export_seconds: float
    structure: str
    rewrites: int
    opt_model: onnx.ModelProto = field(repr=False)
    deploy_model: onnx.ModelProto = field(repr=False)
    train_model: onnx.ModelProto = field(repr=False)
    latency: dict | None = None
    rounds: int = 0
    paired_ratio: float = float("nan")
    ort_ops: dict | None = None
    rerun_pct: float | None = None   # opt vs deploy in the re-run (only when outside the band)
    aa_pct: float | None = None      # deploy copy vs deploy in the re-run (A/A noise floor)
    rerun_paired: float = float("nan")
    rerun_min: tuple = (float("nan"), float("nan"))
    notes: list[str] = field(default_factory=list)

    @property
    def opt_vs_deploy_pct(self) -> float:
        return _pct(self.latency["opt"].median, self.latency["deploy"].median)


def run_mode(network: str, mode: str, shape: tuple[int, ...], tmp: str, seed: int,
             built: tuple) -> Result:
    from models.export import export_onnx

    train_mod, deploy_mod = built
    kwargs = EXPORT_MODES[mode]
    paths = {}
    t0 = time.perf_counter()
    for form, mod in (("train", train_mod), ("deploy", deploy_mod)):
        paths[form] = export_onnx(mod, os.path.join(tmp, f"{network}_{mode}_{form}.onnx"), shape, **kwargs)
    export_seconds = time.perf_counter() - t0
    train = onnx.load(paths["train"])
    deploy = onnx.load(paths["deploy"])

    durations = []
    opt = report = None
    for _ in range(OPT_REPEATS):
        t0 = time.perf_counter()
        opt, report = onnxrep.optimize(train)
        durations.append(time.perf_counter() - t0)
    onnx.save(opt, os.path.join(tmp, f"{network}_{mode}_opt.onnx"))

    res = onnxrep.verify(train, opt, input_shapes={input_name(train): shape}, seed=seed)
    return Result(network, mode, {"train": graph_stats(train), "opt": graph_stats(opt), "deploy": graph_stats(deploy)},
                  res.max_abs, res.max_rel, res.passed, statistics.median(durations), export_seconds,
                  signature_diff(opt, deploy), report.rewrites, opt, deploy, train)


# --------------------------------------------------------------------------- tables

MAIN_HEADER = ["network", "nodes t/o/d", "Convs t/o/d", "params t/o/d", "MACs t/o/d", "max abs err (rel)",
               "onnxrep time", "ORT train ms", "ORT opt ms", "ORT deploy ms", "opt vs deploy",
               "paired opt/deploy", "ORT-fused graph opt = deploy"]
PARITY_HEADER = ["network", "exporter", "nodes t/o/d", "Convs t/o/d", "params t/o/d", "MACs t/o/d",
                 "opt = deploy graph",
                 "max abs err (rel)", "verify", "onnxrep time"]


def _tod(stats, attr) -> str:
    return "/".join(str(getattr(stats[f], attr)) for f in FORMS)


def _millions(stats, attr) -> str:
    """``t/o/d`` in millions, with the opt/deploy ratio when they differ."""
    v = {f: getattr(stats[f], attr) for f in FORMS}
    cell = "/".join(f"{v[f] / 1e6:.3f}" for f in FORMS) + " M"
    if v["opt"] != v["deploy"] and v["deploy"]:
        cell += f" ({(v['opt'] / v['deploy'] - 1) * 100:+.2f}%)"
    return cell


def _err_cell(r: Result) -> str:
    return f"{_fmt_err(r.max_abs)} ({_fmt_err(r.max_rel)})"


def main_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        lat = r.latency
        rows.append([r.network, _tod(r.stats, "nodes"), _tod(r.stats, "convs"), _millions(r.stats, "params"),
                     _millions(r.stats, "macs"),
                     _err_cell(r), f"{r.opt_seconds * 1e3:.0f} ms",
                     lat["train"].cell(), lat["opt"].cell(), lat["deploy"].cell(),
                     f"{r.opt_vs_deploy_pct:+.1f}%", f"{(r.paired_ratio - 1) * 100:+.1f}%",
                     "n/a" if r.ort_ops is None else ("yes" if r.ort_ops["opt"] == r.ort_ops["deploy"] else "no")])
    return rows


def parity_rows(results: list[Result]) -> list[list[str]]:
    return [[r.network, r.mode, _tod(r.stats, "nodes"), _tod(r.stats, "convs"), _millions(r.stats, "params"),
             _millions(r.stats, "macs"),
             "yes" if r.structure == "identical" else r.structure, _err_cell(r),
             "pass" if r.passed else "FAIL", f"{r.opt_seconds * 1e3:.0f} ms"] for r in results]


# --------------------------------------------------------------------------- reading

def reading(results: list[Result], parity: list[Result]) -> str:
    nets = len(results)
    def at_most(r) -> bool:
        o, d = r.stats["opt"], r.stats["deploy"]
        return (o.nodes <= d.nodes and o.convs <= d.convs and o.params <= d.params * 1.001
                and o.macs <= d.macs * 1.001)
    ident = [r for r in results if r.structure == "identical"]
    worst_err = max(r.max_abs for r in parity + results)
    worst_rel = max(r.max_rel for r in parity + results)
    all_pass = all(r.passed for r in parity + results)
    parts = []
    over = [f"{r.network} ({r.mode})" for r in parity + results if not at_most(r)]
    if not over:
        parts.append(f"On {'all ' if nets > 1 else ''}{nets} network{'s' if nets > 1 else ''} and every export mode "
                     "onnxrep turns the training-form graph into one with no more nodes, Convs, parameters or MACs "
                     "than the authors' deploy form"
                     + (f" ({len(ident)} of {nets} with exactly its ops, attributes and weight shapes)" if ident else ""))
    else:
        parts.append("onnxrep's output is larger than the deploy form on " + ", ".join(over))
    parts[-1] += (f", with a largest absolute error of {worst_err:.1e} (relative to the "
                  f"output's largest magnitude: at most {worst_rel:.1e}) against the training form "
                  f"({'every check passes' if all_pass else 'SOME CHECKS FAIL'} at rtol 1e-4/atol 1e-5).")
    nofold_extra = [r for r in parity if r.mode == "nofold" and r.stats["opt"].nodes < r.stats["deploy"].nodes]
    if nofold_extra:
        parts.append("Without constant folding the exported deploy form itself keeps some foldable nodes "
                     f"({', '.join(r.network for r in nofold_extra)}), so onnxrep's output is smaller than it there.")
    pcts = [r.opt_vs_deploy_pct for r in results]
    out = [r for r in results if r.opt_vs_deploy_pct > PARITY_THRESHOLD_PCT]  # faster than deploy is fine
    speed = [(_pct(r.latency["train"].median, r.latency["opt"].median), r.network) for r in results]
    def span(lo: float, hi: float, fmt: str) -> str:
        return format(lo, fmt) + "%" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}% to {hi:{fmt}}%"

    if not out:
        lat_text = (f"With onnxruntime on one thread the optimized model's median latency is within "
                    f"{max(pcts):+.1f}% of the deploy form's or faster ({span(min(pcts), max(pcts), '+.1f')}; the "
                    f"band is +{PARITY_THRESHOLD_PCT:g}%)")
    else:
        lat_text = (f"With onnxruntime on one thread the optimized model's median latency differs from the deploy "
                    f"form's by {span(min(pcts), max(pcts), '+.1f')}; slower by more than {PARITY_THRESHOLD_PCT:g}%: "
                    + ", ".join(f"{r.network} ({r.opt_vs_deploy_pct:+.1f}%)" for r in out) + " (see notes)")
    parts.append(lat_text
                 + f", while the unmerged training form is {span(min(s for s, _ in speed), max(s for s, _ in speed), '.0f')} "
                   "slower than the optimized one.")
    ort_same = [r for r in results if r.ort_ops is not None and r.ort_ops["opt"] == r.ort_ops["deploy"]]
    if len(ort_same) == nets:
        parts.append("onnxruntime ends up running the same graph for both (same fused ops, attributes and weight "
                     "shapes), so the remaining differences between opt and deploy are measurement noise.")
    for r in out:
        if r.aa_pct is not None:
            head = (f"For {r.network} a re-run gave {r.rerun_pct:+.1f}% and a control comparing the deploy model "
                    f"with a second session of itself gave {r.aa_pct:+.1f}%")
            if abs(r.rerun_pct) <= PARITY_THRESHOLD_PCT or (r.rerun_pct > 0) != (r.opt_vs_deploy_pct > 0):
                parts.append(head + ": the first gap did not reproduce, i.e. it was noise.")
            elif abs(r.aa_pct) >= PARITY_THRESHOLD_PCT:
                parts.append(head + f": two sessions of the identical model already differ by more than "
                             f"{PARITY_THRESHOLD_PCT:g}%, so at this load a median comparison cannot resolve a "
                             f"{PARITY_THRESHOLD_PCT:g}% gap; the paired per-round ratio "
                             f"({(r.rerun_paired - 1) * 100:+.1f}%) and the fastest runs (opt {r.rerun_min[0]:.2f} ms "
                             f"vs deploy {r.rerun_min[1]:.2f} ms) are the robust figures.")
            else:
                parts.append(head + ": the gap persisted beyond the A/A control, which this run cannot explain "
                             "away; see the notes.")
    spread = max((r.latency["opt"].p90 - r.latency["opt"].p10) / r.latency["opt"].median for r in results)
    if spread > 0.2:
        parts.append(f"The p10-p90 spreads are wide (up to {spread * 100:.0f}% of the median): other processes were "
                     "competing for the two cores (see the load average), which is why the three sessions are "
                     "interleaved and the paired per-round ratio is also given.")
    return " ".join(parts)


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    global PARITY_THRESHOLD_PCT
    from models.export import MODELS, build, shape_arg

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME",
                    help=f"networks from models.export.MODELS (default: {' '.join(DEFAULT_MODELS)}; known: "
                         f"{', '.join(MODELS)})")
    ap.add_argument("--input-shape", type=shape_arg, default=DEFAULT_SHAPE, help="default 1x3x224x224")
    ap.add_argument("--exporter", choices=list(EXPORT_MODES), default="legacy",
                    help="export mode for the latency table (nofold = legacy without constant folding)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds per network (default: auto, ~--target-seconds per network)")
    ap.add_argument("--target-seconds", type=float, default=15.0,
                    help="timing budget per network when --rounds is not given (default 15)")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up runs per session (default 5)")
    ap.add_argument("--parity-modes", nargs="*", default=list(EXPORT_MODES), choices=list(EXPORT_MODES),
                    help="export modes for the counts-only parity table (default: all; none to skip)")
    ap.add_argument("--band", type=float, default=PARITY_THRESHOLD_PCT,
                    help="opt-vs-deploy parity band in %% (default 2); outside it a re-run with an A/A control "
                         "is added to the notes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"), help="Markdown report path")
    ap.add_argument("--no-write", action="store_true", help="only print, do not write the report")
    args = ap.parse_args(argv)

    PARITY_THRESHOLD_PCT = args.band
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    shape = tuple(args.input_shape)
    started = _dt.datetime.now().astimezone()
    load_before = load_average()
    wall0 = time.perf_counter()

    main_results: list[Result] = []
    parity_results: list[Result] = []
    modes = [args.exporter] + [m for m in args.parity_modes if m != args.exporter]
    with tempfile.TemporaryDirectory(prefix="onnxrep_bench_") as tmp:
        for net in args.models:
            train_mod, deploy_mod, _ = build(net, args.seed)
            for mode in modes:
                _log(f"[{net}] {mode}: export + optimize + verify")
                r = run_mode(net, mode, shape, tmp, args.seed, (train_mod, deploy_mod))
                _log(f"[{net}] {mode}: nodes {_tod(r.stats, 'nodes')}, convs {_tod(r.stats, 'convs')}, "
                     f"max abs err {r.max_abs:.2e}, onnxrep {r.opt_seconds * 1e3:.0f} ms, "
                     f"export {r.export_seconds:.1f} s, opt vs deploy graph: {r.structure}")
                if mode in args.parity_modes:
                    parity_results.append(r)
                if mode != args.exporter:
                    continue
                fused = {f: ort_fused_graph(m, os.path.join(tmp, f"{net}_{f}_ort.onnx"))
                         for f, m in (("opt", r.opt_model), ("deploy", r.deploy_model))}
                r.ort_ops = {f: sig for f, (_, sig) in fused.items()}
                if r.ort_ops["opt"] != r.ort_ops["deploy"]:
                    r.notes.append(f"{net}: onnxruntime runs different graphs: opt {dict(fused['opt'][0])} vs deploy "
                                   f"{dict(fused['deploy'][0])}")
                else:
                    r.notes.append(f"{net}: onnxruntime runs {sum(fused['opt'][0].values())} nodes for both opt and "
                                   f"deploy: " + ", ".join(f"{k} {v}" for k, v in fused["opt"][0].most_common()))
                _log(f"[{net}] timing (ORT, 1 thread, interleaved)...")
                models = {"train": r.train_model, "opt": r.opt_model, "deploy": r.deploy_model}
                r.latency, r.rounds, r.paired_ratio = measure_latency(models, shape, args.rounds,
                                                                      args.target_seconds, args.warmup, args.seed)
                _log(f"[{net}] {r.rounds} rounds: " + ", ".join(f"{f} {r.latency[f].cell()} ms" for f in FORMS)
                     + f"; opt vs deploy {r.opt_vs_deploy_pct:+.1f}%")
                if r.opt_vs_deploy_pct > PARITY_THRESHOLD_PCT:
                    _log(f"[{net}] slower than deploy by more than {PARITY_THRESHOLD_PCT:g}%: re-measuring once "
                         "with an A/A control")
                    # opt, deploy and a second, independent session of the very same deploy model: the
                    # A/A gap is the noise floor of a median comparison on this machine right now.
                    ctrl = {"opt": r.opt_model, "deploy": r.deploy_model, "deploy_copy": r.deploy_model}
                    lat2, rounds2, ratio2 = measure_latency(ctrl, shape, r.rounds, args.target_seconds,
                                                            args.warmup, args.seed)
                    r.rerun_pct = _pct(lat2["opt"].median, lat2["deploy"].median)
                    r.aa_pct = _pct(lat2["deploy_copy"].median, lat2["deploy"].median)
                    r.rerun_paired = ratio2
                    r.rerun_min = (min(lat2["opt"].times_ms), min(lat2["deploy"].times_ms))
                    r.notes.append(f"{net}: first measurement {r.opt_vs_deploy_pct:+.1f}% (reported in the table). "
                                   f"Re-run of {rounds2} rounds interleaving opt, deploy and a second session of the "
                                   f"same deploy model: opt {lat2['opt'].cell()} ms, deploy {lat2['deploy'].cell()} ms, "
                                   f"deploy copy {lat2['deploy_copy'].cell()} ms; opt vs deploy {r.rerun_pct:+.1f}% "
                                   f"(paired {(ratio2 - 1) * 100:+.1f}%), A/A deploy copy vs deploy {r.aa_pct:+.1f}%. "
                                   f"Fastest runs: opt {min(lat2['opt'].times_ms):.2f} ms, deploy "
                                   f"{min(lat2['deploy'].times_ms):.2f} ms. ONNX graphs opt vs deploy: {r.structure}; "
                                   f"ORT-fused graphs "
                                   f"{'identical' if r.ort_ops['opt'] == r.ort_ops['deploy'] else 'differ'}.")
                main_results.append(r)
                r.train_model = r.opt_model = r.deploy_model = None  # free memory
            for r in parity_results:
                r.train_model = r.opt_model = r.deploy_model = None
    wall = time.perf_counter() - wall0
    load_after = load_average()

    main_tab = main_rows(main_results)
    parity_tab = parity_rows(parity_results)
    print()
    print(f"Latency table ({args.exporter} exporter, input {'x'.join(map(str, shape))}; ORT ms as median [p10–p90]):")
    print(text_table(MAIN_HEADER, main_tab))
    if parity_tab:
        print()
        print("Export-mode parity (counts only):")
        print(text_table(PARITY_HEADER, parity_tab))
    notes = [n for r in main_results for n in r.notes]
    if notes:
        print()
        print("Notes:")
        for n in notes:
            print(" -", n)
    text = reading(main_results, parity_results)
    print()
    print(text)
    print(f"\ntotal wall time {wall:.0f} s")

    if not args.no_write:
        cmd = "python " + " ".join(shlex.quote(a) for a in
                                   ([os.path.relpath(__file__, os.getcwd())] + list(sys.argv[1:] if argv is None else argv)))
        md = render_markdown(args, shape, cmd, started, wall, load_before, load_after, main_results,
                             main_tab, parity_tab, notes, text)
        out = Path(args.output)
        # keep sections other scripts own (benchmarks/large_model.py writes "## Large model ...")
        kept = ""
        if out.exists():
            old = out.read_text()
            i = old.find("\n## Large model")
            kept = old[i:] if i >= 0 else ""
        out.write_text(md.rstrip("\n") + "\n" + kept)
        _log(f"wrote {args.output}")
    return 0


def render_markdown(args, shape, cmd, started, wall, load_before, load_after, main_results, main_tab,
                    parity_tab, notes, text) -> str:
    try:
        import torch
        torch_v = torch.__version__
    except Exception:  # pragma: no cover
        torch_v = "n/a"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        usable = os.cpu_count()
    rounds = ", ".join(f"{r.network} {r.rounds}" for r in main_results)
    lines = [
        "# Benchmarks",
        "",
        "onnxrep merges the multi-branch training form of re-parameterizable networks (RepVGG, ACNet, DBB, "
        "MobileOne, FastViT, RepViT, RepGhost, RepLKNet, YOLOv6/v7/v10) into single convolutions directly on the "
        "exported ONNX graph, where that costs no more. This report compares its output with the "
        "authors' own PyTorch deploy conversion, exported the same way: graph size, numerical error against "
        "the training form, onnxrep's running time, and onnxruntime inference latency. It is generated by "
        "`benchmarks/run.py`; do not edit it by hand.",
        "",
        "## Command",
        "",
        "```",
        cmd,
        "```",
        "",
        "## Machine",
        "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable)",
        f"- Python {platform.python_version()}, onnxruntime {ort.__version__}, onnx {onnx.__version__}, "
        f"torch {torch_v}, onnxrep {onnxrep.__version__} (git {git_revision()})",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M %Z')}; total run time {wall:.0f} s",
        f"- Load average (1, 5, 15 min): {load_before} before the run; {load_after} after it",
        "",
        "## Method",
        "",
        f"- Input {'x'.join(map(str, shape))} float32; models seeded (seed {args.seed}) with random BatchNorm "
        "statistics; train and deploy forms exported with "
        f"`models.export.export_onnx` (`{args.exporter}` mode, opset 17"
        f"{' (18 for dynamo)' if args.exporter == 'dynamo' else ''}, dynamic batch).",
        "- *opt* = `onnxrep.optimize(train)`; *onnxrep time* is the median of "
        f"{OPT_REPEATS} in-memory runs (no file I/O). *max abs err* = `onnxrep.verify(train, opt)` "
        "(onnxruntime with graph optimizations off, same random input); *rel* = max abs err / max |train output|.",
        "- Latency: onnxruntime CPUExecutionProvider, `intra_op_num_threads=1`, `inter_op_num_threads=1`, "
        "`ORT_SEQUENTIAL`, `ORT_ENABLE_ALL` (the default). "
        f"{args.warmup} warm-up runs per session, then the three sessions are interleaved round-robin "
        "(one run each per round, starting form rotated every round) "
        f"for {('%d rounds' % args.rounds) if args.rounds else 'an automatically chosen number of rounds'} "
        f"({rounds}). Cells show median [p10–p90] in ms.",
        "- *opt vs deploy* = (median opt − median deploy) / median deploy. *paired opt/deploy* = median over "
        "rounds of the per-round ratio opt/deploy − 1 (the two runs of a round are adjacent in time, so this "
        f"cancels slow drift). Parity band: opt at most {PARITY_THRESHOLD_PCT:g}% slower than deploy.",
        "- nodes / Convs / params / MACs t/o/d = train / opt / deploy (top-level ONNX nodes; params = initializer "
        "and Constant elements; MACs per image by `onnxrep.cost`: Conv, ConvTranspose, Gemm, MatMul and pooling "
        "multiply-accumulates at the stated input size), with opt vs deploy in parentheses when they differ.",
        "- *ORT-fused graph opt = deploy*: both models are loaded once more with "
        "`optimized_model_filepath` set and the graphs onnxruntime actually runs "
        "(after its Conv+activation, NCHWc and other fusions) are compared name-free (op, attributes, weight "
        "shapes); the notes list what onnxruntime runs.",
        "",
        f"## Results ({args.exporter} exporter)",
        "",
        md_table(MAIN_HEADER, main_tab),
        "",
    ]
    if parity_tab:
        lines += [
            "## Parity across export modes (counts only, no latency)",
            "",
            "`legacy` = TorchScript exporter with constant folding, `dynamo` = torch.export-based exporter "
            "(onnxscript optimizer on, opset 18), `nofold` = legacy with `do_constant_folding=False`. "
            "*opt = deploy graph* compares the two graphs as name-free multisets of "
            "(op type, attributes, weight shapes).",
            "",
            md_table(PARITY_HEADER, parity_tab),
            "",
        ]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Reading", "", text, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
