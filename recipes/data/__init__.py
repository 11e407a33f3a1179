"""Training data for the recipes: local corpora -> tokenized, packed, mixed, held-out split, batched.

    from actsparse.recipes.data import DataConfig, build_datasets, TrainBatches, heldout_batches

    data_cfg = DataConfig.from_dict(raw["data"], where="recipes/configs/x.yaml:data")
    packed = build_datasets(data_cfg, tokenizer)          # .train / .heldout: {"input_ids": LongTensor[seq_len]}
    batches = TrainBatches(packed.train, micro_batch_size, rank, world_size, seed=data_cfg.seed)
    batch = next(batches)                                  # {"input_ids": LongTensor[micro_batch_size, seq_len]}
    state = batches.state_dict()                           # save with the checkpoint; load_state_dict on resume
    for batch in heldout_batches(packed.heldout, batch_size=8, max_batches=16): ...

The rules (packing, held-out, mixing, batch order) are written out at the top of packing.py, mixing.py and
batches.py; caching in tokenizing.py.
"""
from ..errors import ConfigError
from .batches import TrainBatches, heldout_batches
from .build import PackedData, PackedSequences, build_datasets
from .config import DataConfig, SourceConfig

__all__ = ["ConfigError", "DataConfig", "SourceConfig", "PackedData", "PackedSequences", "build_datasets",
           "TrainBatches", "heldout_batches"]
