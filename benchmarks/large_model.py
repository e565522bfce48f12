"""Large-model benchmark: ``onnxrep optimize`` on a synthetic training-form model over 2 GB.

1. Build a stack of RepVGG-style blocks ``Relu(Conv3x3(x) + Conv1x1(x) + BN(x))`` with wide convs
   (default 13 blocks of 2048 channels, 2.18 GB of float32 weights), random weights and random BN
   statistics, static input ``1xCx8x8`` so onnxruntime runs it quickly. The model is written
   *streamed*: every tensor is generated, appended to ``train.onnx.data`` (4 KiB-aligned) and
   dropped, and the ModelProto only holds external-data references, so the >2 GB ModelProto is
   never built in memory at all.
2. Run ``python -m onnxrep.cli optimize IN OUT --json FILE`` of *this* checkout as a subprocess
   (its memory is isolated) under ``/usr/bin/time -v`` when available (else ``os.wait4``'s
   rusage), measuring wall time and peak RSS, while sampling the child's RSS from ``/proc``.
3. Check: exit code 0, ``OUT`` and ``OUT.data`` exist, every output initializer of >= 1 KiB is
   stored in ``OUT.data``, the output has one Conv per block, onnxrep's own onnxruntime
   verification passed, no temporary folder is left beside ``OUT``, and the input files are
   byte-for-byte untouched (SHA-256, size and mtime before and after).
4. Unless ``--no-phases``: run the same job once more in a child that logs the start and end of
   each phase (load, checker, gs import, each rule, export, save, each onnxruntime run, commit)
   while the parent samples its RSS, and report the RSS reached in every phase.
5. Print a table and (re)write the section "## Large model (> 2 GB, external data)" at the end of
   ``BENCHMARKS.md`` (only that section; the rest of the file is kept as it is).

    python benchmarks/large_model.py                       # full run, writes the BENCHMARKS.md section
    python benchmarks/large_model.py --channels 256 --blocks 4 --no-write    # quick smoke run
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402
import helpers  # noqa: E402
from helpers import git_revision, md_table, text_table  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

SECTION = "## Large model (> 2 GB, external data)"
ALIGN = 4096
GB = 1e9
MiB = 1024 * 1024


# --------------------------------------------------------------------------- model


@dataclass
class BuiltModel:
    path: Path
    data_path: Path
    params: int
    nodes: int
    convs: int
    onnx_bytes: int
    data_bytes: int
    seconds: float

    @property
    def total_bytes(self) -> int:
        return self.onnx_bytes + self.data_bytes


class _ExternalWriter:
    """Appends tensors to one external data file and returns external-data TensorProtos."""

    def __init__(self, data_path: Path):
        self.data_path = data_path
        self.f = open(data_path, "wb")
        self.offset = 0
        self.params = 0

    def add(self, name: str, array: np.ndarray) -> TensorProto:
        array = np.ascontiguousarray(array, dtype=np.float32)
        pad = (-self.offset) % ALIGN
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        self.f.write(memoryview(array).cast("B"))
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(array.shape))
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_path.name), ("offset", str(self.offset)),
                           ("length", str(array.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        self.offset += array.nbytes
        self.params += array.size
        return t

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def build_model(path: Path, channels: int, blocks: int, spatial: int, seed: int = 0) -> BuiltModel:
    """Write the training-form model to ``path`` + ``path.data`` (see the module docstring)."""
    start = time.perf_counter()
    C = channels
    rng = np.random.default_rng(seed)
    data_path = path.with_name(path.name + ".data")
    w = _ExternalWriter(data_path)
    inits, nodes = [], []

    def randn(shape, std):
        a = rng.standard_normal(shape, dtype=np.float32)
        a *= np.float32(std)
        return a

    x = "x"
    try:
        for i in range(blocks):
            p = f"b{i}."
            inits += [w.add(p + "w3", randn((C, C, 3, 3), (0.5 / (9 * C)) ** 0.5)),
                      w.add(p + "b3", randn((C,), 0.1)),
                      w.add(p + "w1", randn((C, C, 1, 1), (0.25 / C) ** 0.5)),
                      w.add(p + "b1", randn((C,), 0.1)),
                      w.add(p + "bn.gamma", rng.uniform(0.3, 0.8, C)),
                      w.add(p + "bn.beta", randn((C,), 0.1)),
                      w.add(p + "bn.mean", randn((C,), 0.1)),
                      w.add(p + "bn.var", rng.uniform(0.5, 2.0, C))]
            y = "y" if i == blocks - 1 else f"{p}out"
            nodes += [
                helper.make_node("Conv", [x, p + "w3", p + "b3"], [p + "c3"], name=p + "conv3x3",
                                 kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                helper.make_node("Conv", [x, p + "w1", p + "b1"], [p + "c1"], name=p + "conv1x1", kernel_shape=[1, 1]),
                helper.make_node("Add", [p + "c3", p + "c1"], [p + "sum1"], name=p + "add1"),
                helper.make_node("BatchNormalization", [x, p + "bn.gamma", p + "bn.beta", p + "bn.mean", p + "bn.var"],
                                 [p + "bn"], name=p + "bn_identity", epsilon=1e-5),
                helper.make_node("Add", [p + "sum1", p + "bn"], [p + "sum2"], name=p + "add2"),
                helper.make_node("Relu", [p + "sum2"], [y], name=p + "relu"),
            ]
            x = y
    finally:
        w.close()
    shape = [1, C, spatial, spatial]
    graph = helper.make_graph(nodes, "large_repvgg_stack",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="large_model.py")
    model.ir_version = 8
    # every tensor already refers to the data file and holds no raw_data: save writes the small proto only
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    return BuiltModel(path, data_path, w.params, len(nodes), 2 * blocks, path.stat().st_size,
                      data_path.stat().st_size, time.perf_counter() - start)


# --------------------------------------------------------------------------- measuring


def _rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class RssSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []  # (time.time(), kB)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids, stack = [], [self.pid]
            while stack:
                p = stack.pop()
                pids.append(p)
                stack.extend(_children(p))
            total = sum(r for r in (_rss_kb(p) for p in pids) if r)
            if total:
                self.samples.append((time.time(), total))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    @property
    def peak_kb(self) -> int:
        return max((kb for _, kb in self.samples), default=0)


@dataclass
class RunResult:
    returncode: int
    wall: float
    peak_rss_kb: int
    peak_source: str
    stdout: str
    stderr: str
    samples: list = field(default_factory=list)


def _env(code_root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code_root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_measured(argv: list[str], cwd: Path) -> RunResult:
    """Run ``argv`` (a python command) in ``cwd`` (the folder holding the ``onnxrep`` package to use, also put
    first on PYTHONPATH) measuring wall time and peak RSS."""
    gnu_time = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else shutil.which("time")
    use_time = bool(gnu_time) and subprocess.run([gnu_time, "-v", "true"], capture_output=True).returncode == 0
    cmd = ([gnu_time, "-v"] if use_time else []) + argv
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = RssSampler(proc.pid)
    sampler.start()
    out_chunks, err_chunks = [], []
    readers = [threading.Thread(target=lambda s=s, acc=acc: acc.append(s.read()), daemon=True)
               for s, acc in ((proc.stdout, out_chunks), (proc.stderr, err_chunks))]
    for r in readers:
        r.start()
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    sampler.stop()
    stdout, stderr = "".join(out_chunks), "".join(err_chunks)
    peak, source = rusage.ru_maxrss, "rusage (wait4)"
    if use_time:
        m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", stderr)
        if m:
            peak, source = int(m.group(1)), "/usr/bin/time -v"
        exit_m = re.search(r"Exit status:\s*(\d+)", stderr)
        rc = int(exit_m.group(1)) if exit_m else proc.returncode
        stderr = stderr[:stderr.find("\tCommand being timed:")] if "\tCommand being timed:" in stderr else stderr
        stderr = "".join(line for line in stderr.splitlines(keepends=True)
                         if not line.startswith("Command exited with non-zero status"))
    else:
        rc = proc.returncode
    return RunResult(rc, wall, peak, source, stdout, stderr, sampler.samples)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * MiB):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(paths: list[Path]) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, sha256(p)) for p in paths}


# --------------------------------------------------------------------------- phases

#: Runs in the child: wraps onnxrep's phases, logs start/end times, then runs the CLI.
PHASE_DRIVER = r'''
import json, sys, time, functools
events_path, argv = sys.argv[1], sys.argv[2:]
events = open(events_path, "w", buffering=1)
depth = [0]

def log(kind, name):
    events.write(json.dumps({"t": time.time(), "kind": kind, "name": name, "depth": depth[0]}) + "\n")

def wrap(owner, attr, name):
    fn = getattr(owner, attr)
    @functools.wraps(fn)
    def inner(*a, **k):
        label = name(a) if callable(name) else name
        log("start", label); depth[0] += 1
        try:
            return fn(*a, **k)
        finally:
            depth[0] -= 1; log("end", label)
    setattr(owner, attr, inner)

import onnx, onnx.checker, onnx_graphsurgeon as gs
import onnxrep.cli as cli, onnxrep.pipeline as pipeline, onnxrep.optimizer as optimizer
import onnxrep.verification as verification, onnxrep.graph.io as io
from onnxrep.rules import default_rules
wrap(pipeline, "load_model", "load_model")
wrap(onnx, "load", "onnx.load (graph only)")
wrap(onnx, "load_external_data_for_model", "onnx.load_external_data_for_model")
wrap(onnx.checker, "check_model", "onnx.checker.check_model(path)")
wrap(pipeline, "optimize", "optimize")
wrap(optimizer, "graph_stats", "graph_stats")
wrap(gs, "import_onnx", "gs.import_onnx")
for cls in {type(r) for r in default_rules()}:
    wrap(cls, "run", lambda a: "rule " + (a[0].name or type(a[0]).__name__))
wrap(gs.Graph, "cleanup", "graph.cleanup")
wrap(optimizer, "export", "export (gs.export_onnx + header)")
wrap(io.PendingOutput, "__init__", "PendingOutput: save to temp folder")
wrap(pipeline, "verify", "verify")
calls = [0]
def run_label(a):
    calls[0] += 1
    return "onnxruntime session + run #%d (%s)" % (calls[0], "reference" if calls[0] == 1 else "candidate")
wrap(verification, "run", run_label)
wrap(io.PendingOutput, "commit", "commit (rename)")
log("start", "cli.main"); depth[0] += 1
try:
    code = cli.main(argv)
finally:
    depth[0] -= 1; log("end", "cli.main")
    events.close()
sys.exit(code)
'''


@dataclass
class Phase:
    name: str
    depth: int
    start: float
    end: float
    rss_start_kb: int
    rss_end_kb: int
    rss_max_kb: int


def _rss_at(samples, t: float) -> int:
    best = 0
    for ts, kb in samples:
        if ts > t:
            break
        best = kb
    return best


def run_phases(argv: list[str], cwd: Path, events_path: Path) -> tuple[RunResult, list[Phase]]:
    result = run_measured([sys.executable, "-c", PHASE_DRIVER, str(events_path)] + argv, cwd)
    events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
    stack, phases = [], []
    for e in events:
        if e["kind"] == "start":
            stack.append(e)
        else:
            s = stack.pop()
            inside = [kb for ts, kb in result.samples if s["t"] <= ts <= e["t"]]
            rs, re_ = _rss_at(result.samples, s["t"]), _rss_at(result.samples, e["t"])
            phases.append(Phase(s["name"], s["depth"], s["t"], e["t"], rs, re_, max(inside + [rs, re_])))
    phases.sort(key=lambda p: (p.start, p.depth))
    return result, phases


# --------------------------------------------------------------------------- checks


def check_output(out: Path, expected_convs: int) -> dict:
    from onnx.external_data_helper import uses_external_data
    data = out.with_name(out.name + ".data")
    problems = []
    if not out.is_file():
        problems.append(f"{out} missing")
    if not data.is_file():
        problems.append(f"{data} missing")
    info = {"out_bytes": out.stat().st_size if out.is_file() else 0,
            "data_bytes": data.stat().st_size if data.is_file() else 0}
    if out.is_file():
        m = onnx.load(str(out), load_external_data=False)
        convs = sum(n.op_type == "Conv" for n in m.graph.node)
        info.update(nodes=len(m.graph.node), convs=convs)
        if convs != expected_convs:
            problems.append(f"output has {convs} Conv nodes, expected {expected_convs}")
        for t in m.graph.initializer:
            big = int(np.prod(t.dims)) * 4 >= 1024
            if big and not uses_external_data(t):
                problems.append(f"initializer {t.name} ({list(t.dims)}) is stored inline")
            if uses_external_data(t):
                loc = {e.key: e.value for e in t.external_data}.get("location")
                if loc != data.name:
                    problems.append(f"initializer {t.name} refers to {loc!r}, not {data.name!r}")
        onnx.checker.check_model(str(out))
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".onnxrep-")]
    if leftovers:
        problems.append(f"temporary folders left beside the output: {leftovers}")
    info["problems"] = problems
    return info


# --------------------------------------------------------------------------- report


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def _fmt_kb(kb: int) -> str:
    return f"{kb * 1024 / GB:.2f} GB"


def write_section(md_path: Path, body: str) -> None:
    """Replace (or append at the end) SECTION of ``md_path``; everything else is kept byte for byte."""
    helpers.write_section(md_path, SECTION, body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=2048, help="channels of every block (default 2048)")
    ap.add_argument("--blocks", type=int, default=13, help="number of RepVGG-style blocks (default 13)")
    ap.add_argument("--spatial", type=int, default=8, help="input height = width (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="folder for the model files (default: a new folder under /tmp, removed "
                                      "afterwards unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the model files")
    ap.add_argument("--no-phases", action="store_true", help="skip the per-phase RSS breakdown run")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"), help="Markdown report path")
    ap.add_argument("--onnxrep-root", default=str(ROOT), help="folder holding the onnxrep package to run "
                                                              "(default: this checkout)")
    args = ap.parse_args(argv)

    started = _dt.datetime.now(_dt.timezone.utc)
    args.load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    own = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="onnxrep-large-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    src, dest = work / "train.onnx", work / "deploy.onnx"
    failures: list[str] = []
    try:
        print(f"building {args.blocks} blocks x {args.channels} channels in {work} ...", file=sys.stderr, flush=True)
        built = build_model(src, args.channels, args.blocks, args.spatial, args.seed)
        print(f"  {built.params:,} params, {_gb(built.total_bytes)} on disk, {built.seconds:.1f} s",
              file=sys.stderr, flush=True)
        before = fingerprint([src, built.data_path])

        cli_args = ["optimize", str(src), str(dest), "--json", str(work / "report.json")]
        for p in (dest, dest.with_name(dest.name + ".data"), work / "report.json"):
            p.unlink(missing_ok=True)
        print("running onnxrep optimize ...", file=sys.stderr, flush=True)
        # cwd = the code root: python -m finds that onnxrep first (not an installed one)
        code_root = Path(args.onnxrep_root).resolve()
        main_run = run_measured([sys.executable, "-m", "onnxrep.cli"] + cli_args, code_root)
        if main_run.returncode != 0:
            last = main_run.stderr.strip().splitlines()[-1] if main_run.stderr.strip() else ""
            failures.append(f"onnxrep exited with {main_run.returncode}: {last}")
        checks = check_output(dest, args.blocks) if main_run.returncode == 0 else {"problems": []}
        failures += checks["problems"]
        report = json.loads((work / "report.json").read_text()) if (work / "report.json").exists() else {}
        ver = report.get("verification") or {}
        if main_run.returncode == 0 and not ver.get("passed"):
            failures.append("onnxrep's verification did not pass")
        after = fingerprint([src, built.data_path])
        if after != before:
            failures.append("the input files changed")

        phases: list[Phase] = []
        phase_run = None
        if not args.no_phases:
            for p in (dest, dest.with_name(dest.name + ".data")):
                p.unlink(missing_ok=True)
            print("running the phase breakdown ...", file=sys.stderr, flush=True)
            phase_run, phases = run_phases(cli_args[:-2] + ["-q", "--debug"], code_root, work / "events.jsonl")
            if phase_run.returncode != 0:
                failures.append(f"the phase run exited with {phase_run.returncode}: "
                                f"{_where(phase_run.stderr, code_root).replace('`', '')}")
    finally:
        if own and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    size = built.total_bytes
    b, a = report.get("before", {}), report.get("after", {})
    ok = main_run.returncode == 0

    def pair(key, fmt="{}"):
        return f"{fmt.format(b[key])}/{fmt.format(a[key])}" if key in b and key in a else f"{fmt.format(built_stats[key])}/-"

    built_stats = {"params": built.params, "nodes": built.nodes, "convs": built.convs}
    max_abs = ver.get("max_abs")
    header = ("model on disk", "params before/after", "nodes before/after", "Convs before/after",
              "output on disk", "onnxrep exit", "onnxrep wall time", "in-memory optimize", "peak RSS",
              "peak RSS / model size", "max abs err", "verify")
    row = (f"{_gb(size)} ({built.data_bytes:,} B in train.onnx.data)",
           pair("params", "{:,}"), pair("nodes"), pair("convs"),
           _gb(checks.get("out_bytes", 0) + checks.get("data_bytes", 0)) if ok else "-",
           str(main_run.returncode),
           f"{main_run.wall:.1f} s", f"{report['seconds']:.1f} s" if "seconds" in report else "-",
           _fmt_kb(main_run.peak_rss_kb), f"{main_run.peak_rss_kb * 1024 / size:.2f}x",
           f"{max_abs:.1e}" if isinstance(max_abs, float) else "-",
           ("pass" if ver.get("passed") else "FAIL") if ver else "-")
    print()
    print(text_table(header, [row]))
    phase_rows = []
    if phases:
        t0 = phases[0].start
        for p in phases:
            if p.depth > 1 and p.end - p.start < 0.1 and p.rss_max_kb - p.rss_start_kb < 10_000:
                continue  # short and flat: noise
            phase_rows.append(("&nbsp;&nbsp;" * p.depth + p.name, f"{p.start - t0:.1f}", f"{p.end - p.start:.1f}",
                               _fmt_kb(p.rss_start_kb), _fmt_kb(p.rss_end_kb), _fmt_kb(p.rss_max_kb),
                               f"{p.rss_max_kb * 1024 / size:.2f}x"))
        print()
        print(text_table(("phase", "start s", "seconds", "RSS at start", "RSS at end", "max RSS", "max / model"),
                         [(r[0].replace("&nbsp;", " "),) + r[1:] for r in phase_rows]))
    print()
    print("checks:", "all passed" if not failures else "; ".join(failures))

    if not args.no_write:
        cmd = "python " + " ".join(shlex.quote(x) for x in
                                   [os.path.relpath(__file__, os.getcwd())] + list(sys.argv[1:] if argv is None else argv))
        body = render(args, cmd, started, built, main_run, checks, report, header, row, phases, phase_rows,
                      phase_run, failures, code_root)
        write_section(Path(args.output), body)
        print(f"wrote section '{SECTION}' of {args.output}", file=sys.stderr)
    return 0 if not failures else 1


def _protobuf() -> str:
    try:
        import google.protobuf
        from google.protobuf.internal import api_implementation
        return f"{google.protobuf.__version__} ({api_implementation.Type()})"
    except Exception:  # noqa: BLE001
        return "?"


def _where(stderr: str, code_root: Path) -> str:
    """The last onnxrep frame of a traceback and the exception, as Markdown."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    frames = []
    for i, ln in enumerate(lines):
        m = re.match(r'\s*File "([^"]+)", line (\d+), in (\S+)', ln)
        if m:
            code = lines[i + 1].strip() if i + 1 < len(lines) and not lines[i + 1].lstrip().startswith("File ") else ""
            frames.append(m.groups() + (code,))
    own = [f for f in frames if f[0].startswith(str(code_root / "onnxrep"))]
    text = f"`{lines[-1].strip()}`" if lines else "(no output)"
    if own:
        path, line, func, code = own[-1]
        text += f" raised at `{os.path.relpath(path, code_root)}:{line}` in `{func}`" + (f": `{code}`" if code else "")
    return text


