"""Decode tokens/s of a 7B-shaped ReLU LLaMA with ~89% FFN sparsity per layer: dense vs SparseFFN (GPU).

Run: `cd /tmp && python -m actsparse.kernels.bench_decode --layers 8,32 --batches 1,8`.
Random weights (initializer_range), ReLU FFNs, and a gate bias per neuron set layer by layer so that each
neuron fires with its own heavy-tailed probability p_j (mean 1 - sparsity) on the hidden states that
actually reach that layer. Dense and sparse run the same static-KV-cache greedy loop with the decode step
captured in a CUDA graph, so launch overhead is removed alike. Several layer counts are timed so the
per-layer cost (slope of ms/step vs layers) can be extrapolated when fewer layers than 32 are used.
`--compile` compiles the model for dense and sparse alike (compiled_decoding.py), which fuses the attention
block's small kernels; the CUDA graph then replays fewer, larger kernels. `--fuse-qkv` computes each attention's
q/k/v projections in one GEMV (fused_qkv.py), dense and sparse alike; `--gemv-o` each o projection through the Triton
GEMV (triton_gemv.py) instead of cuBLAS's split-K, dense and sparse alike; `--fuse-ffn-norm` computes each layer's
post-attention add + RMSNorm in the sparse FFN's first kernel (fused_ffn_norm.py), sparse models only (the dense
model keeps HF's layer; records say `fuse_ffn_norm`, `dense_fuse_ffn_norm` False); `--fuse-qkv-norm` each layer's
input RMSNorm in its q/k/v GEMV (fused_qkv_norm.py), dense and sparse alike. `--fp32-out both` times each
exact path with the sparse FFN's fp32 sum taken as it is (SparseDecodingMLP.fp32_out, the default) and, as
`<path>_no_fp32_out`, with the rows kernel's own epilogue writing the weights' dtype.
`--model FOLDER` runs the same comparison on a trained ReLU / FATReLU checkpoint instead (e.g. an exported
arm of issue 7): its own layers and sparsity, random prompt tokens; there the greedy sequences of dense and
sparse must match, since a trained model's top-2 logits are rarely within rounding of each other.
Paths: `exact` (no predictor, greedy output must equal dense), then `predicted_<kernel>`: a
stand-in predictor per layer (bench_predictor.py: rank-358 SVD of the gate, 4% of the FFN's bytes, ~15% of
neurons predicted) feeding the predicted-set kernels: Version 1, Version 1 with the compaction inline (batch 1),
and Version 2 (kernels/NOTES.md). On the rows path at one token the kernels build the neuron list from the
predictor's logits themselves (triton_predictor_list.py); `--fused-predictor both` also times the predictor's mask
compacted by its own kernel, as `<path>_mask`.
"""
from __future__ import annotations

import argparse
import sys

import torch

from actsparse.kernels.bench_data import neuron_probabilities
from actsparse.kernels.bench_predictor import GateSVDPredictor, predictor_bytes_fraction
from actsparse.kernels.bench_report import write_json
from actsparse.kernels.compiled_decoding import compile_model, eager
from actsparse.kernels.configs import autotuned_configs
from actsparse.kernels.dispatch import DispatchConfig
from actsparse.kernels.fused_ffn_norm import fuse_ffn_norms
from actsparse.kernels.fused_qkv import fuse_qkv
from actsparse.kernels.fused_qkv_norm import fuse_qkv_norms
from actsparse.kernels.triton_gemv import use_gemv
from actsparse.kernels.sparse_decoding import (calibrate, greedy_decode, logit_agreement, swap_in_sparse_ffns,
                                              teacher_forced_logits)
