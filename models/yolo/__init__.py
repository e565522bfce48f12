"""YOLO-family reference networks: YOLOv6 RepVGG/QARepVGG, YOLOv10 (RepVGGDW, PSA, C2fCIB) and
YOLOv7 (RepConv, ImplicitA / ImplicitM in IDetect).

Three small detectors in training form, each with the PyTorch deploy conversion of its authors,
computed in float64 and cast back to the model's dtype; one module per family:

* ``yolov6.py``: ``yolov6_repconv`` / ``yolov6_model_convert``, EfficientRep + RepPANNeck +
  EffiDeHead with ``RepVGGBlock`` / ``QARepVGGBlock`` (Li et al., arXiv:2209.02976).
* ``yolov10.py``: ``yolov10n_like`` / ``yolov10_model_convert``, the yolov10n layer table with
  ``RepVGGDW``, ``SCDown``, ``PSA``, ``C2fCIB`` and ``v10Detect`` (Wang et al., arXiv:2405.14458).
* ``yolov7.py``: ``yolov7_implicit`` / ``yolov7_model_convert``, the yolov7-tiny layer table with
  ``RepConv`` and ``IDetect`` (``ImplicitA`` / ``ImplicitM``) (Wang, Bochkovskiy, Liao, CVPR 2023).
* ``common.py``: what they share: ``Conv``, ``Concat``, the layer-table builder ``parse_model`` /
  ``YOLOGraphModel``, ``autopad``, ``make_divisible``, ``fuse_conv_and_bn``,
  ``scale_convs_to_unit_std_``, and the conventions (simplified heads, BN settings, init, inputs).

Every public name is re-exported here: ``from models.yolo import X`` and ``models.yolo.X``.
"""
from .common import (Concat, Conv, YOLOGraphModel, autopad, fuse_conv_and_bn, make_divisible, parse_model,
                     scale_convs_to_unit_std_)
from .yolov6 import (ConvBNSiLU, ConvModule, EffiDeHead, EfficientRep, QARepVGGBlock, RepBlock, RepPANNeck,
                     RepVGGBlock, SPPFModule, Transpose, YOLOv6Model, YOLOv6QARepVGGBlock, YOLOv6RepVGGBlock,
                     yolov6_model_convert, yolov6_repconv)
from .yolov7 import MP, SP, IDetect, ImplicitA, ImplicitM, RepConv, yolov7_implicit, yolov7_model_convert
from .yolov10 import (CIB, PSA, SPPF, Attention, Bottleneck, C2f, C2fCIB, RepVGGDW, SCDown, v10Detect,
                      yolov10_model_convert, yolov10n_like)

__all__ = [
    # YOLOv6
    "ConvModule", "ConvBNSiLU", "SPPFModule", "Transpose", "RepVGGBlock", "QARepVGGBlock", "RepBlock",
    "EfficientRep", "RepPANNeck", "EffiDeHead", "YOLOv6Model", "yolov6_repconv", "yolov6_model_convert",
    # shared by YOLOv10 / YOLOv7
    "autopad", "make_divisible", "fuse_conv_and_bn", "scale_convs_to_unit_std_", "Conv", "Concat", "parse_model",
    "YOLOGraphModel",
    # YOLOv10
    "Bottleneck", "C2f", "SCDown", "SPPF", "RepVGGDW", "CIB", "C2fCIB", "Attention", "PSA", "v10Detect",
    "yolov10n_like", "yolov10_model_convert",
    # YOLOv7
    "MP", "SP", "RepConv", "ImplicitA", "ImplicitM", "IDetect", "yolov7_implicit", "yolov7_model_convert",
    # aliases without the clash with models.repvgg.RepVGGBlock
    "YOLOv6RepVGGBlock", "YOLOv6QARepVGGBlock",
]
