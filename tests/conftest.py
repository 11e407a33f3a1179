"""Without a GPU the kernel tests run the Triton kernels on CPU through the interpreter: the variable must
be set before triton is first imported and before any `@triton.jit` kernel is defined. It lives in the root
conftest because test modules outside tests/kernels (e.g. tests/eval/test_predictor_decode.py) import
actsparse.kernels, and they are collected first. With a
GPU the compiled kernels run (and the `gpu` tests too)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
