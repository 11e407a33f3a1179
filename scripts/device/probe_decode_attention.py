"""GPU probe: the decode attention kernel (kernels/triton_decode_attention.py) at the 7B decode shape, whole and split
over positions, side by side.

32 layers' caches ([1, 32 kv heads, max_len, 128], fp16, each layer its own: ~100 MB, more than L2) with the write
position at `pos`; each call resets pos (a one-element fill, also timed alone) and runs the kernel for one new token.
All 32 calls in one CUDA graph, median of `reps` replays, divided by 32. The outputs of every split count are compared
with the whole kernel's.
Usage: python3 scripts/device/probe_decode_attention.py [reps] [pos] [max_len]
"""
import sys

import torch

from actsparse.kernels.bench_timing import time_calls_us
from actsparse.kernels.triton_decode_attention import decode_attention
from actsparse.kernels.triton_decode_attention_split import split_count, split_state

LAYERS, HEADS, HEAD_DIM = 32, 32, 128


def main(reps: int, pos_at: int, max_len: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    dtype = torch.float16

    def rand(*shape):
        return torch.randn(*shape, device="cuda", generator=gen).to(dtype)
    caches = [(rand(1, HEADS, max_len, HEAD_DIM), rand(1, HEADS, max_len, HEAD_DIM)) for _ in range(LAYERS)]
    q, k, v = rand(1, HEADS, HEAD_DIM), rand(1, HEADS, HEAD_DIM), rand(1, HEADS, HEAD_DIM)
    cos, sin = rand(1, HEAD_DIM).float().cos().to(dtype), rand(1, HEAD_DIM).float().sin().to(dtype)
    pos = [torch.zeros(1, dtype=torch.int64, device="cuda") for _ in range(LAYERS)]
    states = [split_state(1, HEAD_DIM, "cuda") for _ in range(LAYERS)]
    outs = [torch.empty(1, HEADS * HEAD_DIM, dtype=dtype, device="cuda") for _ in range(LAYERS)]
    n_sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"pos {pos_at}, max_len {max_len}: the host rule picks {split_count(1, HEADS, max_len, n_sms)} splits")
    results, first = {}, None
    for splits in (1, 2, 3, 4, 6, 8):
        calls = [lambda c=c, p=p, s=s, o=o, n=splits: (p.fill_(pos_at), decode_attention(
            q, k, v, cos, sin, c[0], c[1], p, None, None, s, o, n)) for c, p, s, o in zip(caches, pos, states, outs)]
        for call in calls:
            call()
        got = torch.stack(outs).float()
        first = got if first is None else first
        err = float((got - first).abs().max())
        results[f"decode attention, {splits} split(s) (+ pos fill)"] = (time_calls_us(calls, reps)["us"], err)
    results["pos fill alone"] = (time_calls_us([lambda p=p: p.fill_(pos_at) for p in pos], reps)["us"], 0.0)
    print("| variant | µs per layer | max abs diff from 1 split |\n|---|---|---|")
    for name, (us, err) in results.items():
        print(f"| {name} | {us:.2f} | {err:.2e} |")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*(args + [50, 167, 192][len(args):]))
