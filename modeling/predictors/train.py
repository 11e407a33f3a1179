"""Train one predictor per layer on collected (x, label) pairs, ProSparse's DejaVu_predictor recipe.

Per layer: 95/5 train/validation split (seeded shuffle), weighted BCE (metrics.weighted_bce), AdamW
(lr 1e-3, weight decay 0.01), batch 1024, at most 20 epochs. After each epoch the validation recall is
measured at sigmoid >= 0.5; training stops after `patience` (5) epochs without a recall gain, or once the best
recall exceeds `target_recall` (0.99). The weights with the best validation recall are kept (the epoch-0,
untrained predictor counts as the starting best, as in the reference trainer).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .collect import load_layer, read_manifest
from .metrics import PredictionCounts, weighted_bce
from .predictor import ActiveRule, LowRankPredictor, PredictorSetConfig, save_predictors

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    rank: int = 384
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 1024
    max_epochs: int = 20
    patience: int = 5
    target_recall: float = 0.99
    val_fraction: float = 0.05
    label: str = "active"
    max_tokens: int | None = None     # per layer; None = all collected tokens
    seed: int = 0
    device: str = "cpu"
    data_on_device: bool = True       # move the layer's (x, y) to `device` once (7.7 GB at 400k x 7B shapes)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float        # mean weighted BCE over the epoch's batches (nan for epoch 0: no training yet)
    val_loss: float
    recall: float
    precision: float
    predicted_sparsity: float


@dataclass
class LayerResult:
    layer: int
    best_epoch: int
    best: EpochRecord
    history: list[EpochRecord] = field(default_factory=list)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded shuffle, then the last `val_fraction` (at least one sample) is validation."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ValueError(f"{n} samples cannot be split with val_fraction={val_fraction}")
    return order[: n - n_val], order[n - n_val:]


@torch.no_grad()
def validate(predictor: LowRankPredictor, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: str
             ) -> tuple[float, PredictionCounts]:
    """Token-weighted mean weighted BCE and the confusion counts at sigmoid >= 0.5."""
    predictor.eval()
    rule, counts, loss_sum = ActiveRule(), PredictionCounts(), 0.0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(device, torch.float32)
        yb = y[start:start + batch_size].to(device)
        logits = predictor(xb)
        loss_sum += float(weighted_bce(logits, yb)) * xb.shape[0]
        counts.add(rule(logits), yb)
    return loss_sum / x.shape[0], counts


def _record(epoch: int, train_loss: float, val_loss: float, counts: PredictionCounts) -> EpochRecord:
    return EpochRecord(epoch, train_loss, val_loss, counts.recall, counts.precision, counts.predicted_sparsity)


def train_layer(x: torch.Tensor, y: torch.Tensor, settings: TrainSettings, layer: int = 0, progress: bool = False
                ) -> tuple[LowRankPredictor, LayerResult]:
    """Train one predictor on `x` [N, d_model] -> `y` [N, d_ff] (bool); return the best-recall weights."""
    torch.manual_seed(settings.seed + layer)
    train_idx, val_idx = split_indices(x.shape[0], settings.val_fraction, settings.seed + layer)
    if settings.data_on_device:
        x, y = x.to(settings.device), y.to(settings.device)
        train_idx, val_idx = train_idx.to(settings.device), val_idx.to(settings.device)
    x_val, y_val = x[val_idx], y[val_idx]
    predictor = LowRankPredictor(x.shape[1], y.shape[1], settings.rank).to(settings.device)
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    val_loss, counts = validate(predictor, x_val, y_val, settings.batch_size, settings.device)
    best = _record(0, float("nan"), val_loss, counts)
    history, best_state, stale = [best], copy.deepcopy(predictor.state_dict()), 0
    shuffle = torch.Generator().manual_seed(settings.seed + 1000 + layer)
    for epoch in tqdm(range(1, settings.max_epochs + 1), desc=f"layer {layer:02d}", disable=not progress):
        predictor.train()
        order = train_idx[torch.randperm(train_idx.numel(), generator=shuffle).to(train_idx.device)]
        loss_sum, batches = torch.zeros((), device=settings.device), 0   # summed on the device: no sync per step
        for start in range(0, order.numel(), settings.batch_size):
            idx = order[start:start + settings.batch_size]
            loss = weighted_bce(predictor(x[idx].to(settings.device, torch.float32)), y[idx].to(settings.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, batches = loss_sum + loss.detach(), batches + 1
        val_loss, counts = validate(predictor, x_val, y_val, settings.batch_size, settings.device)
        record = _record(epoch, float(loss_sum) / batches, val_loss, counts)
        history.append(record)
        if record.recall > best.recall:
            best, best_state, stale = record, copy.deepcopy(predictor.state_dict()), 0
        else:
            stale += 1
        if stale >= settings.patience or best.recall > settings.target_recall:
            break
    predictor.load_state_dict(best_state)
    return predictor.cpu().eval(), LayerResult(layer, best.epoch, best, history)


def train_predictors(data_dir: str | Path, out_dir: str | Path, settings: TrainSettings, progress: bool = True
                     ) -> tuple[list[LowRankPredictor], list[LayerResult]]:
    """Train every layer's predictor from `data_dir` (collect's output) and save them to `out_dir`."""
    manifest = read_manifest(data_dir)
    predictors, results = [], []
    for layer in range(manifest["num_layers"]):
        x, y = load_layer(data_dir, layer, settings.label, settings.max_tokens)
        predictor, result = train_layer(x, y, settings, layer, progress)
        log.info("layer %02d: best epoch %d, recall %.4f, predicted sparsity %.4f", layer, result.best_epoch,
                 result.best.recall, result.best.predicted_sparsity)
        predictors.append(predictor)
        results.append(result)
    config = PredictorSetConfig(
        num_layers=manifest["num_layers"], d_model=manifest["d_model"], d_ff=manifest["d_ff"], rank=settings.rank,
        input_location=manifest["input_location"], label=settings.label, activation=manifest["activation"],
        trained_on=str(data_dir),
        layer_metrics=[{"layer": r.layer, "best_epoch": r.best_epoch, "val_recall": r.best.recall,
                        "val_precision": r.best.precision, "val_predicted_sparsity": r.best.predicted_sparsity,
                        "epochs_run": len(r.history) - 1} for r in results])
    save_predictors(out_dir, predictors, config)
    return predictors, results
