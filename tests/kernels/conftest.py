"""Without a GPU the kernel tests run the Triton kernels on CPU through the interpreter: the variable must
be set before triton is first imported (here, before any test module of this folder is collected). With a
GPU the compiled kernels run (and the `gpu` tests too)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
