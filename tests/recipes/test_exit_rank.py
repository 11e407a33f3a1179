"""exit_rank: a rank of a gloo job that leaves while one of its collectives is still in flight exits 0.

Without it, the gloo worker that finishes the collective during the interpreter's teardown lets go of a
tensor with a Python object and the process aborts ("terminate called without an active exception",
pytorch/pytorch#179291); CI saw this once after a finished 2-rank run. Rank 0 joins the all-reduce late
so that rank 1's is still waiting when rank 1 ends.
"""
from __future__ import annotations

import pytest

from recipe_runs import run_on_two_ranks

pytestmark = pytest.mark.slow

LATE_COLLECTIVE = '''
import sys, time, torch, torch.distributed as dist
from actsparse.recipes.continue_pretrain import exit_rank
dist.init_process_group("gloo")
if dist.get_rank() == 0:
    time.sleep(1.0)
work = dist.all_reduce(torch.ones(1000), async_op=True)
del work
print(f"rank {dist.get_rank()} leaves")
exit_rank(0)
'''


def test_rank_leaving_with_a_collective_in_flight_exits_zero(tmp_path):
    script = tmp_path / "late.py"
    script.write_text(LATE_COLLECTIVE)
    for attempt in range(3):      # without exit_rank the same script aborted in 4 of 4 runs on a 2-core machine
        result = run_on_two_ranks(script, [], tmp_path, timeout=120)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"attempt {attempt}:\n{output[-3000:]}"
        assert "terminate called" not in output
        assert "rank 0 leaves" in output and "rank 1 leaves" in output    # exit_rank flushed stdout first
