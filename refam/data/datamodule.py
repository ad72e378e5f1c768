"""Feeds any dataset of `Sample` / `BadSample` items to the Trainer, one image per step.

Evaluation must score every sample exactly once across ranks: Lightning's default
DistributedSampler pads the last shard with duplicates, which would count those samples twice in
the summed metric states. So the Trainer runs with `use_distributed_sampler=False` and the loaders
here shard with `UnpaddedShardSampler`. Ranks may then run different numbers of steps, so the module
must not sync per step (no `sync_dist=True` in step logging); torchmetrics syncs states once at
epoch end. A split smaller than the world size leaves some ranks with no sample of it: those ranks
run zero steps on that loader and contribute zero-valued sums.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from refam.io.images import max_pixels


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
        # A split with fewer samples than processes gives some ranks an empty shard; Lightning
        # refuses such a loader unless told that running zero batches on a rank is intended.
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def setup(self, stage: str | None = None) -> None:
        """Check the environment's settings before any sample is read: an invalid `REFAM_MAX_PIXELS`
        would otherwise make every image a skipped sample and the run score nothing."""
        max_pixels()

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=1,
            sampler=UnpaddedShardSampler(dataset),
            collate_fn=keep_items,
            num_workers=self.num_workers,
        )

    def _loaders(self, keep_rank_in_step: bool = False) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(d) for d in self.datasets]
        if keep_rank_in_step and not any(len(loader) for loader in loaders) and any(len(d) for d in self.datasets):
            # More processes than the largest split has samples: this rank has none at all. Lightning
            # would then skip its whole test loop, and with it the epoch-end hook in which the metrics
            # gather every rank's states, so the other ranks would wait for it forever. One batch of
            # zero samples keeps it in step; the module scores nothing from it.
            loaders[0] = DataLoader(self.datasets[0], batch_sampler=[[]], collate_fn=keep_items)
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loaders(keep_rank_in_step=True)

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loaders()
