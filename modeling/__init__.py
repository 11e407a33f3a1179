"""Model surgery for activation sparsity: activation swap, ProSparse L1 and its schedule, statistics, export."""
from .activations import SUPPORTED_ACTIVATIONS, FATReLU, ReLU2
from .l1 import disable_l1, enable_l1, l1_penalty
from .l1_schedule import ConstantL1Schedule, LinearL1Schedule, ProgressiveL1Schedule
from .sparse_mlp import L1_NORMALIZATIONS, SparseGatedMLP
from .sparsify import find_gated_ffns, sparse_mlps, sparsify
from .sparsity_stats import SparsityStats

__all__ = [
    "SUPPORTED_ACTIVATIONS", "L1_NORMALIZATIONS", "FATReLU", "ReLU2", "SparseGatedMLP",
    "sparsify", "find_gated_ffns", "sparse_mlps",
    "enable_l1", "disable_l1", "l1_penalty",
    "ProgressiveL1Schedule", "ConstantL1Schedule", "LinearL1Schedule",
    "SparsityStats",
]

from .export import export_hf
from .load import load_pretrained

__all__ += ["export_hf", "load_pretrained"]