from actsparse.modeling import load_pretrained, sparse_mlps, sparsify


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench_decode", description=__doc__.split("\n")[0])
    p.add_argument("--layers", default="8,32", help="layer counts to time (7B has 32)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--sparsity", type=float, default=0.89, help="target per-token FFN sparsity (ProSparse-7B ~0.89)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--no-cuda-graph", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (dense and sparse alike; the FFN kernels stay one opaque op each: "
                        "compiled_decoding.py), so the non-FFN kernels of a step are fused")
    p.add_argument("--fuse-qkv", action="store_true",
                   help="one GEMV for each attention's q/k/v projections (fused_qkv.py), dense and sparse alike")
    p.add_argument("--decode-attention", action="store_true",
                   help="each attention at one token as one Triton kernel (RoPE, cache write, attention: "
                        "triton_decode_attention.py), dense and sparse alike")
    p.add_argument("--no-attention-split", action="store_true",
                   help="with --decode-attention: each kv head in one program (no split over positions), for timing "
                        "the split against the whole kernel")
    p.add_argument("--gemv-o", action="store_true",
                   help="each attention's o projection through the Triton GEMV (triton_gemv.py), dense and sparse alike")
    p.add_argument("--fuse-ffn-norm", action="store_true",
                   help="sparse models only (the dense model keeps HF's layer): each layer's post-attention residual "
                        "add and RMSNorm computed in the sparse FFN's first kernel at one token (fused_ffn_norm.py)")
    p.add_argument("--fuse-qkv-norm", action="store_true",
                   help="with --fuse-qkv, dense and sparse alike: each layer's input RMSNorm (and the previous layer's "
                        "last residual add) computed in its q/k/v GEMV from the second layer on (fused_qkv_norm.py; "
                        "launched with PDL where --pdl is not off)")
    p.add_argument("--fused-predictor", choices=["on", "off", "both"], default="on",
                   help="predictor paths with SparseDecodingMLP.fuse_predictor on (default: at one token the kernels "
                        "build the neuron list from the predictor's logits), off (its bool mask, compacted), or both "
                        "(off named <path>_mask)")
    p.add_argument("--fp32-out", choices=["on", "off", "both"], default="on",
                   help="exact paths with SparseDecodingMLP.fp32_out on (default), off, or both (off named "
                        "<path>_no_fp32_out)")
    p.add_argument("--pdl", choices=["on", "off", "both", "predicted"], default="off",
                   help="sparse paths with DispatchConfig(pdl=True): each FFN kernel launched while the one before it "
                        "runs (pdl.py; on the predictor path the list kernel loads its weights during the predictor's "
                        "GEMV, which loads its rows while the o projection runs); on, off (default), both (on named "
                        "<path>_pdl) or predicted (the predictor paths only). With --gemv-o and --pdl other than off "
                        "every o projection (dense too) is launched with PDL")
    p.add_argument("--gate-first", choices=["auto", "on", "off", "both"], default="auto",
                   help="predictor paths' DispatchConfig.gate_first (a listed neuron's up / W_down^T rows read only "
                        "where act(gate) != 0): auto (default: on where the kernels build the list), on, off, or both "
                        "(on named <path>_gate_first, off <path>_no_gate_first)")
    p.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)
    p.add_argument("--predictor-rank", type=int, default=358,
                   help="rank of the stand-in predictor (bench_predictor.py); 358 = 4%% of a 7B FFN's bytes; 0: none")
    p.add_argument("--exact-kernels", default="auto,rows",
                   help="kernels of the exact path (DispatchConfig.exact_kernel), comma list; 'auto' is reported as "
                        "path 'exact', others as 'exact_<kernel>'")
    p.add_argument("--predicted-kernels", default="lists,rows",
                   help="predicted-set kernels timed on the predictor path (DispatchConfig.predicted_kernel), comma list")
    p.add_argument("--predicted-active", type=float, default=0.15,
                   help="fraction of neurons the predictor selects (PAPERS.md (h): ~15%% incl. a safety margin)")
    p.add_argument("--model", help="a trained ReLU/FATReLU checkpoint (HF folder) instead of the random 7B-shaped "
                   "model; --layers and --sparsity are then the model's own")
    p.add_argument("--out", default="runs/bench-decode/bench_decode.json")
    return p.parse_args(argv)


LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                 vocab_size=32000, max_position_embeddings=4096)


def build_model(n_layers: int, dtype: torch.dtype, device="cuda", shape: dict | None = None):
    """LLaMA-2-7B shapes (or `shape`), random weights, ReLU FFNs with a gate bias (no up / down bias)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**(shape or LLAMA2_7B), num_hidden_layers=n_layers, mlp_bias=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    sparsify(model, "relu")
    for mlp in sparse_mlps(model):
        mlp.up_proj.bias = None
        mlp.down_proj.bias = None
    return model


def load_trained(folder: str, dtype: torch.dtype, device: str):
    """A trained checkpoint through `load_pretrained` (swap_in_sparse_ffns rejects one without exact zeros)."""
    return load_pretrained(folder, dtype=dtype).to(device).eval()


@torch.no_grad()
def set_gate_biases(model, sparsity: float, sample_ids: torch.Tensor) -> None:
    """Layer by layer: bias_j = -mean_j + std_j * Phi^-1(p_j) of gate_j's pre-activation on real inputs."""
    for layer, mlp in enumerate(sparse_mlps(model)):
        mlp.gate_proj.bias.zero_()
        seen = []
        hook = mlp.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
        model(input_ids=sample_ids)
        hook.remove()
        pre = (seen[0].float() @ mlp.gate_proj.weight.float().t())
        probs = neuron_probabilities(pre.shape[1], sparsity, torch.Generator().manual_seed(layer)).to(pre.device)
        bias = -pre.mean(0) + pre.std(0) * torch.special.ndtri(probs.float())
        mlp.gate_proj.bias.copy_(bias.to(mlp.gate_proj.bias.dtype))


def tokens_per_s(model, ids, new_tokens, cuda_graph) -> tuple[float, torch.Tensor]:
    timing = {}
    out = greedy_decode(model, ids, new_tokens, cuda_graph=cuda_graph, timing=timing)
    return ids.shape[0] * timing["steps"] / (timing["decode_ms"] / 1e3), out


@torch.no_grad()
def build_predictors(model, rank: int, predicted_active: float, sample_ids: torch.Tensor) -> tuple[list, list]:
    """One GateSVDPredictor per FFN, margins set on the FFN inputs of `sample_ids`; and each one's recall."""
    mlps, inputs = list(sparse_mlps(model)), {}
    def keep(i, x):   # a pre-hook that returns something replaces the module's input: return None
        inputs[i] = x.reshape(-1, x.shape[-1])
    hooks = [m.register_forward_pre_hook(lambda _m, a, i=i: keep(i, a[0])) for i, m in enumerate(mlps)]
    model(input_ids=sample_ids)
    for h in hooks:
        h.remove()
    predictors, recalls = [], []
    for i, mlp in enumerate(mlps):
        pred = GateSVDPredictor(mlp.gate_proj.weight, mlp.gate_proj.bias, rank)
        pred.set_margin(inputs[i], predicted_active)
        true = mlp.act_fn(mlp.gate_proj(inputs[i])) != 0
        recalls.append(float((pred(inputs[i]) & true).sum() / true.sum().clamp(min=1)))
        predictors.append(pred)
    return predictors, recalls


