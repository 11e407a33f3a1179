"""Batches for the training loop: a resumable, rank-aware sampler, and fixed held-out batches.

Order: epoch e visits the training rows in `default_rng([seed, e]).permutation(n)`. The k-th batch of
an epoch, on rank r of w, holds permutation[(k * w + r) * m : (k * w + r + 1) * m] for micro-batch size
m, so the w ranks of one step read disjoint rows and together the next w * m rows of the permutation.
An epoch has n // (w * m) batches (every rank the same number, as lock-step training needs); the last
n mod (w * m) rows of each permutation wait for a later epoch's shuffle. The position (epoch, index of
the next batch) is the whole state: saved after k batches, a new TrainBatches continues at batch k + 1.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def _stack(dataset, indices) -> dict[str, torch.Tensor]:
    if hasattr(dataset, "batch"):
        return dataset.batch(indices)
    return {"input_ids": torch.stack([dataset[int(i)]["input_ids"] for i in indices])}


class TrainBatches:
    """Endless iterator of `{"input_ids": LongTensor[micro_batch_size, seq_len]}` for one rank."""

    def __init__(self, dataset, micro_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        if micro_batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need micro_batch_size >= 1 and 0 <= rank < world_size, got "
                             f"{micro_batch_size}, rank {rank}, world_size {world_size}")
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.batches_per_epoch = len(dataset) // (micro_batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(dataset)} training sequences are fewer than one step needs "
                             f"(micro_batch_size {micro_batch_size} x world_size {world_size})")
        self.epoch = 0
        self.index = 0            # the next batch within the epoch
        self._order_epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        """Batches per epoch for this rank (the iterator itself never ends)."""
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = _stack(self.dataset, self.batch_indices(self.epoch, self.index))
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of all training rows that epoch `epoch` follows."""
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._order_epoch = epoch
        return self._order

    def batch_indices(self, epoch: int, index: int) -> np.ndarray:
        start = (index * self.world_size + self.rank) * self.micro_batch_size
        return self.epoch_order(epoch)[start: start + self.micro_batch_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "num_sequences": len(self.dataset),
                "sequences_per_step": self.micro_batch_size * self.world_size, "data_fingerprint": self._data_fingerprint()}

    def _data_fingerprint(self) -> str | None:
        return self.dataset.fingerprint() if hasattr(self.dataset, "fingerprint") else None

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` was saved; a new world or micro-batch size works if it divides the position."""
        if state["seed"] != self.seed or state["num_sequences"] != len(self.dataset):
            raise ValueError(f"data position is for seed {state['seed']} over {state['num_sequences']} sequences; "
                             f"this run has seed {self.seed} over {len(self.dataset)}")
        if state.get("data_fingerprint") != self._data_fingerprint():
            raise ValueError(f"data position is for other training data (fingerprint {state.get('data_fingerprint')}, "
                             f"now {self._data_fingerprint()}): the files, tokenizer or data config changed")
        saved_step, step = state["sequences_per_step"], self.micro_batch_size * self.world_size
        done, n = state["index"] * saved_step, len(self.dataset)
        # the rows read so far must be whole new steps, and epochs must end at the same row
        if done % step or n // saved_step * saved_step != n // step * step:
            raise ValueError(f"cannot resume {done} sequences into epoch {state['epoch']} with steps of {step} "
                             f"sequences (saved with steps of {saved_step})")
        self.epoch, self.index = state["epoch"], done // step


def heldout_batches(dataset, batch_size: int, max_batches: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Held-out rows in their fixed order, `batch_size` at a time (the last batch may be smaller)."""
    limit = len(dataset) if max_batches is None else min(len(dataset), max_batches * batch_size)
    for start in range(0, limit, batch_size):
        yield _stack(dataset, np.arange(start, min(start + batch_size, limit)))
