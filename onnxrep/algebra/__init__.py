"""Pure numpy algebra of re-parameterization (float64, no ONNX)."""
from .affine import affine_as_conv, affine_sum, affine_then_affine, affine_then_conv, bn_affine, conv_then_affine
from .branches import add, identity, regroup
from .dense import affine_then_gemm, convtranspose_then_affine, gemm_then_affine
from .errors import NotRepresentable
from .sequential import avgpool, compose, is_pointwise, pad_pointwise
from .forms import (AffineForm, ConvForm, Deferred, SizeDependentPads, cast_back, channel_constant, overflow,
                    precision_loss)

__all__ = [
    "AffineForm", "ConvForm", "affine_then_gemm", "Deferred", "NotRepresentable", "add", "affine_as_conv", "affine_sum", "affine_then_affine",
    "affine_then_conv", "precision_loss", "avgpool", "bn_affine", "cast_back", "compose", "is_pointwise", "pad_pointwise", "channel_constant", "conv_then_affine", "convtranspose_then_affine",
    "gemm_then_affine", "identity", "overflow", "regroup", "SizeDependentPads",
]
