"""Triton sparse-FFN kernels for decoding. Installed as `actsparse.kernels` (never a top-level `kernels`).

`SparseFFN` imports without triton (backend="torch" works on CPU); the Triton kernels load on first use.
"""
from .dispatch import DispatchConfig
from .sparse_ffn import SparseFFN

__all__ = ["SparseFFN", "DispatchConfig"]
