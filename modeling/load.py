"""`load_pretrained(path)`: any activation-sparse checkpoint we know of, as a model converted with `sparsify`.

Formats (`path` is a local folder or a Hub id; `config.json` decides):
- transformers-native (`model_type` llama / mistral / qwen2 / ...), `hidden_act` silu, relu or relu2: what
  `export_hf` writes for those activations and any plain HF checkpoint. Loaded as is, then `sparsify`.
- `model_type "sparse<base>"` with `hidden_act` fatrelu (+ `hidden_act_param`) or drelu: ProSparse's published
  format (`SparseLlamaForCausalLM`, PAPERS.md (c)) and what `export_hf` writes for those activations. The
  weights use the base model's key names, so we load them into `<Base>ForCausalLM` built from the base
  config and `sparsify` it: no remote code runs (the authors' remote files need not be present).
- any other `model_type` (MiniCPM-S: `MiniCPMForCausalLM`, fatrelu): needs its own code, which must be in
  the folder (`auto_map`); loaded with `trust_remote_code=True`, then `sparsify`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .activations import SUPPORTED_ACTIVATIONS
from .remote_code import base_model_type
from .sparsify import sparsify

# Activations transformers' own gated FFN computes (ACT2FN[hidden_act](gate) * up) exactly as `sparsify` does.
NATIVE_ACTIVATIONS = ("silu", "relu", "relu2")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "subfolder")


def read_config_dict(path: str | os.PathLike, **hub_kwargs) -> tuple[dict, str]:
    """(config.json as a dict, the file's name for error messages) from a folder or a Hub id."""
    if os.path.isdir(path):
        config_file = Path(path) / hub_kwargs.get("subfolder", "") / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{config_file}: not found (a model folder needs config.json)")
    elif os.path.isabs(path) or str(path).startswith(".") or os.path.exists(path):
        raise ValueError(f"{path}: not a folder (expected a model folder with config.json, or a Hub id)")
    else:
        from transformers.utils import cached_file
        try:
            config_file = cached_file(str(path), "config.json", **hub_kwargs)
        except (OSError, ValueError) as err:  # ValueError: huggingface_hub's invalid repo id
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}/config.json: cannot be read ({first_line})") from None
    try:
        config_dict = json.loads(Path(config_file).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file}: not valid JSON ({err})") from None
    return config_dict, str(config_file)


def activation_of(config_dict: dict, config_file: str) -> tuple[str, float]:
    """(activation, threshold) recorded in a config: `hidden_act` (+ `hidden_act_param` for fatrelu)."""
    activation = config_dict.get("hidden_act", "silu")
    if activation not in SUPPORTED_ACTIVATIONS:
        raise ValueError(f"{config_file}: field hidden_act = {activation!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
    if activation != "fatrelu":
        return activation, 0.0
    threshold = config_dict.get("hidden_act_param")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold < 0:
        raise ValueError(f"{config_file}: field hidden_act_param = {threshold!r}; hidden_act 'fatrelu' "
                         "needs its threshold there, a number >= 0")
    return activation, float(threshold)


def base_config_for(config_dict: dict, config_file: str, model_type: str):
    """The transformers config of `model_type` that builds the base model for `config_dict`'s weights."""
    from transformers import CONFIG_MAPPING

    base = {k: v for k, v in config_dict.items() if k not in ("auto_map", "hidden_act_param", "model_type")}
    config_class = CONFIG_MAPPING[model_type]  # validated by the caller
    if base.get("hidden_act", "silu") not in NATIVE_ACTIVATIONS:
        # Transformers' FFN looks hidden_act up in ACT2FN (no fatrelu/drelu). Build it with the families'
        # SiLU; `sparsify` replaces it, and `sparsify(model, "silu")` later means the base model's SwiGLU.
        base["hidden_act"] = "silu"
    archs = base.get("architectures") or []
    base["architectures"] = [a[len("Sparse"):] if a.startswith("Sparse") else a for a in archs] or None
    try:
        return config_class.from_dict(base)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_file}: not a valid {config_class.__name__} ({str(err).splitlines()[0]})") from None


