"""Where a decode step's device time goes, kernel by kernel: the dense and the sparse model in one loop (GPU).

Run: `cd /tmp && python -m actsparse.kernels.profile_decode --layers 4 --compile`.
Builds bench_decode's 7B-shaped ReLU model (random weights, gate biases set for ~89% sparsity), then for the dense
model and each sparse path: the graph-timed decode step (greedy_decode, as bench_decode times it) and a
torch.profiler trace of `--steps` un-graphed decode steps (same compiled forward), whose CUDA kernels are summed
by name. The table shows each kernel's calls and device µs per step and per layer; the gap between the graph-timed
step and the summed kernels is time between kernels. JSON with every row goes to --out.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict

import torch

from actsparse.kernels.bench_decode import build_model, set_gate_biases, tokens_per_s
from actsparse.kernels.bench_report import write_json
from actsparse.kernels.compiled_decoding import compile_model, eager
from actsparse.kernels.dispatch import DispatchConfig
from actsparse.kernels.sparse_decoding import _next_token, _static_cache, calibrate, swap_in_sparse_ffns

# Kernel name -> part of the step (first match wins).
PARTS = [("sparse FFN (ours)", r"gate_kernel|rows|up_kernel|down_kernel|compact|pred_"),
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
    p.add_argument("--exact-kernels", default="auto", help="sparse exact-path kernels to trace, comma list")
    p.add_argument("--out", default="runs/profile-decode/profile_decode.json")
    return p.parse_args(argv)


@torch.no_grad()
def kernel_times(model, prompt: torch.Tensor, steps: int) -> dict[str, list]:
    """name -> [calls, device µs], summed over `steps` un-graphed decode steps after the prompt."""
    dev = prompt.device
    cache = _static_cache(model, prompt.shape[1] + steps + 2)
    token = _next_token(model, prompt, cache, torch.arange(prompt.shape[1], device=dev))
    position = torch.tensor([prompt.shape[1]], device=dev)
    _next_token(model, token, cache, position)  # first decode step outside the trace (autotuning, compilation)
    torch.cuda.synchronize()
    sums = defaultdict(lambda: [0, 0.0])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            position += 1
            token = _next_token(model, token, cache, position)
        torch.cuda.synchronize()
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            sums[evt.name][0] += 1
            sums[evt.name][1] += evt.time_range.elapsed_us()
    return sums


def table(label: str, sums: dict, steps: int, layers: int, graph_ms: float) -> list[dict]:
    rows = sorted(({"kernel": k, "part": part_of(k), "calls_per_step": c / steps, "us_per_step": t / steps}
                   for k, (c, t) in sums.items()), key=lambda r: -r["us_per_step"])
    total = sum(r["us_per_step"] for r in rows)
    print(f"\n## {label}: graph-timed step {graph_ms * 1e3:.1f} µs; kernels {total:.1f} µs per step "
          f"({total / layers:.1f} per layer); between kernels {graph_ms * 1e3 - total:.1f} µs")
    by_part = defaultdict(float)
    for r in rows:
        by_part[r["part"]] += r["us_per_step"]
    print("| part | µs per step | µs per layer |\n|---|---|---|")
    for part, us in sorted(by_part.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {us:.1f} | {us / layers:.2f} |")
    print("| kernel | part | calls per step | µs per step |\n|---|---|---|---|")
    for r in rows:
        print(f"| `{r['kernel'][:90]}` | {r['part']} | {r['calls_per_step']:.1f} | {r['us_per_step']:.1f} |")
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
    prompt = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt_len), device="cuda", generator=gen)
    if args.compile:
        compile_model(model)
    results, rows = {}, []

    def measure(label):
        tok_s, _ = tokens_per_s(model, prompt, args.steps + 8, True)
        graph_ms = args.batch * 1e3 / tok_s
        results[label] = graph_ms
        rows.extend(table(label, kernel_times(model, prompt, args.steps), args.steps, args.layers, graph_ms))

    measure("dense")
    swapped = swap_in_sparse_ffns(model, backend="triton")
    with eager(model):
        calibrate(model, sample)
    for kernel in args.exact_kernels.split(","):
        for m in swapped:
            m.ffn.dispatch = DispatchConfig(exact_kernel=kernel)
        measure(f"sparse exact ({kernel})")
    write_json(args.out, dict(device=torch.cuda.get_device_name(), layers=args.layers, batch=args.batch,
                              compiled=args.compile, graph_ms_per_step=results, rows=rows,
                              command="python -m actsparse.kernels.profile_decode " + " ".join(argv or sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
