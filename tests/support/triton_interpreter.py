"""The guard of the kernel tests that run Triton kernels on CPU tensors through the interpreter."""
from __future__ import annotations

import importlib.util

import pytest


def require_triton_interpreter() -> None:
    """Skip the calling test module (at import) unless triton is installed and TRITON_INTERPRET=1 was set before its
    import (conftest.py sets it when there is no GPU; on a GPU, test_gpu.py covers the compiled kernels)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (pip install triton): the kernel tests need its interpreter",
                    allow_module_level=True)
    from actsparse.kernels import configs
    if not configs.INTERPRET:
        pytest.skip("interpreter tests (CPU tensors) need TRITON_INTERPRET=1 before triton's import (conftest.py sets "
                    "it when there is no GPU); on a GPU, test_gpu.py covers the compiled kernels",
                    allow_module_level=True)
