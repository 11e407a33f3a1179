"""TrainBatches: seeded order, rank sharding, exact resume; heldout_batches: fixed order and limits."""
import numpy as np
import pytest
import torch

from actsparse.recipes.data import PackedSequences, TrainBatches, heldout_batches

SEQ_LEN = 4


def rows_dataset(n: int) -> PackedSequences:
    """Row i holds i * 10 + (0, 1, 2, 3): the first token tells which row a batch holds."""
    rows = (np.arange(n)[:, None] * 10 + np.arange(SEQ_LEN)[None, :]).astype(np.int32)
    return PackedSequences(rows, np.zeros(n, dtype=np.int64), ["only"])


def row_ids(batch) -> list[int]:
    ids = batch["input_ids"]
    assert ids.dtype == torch.int64 and ids.shape[1] == SEQ_LEN
    return (ids[:, 0] // 10).tolist()


def test_order_is_the_seeded_permutation_cut_into_batches():
    data = rows_dataset(24)
    batches = TrainBatches(data, micro_batch_size=3, rank=0, world_size=1, seed=5)
    seen = [row_ids(next(batches)) for _ in range(16)]   # two epochs of 8 batches
    for epoch in (0, 1):
        expected = np.random.default_rng([5, epoch]).permutation(24).tolist()   # the documented order
        assert sum(seen[8 * epoch: 8 * epoch + 8], []) == expected
    assert len(batches) == 8 and batches.state_dict()["epoch"] == 2


def test_same_seed_same_order_other_seed_other_order():
    def first_batches(seed):
        batches = TrainBatches(rows_dataset(50), 4, seed=seed)
        return [row_ids(next(batches)) for _ in range(5)]
    assert first_batches(1) == first_batches(1)
    assert first_batches(1) != first_batches(2)


@pytest.mark.parametrize("n,world_size,micro", [(24, 2, 3), (29, 4, 2), (10, 3, 1)])
def test_ranks_read_disjoint_rows_and_together_cover_the_epoch(n, world_size, micro):
    per_rank = []
    for rank in range(world_size):
        batches = TrainBatches(rows_dataset(n), micro, rank=rank, world_size=world_size, seed=3)
        assert len(batches) == n // (micro * world_size)
        per_rank.append(sum((row_ids(next(batches)) for _ in range(len(batches))), []))
    flat = sum(per_rank, [])
    assert len(flat) == len(set(flat))                                   # disjoint
    order = np.random.default_rng([3, 0]).permutation(n).tolist()
    used = n // (micro * world_size) * micro * world_size
    assert sorted(flat) == sorted(order[:used])                          # covering (the tail waits)
    for step in range(n // (micro * world_size)):                        # a step reads the next w * m rows
        step_rows = sum((per_rank[r][step * micro:(step + 1) * micro] for r in range(world_size)), [])
        assert sorted(step_rows) == sorted(order[step * micro * world_size:(step + 1) * micro * world_size])


@pytest.mark.parametrize("stop_after", [0, 1, 6, 7, 8, 13])
def test_resume_continues_at_the_next_batch(stop_after):
    data = rows_dataset(23)            # 7 batches per epoch, 2 rows wait per epoch
    uninterrupted = TrainBatches(data, 3, seed=11)
    reference = [row_ids(next(uninterrupted)) for _ in range(20)]
    first = TrainBatches(data, 3, seed=11)
    before = [row_ids(next(first)) for _ in range(stop_after)]
    state = first.state_dict()
    resumed = TrainBatches(data, 3, seed=11)
    resumed.load_state_dict(dict(state))
    after = [row_ids(next(resumed)) for _ in range(20 - stop_after)]
    assert before + after == reference


def test_resume_on_another_world_size_when_the_position_allows():
    data = rows_dataset(24)
    one_rank = TrainBatches(data, 4, rank=0, world_size=1, seed=2)
    for _ in range(2):
        next(one_rank)                                   # 8 rows read
    two_ranks = [TrainBatches(data, 2, rank=r, world_size=2, seed=2) for r in range(2)]
    for batches in two_ranks:
        batches.load_state_dict(one_rank.state_dict())
    step = sorted(row_ids(next(two_ranks[0])) + row_ids(next(two_ranks[1])))
    assert step == sorted(row_ids(next(one_rank)))


def test_resume_refuses_a_mismatched_state():
    state = TrainBatches(rows_dataset(24), 4, seed=2).state_dict()
    with pytest.raises(ValueError, match="seed 2 over 24 sequences"):
        TrainBatches(rows_dataset(24), 4, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="seed 2 over 24 sequences"):
        TrainBatches(rows_dataset(25), 4, seed=2).load_state_dict(state)
    changed = rows_dataset(24)
    changed.rows[5, 0] += 1
    with pytest.raises(ValueError, match="data position is for other training data"):
        TrainBatches(changed, 4, seed=2).load_state_dict(state)
    moved = TrainBatches(rows_dataset(24), 4, seed=2)
    next(moved)
    with pytest.raises(ValueError, match="cannot resume 4 sequences"):
        TrainBatches(rows_dataset(24), 3, seed=2).load_state_dict(moved.state_dict())


def test_too_few_rows_for_one_step():
    with pytest.raises(ValueError, match="fewer than one step needs"):
        TrainBatches(rows_dataset(5), 3, rank=0, world_size=2)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        TrainBatches(rows_dataset(5), 1, rank=2, world_size=2)


def test_heldout_batches_in_fixed_order_with_limit():
    data = rows_dataset(10)
    assert [row_ids(b) for b in heldout_batches(data, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [row_ids(b) for b in heldout_batches(data, 4, max_batches=2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert list(heldout_batches(rows_dataset(0), 4)) == []


def test_items_are_long_tensors_of_seq_len():
    item = rows_dataset(3)[2]
    assert set(item) == {"input_ids"} and item["input_ids"].dtype == torch.int64
    assert item["input_ids"].tolist() == [20, 21, 22, 23]
