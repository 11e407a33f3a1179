"""A training run's latest checkpoint as one unpartitioned model: `load_run_model(RUN_DIR) -> (model, tokenizer)`.

DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` merges the ZeRO shards (any stage) of the tag that
`checkpoints/latest` names into one fp32 state dict on CPU. The architecture comes from `RUN_DIR/model/`
(the pre-swap config and tokenizer the recipe wrote at start) and the activation from `RUN_DIR/recipe.yaml`,
so the result is the same converted model the run trained, with no process group and no GPU needed.
`actsparse export RUN_DIR OUT` = `load_run_model` + `actsparse.modeling.export_hf`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoTokenizer

from .checkpointing import latest_tag
from .config import ModelConfig, build_section
from .errors import ConfigError
from .model_loading import rebuild_model

log = logging.getLogger("actsparse.recipe")


def run_model_config(run_dir: Path) -> ModelConfig:
    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: not found; is {run_dir} a training run directory?")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return build_section(ModelConfig, raw.get("model"), str(path), "model")


def consolidated_state_dict(run_dir: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt_dir = Path(run_dir) / "checkpoints"
    tag = latest_tag(ckpt_dir)
    if tag is None:
        raise ConfigError(f"{ckpt_dir}: no complete checkpoint (no `latest` naming a saved tag)")
    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)


def load_run_model(run_dir: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of the latest complete checkpoint in `run_dir`, on CPU, in eval mode."""
    run_dir = Path(run_dir)
    model_cfg = run_model_config(run_dir)
    base_config = AutoConfig.from_pretrained(run_dir / "model", trust_remote_code=model_cfg.trust_remote_code)
    model = rebuild_model(base_config, model_cfg, dtype=torch.float32)
    state = consolidated_state_dict(run_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings: the checkpoint may carry lm_head.weight as a copy of embed_tokens, or omit it.
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or set(unexpected) - tied:
        raise RuntimeError(f"{run_dir}: checkpoint does not match the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    if tied:
        model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model", trust_remote_code=model_cfg.trust_remote_code)
    return model.to(dtype).eval(), tokenizer


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """The run's latest checkpoint as a Hugging Face folder (`actsparse.modeling.export_hf`)."""
    from actsparse.modeling.export import export_hf

    model, tokenizer = load_run_model(run_dir)
    out = export_hf(model, out_dir, tokenizer)
    log.info("exported %s -> %s", run_dir, out)
    return out