def run(n_layers, batches, args, device="cuda", shape: dict | None = None) -> list[dict]:
    """Dense, then the exact sparse path, then (predictor_rank > 0) the predictor path with each predicted-set
    kernel ("lists", "lists_inline", "fused"): one record per (path, batch)."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if args.model:
        model = load_trained(args.model, dtype, device)
        n_layers = model.config.num_hidden_layers
    else:
        model = build_model(n_layers, dtype, device, shape)
    vocab = model.config.vocab_size
    gen = torch.Generator(device=device).manual_seed(1)
    sample = torch.randint(0, vocab, (4, 64), device=device, generator=gen)
    if not args.model:
        set_gate_biases(model, args.sparsity, sample)
    predictors, recalls = ([], []) if args.predictor_rank <= 0 else build_predictors(
        model, args.predictor_rank, args.predicted_active, sample)
    prompts = {b: torch.randint(0, vocab, (b, args.prompt_len), device=device, generator=gen) for b in batches}
    if args.fuse_qkv:
        fuse_qkv(model)
    if args.gemv_o:
        use_gemv(model, ("o_proj",), pdl=args.pdl != "off")
    if args.decode_attention:
        from actsparse.kernels.triton_decode_attention import use_decode_attention
        use_decode_attention(model, split=not args.no_attention_split)
    if args.fuse_qkv_norm:
        if not args.fuse_qkv:
            raise SystemExit("bench_decode: --fuse-qkv-norm needs --fuse-qkv (the norm moves into the fused q/k/v GEMV)")
        fuse_qkv_norms(model, pdl=args.pdl != "off")
    if args.compile:
        compile_model(model, backend=args.compile_backend)
    dense = {b: tokens_per_s(model, prompts[b], args.new_tokens, not args.no_cuda_graph) for b in batches}
    dense_tf = {b: teacher_forced_logits(model, dense[b][1], args.prompt_len) for b in batches}
    swapped = swap_in_sparse_ffns(model, backend="triton")
    if args.fuse_ffn_norm:   # after the dense runs: the dense model keeps HF's add + RMSNorm kernel
        fuse_ffn_norms(model)
    with eager(model):  # calibration reads counts back to the host: not inside a compiled graph
        per_layer_active = calibrate(model, sample)
    kernels = tuple(args.predicted_kernels.split(",")) if predictors else ()
    settings = {"on": (True,), "off": (False,), "both": (True, False)}
    fp32, fused_settings = settings[args.fp32_out], settings[args.fused_predictor]
    paths = ([(("exact" if k == "auto" else f"exact_{k}") + ("" if f or args.fp32_out == "off" else "_no_fp32_out"),
               None, k, f) for k in args.exact_kernels.split(",") for f in fp32]
             + [(f"predicted_{k}" + ("" if f or args.fused_predictor == "off" else "_mask"), k, "auto", f)
                for k in kernels for f in fused_settings])
    def pdl_settings(kernel):   # "predicted": PDL on the predictor paths (kernel not None) only
        return (kernel is not None,) if args.pdl == "predicted" else settings[args.pdl]
    paths = [(path + ("_pdl" if pdl and args.pdl == "both" else ""), kernel, *rest, dict(pdl=pdl))
             for path, kernel, *rest in paths for pdl in pdl_settings(kernel)]
    # Predictor paths with gate_first or not.
    gate_first = dict(settings, auto=(None,))[args.gate_first]
    paths = [(path + ({True: "_gate_first", False: "_no_gate_first"}.get(gf, "") if args.gate_first == "both" else ""),
              kernel, exact_kernel, flag, dict(extra, gate_first=gf))
             for path, kernel, exact_kernel, flag, extra in paths
             for gf in (gate_first if kernel is not None else (None,))]
    cfg = model.config
    records = []
    for path, kernel, exact_kernel, flag, extra in paths:   # flag: fp32_out (exact paths) or fuse_predictor (predicted)
        fp32_out, fused = (flag, False) if kernel is None else (True, flag)
        for m in swapped:
            m.ffn.dispatch = DispatchConfig(predicted_kernel=kernel or "lists", exact_kernel=exact_kernel, **extra)
            m.fp32_out, m.fuse_predictor = fp32_out, fused
        for m, pred in zip(swapped, predictors):
            m.predictor = None if kernel is None else pred
        for b in batches:
            sparse_tps, sparse_out = tokens_per_s(model, prompts[b], args.new_tokens, not args.no_cuda_graph)
            dense_tps, dense_out = dense[b]
            same = (sparse_out == dense_out).all(1).float().mean().item()
            # Greedy sequences of a random-weight model can part on a near-tie; teacher forcing on the dense
            # sequence compares every step on its own.
            tf = logit_agreement(dense_tf[b], teacher_forced_logits(model, dense_out, args.prompt_len))
            rec = dict(path=path, layers=n_layers, batch=b, dense_tok_s=dense_tps, sparse_tok_s=sparse_tps,
                       speedup=sparse_tps / dense_tps, dense_ms_per_step=b * 1e3 / dense_tps,
                       sparse_ms_per_step=b * 1e3 / sparse_tps, mean_active=sum(per_layer_active) / n_layers,
                       per_layer_active=per_layer_active, greedy_sequences_identical=same,
                       teacher_forced=tf,
                       cuda_graph=not args.no_cuda_graph, compiled=args.compile, fused_qkv=args.fuse_qkv,
                       decode_attention=args.decode_attention,
                       attention_split=args.decode_attention and not args.no_attention_split,
                       gemv_o=args.gemv_o, fuse_ffn_norm=args.fuse_ffn_norm, dense_fuse_ffn_norm=False,
                       fuse_qkv_norm=args.fuse_qkv_norm,
                       fp32_out=fp32_out, **extra,
                       dtype=args.dtype)
            if kernel is not None:
                rec.update(predictor_rank=args.predictor_rank, predicted_active=args.predicted_active,
                           fused_predictor=fused,
                           predictor_rank_padded=predictors[0].down.shape[0],   # zeros up to a multiple of 8
                           predictor_bytes_of_ffn=predictor_bytes_fraction(predictors[0].down.shape[0],
                                                                           cfg.hidden_size, cfg.intermediate_size),
                           predictor_recall=sum(recalls) / len(recalls))
            records.append(rec)
            extra = "" if kernel is None else f", predictor recall {rec['predictor_recall']:.3f}"
            fused_norm = " (sparse: add + norm in the FFN)" if args.fuse_ffn_norm else ""
            print(f"layers {n_layers} batch {b} {path}{fused_norm}: dense {dense_tps:.1f} tok/s, "
                  f"sparse {sparse_tps:.1f} tok/s, "
                  f"{sparse_tps / dense_tps:.2f}x, active {rec['mean_active']:.3f}, "
                  f"identical greedy sequences {same:.2f}, teacher-forced argmax agreement "
                  f"{tf['argmax_agreement']:.4f} (max logit diff {tf['max_abs_diff']:.2e}, "
                  f"{tf['near_tie_disagreements']:.2f} of flips at near-ties){extra}", flush=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return records


def per_layer_slopes(records) -> list[dict]:
    """ms/step per layer (slope between the smallest and largest layer count), dense and sparse, per path."""
    out = []
    for path, b in sorted({(r.get("path", "exact"), r["batch"]) for r in records}):
        rs = sorted((r for r in records if r["batch"] == b and r.get("path", "exact") == path), key=lambda r: r["layers"])
        if len(rs) >= 2 and rs[-1]["layers"] > rs[0]["layers"]:
            dl = rs[-1]["layers"] - rs[0]["layers"]
            out.append(dict(path=path, batch=b,
                            dense_ms_per_layer=(rs[-1]["dense_ms_per_step"] - rs[0]["dense_ms_per_step"]) / dl,
                            sparse_ms_per_layer=(rs[-1]["sparse_ms_per_step"] - rs[0]["sparse_ms_per_step"]) / dl))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_decode needs a CUDA GPU (none found)", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    layer_counts = [0] if args.model else map(int, args.layers.split(","))
    records = [r for n in layer_counts for r in run(n, batches, args)]
    result = dict(device=torch.cuda.get_device_name(), records=records, per_layer=per_layer_slopes(records),
                  autotuned=autotuned_configs(),
                  command="python -m actsparse.kernels.bench_decode " + " ".join(argv or sys.argv[1:]))
    write_json(args.out, result)
    for s in result["per_layer"]:
        print(f"{s['path']} batch {s['batch']}: per layer dense {s['dense_ms_per_layer']:.3f} ms, "
              f"sparse {s['sparse_ms_per_layer']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
