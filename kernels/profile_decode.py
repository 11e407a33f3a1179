"""Where a decode step's device time goes, kernel by kernel: the dense and the sparse model in one loop (GPU).

Run: `cd /tmp && python -m actsparse.kernels.profile_decode --layers 4 --compile`.
Builds bench_decode's 7B-shaped ReLU model (random weights, gate biases set for ~89% sparsity), then for the dense
model and each sparse path: the graph-timed decode step (greedy_decode, as bench_decode times it) and a
torch.profiler trace of `--steps` decode steps, un-graphed (same compiled forward) and as CUDA-graph replays, whose
CUDA kernels are summed by name. The tables show each kernel's calls, device µs per step and the idle time before
it (since the previous kernel ended: launch gaps and the ramp of a dependent kernel). JSON with every row: --out.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict

import torch

from actsparse.kernels.bench_decode import build_model, build_predictors, set_gate_biases, tokens_per_s
from actsparse.kernels.bench_report import write_json
from actsparse.kernels.compiled_decoding import compile_model, eager
from actsparse.kernels.dispatch import DispatchConfig
from actsparse.kernels.fused_qkv import fuse_qkv
from actsparse.kernels.triton_gemv import use_gemv
from actsparse.kernels.sparse_decoding import calibrate, decode_step, swap_in_sparse_ffns

# Kernel name -> part of the step (first match wins).
PARTS = [("GEMV (ours, triton_gemv.py)", r"^gemv_kernel"),
         ("sparse FFN (ours)", r"gate_|rows|up_kernel|down_kernel|compact|pred_"),
         ("matmul (cuBLAS)", r"gemv|gemm|sm90_|cutlass|xmma|splitK|cublas"),
         ("attention", r"flash|attention|fmha|sdpa|softmax"),
         ("fused by inductor", r"^triton_"),
         ("copy / fill", r"copy|fill|elementwise|index|memcpy|memset|cat"),
         ("other", r".")]


def part_of(name: str) -> str:
    return next(part for part, pattern in PARTS if re.search(pattern, name))


def parse_args(argv):
    p = argparse.ArgumentParser(prog="profile_decode", description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--sparsity", type=float, default=0.89)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=16, help="decode steps traced by the profiler")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (as bench_decode --compile)")
    p.add_argument("--fuse-qkv", action="store_true", help="one q/k/v GEMV per attention (as bench_decode --fuse-qkv)")
    p.add_argument("--decode-attention", action="store_true",
                   help="each attention at one token as one Triton kernel (RoPE, cache write, attention: "
                        "triton_decode_attention.py), dense and sparse alike")
    p.add_argument("--gemv-o", action="store_true",
                   help="each attention's o projection through the Triton GEMV (as bench_decode --gemv-o)")
    p.add_argument("--fuse-ffn-norm", action="store_true",
                   help="sparse paths only: each layer's post-attention add + RMSNorm in the sparse FFN's first kernel "
                        "(as bench_decode --fuse-ffn-norm)")
    p.add_argument("--fuse-qkv-norm", action="store_true",
                   help="with --fuse-qkv: each layer's input RMSNorm in its q/k/v GEMV, dense and sparse alike (as "
                        "bench_decode --fuse-qkv-norm; with PDL where --pdl is given)")
    p.add_argument("--no-fp32-out", action="store_true",
                   help="the sparse FFN returns the weights' dtype (SparseDecodingMLP.fp32_out off)")
    p.add_argument("--pdl", action="store_true",
                   help="also trace the sparse paths (exact and predicted) with DispatchConfig(pdl=True); with "
                        "--gemv-o every o projection (dense too) is launched with PDL")
    p.add_argument("--exact-kernels", default="auto", help="sparse exact-path kernels to trace, comma list")
    p.add_argument("--predicted-kernels", default="",
                   help="also trace the predictor path (bench_decode's stand-in predictor) with these predicted-set "
                        "kernels (DispatchConfig.predicted_kernel), comma list; empty: not traced")
    p.add_argument("--predictor-rank", type=int, default=358, help="rank of the stand-in predictor (as bench_decode)")
    p.add_argument("--gate-first", choices=["auto", "on", "off"], default="auto",
                   help="DispatchConfig.gate_first of the traced predictor path (auto: on where the kernels build "
                        "the list)")
    p.add_argument("--predicted-active", type=float, default=0.15,
                   help="fraction of neurons the stand-in predictor selects (as bench_decode)")
    p.add_argument("--out", default="runs/profile-decode/profile_decode.json")
    return p.parse_args(argv)


@torch.no_grad()
def trace(model, prompt: torch.Tensor, steps: int, graph: bool) -> list[tuple[str, float, float]]:
    """(name, start µs, end µs) of every CUDA kernel of `steps` decode steps after the prompt, in start order:
    replays of the captured step (graph=True, as greedy_decode times it) or un-graphed calls of the same forward."""
    step, token, position = decode_step(model, prompt, prompt.shape[1] + steps + 8, graph)
    step()  # outside the trace: first call (autotuning, compilation)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            position += 1
            token.copy_(step())
        torch.cuda.synchronize()
    kernels = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA]
    return sorted(kernels, key=lambda k: k[1])


def table(label: str, kernels: list, steps: int, layers: int, graph_ms: float) -> list[dict]:
    """Per kernel name: calls, device µs and idle µs before it (since the previous kernel ended), per step."""
    sums = defaultdict(lambda: [0, 0.0, 0.0])
    prev_end = None
    for name, start, end in kernels:
        sums[name][0] += 1
        sums[name][1] += end - start
        if prev_end is not None:
            sums[name][2] += max(0.0, start - prev_end)
        prev_end = end if prev_end is None else max(prev_end, end)
    rows = sorted(({"kernel": k, "part": part_of(k), "calls_per_step": c / steps, "us_per_step": t / steps,
                    "idle_before_us_per_step": g / steps} for k, (c, t, g) in sums.items()),
                  key=lambda r: -r["us_per_step"])
    total = sum(r["us_per_step"] for r in rows)
    idle = sum(r["idle_before_us_per_step"] for r in rows)
    print(f"\n## {label}: graph-timed step {graph_ms * 1e3:.1f} µs; kernels {total:.1f} µs per step "
          f"({total / layers:.1f} per layer); idle between traced kernels {idle:.1f} µs per step")
    by_part = defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        by_part[r["part"]][0] += r["us_per_step"]
        by_part[r["part"]][1] += r["idle_before_us_per_step"]
    print("| part | µs per step | µs per layer | idle before, µs per step |\n|---|---|---|---|")
    for part, (us, gap) in sorted(by_part.items(), key=lambda kv: -kv[1][0]):
        print(f"| {part} | {us:.1f} | {us / layers:.2f} | {gap:.1f} |")
    print("| kernel | part | calls per step | µs per step | idle before, µs per step |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['kernel'][:90]}` | {r['part']} | {r['calls_per_step']:.1f} | {r['us_per_step']:.1f} | "
              f"{r['idle_before_us_per_step']:.1f} |")
    return [dict(r, path=label) for r in rows]


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_decode needs a CUDA GPU (none found)", file=sys.stderr)
        return 2
    model = build_model(args.layers, torch.float16)
    gen = torch.Generator(device="cuda").manual_seed(1)
    sample = torch.randint(0, model.config.vocab_size, (4, 64), device="cuda", generator=gen)
    set_gate_biases(model, args.sparsity, sample)
    predicted_kernels = [k for k in args.predicted_kernels.split(",") if k]
    predictors = build_predictors(model, args.predictor_rank, args.predicted_active, sample)[0] \
        if predicted_kernels else []
    prompt = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt_len), device="cuda", generator=gen)
    if args.fuse_qkv:
        fuse_qkv(model)
    if args.gemv_o:
        use_gemv(model, ("o_proj",), pdl=args.pdl)
    if args.decode_attention:
        from actsparse.kernels.triton_decode_attention import use_decode_attention
        use_decode_attention(model)
    if args.fuse_qkv_norm:
        if not args.fuse_qkv:
            raise SystemExit("profile_decode: --fuse-qkv-norm needs --fuse-qkv")
        from actsparse.kernels.fused_qkv_norm import fuse_qkv_norms
        fuse_qkv_norms(model, pdl=args.pdl)
    if args.compile:
        compile_model(model)
    results, rows = {}, []

    def measure(label):
        if args.fuse_ffn_norm and label != "dense":
            label += " [add + RMSNorm in the FFN's first kernel]"
        tok_s, _ = tokens_per_s(model, prompt, args.steps + 8, True)
        graph_ms = args.batch * 1e3 / tok_s
        results[label] = graph_ms
        for graph in (False, True):
            name = f"{label}, {'graph replays' if graph else 'un-graphed'}"
            rows.extend(table(name, trace(model, prompt, args.steps, graph), args.steps, args.layers, graph_ms))

    measure("dense")
    swapped = swap_in_sparse_ffns(model, backend="triton")
    for m in swapped:
        m.fp32_out = not args.no_fp32_out
    if args.fuse_ffn_norm:
        from actsparse.kernels.fused_ffn_norm import fuse_ffn_norms
        fuse_ffn_norms(model)
    with eager(model):
        calibrate(model, sample)
    pdl_settings = (False, True) if args.pdl else (False,)
    for kernel, pdl in [(k, p) for k in args.exact_kernels.split(",") for p in pdl_settings]:
        for m in swapped:
            m.ffn.dispatch = DispatchConfig(exact_kernel=kernel, pdl=pdl)
        measure(f"sparse exact ({kernel}{', pdl' if pdl else ''})")
    for kernel, pdl in [(k, p) for k in predicted_kernels for p in pdl_settings]:
        for m, pred in zip(swapped, predictors):
            m.ffn.dispatch = DispatchConfig(predicted_kernel=kernel, pdl=pdl,
                                            gate_first=dict(auto=None, on=True, off=False)[args.gate_first])
            m.predictor = pred
        measure(f"sparse predicted ({kernel}, rank {args.predictor_rank}, {args.predicted_active:g} predicted"
                f"{', pdl' if pdl else ''}, gate_first {args.gate_first})")
    write_json(args.out, dict(device=torch.cuda.get_device_name(), layers=args.layers, batch=args.batch,
                              compiled=args.compile, fused_qkv=args.fuse_qkv, gemv_o=args.gemv_o,
                              decode_attention=args.decode_attention, sparse_fuse_ffn_norm=args.fuse_ffn_norm,
                              fuse_qkv_norm=args.fuse_qkv_norm,
                              fp32_out=not args.no_fp32_out, graph_ms_per_step=results, rows=rows,
                              command="python -m actsparse.kernels.profile_decode " + " ".join(argv or sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
