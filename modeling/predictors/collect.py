"""Collect predictor training data: per layer, the predictor input and the activation labels of x1.

For every converted FFN (`SparseGatedMLP`) two forward pre-hooks capture, per real (non-padding) token:
- `x` [tokens, d_model]: the predictor input, either the residual before `post_attention_layernorm`
  (`pre_norm`) or the FFN input after it (`mlp_input`), see predictor.py;
- `active` [tokens, d_ff] bool: `x1 != 0`, with x1 the `down_proj` input (the label ProSparse trains on);
- optionally `clip` [tokens, d_ff] bool: per token, the top `clip_percent`% of |x1| among the nonzero entries
  (DejaVu_predictor's "clip" labels, e.g. 15).

Memory is bounded: buffers are flushed to `layer_XX/shard_YYYYY.safetensors` once they hold `flush_tokens`
tokens, so at most `flush_tokens` + one batch of tokens per layer sit in memory. `manifest.json` lists the
shards and shapes; `load_layer` reads one layer back for training or evaluation.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..sparse_mlp import SparseGatedMLP
from ..sparsify import find_gated_ffns
from .predictor import INPUT_LOCATIONS

MANIFEST = "manifest.json"
DATA_FORMAT = "actsparse-predictor-data/1"
LABELS = ("active", "clip")
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def predictor_sites(model: nn.Module, input_location: str, norm_name: str = "post_attention_layernorm"
                    ) -> list[tuple[SparseGatedMLP, nn.Module]]:
    """(ffn, module whose input is the predictor input) per layer, in layer order."""
    if input_location not in INPUT_LOCATIONS:
        raise ValueError(f"input_location {input_location!r}: choose from {', '.join(INPUT_LOCATIONS)}")
    sites = []
    for name, ffn in find_gated_ffns(model):
        if not isinstance(ffn, SparseGatedMLP):
            raise ValueError(f"{name} is not converted; call actsparse.modeling.sparsify(model, 'relu') first")
        if input_location == "mlp_input":
            sites.append((ffn, ffn))
            continue
        parent_name = name.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else model
        norm = getattr(parent, norm_name, None)
        if norm is None:
            raise ValueError(f"input_location='pre_norm' needs {parent_name}.{norm_name} next to {name}; "
                             "use input_location='mlp_input' for this architecture")
        sites.append((ffn, norm))
    if not sites:
        raise ValueError(f"{type(model).__name__} has no gated FFN to collect from")
    return sites


def clip_labels(x1: torch.Tensor, clip_percent: float) -> torch.Tensor:
    """Per token, the ceil(clip_percent% * d_ff) largest |x1| entries that are also nonzero."""
    k = max(1, math.ceil(clip_percent / 100.0 * x1.shape[-1]))
    magnitude = x1.abs()
    top = magnitude.topk(k, dim=-1).indices
    return torch.zeros_like(x1, dtype=torch.bool).scatter_(-1, top, True) & (magnitude > 0)


@dataclass
class LayerBuffer:
    """Captured tensors of one layer not yet written to disk."""
    x: list = field(default_factory=list)
    active: list = field(default_factory=list)
    clip: list = field(default_factory=list)
    tokens: int = 0


class ShardWriter:
    """Per-layer buffers flushed to safetensors shards; `finish()` writes the manifest."""

    def __init__(self, out_dir: str | Path, num_layers: int, store_dtype: str = "float16",
                 clip_percent: float | None = None):
        if store_dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype {store_dtype!r}: choose from {', '.join(STORE_DTYPES)}")
        self.out_dir = Path(out_dir)
        self.store_dtype = STORE_DTYPES[store_dtype]
        self.clip_percent = clip_percent
        self.buffers = [LayerBuffer() for _ in range(num_layers)]
        self.shards: list[list[dict]] = [[] for _ in range(num_layers)]
        for layer in range(num_layers):
            (self.out_dir / f"layer_{layer:02d}").mkdir(parents=True, exist_ok=True)

    def add(self, layer: int, x: torch.Tensor, x1: torch.Tensor) -> None:
        buf = self.buffers[layer]
        buf.x.append(x.detach().to("cpu", self.store_dtype))
        buf.active.append((x1 != 0).cpu())
        if self.clip_percent is not None:
            buf.clip.append(clip_labels(x1.detach(), self.clip_percent).cpu())
        buf.tokens += x.shape[0]

    def buffered_tokens(self) -> int:
        return max(b.tokens for b in self.buffers)

    def flush(self) -> None:
        for layer, buf in enumerate(self.buffers):
            if buf.tokens == 0:
                continue
            tensors = {"x": torch.cat(buf.x), "active": torch.cat(buf.active)}
            if buf.clip:
                tensors["clip"] = torch.cat(buf.clip)
            name = f"layer_{layer:02d}/shard_{len(self.shards[layer]):05d}.safetensors"
            save_file(tensors, str(self.out_dir / name))
            self.shards[layer].append({"file": name, "tokens": buf.tokens})
            self.buffers[layer] = LayerBuffer()

    def finish(self, info: dict) -> dict:
        self.flush()
        manifest = {"format": DATA_FORMAT, **info,
                    "store_dtype": str(self.store_dtype).removeprefix("torch."),
                    "labels": ["active"] + (["clip"] if self.clip_percent is not None else []),
                    "clip_percent": self.clip_percent,
                    "tokens": sum(s["tokens"] for s in self.shards[0]) if self.shards else 0,
                    "layers": [{"shards": shards} for shards in self.shards]}
        (self.out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
        return manifest


def _as_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """input_ids [B, T] and an optional attention mask, from a tensor or a dict-like batch."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    return batch["input_ids"], batch.get("attention_mask")


