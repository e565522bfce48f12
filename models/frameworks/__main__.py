"""Export one framework's reference networks, and its own outputs, in a process of its own.

    python -m models.frameworks FRAMEWORK OUT_DIR [--seed 0]

For every network, every opset of ``OPSETS`` and a static and a dynamic spatial size, writes the
training-form and hand-fused deploy-form ONNX files; then runs both forms in the framework itself
on ``REFERENCE_INPUTS`` and saves inputs and outputs in ``OUT_DIR/reference.npz``. Writes
``OUT_DIR/manifest.json`` (what is where) and prints its path.

TensorFlow and PaddlePaddle crash each other in one process (a segmentation fault once both are
loaded), and importing a framework and its exporter costs seconds: so the tests make each
framework's files once, in one subprocess, and only load ONNX files themselves.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODULES = {"keras": "models.frameworks.keras_nets", "paddle": "models.frameworks.paddle_nets",
           "flax": "models.frameworks.flax_nets"}
#: framework -> the packages it needs (its own and its exporter)
PACKAGES = {"keras": ("tensorflow", "tf2onnx"), "paddle": ("paddle", "paddle2onnx"), "flax": ("flax", "jax2onnx")}
ROOT = Path(__file__).resolve().parents[2]


def missing(framework: str) -> list[str]:
    """The packages of ``framework`` that are not installed."""
    return [p for p in PACKAGES[framework] if importlib.util.find_spec(p) is None]


def exported(framework: str, out_dir) -> dict:
    """The framework's manifest in ``out_dir``, made first by ``python -m models.frameworks`` in a
    subprocess if it is not there; ``"arrays"`` holds the reference inputs and outputs."""
    import numpy as np

    path = Path(out_dir) / "manifest.json"
    if not path.exists():
        run = subprocess.run([sys.executable, "-m", "models.frameworks", framework, str(out_dir)], cwd=ROOT,
                             capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            raise RuntimeError(f"python -m models.frameworks {framework} failed:\n{run.stderr[-4000:]}")
    manifest = json.loads(path.read_text())
    with np.load(manifest["reference"]) as arrays:
        manifest["arrays"] = dict(arrays)
    return manifest
#: (name, batch, spatial size): the size exported (twice, for the dynamic batch), another size the
#: hand fusion holds on (every stride-2 block sees an even size), and an odd one where it does not
REFERENCE_INPUTS = (("stated-b1", 1, None), ("stated-b3", 3, None), ("even", 2, (64, 48)), ("odd", 1, (33, 47)))


def reference_inputs(module, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1000)
    out = {}
    for name, batch, hw in REFERENCE_INPUTS:
        h, w = hw or module.INPUT_HW
        shape = (batch, h, w, 3) if module.LAYOUT == "NHWC" else (batch, 3, h, w)
        out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def export_all(framework: str, out_dir, seed: int = 0) -> Path:
    module = importlib.import_module(MODULES[framework])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"framework": framework, "layout": module.LAYOUT, "input_hw": list(module.INPUT_HW),
                "opsets": list(module.OPSETS), "exports": {}, "seconds": {}}
    start = time.perf_counter()
    for network in module.NETWORKS:
        for opset in module.OPSETS:
            for dynamic in (False, True):
                key = f"{network}-{opset}-{'dynamic' if dynamic else 'static'}"
                train, deploy = module.export_pair(network, out_dir / key, opset=opset, seed=seed,
                                                   dynamic_spatial=dynamic)
                manifest["exports"][key] = {"train": str(train), "deploy": str(deploy)}
    manifest["seconds"]["export"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    inputs = reference_inputs(module, seed)
    arrays = {f"x-{name}": x for name, x in inputs.items()}
    for network in module.NETWORKS:
        trains, deploys = module.predict(network, list(inputs.values()), seed=seed)
        for name, yt, yd in zip(inputs, trains, deploys):
            arrays[f"{network}-train-{name}"], arrays[f"{network}-deploy-{name}"] = yt, yd
    np.savez(out_dir / "reference.npz", **arrays)
    manifest["seconds"]["reference"] = round(time.perf_counter() - start, 1)
    manifest["reference"] = str(out_dir / "reference.npz")
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.frameworks", description=__doc__.splitlines()[0])
    p.add_argument("framework", choices=sorted(MODULES))
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(export_all(args.framework, args.out_dir, args.seed))


if __name__ == "__main__":
    main()
