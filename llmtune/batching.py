"""Samplers and loaders: length-grouped training batches with exact resume positions, and eval loaders whose
rows can be put back in order once gathered from every process."""

from __future__ import annotations

import math
import random
from typing import Any


class LengthGroupedBatches:
    """Batches of similar length in a seeded, epoch-dependent order.

    Shuffle indices, cut them into mega-batches of 50 batches, sort each mega-batch by length, then shuffle the
    batches. Padding shrinks, yet batch composition stays random. The order depends only on (seed, epoch), so a
    resumed run replays exactly the batches of an uninterrupted one.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool, shuffle: bool = True):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group = group_by_length
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0  # batches of this epoch already consumed before a resume

    def set_position(self, epoch: int, skip: int = 0) -> None:
        # not `set_epoch`: Accelerate calls that with its own count of iterations, which a resumed run restarts
        self.epoch, self.skip = epoch, skip

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        idx = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(idx)
        bs = self.batch_size
        if self.group:
            mega = bs * 50
            idx = [i for s in range(0, len(idx), mega)
                   for i in sorted(idx[s:s + mega], key=lambda i: -self.lengths[i])]
        out = [idx[s:s + bs] for s in range(0, len(idx), bs)]
        if self.group and self.shuffle:
            rng.shuffle(out)
        return out[self.skip:]

    def __iter__(self) -> Any:
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size) - self.skip


def lengths(ds: Any) -> list[int]:
    return [len(x) for x in ds["input_ids"]]


class FixedBatches:
    """A fixed list of batches with the `batch_size` attribute Accelerate needs to split them across processes."""

    def __init__(self, batches: list[list[int]], batch_size: int):
        self.batches, self.batch_size = batches, batch_size

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def train_loader(ds: Any, collate: Any, sampler: LengthGroupedBatches, num_workers: int, seed: int) -> Any:
    import torch
    from torch.utils.data import DataLoader

    # A loader without its own generator draws its base seed from the global RNG whenever an iterator starts;
    # a resumed run starts one at another moment, which would shift every dropout mask after it.
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed))


def eval_loader(ds: Any, collate: Any, batch_size: int) -> Any:
    """Longest-first batches with an `idx` column, so padding is small and rows can be put back in order."""
    import torch
    from torch.utils.data import DataLoader

    ds = ds.add_column("idx", list(range(len(ds)))) if "idx" not in ds.column_names else ds
    order = sorted(range(len(ds)), key=lambda i: -len(ds[i]["input_ids"])) if len(ds) < 200_000 else list(range(len(ds)))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    return DataLoader(ds, batch_sampler=FixedBatches(batches, batch_size), collate_fn=collate,
                      generator=torch.Generator().manual_seed(0))


def dedup_order(idx: Any) -> Any:
    """Positions that put gathered rows in row order, each row once (the last eval batch is padded with repeats
    of earlier rows to even it out across processes)."""
    import torch

    order = idx.argsort(stable=True)
    keep = torch.ones_like(order, dtype=torch.bool)
    keep[1:] = idx[order][1:] != idx[order][:-1]
    return order[keep]


def concat_rows(parts: list[Any], pad: int = -100) -> Any:
    """Per-batch tensors of rows joined along dimension 0; wider-than-1-D parts are right-padded with `pad` to the
    widest along dimension 1 (per-token outputs of batches of different lengths)."""
    import torch

    if parts[0].ndim < 2:
        return torch.cat(parts)
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0) * (p.ndim - 2) + (0, width - p.shape[1]), value=pad)
                      for p in parts])


def gather_outputs(accelerator: Any, per_batch: list[tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
    """Gathered eval outputs (every row once, in row order) from the (idx, outputs) of each local batch; the
    gathering happens in the batch loop (see collect) so every process takes part in each collective."""
    if not per_batch:
        return {}
    order = dedup_order(concat_rows([idx for idx, _ in per_batch]))
    keys = list(per_batch[0][1])
    return {k: concat_rows([out[k] for _, out in per_batch])[order] for k in keys}


def collect(accelerator: Any, idx: Any, outputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """One eval batch's outputs gathered from every process (the last batch's repeats dropped by Accelerate),
    on the CPU. Tensors of 2+ dimensions are padded to the widest process's width first."""
    keys = sorted(outputs)
    tensors = []
    for k in keys:
        t = outputs[k]
        if t.ndim >= 2 and accelerator.num_processes > 1:
            t = accelerator.pad_across_processes(t, dim=1, pad_index=-100)
        tensors.append(t)
    gathered = accelerator.gather_for_metrics((idx, *tensors))
    return gathered[0].cpu(), {k: v.cpu() for k, v in zip(keys, gathered[1:], strict=True)}