@torch.no_grad()
def collect_activations(model: nn.Module, batches: Iterable, out_dir: str | Path, input_location: str = "pre_norm",
                        flush_tokens: int = 65536, max_tokens: int | None = None, clip_percent: float | None = None,
                        store_dtype: str = "float16", extra_info: dict | None = None, progress: bool = True) -> dict:
    """Run `model` over `batches` (tensors of input_ids or dicts with input_ids / attention_mask) and write
    per-layer shards plus `manifest.json` into `out_dir`. Stops after `max_tokens` real tokens."""
    sites = predictor_sites(model, input_location)
    writer = ShardWriter(out_dir, len(sites), store_dtype, clip_percent)
    device = next(model.parameters()).device
    state = {"keep": None}          # bool [B*T] of real tokens in the current batch
    pending: list[torch.Tensor | None] = [None] * len(sites)

    def capture_input(layer):
        def hook(module, args):
            pending[layer] = args[0].reshape(-1, args[0].shape[-1])[state["keep"]]
        return hook

    def capture_x1(layer):
        def hook(module, args):
            x1 = args[0].reshape(-1, args[0].shape[-1])[state["keep"]]
            writer.add(layer, pending[layer], x1)
            pending[layer] = None
        return hook

    handles = []
    for layer, (ffn, tap) in enumerate(sites):
        handles.append(tap.register_forward_pre_hook(capture_input(layer)))
        handles.append(ffn.down_proj.register_forward_pre_hook(capture_x1(layer)))
    seen = 0
    bar = tqdm(total=max_tokens, unit="tok", desc="collect", disable=not progress)
    try:
        for batch in batches:
            ids, mask = _as_batch(batch)
            keep = torch.ones(ids.numel(), dtype=torch.bool) if mask is None else mask.reshape(-1).bool()
            if max_tokens is not None and seen + int(keep.sum()) > max_tokens:
                keep &= keep.cumsum(0) <= max_tokens - seen     # take only the tokens still wanted
            state["keep"] = keep.to(device)
            model(ids.to(device)) if mask is None else model(input_ids=ids.to(device), attention_mask=mask.to(device))
            seen += int(keep.sum())
            bar.update(int(keep.sum()))
            if writer.buffered_tokens() >= flush_tokens:
                writer.flush()
            if max_tokens is not None and seen >= max_tokens:
                break
    finally:
        for handle in handles:
            handle.remove()
        bar.close()
    ffn = sites[0][0]
    info = {"input_location": input_location, "num_layers": len(sites),
            "d_model": ffn.gate_proj.in_features, "d_ff": ffn.gate_proj.out_features,
            "activation": ffn.activation, **(extra_info or {})}
    return writer.finish(info)


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no collected data; run `actsparse predictors collect` first")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != DATA_FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {DATA_FORMAT!r}")
    return manifest


def load_layer(data_dir: str | Path, layer: int, label: str = "active", max_tokens: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [tokens, d_model] in the stored dtype, labels [tokens, d_ff] bool) of one layer, shards in order."""
    manifest = read_manifest(data_dir)
    if label not in manifest["labels"]:
        raise ValueError(f"{data_dir}: label {label!r} was not collected (have {manifest['labels']}); "
                         "collect with clip_percent set for 'clip'")
    xs, ys, count = [], [], 0
    for shard in manifest["layers"][layer]["shards"]:
        tensors = load_file(str(Path(data_dir) / shard["file"]))
        xs.append(tensors["x"])
        ys.append(tensors[label])
        count += shard["tokens"]
        if max_tokens is not None and count >= max_tokens:
            break
    x, y = torch.cat(xs), torch.cat(ys)
    return (x[:max_tokens], y[:max_tokens]) if max_tokens is not None else (x, y)
