"""Peers: onnxrep beside onnxslim, onnx-simplifier (onnxsim) and onnxscript's optimizer on the real-world corpus.

Every tool runs with its defaults on each corpus model (tests/corpus/models.toml, fetched into the cache
first), in memory, in a process of its own (a crash or a hang is that tool's result on that model, not the
end of the run): ``onnxrep.optimize(model)``, ``onnxslim.slim(model)``, ``onnxsim.simplify(model)`` (its own
check off: ``check_n=0``, its default) and ``onnxscript.optimizer.optimize(model)``. *seconds* is the
transform alone (the model is loaded and the tool imported before the clock starts). Each result is
then verified against the input the same way, by ``onnxrep.verify`` (inputs the model accepts, tolerance
by each output's precision), and counted in every graph (If / Loop bodies included): nodes (Constant
nodes among them), parameters (initializers and Constant values).

The gap: onnxslim run on onnxrep's output, and the op histogram of what it still removes (and adds),
so that what is left to do shows by node kind; its result is verified against the input too.

Not a dependency of onnxrep: ``pip install -e ".[bench]"`` installs the peers at the versions measured.
The section "## Peers" of ``BENCHMARKS.md`` is (re)written; the rest of the file is kept.

    python benchmarks/peers.py [--only ID ...] [--tools onnxrep onnxslim ...] [--timeout S] [--no-write]
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import onnx  # noqa: E402

SECTION = "## Peers"
TOOLS = ("onnxrep", "onnxslim", "onnxsim", "onnxscript")
DISTRIBUTIONS = {"onnxrep": "onnxrep", "onnxslim": "onnxslim", "onnxsim": "onnxsim", "onnxscript": "onnxscript"}
CALLS = {"onnxrep": "onnxrep.optimize(m)", "onnxslim": "onnxslim.slim(m)", "onnxsim": "onnxsim.simplify(m)",
         "onnxscript": "onnxscript.optimizer.optimize(m)"}


# ----------------------------------------------------------------------------------------- the worker
def transform(tool: str):
    """The tool's in-memory transform, imported (so that the import is not timed)."""
    if tool == "onnxrep":
        from onnxrep import optimize
        return lambda m: optimize(m)[0]
    if tool == "onnxslim":
        import onnxslim
        return onnxslim.slim
    if tool == "onnxsim":
        import onnxsim
        return lambda m: onnxsim.simplify(m)[0]
    if tool == "onnxscript":
        from onnxscript import optimizer
        return optimizer.optimize
    raise ValueError(f"unknown tool {tool!r}")


def worker(tool: str, src: str, dst: str) -> int:
    """Run one tool on one model (in a process of its own); print the seconds as JSON on the last line."""
    import contextlib
    import io

    run = transform(tool)
    model = onnx.load(src)
    with contextlib.redirect_stdout(io.StringIO()):  # onnxslim and onnxsim print their own summaries
        start = time.perf_counter()
        out = run(model)
        seconds = time.perf_counter() - start
    onnx.save(out, dst)
    print(json.dumps({"seconds": seconds}))
    return 0


