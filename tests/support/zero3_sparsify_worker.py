"""One rank of tests/modeling/test_zero3_sparsify.py: sparsify + L1 + stats on a ZeRO-3 partitioned model.

Launched by `torchrun --nproc_per_node 2 zero3_sparsify_worker.py --out RESULT.json` on CPU (gloo). Each rank
builds a tiny LLaMA inside `deepspeed.zero.Init`, converts it with `sparsify(model, "relu")` while its
parameters are partitioned, trains a few DeepSpeed ZeRO-3 steps on `lm loss + lambda * l1_penalty`, and
rank 0 writes what the test checks against references computed from the gathered full weights.
"""
from __future__ import annotations

import argparse
import json
import math

import deepspeed
import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from actsparse.modeling import SparsityStats, enable_l1, l1_penalty, sparsify
from tiny_models import TINY, random_ids

DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    # persistence threshold 0: partition even these tiny tensors (the default keeps small ones whole)
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "zero_allow_untested_optimizer": True,
    "steps_per_print": 10**9,
}
L1_LAMBDA = 0.5


def build_partitioned_model() -> torch.nn.Module:
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=DS_CONFIG):
        model = LlamaForCausalLM(LlamaConfig(**TINY))
    return model


def gathered_state(model) -> dict[str, torch.Tensor]:
    """Full copies of every parameter (collective: all ranks call it)."""
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {name: p.detach().clone() for name, p in model.named_parameters()}


def reference_relu_model(state: dict[str, torch.Tensor]) -> LlamaForCausalLM:
    """A plain float64 transformers LLaMA with hidden_act relu (no actsparse code) holding `state`."""
    model = LlamaForCausalLM(LlamaConfig(**TINY, hidden_act="relu")).double().eval()
    missing, unexpected = model.load_state_dict({k: v.double() for k, v in state.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model


def reference_x1(model: LlamaForCausalLM, ids: torch.Tensor) -> list[torch.Tensor]:
    """x1 of every layer: the input transformers' down_proj receives."""
    seen = []
    hooks = [layer.mlp.down_proj.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
             for layer in model.model.layers]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    return seen


def batch_for(rank: int, step: int) -> torch.Tensor:
    return random_ids(batch=2, seq=12, seed=100 + 10 * step + rank)


def train(engine, model, rank: int, steps: int) -> list[float]:
    losses = []
    for step in range(steps):
        ids = batch_for(rank, step)
        out = engine(input_ids=ids, labels=ids)
        loss = out.loss + L1_LAMBDA * l1_penalty(model)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def l1_only_step(engine, model, ids) -> tuple[float, float]:
    """One step whose gradient is lambda * L1 alone; (L1 before, L1 after) on the same batch.

    `0 * lm loss` keeps every module in the backward graph: ZeRO-3's per-module backward hooks fail
    ("active_backward_submodules is empty") when lm_head and the last down_proj get no backward.
    """
    out = engine(input_ids=ids, labels=ids)
    before = l1_penalty(model)
    engine.backward(0.0 * out.loss + L1_LAMBDA * before)
    engine.step()
    with torch.no_grad():
        engine(input_ids=ids)
        after = l1_penalty(model)
    return before.item(), after.item()


def max_change(before: dict, after: dict, keys) -> float:
    return max((after[k] - before[k]).abs().max().item() for k in keys)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    model = sparsify(build_partitioned_model(), "relu")
    gate = model.model.layers[0].mlp.gate_proj.weight
    partitioned = gate.numel() == 0 and gate.ds_numel == TINY["hidden_size"] * TINY["intermediate_size"]
    enable_l1(model)
    # No weight decay, and the L1-only step comes first (empty Adam state): a parameter whose L1
    # gradient is zero must then stay exactly as it was.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=DS_CONFIG)

    state_before = gathered_state(model)
    l1_before, l1_after = l1_only_step(engine, model, batch_for(rank, 99))
    state_after = gathered_state(model)
    last = TINY["num_hidden_layers"] - 1
    # x1 of every layer is upstream of these, so the L1 term cannot reach them
    l1_free = ("lm_head.weight", "model.norm.weight", f"model.layers.{last}.mlp.down_proj.weight")
    ffn_gate_up = [k for k in state_before if k.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight"))]
    ffn_change = max_change(state_before, state_after, ffn_gate_up)
    l1_free_change = max_change(state_before, state_after, l1_free)
    losses = train(engine, model, rank, steps=2)

    # The engine's L1 and sparsity on a fresh batch vs. the float64 reference from gathered weights.
    engine.eval()
    stats = SparsityStats(model)
    eval_ids = batch_for(rank, 1000)
    with torch.no_grad():
        engine(input_ids=eval_ids)
    l1_engine = l1_penalty(model).item()
    stats.all_reduce()
    reference = reference_relu_model(gathered_state(model))
    if rank == 0:
        x1_own = reference_x1(reference, eval_ids)
        l1_reference = sum((x.abs().sum() / x.numel()).item() for x in x1_own)
        all_x1 = [reference_x1(reference, batch_for(r, 1000)) for r in range(world)]
        sparsity_reference = [sum((xs[i] == 0).sum().item() for xs in all_x1) / sum(xs[i].numel() for xs in all_x1)
                              for i in range(TINY["num_hidden_layers"])]
        result = dict(world_size=world, partitioned=partitioned, losses=losses,
                      losses_finite=all(math.isfinite(v) for v in losses), l1_before=l1_before, l1_after=l1_after,
                      ffn_change=ffn_change, l1_free_change=l1_free_change, l1_engine=l1_engine, l1_reference=l1_reference,
                      sparsity=stats.per_layer(), sparsity_reference=sparsity_reference)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    dist.barrier()


if __name__ == "__main__":
    main()
