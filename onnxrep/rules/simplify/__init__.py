"""Whole-graph simplification as rules of the contract (issue 23): what exporters leave that computes
nothing (Constant nodes, Identity, no-op Casts / Reshapes / Transposes, pairs that cancel, sizes that
static dims fix, Ifs on constants, ...), each an exact rewrite with its equation in its docstring, one rule
per file. They run beside the re-parameterization rules, before the region collapse (so that it sees the
branches) and again in every sweep after it."""
from .constants_as_initializers import ConstantsAsInitializers
from .merge_transposes import MergeTransposes
from .remove_inverse_pairs import RemoveInversePairs
from .remove_no_ops import RemoveNoOps
from .cse import EliminateCommonSubexpressions
from .fold_static_dims import FoldStaticDims
from .inline_constant_if import InlineConstantIf
