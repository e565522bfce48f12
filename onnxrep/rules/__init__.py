"""Built-in rules, one per file, all written with the public API in ``onnxrep.pattern``."""
from .bn_across_reshape import MoveBatchNormBeforeReshape
from .border_fill import CanonicalizeBorderFill
from .collapse_linear import CollapseLinearRegions
from .crop_dead_taps import CropDeadTaps
from .dead_channels import EliminateDeadChannels
from .equalize_cross_layer import EqualizeCrossLayer
from .fold_bn_before_gemm import FoldBatchNormBeforeGemm
from .fold_bn_into_convtranspose import FoldBatchNormIntoConvTranspose
from .fold_bn_into_gemm import FoldBatchNormIntoGemm
from .fold_constants import FoldConstants
from .fold_conv_into_fc import FoldConvIntoFC
from .merge_reshapes import MergeReshapes
from .prune_compactors import PruneCompactorRows
from .sink_transposes import SinkTransposesBelowSum
from .simplify import EliminateCommonSubexpressions
from .simplify import FoldStaticDims, InlineConstantIf
from .simplify import ConstantsAsInitializers, MergeTransposes, RemoveInversePairs, RemoveNoOps


def default_rules():
    """Fresh instances of every built-in rule, in priority order."""
    return sorted([FoldConstants(), FoldStaticDims(), InlineConstantIf(), CanonicalizeBorderFill(), CollapseLinearRegions(), FoldBatchNormIntoGemm(), FoldBatchNormBeforeGemm(),
                   FoldBatchNormIntoConvTranspose(), EliminateDeadChannels(), MoveBatchNormBeforeReshape(), FoldConvIntoFC(),
                   MergeReshapes(), CropDeadTaps(), SinkTransposesBelowSum(), EliminateCommonSubexpressions(),
                   RemoveNoOps(), RemoveInversePairs(), MergeTransposes(), ConstantsAsInitializers()],
                  key=lambda r: r.priority)


def opt_in_rules():
    """Fresh instances of the built-in rules that run only when asked for, each with the command-line
    flag that turns it on (in the Python API: pass the instance in ``rules=[...]``)."""
    return [(PruneCompactorRows(0.0), "--prune-threshold T"), (EqualizeCrossLayer(), "--equalize")]


__all__ = ["CanonicalizeBorderFill", "FoldConvIntoFC", "MergeReshapes", "MoveBatchNormBeforeReshape", "CollapseLinearRegions", "CropDeadTaps", "ConstantsAsInitializers", "MergeTransposes", "RemoveInversePairs", "RemoveNoOps", "EliminateCommonSubexpressions", "EliminateDeadChannels", "EqualizeCrossLayer", "FoldBatchNormBeforeGemm", "FoldBatchNormIntoConvTranspose", "FoldBatchNormIntoGemm", "FoldConstants", "FoldStaticDims", "InlineConstantIf", "PruneCompactorRows", "SinkTransposesBelowSum", "default_rules",
           "opt_in_rules"]
