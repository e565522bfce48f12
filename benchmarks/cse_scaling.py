"""eliminate-common-subexpressions at scale: the pass's time by graph size (it should grow linearly).

The graph of ``tests/rules/simplify/test_cse.py``'s large case, at several sizes: layers of ``Cos(p)`` twice
(twins), ``Max`` of the two and ``Add`` of a scalar stored in each layer (equal values, hashed once), four
nodes a layer. The pass runs alone on the imported graph (``GraphContext``, as the driver gives it), so
import, shape inference and export are not counted; the median of ``--rounds`` runs on a fresh import each.
Writes the section "## Common subexpressions at scale" of ``BENCHMARKS.md`` (the rest of the file is kept).

    python benchmarks/cse_scaling.py [--sizes 5000 10000 ...] [--rounds 3] [--no-write]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import numpy as np  # noqa: E402

SECTION = "## Common subexpressions at scale"


def layered(nodes: int):
    from onnx_builders import GraphBuilder
    g = GraphBuilder(9)
    p = "x"
    for k in range(nodes // 4):
        a, b = g.node("Cos", [p]), g.node("Cos", [p])
        p = g.node("Add", [g.node("Max", [a, b]), g.init(np.array(0.25, np.float32), f"quarter{k}")])
    return g.model({"x": (2, 3)}, [g.node("Identity", [p], "y")])


def time_pass(model) -> tuple[float, int, int]:
    """Seconds of one run of the pass on a fresh import, its rewrites and the initializers it shared."""
    from onnxrep.graph import GraphContext
    from onnxrep.graph.convert import import_graph
    from onnxrep.report import RuleRecord
    from onnxrep.rules.simplify.cse import EliminateCommonSubexpressions

    graph = import_graph(model)
    graph.toposort()
    ctx, record = GraphContext(graph, 17), RuleRecord(EliminateCommonSubexpressions.name)
    rule = EliminateCommonSubexpressions()
    with ctx.running(record):
        start = time.perf_counter()
        rule.run(ctx)
        seconds = time.perf_counter() - start
    return seconds, record.rewrites, len(record.fired)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[5000, 10000, 20000, 40000, 80000])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    from helpers import cpu_model, git_revision, md_table, text_table, write_section

    header = ["nodes", "twins merged", "initializers shared", "seconds (median)", "µs per node"]
    rows = []
    for n in args.sizes:
        model = layered(n)
        runs = [time_pass(model) for _ in range(args.rounds)]
        seconds = statistics.median(r[0] for r in runs)
        rows.append([f"{len(model.graph.node):,}", f"{runs[0][1]:,}", f"{runs[0][2]:,}", f"{seconds:.3f}",
                     f"{1e6 * seconds / len(model.graph.node):.1f}"])
        print(text_table(header, rows[-1:]), file=sys.stderr)
    print(text_table(header, rows))
    if args.no_write:
        return 0
    import datetime
    body = (f"`python benchmarks/cse_scaling.py` ({datetime.date.today().isoformat()}, onnxrep at {git_revision()}, "
            f"{cpu_model()}; median of {args.rounds} runs).\n\n"
            "`eliminate-common-subexpressions` alone on a graph of layers `Add(Max(Cos(p), Cos(p)), c_k)`, every "
            "`c_k` the same scalar stored apart: one pass in graph order merges every twin and shares every "
            "scalar. The time is the pass's own (import, shape inference and export left out); per node it "
            "stays flat as the graph grows: linear.\n\n" + md_table(header, rows) + "\n")
    write_section(ROOT / "BENCHMARKS.md", SECTION, body)
    print("wrote", SECTION, "in BENCHMARKS.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
