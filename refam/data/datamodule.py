"""Feeds any dataset of `Sample` / `BadSample` items to the Trainer, one image per step.

Evaluation must score every sample exactly once across ranks: Lightning's default
DistributedSampler pads the last shard with duplicates, which would count those samples twice in
the summed metric states. So the Trainer runs with `use_distributed_sampler=False` and the loaders
here shard with `UnpaddedShardSampler`. Ranks may then run different numbers of steps, so the module
must not sync per step (no `sync_dist=True` in step logging); torchmetrics syncs states once at
epoch end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler


class UnpaddedShardSampler(Sampler[int]):
    """Rank r of W gets indices r, r+W, r+2W, ...: a partition of the dataset, no padding, no repeats.

    `rank` / `world_size` default to torch.distributed's, read when iterating (the loader may be
    built before the process group exists); without a process group it yields every index in order.
    """

    def __init__(self, data_source: Sized, rank: int | None = None, world_size: int | None = None) -> None:
        self.data_source = data_source
        self._rank = rank
        self._world_size = world_size

    def _shard(self) -> tuple[int, int]:
        distributed = dist.is_available() and dist.is_initialized()
        world_size = self._world_size if self._world_size is not None else (dist.get_world_size() if distributed else 1)
        rank = self._rank if self._rank is not None else (dist.get_rank() if distributed else 0)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} and world_size {world_size}")
        return rank, world_size

    def __iter__(self) -> Iterator[int]:
        rank, world_size = self._shard()
        return iter(range(rank, len(self.data_source), world_size))

    def __len__(self) -> int:
        rank, world_size = self._shard()
        return len(range(rank, len(self.data_source), world_size))


def keep_items(batch: list[Any]) -> list[Any]:
    """Collate that leaves items as they are: samples differ in size and expression count."""
    return batch


class RefAMDataModule(L.LightningDataModule):
    """Test / predict loaders, batch size 1 (one image with all its expressions).

    `datasets` is one dataset or a list (e.g. RefCOCO val, testA and testB): one run then scores
    each under its own name, as a row of the paper's table.
    """

    def __init__(self, datasets: Dataset | list[Dataset], num_workers: int = 0) -> None:
        super().__init__()
        self.datasets = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]
        self.num_workers = num_workers

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=1,
            sampler=UnpaddedShardSampler(dataset),
            collate_fn=keep_items,
            num_workers=self.num_workers,
        )

    def _loaders(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(d) for d in self.datasets]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loaders()

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loaders()
