"""Other frameworks' exports: Keras (tf2onnx), PaddlePaddle (paddle2onnx), JAX/Flax (jax2onnx).

For each framework installed (the ``frameworks`` extra), its reference networks are exported in a
subprocess (``python -m models.frameworks``; TensorFlow and Paddle crash each other in one
process), then each training-form export is optimized and compared with the deploy form fused by
hand in that framework: Convs, nodes, parameters, MACs, onnxrep's declines, and the max abs error
against the training form in onnxruntime (the stated 32x32, batch 3; on the dynamic exports 64x48
and the odd 33x47, where the hand-fused form is wrong). The section "## Other frameworks" of ``BENCHMARKS.md`` is
(re)written.

    python benchmarks/frameworks.py [--no-write]
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from helpers import git_revision, md_table, text_table, write_section  # noqa: E402
from models.frameworks.__main__ import PACKAGES, exported, missing  # noqa: E402
from onnxrep import optimize  # noqa: E402
from onnxrep.graph.stats import graph_stats  # noqa: E402

SECTION = "## Other frameworks"


def run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def max_err(ref_model, model, x) -> str:
    ref = run(ref_model, x)
    return f"{float(np.abs(run(model, x) - ref).max()):.1e}"


def rows_for(framework: str, out: Path) -> list[list[str]]:
    manifest = exported(framework, out)
    arrays = manifest["arrays"]
    rows = []
    for key, paths in manifest["exports"].items():
        network, opset, spatial = key.split("-")
        train, deploy = onnx.load(paths["train"]), onnx.load(paths["deploy"])
        start = time.perf_counter()
        opt, report = optimize(train)
        seconds = time.perf_counter() - start
        t, o, d = graph_stats(train), graph_stats(opt), graph_stats(deploy)
        declines = sum(len(r.declines) for r in report.rules)
        if spatial == "static":
            errs = [max_err(train, opt, arrays["x-stated-b3"])]
        else:
            errs = [max_err(train, opt, arrays["x-even"]),
                    f"{max_err(train, opt, arrays['x-odd'])} (deploy {max_err(train, deploy, arrays['x-odd'])})"]
        rows.append([framework, network, opset, spatial, f"{t.convs} / {o.convs} / {d.convs}",
                     f"{t.nodes} / {o.nodes} / {d.nodes}", f"{t.params:,} / {o.params:,} / {d.params:,}",
                     f"{t.macs / 1e6:.3f} / {o.macs / 1e6:.3f} / {d.macs / 1e6:.3f}", declines, " · ".join(errs),
                     f"{seconds:.2f}"])
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    args = p.parse_args(argv)
    header = ["framework", "network", "opset", "spatial", "Convs train / onnxrep / deploy", "nodes",
              "parameters", "MMACs", "declined", "max abs err (static: 32x32; dynamic: 64x48 · 33x47)", "optimize s"]
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for framework in PACKAGES:
            if missing(framework):
                skipped.append(framework)
                continue
            rows += rows_for(framework, Path(tmp) / framework)
    print(text_table(header, rows))
    if skipped:
        print("not installed:", ", ".join(skipped))
    if args.no_write:
        return
    body = (f"`python benchmarks/frameworks.py` ({datetime.date.today().isoformat()}, onnxrep at {git_revision()}).\n"
            "Training form / onnxrep / deploy form fused by hand in the framework, per export; MACs at the\n"
            "stated size (32x32). On a dynamic spatial size the stride-2 'same' blocks are declined (their pads\n"
            "follow the size); the hand-fused form is then wrong on odd sizes, onnxrep's output is not.\n\n"
            + md_table(header, rows) + "\n")
    if skipped:
        body += f"\nNot installed when this ran: {', '.join(skipped)}.\n"
    write_section(ROOT / "BENCHMARKS.md", SECTION, body)
    print("wrote", SECTION, "in BENCHMARKS.md")


if __name__ == "__main__":
    main()