def run_tool(tool: str, src: Path, dst: Path, timeout: float) -> dict:
    """``{"seconds": s}`` or ``{"error": one line}``: the tool on ``src`` in a subprocess, its result in ``dst``."""
    try:
        p = subprocess.run([sys.executable, __file__, "--worker", tool, str(src), str(dst)], capture_output=True,
                           text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0 or not dst.is_file():
        lines = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
        return {"error": (lines[-1] if lines else f"exit {p.returncode}")[:160]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ measures
def ops(graph: onnx.GraphProto) -> collections.Counter:
    """Op types of ``graph`` and every subgraph in it."""
    from tests.corpus.measure import subgraphs
    found = collections.Counter(n.op_type for n in graph.node)
    for n in graph.node:
        for g in subgraphs(n):
            found += ops(g)
    return found


def stored_bytes(graph: onnx.GraphProto) -> int:
    """Bytes of the initializers and Constant tensors of ``graph`` and every subgraph in it (an int8 weight
    folded with its scale into float32 is fewer parameters and four times the bytes)."""
    import math
    from tests.corpus.measure import subgraphs

    def size(t: onnx.TensorProto) -> int:
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 1
        return math.prod(t.dims) * itemsize

    total = sum(size(t) for t in graph.initializer)
    for n in graph.node:
        if n.op_type == "Constant":
            total += sum(size(a.t) for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)
        for g in subgraphs(n):
            total += stored_bytes(g)
    return total


def verified(src: Path, result: Path) -> tuple[bool | None, str]:
    """``(passed, cell)``: the result against the input in onnxruntime, by ``onnxrep.verify``."""
    from onnxrep import verify
    from onnxrep.graph.io import first_line
    try:
        res = verify(str(src), str(result))
    except Exception as exc:  # noqa: BLE001  (the tool's result does not load, run or match: that is its row)
        return False, f"no: {first_line(exc)[:100]}"
    if not res.passed:
        return False, f"no ({res.max_rel:.1e})"
    weak = [o for o in res.outputs if o.ref_max_abs < o.allowed]  # zeros would pass too
    return True, (f"yes ({res.max_rel:.1e})" + (", partly" if res.partial else "")
                  + (f", weak: max|ref| {min(o.ref_max_abs for o in weak):.0e} < allowed" if weak else ""))


def measure(tool: str, src: Path, dst: Path, timeout: float) -> dict:
    r = run_tool(tool, src, dst, timeout)
    if "error" in r:
        return r
    from tests.corpus.measure import deep_counts
    model = onnx.load(str(dst))
    r["nodes"], r["params"] = deep_counts(model.graph)
    r["ops"] = ops(model.graph)
    r["bytes"] = stored_bytes(model.graph)
    r["ok"], r["verified"] = verified(src, dst)
    return r


def difference(before: collections.Counter, after: collections.Counter) -> tuple[str, str]:
    """``(removed, added)``: op kinds and counts, largest first."""
    def fmt(c):
        return ", ".join(f"{op} {n}" for op, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"
    return fmt(before - after), fmt(after - before)


# ------------------------------------------------------------------------------------------- tables
def nodes_cell(r: dict) -> str:
    if "error" in r:
        return "failed"
    constants = r["ops"].get("Constant", 0)
    return f"{r['nodes']:,}" + (f" ({constants:,} Constant)" if constants else "")


def notes(results: list[dict], tools) -> list[str]:
    """What the tables do not say: failures, weak checks, fewer parameters in more bytes, and onnxsim's defaults."""
    out = []
    for r in results:
        e = r["entry"].id
        for t in tools:
            x = r["tools"][t]
            if "error" in x:
                out.append(f"{t} fails on {e}: `{x['error']}`.")
            elif x["params"] > r["input"][1]:
                out.append(f"{t} on {e}: more parameters than the input, {x['params']:,} against {r['input'][1]:,} "
                           f"({x['bytes']:,} bytes against {r['input_bytes']:,}).")
            elif x["bytes"] > r["input_bytes"]:
                out.append(f"{t} on {e}: fewer parameters in more bytes, {x['params']:,} against {r['input'][1]:,} "
                           f"but {x['bytes']:,} bytes against {r['input_bytes']:,} (a folded constant stored in a wider "
                           "type than what it was computed from, such as an int8 weight and its scale folded into "
                           "float32).")
        weak = sorted({t for t in tools if "weak" in r["tools"][t].get("verified", "")})
        if weak:
            out.append(f"{e}: weak check for {', '.join(weak)} (an output's reference on the verification inputs is "
                       "smaller than the error allowed: zeros would pass too).")
    if "onnxsim" in tools:
        out.append("onnxsim's defaults keep Constant nodes (counted above) and leave If / Loop bodies as they are "
                   "(`include_subgraph=False`).")
    return out


def params_cell(params: int, nbytes: int) -> str:
    return f"{params:,} ({nbytes / 1e6:.2f} MB)"


def versions(tools) -> dict[str, str]:
    out = {}
    for t in tools:
        try:
            out[t] = metadata.version(DISTRIBUTIONS[t])
        except metadata.PackageNotFoundError:
            out[t] = "not installed"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="ID", help="these corpus models only")
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    p.add_argument("--timeout", type=float, default=900, help="seconds per tool and model (default 900)")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    p.add_argument("--worker", nargs=3, metavar=("TOOL", "SRC", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(*args.worker)

    import onnxruntime as ort
    from helpers import cpu_model, git_revision, md_table, text_table, write_section
    from tests.corpus import fetch
    from tests.corpus.measure import deep_counts

    ort.set_default_logger_severity(4)
    try:
        corpus = fetch.select(args.only)
    except ValueError as exc:
        p.error(str(exc))
    summary = fetch.fetch(corpus)
    for line in summary.failures:
        print(line, file=sys.stderr)
    tools, gap_tool = args.tools, "onnxslim"
    vers = versions(tools)

    results, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for e in corpus:
            if e.id not in summary.ready:
                continue
            src = fetch.model_path(e)
            model = onnx.load(str(src))
            row = {"entry": e, "input": deep_counts(model.graph), "input_bytes": stored_bytes(model.graph), "tools": {}}
            for tool in tools:
                row["tools"][tool] = measure(tool, src, tmp / f"{e.id}.{tool}.onnx", args.timeout)
                r = row["tools"][tool]
                print(f"{e.id}: {tool}: " + (r["error"] if "error" in r else f"{r['nodes']} nodes, {r['verified']}, "
                                             f"{r['seconds']:.2f} s"), file=sys.stderr)
            rep = row["tools"].get("onnxrep", {})
            if "onnxrep" in tools and "error" not in rep and gap_tool in vers and vers[gap_tool] != "not installed":
                row["gap"] = measure(gap_tool, tmp / f"{e.id}.onnxrep.onnx", tmp / f"{e.id}.gap.onnx", args.timeout)
                if "error" not in row["gap"]:  # verified against the original input, not onnxrep's output
                    row["gap"]["ok"], row["gap"]["verified"] = verified(src, tmp / f"{e.id}.gap.onnx")
            results.append(row)
    total = time.perf_counter() - start

    header = ["model", "input", *tools]
    nodes_rows = [[r["entry"].id, f"{r['input'][0]:,}", *(nodes_cell(r["tools"][t]) for t in tools)] for r in results]
    param_rows = [[r["entry"].id, params_cell(r["input"][1], r["input_bytes"]),
                   *("failed" if "error" in r["tools"][t] else params_cell(r["tools"][t]["params"], r["tools"][t]["bytes"])
                     for t in tools)] for r in results]
    check_rows = [[r["entry"].id, *(r["tools"][t].get("verified", "failed: " + r["tools"][t].get("error", ""))
                                    + (f", {r['tools'][t]['seconds']:.2f} s" if "seconds" in r["tools"][t] else "")
                                    for t in tools)] for r in results]
    complete = [r for r in results if all("error" not in r["tools"][t] for t in tools)]
    nodes_rows.append(["total" + (f" ({len(complete)} models)" if len(complete) < len(results) else ""),
                       f"{sum(r['input'][0] for r in complete):,}",
                       *(f"{sum(r['tools'][t]['nodes'] for r in complete):,}" for t in tools)])
    param_rows.append([nodes_rows[-1][0], params_cell(sum(r["input"][1] for r in complete),
                                                      sum(r["input_bytes"] for r in complete)),
                       *(params_cell(sum(r["tools"][t]["params"] for r in complete),
                                     sum(r["tools"][t]["bytes"] for r in complete)) for t in tools)])
    check_rows.append(["verified", *(f"{sum(1 for r in results if r['tools'][t].get('ok'))} of {len(results)}"
                                    for t in tools)])
    gap_header = ["model", "onnxrep nodes", f"then {gap_tool}", f"{gap_tool} still removes", f"{gap_tool} adds",
                  "parameters", "verified"]
    gap_rows = []
    for r in results:
        g, rep = r.get("gap"), r["tools"].get("onnxrep", {})
        if g is None:
            continue
        if "error" in g:
            gap_rows.append([r["entry"].id, f"{rep['nodes']:,}", "failed", g["error"], "", "", ""])
            continue
        removed, added = difference(rep["ops"], g["ops"])
        gap_rows.append([r["entry"].id, f"{rep['nodes']:,}", f"{g['nodes']:,}", removed, added,
                         f"{rep['params']:,} -> {g['params']:,}", g["verified"]])
    extra = notes(results, tools)
    for title, h, rows in (("nodes (all graphs)", header, nodes_rows), ("parameters (all graphs)", header, param_rows),
                           ("verified (max rel err), seconds", ["model", *tools], check_rows),
                           (f"gap: {gap_tool} on onnxrep's output", gap_header, gap_rows)):
        print(f"\n{title}\n" + text_table(h, rows))
    for n in extra:
        print("-", n)
    if args.no_write:
        return 0

    stamp = (f"`python benchmarks/peers.py` ({datetime.date.today().isoformat()}, onnxrep at {git_revision()}, "
             f"{cpu_model()}, onnxruntime {ort.__version__}, onnx {onnx.__version__}; "
             + ", ".join(f"{t} {v}" for t, v in vers.items() if t != "onnxrep") + f"; {total:.0f} s).")
    body = (
        f"{stamp}\n\n"
        "Every tool with its defaults on each model of the real-world corpus, in memory, in a process of its "
        f"own: {', '.join(f'`{CALLS[t]}`' for t in tools)}. Nodes and parameters are counted in every graph "
        "(If / Loop bodies included; Constant nodes are nodes, their values parameters). Each result is "
        "verified against the input by `onnxrep.verify` (onnxruntime, inputs the model accepts, tolerance by "
        "each output's precision: *max rel err* is max abs err / max|reference| over the outputs); seconds are "
        "the transform alone (the model loaded, the tool imported). onnxrep's own command verifies and writes "
        "only a verified model; the others write what they made.\n\n"
        "### Nodes\n\n" + md_table(header, nodes_rows) + "\n\n"
        "### Parameters\n\n" + md_table(header, param_rows) + "\n\n"
        "### Verified, and seconds\n\n" + md_table(["model", *tools], check_rows) + "\n")
    if extra:
        body += "\n" + "\n".join(f"- {n}" for n in extra) + "\n"
    if gap_rows:
        body += (f"\n### What {gap_tool} still removes after onnxrep\n\n`{CALLS[gap_tool]}` on onnxrep's output: the op "
                 f"histogram (all graphs) of the nodes it removes and of those it adds, and its result verified "
                 f"against the original input.\n\n" + md_table(gap_header, gap_rows) + "\n")
    write_section(ROOT / "BENCHMARKS.md", SECTION, body)
    print("wrote", SECTION, "in BENCHMARKS.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
