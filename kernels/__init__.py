"""Triton sparse-FFN kernels for decoding. Installed as `actsparse.kernels` (never a top-level `kernels`)."""
