"""Model registry and ONNX export helper.

``MODELS`` maps a name to a :class:`ModelSpec` (training-form builder, PyTorch deploy converter,
default input shape). ``build`` gives a seeded training-form model with random BN statistics plus
its reference deploy conversion; ``export_onnx`` / ``export_pair`` write ONNX files with either
torch exporter (legacy TorchScript-based or dynamo), always with a dynamic batch dim by default.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .acnet import ACBlock, acnet_crop_tiny, acnet_k5_tiny, acnet_model_convert, acnet_resnet18_tiny
from .common import randomize_bn_, seed_everything
from .dbb import DiverseBranchBlock, dbb_model_convert, dbb_resnet18_tiny, dbb_tiny
from .repvgg import RepVGGBlock, repvgg_a0, repvgg_a0_g4, repvgg_model_convert, repvgg_tiny
from . import fastvit, mobileone, repghost, replknet, repmlp, repvit, resrep, yolo

__all__ = ["ModelSpec", "MODELS", "build", "export_onnx", "export_pair", "DYNAMO_MIN_OPSET"]

DEFAULT_INPUT_SHAPE = (1, 3, 64, 64)
#: the dynamo exporter builds opset-18 graphs; down-conversion to 17 fails (Reduce* axes), so
#: ``export_onnx(dynamo=True)`` raises the requested opset to at least this.
DYNAMO_MIN_OPSET = 18


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[[], nn.Module]            # architecture, training form, default init
    convert: Callable[[nn.Module], nn.Module]   # PyTorch deploy conversion (returns a copy)
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE
    block_type: type = nn.Module                # the re-parameterizable block class
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def build(self, seed: int = 0) -> nn.Module:
        """Training-form model: seeded init, random BN params/statistics, eval mode."""
        seed_everything(seed)
        model = self.factory()
        randomize_bn_(model, seed)
        return model.eval()


MODELS: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("repvgg_a0", repvgg_a0, repvgg_model_convert, block_type=RepVGGBlock,
              description="RepVGG-A0 (22 blocks, 1000 classes)", tags=("repvgg",)),
    ModelSpec("repvgg_a0_g4", repvgg_a0_g4, repvgg_model_convert, block_type=RepVGGBlock,
              description="RepVGG-A0 with g4_map (groups=4 on layers 2,4,...,20 of A0)",
              tags=("repvgg", "grouped")),
    ModelSpec("repvgg_tiny", repvgg_tiny, repvgg_model_convert, block_type=RepVGGBlock,
              description="small RepVGG (7 blocks, groups=2 on layers 2,4) for fast tests",
              tags=("repvgg", "grouped", "small")),
    ModelSpec("acnet_resnet18", acnet_resnet18_tiny, acnet_model_convert, block_type=ACBlock,
              description="ResNet-18 layout, widths 32-256, every 3x3 conv an ACB (17 ACBs)",
              tags=("acnet",)),
    ModelSpec("acnet_k5", acnet_k5_tiny, acnet_model_convert, block_type=ACBlock,
              description="4 ACBs with 5x5 kernels (pad 2), stride 2 and groups 2/4",
              tags=("acnet", "grouped", "small")),
    ModelSpec("acnet_crop", acnet_crop_tiny, acnet_model_convert, block_type=ACBlock,
              description="ACBs with padding < K//2: asymmetric branches crop the input (Slice)",
              tags=("acnet", "small")),
    ModelSpec("dbb_resnet18", dbb_resnet18_tiny, dbb_model_convert, block_type=DiverseBranchBlock,
              description="ResNet-18 layout, widths 32-256, 17 DBBs (4 depthwise in stage 3)",
              tags=("dbb", "depthwise")),
    ModelSpec("dbb_tiny", dbb_tiny, dbb_model_convert, block_type=DiverseBranchBlock,
              description="5 DBBs: stride 2, groups 2, depthwise 3x3 and 5x5",
              tags=("dbb", "grouped", "depthwise", "small")),
    # the modern families: their deploy forms keep some convs apart (a merge would cost more)
    ModelSpec("mobileone_s0", mobileone.mobileone_s0, mobileone.mobileone_model_convert,
              block_type=mobileone.MobileOneBlock,
              description="MobileOne-S0 (k=4 over-parameterized branches, 1x1 scale branch, BN skip)",
              tags=("mobileone", "depthwise", "modern")),
    ModelSpec("fastvit_t8", fastvit.fastvit_t8, fastvit.fastvit_model_convert, block_type=fastvit.RepMixer,
              description="FastViT-T8 (MobileOne stem, RepMixer, ConvFFN, RepCPE, large-kernel downsampling)",
              tags=("fastvit", "depthwise", "modern")),
    ModelSpec("repvit_m0_9", repvit.repvit_m0_9, repvit.repvit_model_convert, block_type=repvit.RepVGGDW,
              description="RepViT-M0.9 (dw3x3 + dw1x1 + identity with post-BN, SE, dw-s2 -> pw, BN_Linear head)",
              tags=("repvit", "depthwise", "modern")),
    ModelSpec("repghost_0_5", repghost.repghost_0_5, repghost.repghost_model_convert,
              block_type=repghost.RepGhostModule,
              description="RepGhostNet-0.5x (dw3x3-BN + BN identity, SE, dw-s2 shortcuts)",
              tags=("repghost", "depthwise", "modern")),
    ModelSpec("replknet_tiny", replknet.replknet_tiny, replknet.replknet_model_convert,
              block_type=replknet.ReparamLargeKernelConv,
              description="RepLKNet layout, widths 32-256, dw 31/29/27/13 + dw 5x5, pre-BNs before 1x1 convs",
              tags=("replknet", "depthwise", "modern")),
    ModelSpec("yolov6_repconv", yolo.yolov6_repconv, yolo.yolov6_model_convert, block_type=yolo.RepVGGBlock,
              description="YOLOv6-n-like: RepVGG (SiLU) and QARepVGG blocks, RepPAN neck, 1x1 heads",
              tags=("yolo", "repvgg", "modern")),
    ModelSpec("yolov10n", yolo.yolov10n_like, yolo.yolov10_model_convert, block_type=yolo.RepVGGDW,
              description="YOLOv10n-like: C2f, SCDown, C2fCIB with RepVGGDW (dw7x7 + dw3x3), PSA, v10Detect",
              tags=("yolo", "depthwise", "modern")),
    ModelSpec("yolov7_implicit", yolo.yolov7_implicit, yolo.yolov7_model_convert, block_type=yolo.RepConv,
              description="YOLOv7-tiny-like with RepConv and an IDetect head (ImplicitA / ImplicitM)",
              tags=("yolo", "repvgg", "modern")),
    ModelSpec("repmlpnet_tiny", repmlp.repmlpnet_tiny, repmlp.repmlp_model_convert, input_shape=(1, 3, 64, 64),
              block_type=repmlp.RepMLPBlock,
              description="RepMLPNet layout, widths 16-128, 5 RepMLPBlocks (2x2 partitions in stages 1-2), "
                          "conv 1x1 + 3x3 injected into the partition FC",
              tags=("repmlp", "fc", "small", "modern")),
    # trained: the factory runs ResRep's trainer (seeded, ~15 s on first use, cached in memory)
    ModelSpec("resrep_resnet", resrep.resrep_resnet_trained, resrep.resrep_model_convert, input_shape=(1, 3, 32, 32),
              block_type=resrep.CompactorConvBN,
              description="ResRep-trained ResNet (3 stages, 7 compactors, 132 of 352 rows exactly 0)",
              tags=("resrep", "pruning", "small")),
]}


def shape_arg(text: str) -> tuple[int, ...]:
    """argparse type for shapes written ``1,3,64,64`` or ``1x3x64x64``."""
    import argparse
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}; expected e.g. 1,3,64,64") from None
    if not shape or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}")
    return shape


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def build(name: str, seed: int = 0) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """``(train_model, deploy_model, input_shape)``, both models in eval mode."""
    spec = _spec(name)
    train = spec.build(seed)
    deploy = spec.convert(train).eval()
    return train, deploy, tuple(spec.input_shape)


_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo",
                  "torch.fx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet(enabled: bool = True):
    """Silence exporter warnings, log records and progress prints."""
    if not enabled:
        yield
        return
    saved = {}
    for name in _NOISY_LOGGERS:
        lg = logging.getLogger(name)
        saved[name] = lg.level
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _rename_batch_dim(path: str, batch_name: str) -> None:
    """Make dim 0 of every graph input/output symbolic with the name ``batch_name``.

    The dynamo exporter names it after the ``Dim`` (already ``batch_name``); this only rewrites
    files where it chose another symbol, renaming that symbol everywhere in the graph.
    """
    import onnx

    model = onnx.load(path)
    g = model.graph
    old = set()
    for vi in list(g.input) + list(g.output):
        d = vi.type.tensor_type.shape.dim
        if d and d[0].HasField("dim_param") and d[0].dim_param != batch_name:
            old.add(d[0].dim_param)
    if not old:
        return
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in old:
                d.dim_param = batch_name
    onnx.save(model, path)


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape=DEFAULT_INPUT_SHAPE, *,
                dynamo: bool = False, constant_folding: bool = True, opset: int = 17,
                dynamic_batch: bool = True, input_name: str = "input",
                output_name: str = "output", batch_name: str = "batch",
                quiet: bool = True) -> str:
    """Export ``model`` (put in eval mode) to one self-contained ``.onnx`` file; returns the path.

    * ``dynamo=False``: legacy TorchScript exporter, ``do_constant_folding=constant_folding``,
      ``dynamic_axes`` on dim 0 of input and output.
    * ``dynamo=True``: ``torch.export``-based exporter with ``dynamic_shapes`` (``Dim(batch_name)``)
      and ``external_data=False``. ``constant_folding`` maps to ``optimize`` (the onnxscript
      optimizer, which does the constant folding and the Conv-BN fold). The opset is raised to at
      least ``DYNAMO_MIN_OPSET`` (18). The example batch is at least 2 (torch.export specializes
      size-1 dims).

    The example input takes the dtype of the model's parameters (``model.half()`` exports float16).
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model = model.eval()
    input_shape = tuple(int(s) for s in input_shape)
    gen = torch.Generator().manual_seed(0)
    dtype = next(model.parameters()).dtype
    if dynamo:
        shape = input_shape
        if dynamic_batch and shape[0] < 2:
            shape = (2,) + shape[1:]
        x = torch.randn(shape, generator=gen).to(dtype)
        kwargs = dict(dynamo=True, external_data=False, optimize=constant_folding,
                      opset_version=max(int(opset), DYNAMO_MIN_OPSET), verbose=False)
        if dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim(batch_name)},)
    else:
        x = torch.randn(input_shape, generator=gen).to(dtype)
        kwargs = dict(dynamo=False, do_constant_folding=constant_folding,
                      opset_version=int(opset), verbose=False)
        if dynamic_batch:
            kwargs["dynamic_axes"] = {input_name: {0: batch_name}, output_name: {0: batch_name}}
    with _quiet(quiet), torch.no_grad():
        torch.onnx.export(model, (x,), path, input_names=[input_name],
                          output_names=[output_name], **kwargs)
    if dynamo and dynamic_batch:
        _rename_batch_dim(path, batch_name)
    if dynamo and os.path.exists(path + ".data"):  # never expected with external_data=False
        raise RuntimeError(f"exporter wrote external data next to {path}")
    return path


def export_pair(name: str, out_dir: str | os.PathLike, *, dynamo: bool = False,
                constant_folding: bool = True, seed: int = 0, input_shape=None,
                opset: int = 17) -> tuple[str, str]:
    """Write ``<name>_train.onnx`` and ``<name>_deploy.onnx`` (same weights, deploy-converted)."""
    train, deploy, default_shape = build(name, seed)
    shape = tuple(input_shape) if input_shape is not None else default_shape
    out_dir = os.fspath(out_dir)
    paths = []
    for tag, model in (("train", train), ("deploy", deploy)):
        p = os.path.join(out_dir, f"{name}_{tag}.onnx")
        export_onnx(model, p, shape, dynamo=dynamo, constant_folding=constant_folding, opset=opset)
        paths.append(p)
    return paths[0], paths[1]


def timed_export(*args, **kwargs) -> tuple[str, float]:
    """``export_onnx`` returning ``(path, seconds)``."""
    t0 = time.perf_counter()
    p = export_onnx(*args, **kwargs)
    return p, time.perf_counter() - t0
