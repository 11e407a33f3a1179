"""Programmatic dependent launch (PDL, Hopper and later): a kernel of the sparse FFN is launched while the one
before it finishes, so its launch and block scheduling overlap that kernel's tail instead of following it.

`DispatchConfig(pdl=True)` launches the gate / compaction, up and down kernels with `launch_pdl=True`. Each of
them starts with `gdc_start`: `griddepcontrol.wait` (no load or store before the previous kernel in the
stream has completed and its writes are visible; the same ordering as without PDL) and then
`griddepcontrol.launch_dependents` (the next kernel may be scheduled once every program of this one has
started: its programs take only SM slots this kernel no longer needs). Unavailable under the Triton
interpreter, before compute capability 9.0, or in a Triton without `tl.extra.cuda.gdc_wait`: then the kernels
launch as usual and the log says so once.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import configs
from .dispatch import warn_once


@triton.jit
def gdc_start(USE_GDC: tl.constexpr):
    """First statement of a kernel that may be launched with PDL: wait for the previous kernel, then let the
    next one launch."""
    if USE_GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@functools.lru_cache(maxsize=None)
def _unusable_reason(device: torch.device) -> str | None:
    """Why PDL cannot be used on `device` (None: it can); asked once per device, not on every FFN call."""
    if configs.INTERPRET or device.type != "cuda":
        return "under the Triton interpreter" if configs.INTERPRET else f"on {device.type}"
    if torch.cuda.get_device_capability(device)[0] < 9:
        return f"on compute capability {torch.cuda.get_device_capability(device)} (needs 9.0+)"
    if not hasattr(getattr(getattr(tl, "extra", None), "cuda", None), "gdc_wait"):
        return f"in triton {triton.__version__} (no tl.extra.cuda.gdc_wait)"
    return None


def pdl_available(device: torch.device) -> bool:
    """Whether PDL can be used on `device`, asked without a warning: for a kernel that only lets a PDL-launched kernel
    after it start early (griddepcontrol.launch_dependents), which changes nothing where none follows."""
    return _unusable_reason(device) is None


def pdl_usable(device: torch.device) -> bool:
    """Whether PDL can be used on `device`; says once why not."""
    reason = _unusable_reason(device)
    if reason is not None:
        warn_once(f"PDL (DispatchConfig(pdl=True), GemvLinear(pdl=True)) unavailable {reason}; kernels launch "
                  "without PDL")
    return reason is None


def launch_options(pdl: bool) -> dict:
    """Extra keyword arguments for a kernel launch: the constexpr switch, and Triton's launch option."""
    return {"USE_GDC": True, "launch_pdl": True} if pdl else {"USE_GDC": False}