def _gap(phases) -> tuple[str, str] | None:
    """The longest stretch (> 1 s) between the end of one phase and the start of the next, if any."""
    best, pair = 1.0, None
    flat = sorted(phases, key=lambda p: p.start)
    for i, p in enumerate(flat[:-1]):
        nxt = flat[i + 1]
        if nxt.start - p.end > best and nxt.depth >= p.depth:
            best, pair = nxt.start - p.end, (p.name, nxt.name)
    return pair


def render(args, cmd, started, built, main_run, checks, report, header, row, phases, phase_rows, phase_run,
           failures, code_root) -> str:
    import onnxruntime as ort
    size = built.total_bytes
    lines = [
        "Generated by `benchmarks/large_model.py` (this section only; do not edit it by hand).",
        "",
        "```",
        cmd,
        "```",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} logical cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; Python "
        f"{platform.python_version()}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, protobuf "
        f"{_protobuf()}; {started:%Y-%m-%d %H:%M} UTC; load average {args.load_before} before the run",
        f"- Model: {args.blocks} RepVGG-style blocks `Relu(Conv3x3(x) + Conv1x1(x) + BN(x))`, "
        f"{args.channels} channels, input 1x{args.channels}x{args.spatial}x{args.spatial}, float32, random weights "
        f"and BN statistics (seed {args.seed}); {built.params:,} parameters, written streamed (tensor by tensor) "
        f"to `train.onnx` ({built.onnx_bytes:,} bytes) + `train.onnx.data` ({built.data_bytes:,} bytes) in "
        f"{built.seconds:.0f} s.",
        f"- `python -m onnxrep.cli optimize train.onnx deploy.onnx --json report.json` of "
        + ("this checkout" if code_root == ROOT else f"`{code_root}`") + f" (git {git_revision(code_root, ('onnxrep',))}), in a "
        f"subprocess; wall time measured around it, peak RSS from {main_run.peak_source}. *in-memory optimize* is "
        f"the report's own time (rules, no load/save/verify).",
        "- Checks: exit code 0, `deploy.onnx` and `deploy.onnx.data` exist and every initializer >= 1 KiB is in "
        "`deploy.onnx.data`, one Conv per block, onnxrep's onnxruntime verification passed, no `.onnxrep-*` "
        "folder left, input files unchanged (SHA-256, size, mtime): "
        + ("**all passed**." if not failures else "**FAILED**: " + "; ".join(failures)),
        "",
        md_table(header, [row]),
    ]
    if main_run.returncode != 0:
        lines += ["", f"onnxrep's stderr: `{main_run.stderr.strip().splitlines()[-1] if main_run.stderr.strip() else ''}`"]
    if phases:
        top = max(p.rss_max_kb for p in phases)
        innermost = max((p for p in phases if p.rss_max_kb == top), key=lambda p: p.depth)
        lines += [
            "",
            "### Where the memory goes",
            "",
            "A second run of the same job in a child that logs when each phase starts and ends "
            "(onnxrep's functions wrapped from outside, nothing changed in `onnxrep/`) while this script samples "
            f"the child's RSS from `/proc` every 50 ms (peak RSS of that run: {_fmt_kb(phase_run.peak_rss_kb)}, "
            f"{phase_run.wall:.0f} s). Nested phases are indented; *max RSS* is the largest sample inside the phase; "
            "nested phases shorter than 0.1 s that add less than 10 MB are left out.",
            "",
            md_table(("phase", "start s", "seconds", "RSS at start", "RSS at end", "max RSS", "max / model size"),
                     phase_rows),
            "",
            f"The peak ({_fmt_kb(innermost.rss_max_kb)}, {innermost.rss_max_kb * 1024 / size:.2f}x the model) is "
            f"reached in *{innermost.name}*"
            + (f" (time outside the listed phases, e.g. between *{_gap(phases)[0]}* and *{_gap(phases)[1]}*, "
               f"is onnxrep code that was not wrapped)." if _gap(phases) else "."),
        ]
        if phase_run.returncode != 0:
            lines += ["", f"The phase run (with `--debug`) ended with exit code {phase_run.returncode}: "
                          f"{_where(phase_run.stderr, code_root)}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
