"""A stand-in for `actsparse train` with the same job contract, in a few dozen lines (gloo, CPU).

    standin_trainer.py output_dir=DIR steps=N step_s=S

Every step all-reduces a tensor across all ranks (so the rendezvous must really span the nodes);
rank 0 appends {"step", "world_size", "sum"} to DIR/metrics.jsonl. SIGUSR1 / SIGTERM set a flag that
is all-reduced at each step boundary; then rank 0 writes DIR/checkpoints/latest (the step) and all
ranks exit 0. A start finds `latest` and resumes after it. Used to test the launch path without the
recipe's model and DeepSpeed start-up time.
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


def main(argv):
    opts = dict(a.split("=", 1) for a in argv)
    run_dir, steps, step_s = Path(opts["output_dir"]), int(opts.get("steps", 20)), float(opts.get("step_s", 0.2))
    stop = {"signal": 0}
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.update(signal=signum))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ckpt = run_dir / "checkpoints" / "latest"
    step = int(ckpt.read_text()) if ckpt.exists() else 0
    while step < steps:
        step += 1
        total = torch.tensor([float(rank + 1)])
        dist.all_reduce(total)
        time.sleep(step_s)
        if rank == 0:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "world_size": world, "sum": total.item()}) + "\n")
        flag = torch.tensor([float(stop["signal"])])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() or step == steps:
            if rank == 0:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                ckpt.write_text(str(step))
            dist.barrier()
            if flag.item():
                print(f"rank {rank}: stop signal {int(flag.item())}, checkpoint at step {step}", flush=True)
                break
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
