"""RepMLPNet: training form vs `onnxrep optimize` vs the authors' deploy form (locality injection), in
Conv / node / parameter / MAC counts and onnxruntime latency.

The network is the official RepMLPNet-T224 configuration (``models.repmlp.create_RepMLPNet_T224``:
channels 64-512, 56x56 .. 7x7 partitions, share-sets 1/4/16/128, conv branches 1x1 and 3x3), random
weights and BN statistics, exported by torch's legacy exporter; ``--config tiny`` uses the test network
``repmlpnet_tiny`` at 64x64. Timing is ``benchmarks/run.py``'s (1 thread, interleaved rounds); the section
"## RepMLP" of ``BENCHMARKS.md`` is (re)written.

    python benchmarks/repmlp.py [--config T224|tiny] [--rounds N] [--no-write]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import onnx  # noqa: E402

import onnxrep  # noqa: E402
from helpers import forms_table, md_table, text_table, timing_stamp, write_section  # noqa: E402
from run import measure_latency  # noqa: E402

SECTION = "## RepMLP"


def build(config: str):
    from models.common import randomize_bn_, seed_everything
    from models.export import MODELS
    from models.repmlp import create_RepMLPNet_T224, repmlp_model_convert
    if config == "tiny":
        spec = MODELS["repmlpnet_tiny"]
        train = spec.build(seed=1)
        return train, spec.convert(train), tuple(spec.input_shape), "repmlpnet_tiny (tests' network)"
    seed_everything(1)
    train = create_RepMLPNet_T224()
    randomize_bn_(train, seed=1)
    train.eval()
    return train, repmlp_model_convert(train), (1, 3, 224, 224), "RepMLPNet-T224 (official configuration)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=("T224", "tiny"), default="T224")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (default: about --seconds)")
    ap.add_argument("--seconds", type=float, default=30.0, help="target time of the timed part")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args(argv)

    from models.export import export_onnx
    train, deploy, shape, label = build(args.config)
    forms = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, module in (("train", train), ("deploy", deploy)):
            forms[name] = onnx.load(export_onnx(module, Path(tmp) / f"{name}.onnx", shape))
    t0 = time.perf_counter()
    forms["onnxrep"], report = onnxrep.optimize(forms["train"])
    took = time.perf_counter() - t0
    check = onnxrep.verify(forms["train"], forms["onnxrep"])
    latency, rounds, _ = measure_latency(forms, shape, args.rounds, args.seconds, warmup=5)
    header, rows = forms_table(forms, latency, "deploy", [
        ("Conv", lambda s: f"{s.convs}"), ("BN", lambda s: f"{s.ops.get('BatchNormalization', 0)}"),
        ("nodes", lambda s: f"{s.nodes}"), ("parameters", lambda s: f"{s.params:,}"), ("MACs", lambda s: f"{s.macs:,}")])
    print(text_table(header, rows))
    folded = sum(r.rewrites for r in report.rules if r.name == "fold-conv-into-fc")
    body = "\n".join([
        timing_stamp(f"python benchmarks/repmlp.py --config {args.config}", rounds, shape),
        "",
        f"{label}, random weights and BN statistics, legacy torch export: its training form, the authors' deploy "
        f"form (`locality_injection`: conv branches and BNs folded into fc3) and `onnxrep optimize` on the "
        f"training form ({folded} blocks folded by `fold-conv-into-fc`, optimize {took:.1f} s; max abs error "
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
