"""`sparsify(model, activation, threshold)`: swap the activation of every gated FFN, found by structure.

A gated FFN is any submodule with `gate_proj`, `up_proj`, `down_proj` and `act_fn` attributes: LLaMA /
LLaMA-2, Mistral, Qwen2, MiniCPM (custom code) and our own `SparseGatedMLP` all look like this. Each one
is replaced in its parent by a `SparseGatedMLP` holding the same projection modules.
"""
from __future__ import annotations

from torch import nn

from .activations import SUPPORTED_ACTIVATIONS, check_activation, gate_activation
from .sparse_mlp import SparseGatedMLP

GATED_FFN_PARTS = ("gate_proj", "up_proj", "down_proj", "act_fn")


def is_gated_ffn(module: nn.Module) -> bool:
    return all(hasattr(module, part) for part in GATED_FFN_PARTS)


def find_gated_ffns(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every gated FFN in forward order; nested FFNs are not searched."""
    found = []
    for name, module in model.named_modules():
        if is_gated_ffn(module) and not any(name.startswith(prev + ".") for prev, _ in found):
            found.append((name, module))
    return found


def sparse_mlps(model: nn.Module) -> list[SparseGatedMLP]:
    """The converted FFNs of `model`, in layer order."""
    return [m for m in model.modules() if isinstance(m, SparseGatedMLP)]


def _set_submodule(model: nn.Module, qualified_name: str, new: nn.Module) -> None:
    parent_name, _, child = qualified_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _original_act_fn(ffn: nn.Module) -> nn.Module:
    """The model's own activation, kept for `silu` so outputs stay bit-identical."""
    return ffn.original_act_fn if isinstance(ffn, SparseGatedMLP) else ffn.act_fn


def sparsify(model: nn.Module, activation: str, threshold: float = 0.0) -> nn.Module:
    """Replace the activation of every gated FFN in `model` (in place) and return `model`.

    activation: `silu` (dense baseline, bit-identical outputs), `relu` (ProSparse: relu(gate) * up),
    `drelu` (TurboSparse: relu(gate) * relu(up)), `relu2` (relu(gate)^2 * up) or `fatrelu`
    (gate kept where gate >= threshold, else 0; times up). Calling it again re-converts (e.g. the
    ProSparse relu -> fatrelu step). The model's config records the activation (`hidden_act`,
    `hidden_act_param`) so `export_hf` writes a loadable folder.
    """
    check_activation(activation, threshold)
    ffns = find_gated_ffns(model)
    if not ffns:
        raise ValueError(
            f"{type(model).__name__} has no gated FFN (a module with {', '.join(GATED_FFN_PARTS)}); "
            "supported: LLaMA/LLaMA-2, Mistral, Qwen2, MiniCPM-style gated FFNs; "
            f"activations: {', '.join(SUPPORTED_ACTIVATIONS)}"
        )
    for index, (name, ffn) in enumerate(ffns):
        original = _original_act_fn(ffn)
        act = original if activation == "silu" else gate_activation(activation, threshold)
        new = SparseGatedMLP(ffn.gate_proj, ffn.up_proj, ffn.down_proj, act, activation, threshold, index)
        # Keep the pre-conversion activation (not a submodule: no state, not in state_dict) so a
        # later `sparsify(model, "silu")` restores the exact original computation.
        object.__setattr__(new, "original_act_fn", original)
        _set_submodule(model, name, new)
    _record_in_config(model, activation, threshold)
    return model


def _record_in_config(model: nn.Module, activation: str, threshold: float) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    if not hasattr(config, "actsparse_original_act"):
        config.actsparse_original_act = getattr(config, "hidden_act", "silu")
    config.hidden_act = config.actsparse_original_act if activation == "silu" else activation
    if activation == "fatrelu":
        config.hidden_act_param = float(threshold)
    elif hasattr(config, "hidden_act_param"):
        del config.hidden_act_param
