"""CLI: ``python -m models list`` / ``python -m models export NAME OUT.onnx [options]``."""
from __future__ import annotations

import argparse
import sys
import time

from .export import MODELS, build, export_onnx, shape_arg as _shape


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list registered models")
    ex = sub.add_parser("export", help="export a model to ONNX")
    ex.add_argument("name", choices=sorted(MODELS))
    ex.add_argument("out", help="output .onnx path")
    ex.add_argument("--deploy", action="store_true", help="export the PyTorch deploy conversion")
    ex.add_argument("--dynamo", action="store_true", help="use the dynamo (torch.export) exporter")
    ex.add_argument("--no-constant-folding", action="store_true",
                    help="legacy: do_constant_folding=False; dynamo: optimize=False")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--input-shape", type=_shape, default=None, help="e.g. 1,3,64,64")
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument("--static-batch", action="store_true", help="no dynamic batch dim")
    ex.add_argument("--verbose", action="store_true", help="do not silence the exporter")
    args = ap.parse_args(argv)

    if args.cmd == "list":
        for name, spec in MODELS.items():
            shape = "x".join(map(str, spec.input_shape))
            print(f"{name:16s} {shape:12s} {spec.description}")
        return 0

    train, deploy, shape = build(args.name, args.seed)
    shape = args.input_shape or shape
    t0 = time.perf_counter()
    export_onnx(deploy if args.deploy else train, args.out, shape, dynamo=args.dynamo,
                constant_folding=not args.no_constant_folding, opset=args.opset,
                dynamic_batch=not args.static_batch, quiet=not args.verbose)
    dt = time.perf_counter() - t0
    form = "deploy" if args.deploy else "train"
    exporter = "dynamo" if args.dynamo else "legacy"
    print(f"wrote {args.out} ({args.name}, {form}, {exporter}, input {'x'.join(map(str, shape))}, "
          f"{dt:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
