"""Checkpoint folders in other people's formats, written by hand from a tiny model's weights.

- `write_prosparse_folder`: the authors' ProSparse release layout (PAPERS.md (c)): `model_type "sparsellama"`,
  `SparseLlamaForCausalLM`, `auto_map` to remote files that are NOT there, fatrelu + hidden_act_param,
  LLaMA key names, weights as safetensors or pytorch_model.bin.
- `write_minicpm_like_folder`: a custom-code model type transformers lacks (MiniCPM-S style), with its
  code files beside the weights; its FFN computes ReLU, so only a loader that applies FATReLU matches.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

LLAMA_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
                "bos_token_id", "eos_token_id")


def llama_config_fields(model) -> dict:
    cfg = model.config
    fields = {k: getattr(cfg, k) for k in LLAMA_FIELDS}
    # LLaMA-2 releases predate rope_parameters and write rope_theta at the top level.
    fields["rope_theta"] = cfg.rope_parameters["rope_theta"]
    return fields


def save_weights(model, folder: Path, weights: str) -> None:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "safetensors":
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif weights == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    elif weights != "none":
        raise ValueError(weights)


def write_prosparse_folder(model, folder: Path, threshold: float = 0.01, weights: str = "safetensors",
                           **config_overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["SparseLlamaForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_sparsellama.SparseLlamaConfig",
                     "AutoModelForCausalLM": "modeling_sparsellama.SparseLlamaForCausalLM"},
        "model_type": "sparsellama",
        "hidden_act": "fatrelu",
        "hidden_act_param": threshold,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "torch_dtype": "float32",
        "transformers_version": "4.31.0",
        "use_cache": True,
        **llama_config_fields(model),
        **config_overrides,
    }
    config = {k: v for k, v in config.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_weights(model, folder, weights)
    return folder


MINICPM_CONFIGURATION = '''
from transformers import LlamaConfig


class MiniCPMConfig(LlamaConfig):
    model_type = "minicpm"
'''

MINICPM_MODELING = '''
from transformers import LlamaForCausalLM

from .configuration_minicpm import MiniCPMConfig


class MiniCPMForCausalLM(LlamaForCausalLM):
    """Stand-in for MiniCPM's own code: a LLaMA whose FFN uses ReLU where the config says fatrelu."""
    config_class = MiniCPMConfig

    def __init__(self, config):
        hidden_act, config.hidden_act = config.hidden_act, "relu"
        super().__init__(config)
        config.hidden_act = hidden_act
'''


def write_minicpm_like_folder(model, folder: Path, threshold: float = 0.03, with_code: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["MiniCPMForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMConfig",
                     "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"},
        "model_type": "minicpm", "hidden_act": "fatrelu", "hidden_act_param": threshold,
        **llama_config_fields(model),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if with_code:
        (folder / "configuration_minicpm.py").write_text(MINICPM_CONFIGURATION)
        (folder / "modeling_minicpm.py").write_text(MINICPM_MODELING)
    save_weights(model, folder, "safetensors")
    return folder