def check_weights_present(path: str | os.PathLike, subfolder: str = "") -> None:
    """A clear error for a local folder without weights (from_pretrained's message lists Hub options)."""
    folder = Path(path) / subfolder
    if os.path.isdir(path) and not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"{folder}: no weights file (looked for {', '.join(WEIGHT_FILES)})")


def load_pretrained(path: str | os.PathLike, dtype=None, **kw) -> nn.Module:
    """Load a checkpoint in any of the formats above and return it converted with `sparsify`.

    dtype: torch dtype (or its name) for the weights; None keeps transformers' default. Other keyword
    arguments go to `from_pretrained` (revision, cache_dir, device_map, attn_implementation, ...);
    `trust_remote_code=True` is needed for custom-code models loaded from the Hub.
    """
    hub_kwargs = {k: kw[k] for k in HUB_KWARGS if k in kw}
    config_dict, config_file = read_config_dict(path, **hub_kwargs)
    activation, threshold = activation_of(config_dict, config_file)
    check_weights_present(path, hub_kwargs.get("subfolder", ""))
    if dtype is not None:
        kw["dtype"] = _torch_dtype(dtype)
    model_type = config_dict.get("model_type")
    base_type = model_type if _is_native(model_type) else base_model_type(model_type or "")
    if base_type is not None:
        config = base_config_for(config_dict, config_file, base_type)
        model = _from_pretrained(path, config_file, config=config, **kw)
    else:
        _check_custom_code(path, config_dict, config_file, kw)
        model = _from_pretrained(path, config_file, trust_remote_code=True, **kw)
    return sparsify(model, activation, threshold)


def _torch_dtype(dtype):
    """torch.bfloat16 for "bfloat16" (or "torch.bfloat16"); other values ("auto", torch dtypes) as given."""
    if isinstance(dtype, str):
        found = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(found, torch.dtype):
            return found
        if dtype != "auto":
            raise ValueError(f"dtype {dtype!r} is not a torch dtype (e.g. float32, bfloat16, float16) or 'auto'")
    return dtype


def _is_native(model_type: str | None) -> bool:
    from transformers import CONFIG_MAPPING
    return model_type is not None and model_type in CONFIG_MAPPING


def _check_custom_code(path, config_dict: dict, config_file: str, kw: dict) -> None:
    """A model type transformers lacks loads only through its own code, present in the checkpoint."""
    model_type = config_dict.get("model_type")
    target = (config_dict.get("auto_map") or {}).get("AutoModelForCausalLM")
    if target is None:
        raise ValueError(f"{config_file}: field model_type = {model_type!r} is neither a transformers model "
                         "type nor sparse<type>, and auto_map has no AutoModelForCausalLM entry (custom code)")
    module_file = target.split("--")[-1].rsplit(".", 1)[0] + ".py"
    if os.path.isdir(path):
        if not (Path(path) / kw.get("subfolder", "") / module_file).is_file():
            raise ValueError(f"{config_file}: field auto_map needs {module_file} for model_type {model_type!r}, "
                             f"but it is not in {path}; copy the model's custom code files there")
    elif not kw.get("trust_remote_code"):
        raise ValueError(f"{config_file}: model_type {model_type!r} runs custom code from the Hub "
                         f"({module_file}); pass trust_remote_code=True to allow it")
    kw.pop("trust_remote_code", None)


def _from_pretrained(path, config_file: str, **kw) -> nn.Module:
    """`AutoModelForCausalLM.from_pretrained`, refusing a load that left parameters uninitialized."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kw)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(f"{path}: the weights lack {len(missing)} parameters of the model that "
                         f"{config_file} describes (e.g. {missing[0]}); wrong model_type or key names?")
    return model
