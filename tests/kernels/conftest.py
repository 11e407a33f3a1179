"""Kernel tests run the Triton kernels on CPU through the interpreter: the variable must be set before
triton is first imported (here, before any test module of this folder is collected)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
