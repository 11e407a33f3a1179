"""`export_hf(model, out_dir, tokenizer)`: a converted model as a plain Hugging Face folder.

What `config.json` says for each activation (the FFN weights keep the base model's key names throughout):
- silu, relu, relu2: the base architecture with `hidden_act` "silu" / "relu" / "relu2"; transformers' own
  FFN computes `ACT2FN[hidden_act](gate) * up`, so plain `AutoModelForCausalLM.from_pretrained` reproduces it.
- fatrelu: ProSparse's published format (PAPERS.md (c)): `"hidden_act": "fatrelu"`, `"hidden_act_param": t`,
  `model_type "sparse<base>"`, `architectures ["Sparse<Base>ForCausalLM"]` and an `auto_map` to the two
  remote-code files written next to the weights (`trust_remote_code=True`).
- drelu: the same layout with `"hidden_act": "drelu"`.
`actsparse.modeling.load_pretrained` reads all of these without running the remote code.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from .remote_code import remote_code_names, write_remote_code
from .sparsify import sparse_mlps

REMOTE_CODE_ACTIVATIONS = ("fatrelu", "drelu")
# Bookkeeping `sparsify` keeps on the live config; it describes our process, not the checkpoint.
PRIVATE_CONFIG_KEYS = ("actsparse_original_act",)


def model_activation(model: nn.Module) -> tuple[str, float] | None:
    """(activation, threshold) shared by every converted FFN, or None for an unconverted model."""
    mlps = sparse_mlps(model)
    if not mlps:
        return None
    kinds = {(m.activation, m.threshold if m.activation == "fatrelu" else 0.0) for m in mlps}
    if len(kinds) > 1:
        raise ValueError(f"export: converted FFNs disagree on the activation ({sorted(kinds)}); "
                         "a Hugging Face config holds one hidden_act")
    return kinds.pop()


def _check_not_partitioned(model: nn.Module) -> None:
    # ZeRO-3 leaves each rank an empty placeholder per parameter; saving it would write empty tensors.
    if any(getattr(p, "ds_numel", None) is not None and p.numel() != p.ds_numel for p in model.parameters()):
        raise ValueError("export: the model's parameters are ZeRO-3 partitioned; gather them first "
                         "(actsparse export RUN_DIR consolidates a training run)")


def export_config_dict(model: nn.Module, saved: dict) -> dict:
    """The `config.json` content for `model`, from the one `save_pretrained` wrote (`saved`)."""
    config_dict = {k: v for k, v in saved.items() if k not in PRIVATE_CONFIG_KEYS}
    activation = model_activation(model)
    if activation is None:
        return config_dict
    name, threshold = activation
    # `sparsify(model, "silu")` keeps the model's own act_fn: export what the base config had.
    original = getattr(model.config, "actsparse_original_act", saved.get("hidden_act", "silu"))
    config_dict["hidden_act"] = original if name == "silu" else name
    config_dict.pop("hidden_act_param", None)
    if name == "fatrelu":
        config_dict["hidden_act_param"] = float(threshold)
    if name in REMOTE_CODE_ACTIVATIONS:
        names = remote_code_names(model)
        config_dict.update(model_type=names.model_type, architectures=[f"{names.prefix}ForCausalLM"],
                           auto_map=names.auto_map)
    return config_dict


def export_hf(model: nn.Module, out_dir: str | Path, tokenizer=None) -> Path:
    """Write `model` (converted with `sparsify` or not) as a Hugging Face folder; return `out_dir`.

    Weights go through `save_pretrained` (safetensors, sharding, tied weights as transformers does them);
    `config.json` is then rewritten by `export_config_dict`, and for fatrelu / drelu the two
    remote-code files are written beside it. The model's modules and its activation fields are not changed
    (`save_pretrained` itself records `architectures` and `dtype` on `model.config`, as always).
    """
    _check_not_partitioned(model)
    activation = model_activation(model)      # validate before anything is written
    names = remote_code_names(model) if activation and activation[0] in REMOTE_CODE_ACTIVATIONS else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    config_path = out / "config.json"
    config_dict = export_config_dict(model, json.loads(config_path.read_text()))
    config_path.write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    if names is not None:
        write_remote_code(names, out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
