"""ResRep: the trained network's unpruned deploy form vs its pruned forms, in parameters, MACs and latency.

1. train the registry's ResRep network (``models.resrep``; its 132 masked compactor rows of 352 set to exactly 0);
2. export the training form, the authors' deploy form *without* pruning (compactors merged, every
   channel kept: ``resrep_convert(threshold=None)``) and *with* it (``resrep_model_convert``), and run
   ``onnxrep optimize`` on the training form (merges the compactors, then removes the dead channels);
3. time onnxruntime on the four (1 thread, interleaved rounds, ``benchmarks/run.py``'s method) and
   (re)write the section "## ResRep pruning" of ``BENCHMARKS.md``.

    python benchmarks/resrep.py [--size 128] [--rounds N] [--no-write]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import onnx  # noqa: E402

import onnxrep  # noqa: E402
from helpers import forms_table, md_table, text_table, timing_stamp, write_section  # noqa: E402
from run import measure_latency  # noqa: E402

SECTION = "## ResRep pruning"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (default: about --seconds)")
    ap.add_argument("--seconds", type=float, default=20.0, help="target time of the timed part")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--size", type=int, default=128, help="input height and width (trained at 16, any size runs)")
    args = ap.parse_args(argv)
    SHAPE = (1, 3, args.size, args.size)

    from models.export import MODELS, export_onnx
    from models.resrep import resrep_convert

    spec = MODELS["resrep_resnet"]
    model = spec.build(seed=1)
    forms = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, module in (("train", model), ("deploy unpruned", resrep_convert(model, threshold=None)),
                             ("deploy pruned", spec.convert(model))):
            forms[name] = onnx.load(export_onnx(module, Path(tmp) / f"{name.replace(' ', '_')}.onnx", SHAPE))
    forms["onnxrep"], report = onnxrep.optimize(forms["train"])
    check = onnxrep.verify(forms["train"], forms["onnxrep"])
    latency, rounds, _ = measure_latency(forms, SHAPE, args.rounds, args.seconds, warmup=20)
    header, rows = forms_table(forms, latency, "deploy unpruned", [
        ("Conv", lambda s: f"{s.convs}"), ("nodes", lambda s: f"{s.nodes}"), ("parameters", lambda s: f"{s.params:,}"),
        ("MACs", lambda s: f"{s.macs:,}")])
    print(text_table(header, rows))
    removed = sum(c.before - c.after for r in report.rules for c in r.channels)
    body = "\n".join([
        timing_stamp(f"python benchmarks/resrep.py --size {args.size}", rounds, SHAPE),
        "",
        "The ResRep reference network (`models/resrep.py`: 7 compactors; the trainer drives its 132 masked rows "
        "of 352 to ~5e-6, then sets them to exactly 0) in four forms: its training form, the authors' deploy "
        "conversion without pruning "
        "(compactors merged, every channel kept) and with it, and `onnxrep optimize` on the training form "
        f"(compactors merged, then {removed} dead channels removed exactly; max abs error "
        f"{check.max_abs:.2g} at max|y| {check.outputs[0].ref_max_abs:.2g}).",
        "",
        md_table(header, rows),
    ])
    if not args.no_write:
        write_section(Path(args.output), SECTION, body)
        print(f"wrote section '{SECTION}' of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
