"""Per-step metrics to `RUN_DIR/metrics.jsonl` and TensorBoard (rank 0), and a tqdm bar on rank 0.

One JSON object a line: step, lm_loss, reg_loss, l1_lambda, lr, grad_norm, tokens (seen so far, all
ranks), sparsity (mean over layers of x1's zero fraction, counted on all ranks), sparsity_per_layer,
tokens_per_s, and on GPU mfu. Held-out evaluations are lines with `heldout_loss` / `heldout_ppl`.
On resume, lines past the resumed step are dropped first, so the file reads as one run.

MFU = 6 * params * tokens/s / (world_size * peak bf16 dense FLOP/s). The 6 counts forward + backward
matmuls per parameter and token; attention's quadratic term is left out (small at 4k context for 1B+
models), so this is a slight underestimate.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

# Dense bf16 tensor-core peak, FLOP/s, vendor datasheets (SXM parts; PCIe H100 is 756e12).
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100": 989e12, "H800": 989e12, "GH200": 989e12,
    "A100": 312e12, "A800": 312e12, "L40S": 362e12, "A6000": 155e12, "4090": 165e12, "B200": 2250e12,
}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None


def mfu(params: int, tokens_per_s: float, world_size: int) -> float | None:
    """Model FLOPs utilization on GPU (None on CPU or an unknown GPU)."""
    if not torch.cuda.is_available():
        return None
    peak = peak_flops(torch.cuda.get_device_name())
    return None if peak is None else 6.0 * params * tokens_per_s / (world_size * peak)


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def truncate_after(path: Path, step: int) -> None:
    """Keep only lines with step <= `step` (a resumed run rewrites what came after its checkpoint)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


class MetricsLogger:
    """Rank 0 writes; the other ranks hold a disabled logger so the loop reads the same everywhere."""

    def __init__(self, run_dir: Path, rank: int, total_steps: int, start_step: int):
        self.enabled = rank == 0
        self.writer = self.bar = self.file = None
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        run_dir = Path(run_dir)
        truncate_after(run_dir / "metrics.jsonl", start_step)
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1)
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self.file.write(json.dumps(record) + "\n")
        step = record["step"]
        for key, value in record.items():
            if key == "step" or value is None:
                continue
            if isinstance(value, list):
                for layer, v in enumerate(value):
                    if v is not None:
                        self.writer.add_scalar(f"{key}/layer_{layer:02d}", v, step)
            else:
                self.writer.add_scalar(key, value, step)
        if "lm_loss" in record:
            self.bar.set_postfix(loss=f"{record['lm_loss']:.3f}", sp=f"{record.get('sparsity') or 0:.3f}",
                                 lam=f"{record['l1_lambda']:.2g}")

    def advance(self, steps: int = 1) -> None:
        if self.enabled:
            self.bar.update(steps)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.writer.close()
            self.file.close()
