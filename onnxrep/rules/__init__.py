"""Built-in rules, one per file, all written with the public API in ``onnxrep.pattern``."""
from .border_fill import CanonicalizeBorderFill
from .collapse_linear import CollapseLinearRegions
from .dead_channels import EliminateDeadChannels
from .fold_bn_before_gemm import FoldBatchNormBeforeGemm
from .fold_bn_into_convtranspose import FoldBatchNormIntoConvTranspose
from .fold_bn_into_gemm import FoldBatchNormIntoGemm
from .fold_constants import FoldConstants
from .prune_compactors import PruneCompactorRows


def default_rules():
    """Fresh instances of every built-in rule, in priority order."""
    return sorted([FoldConstants(), CanonicalizeBorderFill(), CollapseLinearRegions(), FoldBatchNormIntoGemm(), FoldBatchNormBeforeGemm(),
                   FoldBatchNormIntoConvTranspose(), EliminateDeadChannels()],
                  key=lambda r: r.priority)


__all__ = ["CanonicalizeBorderFill", "CollapseLinearRegions", "EliminateDeadChannels", "FoldBatchNormBeforeGemm", "FoldBatchNormIntoConvTranspose", "FoldBatchNormIntoGemm", "FoldConstants", "PruneCompactorRows", "default_rules"]
