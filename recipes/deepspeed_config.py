"""The DeepSpeed config derived from the recipe (an explicit JSON from `train.deepspeed_json` overlays it).

Choices and why:
- bf16 on GPU, fp32 on CPU: CPU runs are for testing logic, and exact resume equality needs fp32.
- The optimizer is a client `torch.optim.AdamW` (built in the recipe with weight-decay groups), so no
  DeepSpeed optimizer op is JIT-compiled; `zero_allow_untested_optimizer` lets ZeRO wrap it.
- Gradient clipping and accumulation are DeepSpeed's (the engine steps once per `grad_accum` micro-batches).
- ZeRO-3 gathers with the defaults DeepSpeed and HF use for 1-13B models; `stage3_gather_16bit_weights_on_model_save`
  lets `save_16bit_model` write a full copy if someone wants one.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError


def _deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def derive_deepspeed_config(cfg, world_size: int, on_gpu: bool) -> dict:
    """DeepSpeed config for recipe `cfg` on `world_size` ranks."""
    train, optim = cfg.train, cfg.optim
    zero: dict = {"stage": train.zero_stage}
    if train.zero_stage == 3:
        zero.update({
            "overlap_comm": on_gpu,
            "contiguous_gradients": True,
            "stage3_gather_16bit_weights_on_model_save": True,
        })
    ds = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world_size,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": on_gpu},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,   # our own logger reports; keep DeepSpeed's quiet
        "wall_clock_breakdown": False,
    }
    if train.deepspeed_json:
        path = Path(train.deepspeed_json)
        try:
            overlay = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{cfg.source}: train.deepspeed_json: file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{cfg.source}: train.deepspeed_json: {path} is not valid JSON ({err})") from None
        if not isinstance(overlay, dict):
            raise ConfigError(f"{cfg.source}: train.deepspeed_json: {path} must hold a JSON object")
        _deep_update(ds, overlay)
    return ds
