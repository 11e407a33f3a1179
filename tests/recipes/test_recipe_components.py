"""Recipe components, each against an independent reference: LR schedules written out, the DeepSpeed
config, launcher variables, atomic checkpoint publication (a crash mid-save), metrics, byte tokenizer."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from actsparse.recipes.checkpointing import latest_tag, remove_partial_checkpoints, save_checkpoint
from actsparse.recipes.config import OptimConfig, load_recipe
from actsparse.recipes.deepspeed_config import derive_deepspeed_config
from actsparse.recipes.distributed_env import read_dist_env
from actsparse.recipes.metrics_log import peak_flops, truncate_after
from actsparse.recipes.model_loading import byte_tokenizer
from actsparse.recipes.schedules import lr_multiplier_fn


def test_cosine_with_warmup_matches_formula():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, lr_schedule="cosine")
    fn, total = lr_multiplier_fn(cfg, 110), 110
    for step in range(total):
        if step < 10:
            want = (step + 1) / 10
        else:
            p = (step - 10) / (total - 1 - 10)
            want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
        assert fn(step) == pytest.approx(want, abs=1e-12), step
    assert fn(9) == 1.0 and fn(total - 1) == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_over_the_last_fraction():
    cfg = OptimConfig(lr=1e-3, min_lr=0.0, warmup_steps=5, lr_schedule="wsd", decay_fraction=0.25)
    fn = lr_multiplier_fn(cfg, 100)
    assert [fn(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(fn(s) == 1.0 for s in range(5, 75))
    for step in range(75, 100):
        p = (step - 75 + 1) / 25
        assert fn(step) == pytest.approx(0.5 * (1 + math.cos(math.pi * p)), abs=1e-12)
    assert fn(99) == pytest.approx(0.0, abs=1e-12)


def test_deepspeed_config_derived_from_the_recipe(tmp_path):
    cfg = load_recipe("tiny", ["train.micro_batch_size=3", "train.grad_accum=5", "optim.grad_clip=0.5"])
    cpu = derive_deepspeed_config(cfg, world_size=4, on_gpu=False)
    assert cpu["train_batch_size"] == 3 * 5 * 4 and cpu["gradient_accumulation_steps"] == 5
    assert cpu["train_micro_batch_size_per_gpu"] == 3 and cpu["gradient_clipping"] == 0.5
    assert cpu["zero_optimization"]["stage"] == 3 and cpu["bf16"]["enabled"] is False
    assert "optimizer" not in cpu and cpu["zero_allow_untested_optimizer"] is True   # client torch AdamW
    assert derive_deepspeed_config(cfg, 4, on_gpu=True)["bf16"]["enabled"] is True
    overlay = tmp_path / "ds.json"
    overlay.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": False}, "bf16": {"enabled": True}}))
    cfg.train.deepspeed_json = str(overlay)
    merged = derive_deepspeed_config(cfg, 4, on_gpu=False)
    assert merged["zero_optimization"]["stage"] == 2 and merged["zero_optimization"]["contiguous_gradients"]
    assert merged["bf16"]["enabled"] is True


def test_launcher_variables():
    torchrun = read_dist_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1",
                              "MASTER_PORT": "1234"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.master_addr,
            torchrun.master_port, torchrun.launcher) == (3, 8, 1, "n1", 1234, "torchrun")
    slurm = read_dist_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2",
                           "SLURM_JOB_ID": "123456", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.master_addr, slurm.master_port,
            slurm.launcher) == (5, 6, 2, "10.0.0.7", 10000 + 123456 % 20000, "slurm")  # launch.slurm_env.master_port
    single = read_dist_env({})
    assert (single.rank, single.world_size, single.launcher) == (0, 1, "single") and single.master_port > 0


class FakeEngine:
    """Writes a shard like DeepSpeed does; `fail` simulates a crash in the middle of a save."""

    def __init__(self, fail=False):
        self.fail = fail

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert save_latest is False        # `latest` is ours to publish
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mp_rank_00_model_states.pt").write_bytes(b"partial" if self.fail else b"complete")
        if self.fail:
            raise OSError("disk full")


def test_crash_mid_save_never_moves_latest(tmp_path):
    ckpt = tmp_path / "checkpoints"
    assert save_checkpoint(FakeEngine(), ckpt, 4, {"step": 4}, keep=2) == "global_step4"
    assert latest_tag(ckpt) == "global_step4"
    with pytest.raises(OSError):
        save_checkpoint(FakeEngine(fail=True), ckpt, 8, {"step": 8}, keep=2)
    assert latest_tag(ckpt) == "global_step4"                         # still the complete one
    assert (ckpt / "tmp-global_step8").exists() and not (ckpt / "global_step8").exists()
    remove_partial_checkpoints(ckpt)                                  # what the next start does
    assert not (ckpt / "tmp-global_step8").exists() and (ckpt / "global_step4").exists()


def test_old_checkpoints_are_pruned_after_the_new_one_is_complete(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        save_checkpoint(FakeEngine(), ckpt, step, {"step": step}, keep=2)
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["global_step4", "global_step6"]
    assert (ckpt / "latest").read_text() == "global_step6"
    assert (ckpt / "global_step6" / "resume_state_rank0.pt").exists()


def test_metrics_after_a_resumed_step_are_rewritten(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "lm_loss": 1.0}) + "\n" for s in (0, 1, 2, 3, 4)))
    truncate_after(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]


def test_mfu_peak_table():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12 and peak_flops("Tesla T4") is None


def test_byte_tokenizer_round_trips_any_text():
    tok = byte_tokenizer()
    text = "naïve café — 日本語\n\ttabs"
    ids = tok(text).input_ids
    assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text
    assert len(tok) == 257 and tok.eos_token_id == 256


def test_run_summary_pairs_overhead_and_baseline_spread(tmp_path):
    """off/on/off/on: per-pair step-time overhead from median tokens/s, their mean, the baseline's spread."""
    import json
    from actsparse.recipes.run_summary import main
    tokens_per_step = 1000
    medians = {"off1": 100.0, "on1": 98.0, "off2": 110.0, "on2": 100.0}   # tokens/s after the skipped steps
    for name, tps in medians.items():
        (tmp_path / name).mkdir()
        rows = [{"step": s, "tokens": s * tokens_per_step, "tokens_per_s": (1.0 if s <= 10 else tps) * (1 + 0.01 * (s % 3 - 1)),
                 "lm_loss": 1.0, "l1_lambda": 0.0, "mfu": None} for s in range(10, 60, 10)]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "summary.json"
    assert main([str(tmp_path / n) for n in ("off1", "on1", "off2", "on2")] + ["--skip", "10", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    step = {n: tokens_per_step / tps for n, tps in medians.items()}     # medians land on the middle value
    expected = [step["on1"] / step["off1"] - 1, step["on2"] / step["off2"] - 1]
    assert result["pair_overheads"] == pytest.approx(expected)
    assert result["step_time_overhead"] == pytest.approx(sum(expected) / 2)
    assert result["baseline_spread"] == pytest.approx((step["off1"] - step["off2"]) / ((step["off1"] + step["off2"]) / 2))
