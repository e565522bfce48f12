"""Training-form reference networks (RepVGG, ACNet, DBB, MobileOne, FastViT, RepViT, RepGhost, RepLKNet,
RepMLPNet, YOLOv6/v7/v10), their PyTorch deploy conversions, and an ONNX export helper. Used from the repo root:
``import models`` / ``python -m models``. The modern families are modules (``models.fastvit`` ...):
their block names overlap (``MobileOneBlock``, ``RepVGGBlock``).
"""
from . import fastvit, mobileone, repghost, replknet, repmlp, repvit, yolo
from .acnet import (ACBasicBlock, ACBlock, ACResNet, acnet_crop_tiny, acnet_k5_tiny,
                    acnet_model_convert, acnet_resnet18_tiny)
from .common import conv_bn, count_convs, fuse_conv_bn, randomize_bn_, seed_everything
from .dbb import (BNAndPadLayer, DiverseBranchBlock, IdentityBasedConv1x1, dbb_model_convert,
                  dbb_resnet18_tiny, dbb_tiny)
from .export import MODELS, ModelSpec, build, export_onnx, export_pair
from .repvgg import (RepVGG, RepVGGBlock, repvgg_a0, repvgg_a0_g4, repvgg_model_convert,
                     repvgg_tiny)

__all__ = [
    "fastvit", "mobileone", "repghost", "replknet", "repmlp", "repvit", "yolo",
    "ACBasicBlock", "ACBlock", "ACResNet", "acnet_crop_tiny", "acnet_k5_tiny",
    "acnet_model_convert", "acnet_resnet18_tiny",
    "BNAndPadLayer", "DiverseBranchBlock", "IdentityBasedConv1x1", "dbb_model_convert", "dbb_resnet18_tiny",
    "dbb_tiny",
    "conv_bn", "count_convs", "fuse_conv_bn", "randomize_bn_", "seed_everything",
    "MODELS", "ModelSpec", "build", "export_onnx", "export_pair",
    "RepVGG", "RepVGGBlock", "repvgg_a0", "repvgg_a0_g4", "repvgg_model_convert", "repvgg_tiny",
]
