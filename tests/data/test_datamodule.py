"""Sharding covers every sample exactly once; loaders hand Sample / BadSample items through untouched."""

import lightning as L
import numpy as np
import pytest
from PIL import Image
from torch.utils.data import Dataset

import refam.data.datamodule as datamodule
from refam.data.datamodule import RefAMDataModule, UnpaddedShardSampler
from refam.types import BadSample, Expression, Sample


@pytest.mark.parametrize("n", [5, 7])
@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_partition_the_dataset_without_padding(n, world_size):
    data = list(range(n))
    shards = [list(UnpaddedShardSampler(data, rank=r, world_size=world_size)) for r in range(world_size)]
    merged = sorted(i for shard in shards for i in shard)
    assert merged == list(range(n))  # every index once: no duplicates, none missing
    for r, shard in enumerate(shards):
        assert shard == list(range(r, n, world_size))
        assert len(UnpaddedShardSampler(data, rank=r, world_size=world_size)) == len(shard)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_more_ranks_than_items_leaves_some_ranks_empty():
    assert [list(UnpaddedShardSampler([0, 1], rank=r, world_size=3)) for r in range(3)] == [[0], [1], []]


def test_defaults_follow_torch_distributed(monkeypatch):
    data = list(range(7))
    assert list(UnpaddedShardSampler(data)) == list(range(7))  # no process group: everything, in order
    monkeypatch.setattr(datamodule.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(datamodule.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(datamodule.dist, "get_world_size", lambda: 3)
    sampler = UnpaddedShardSampler(data)
    assert list(sampler) == [1, 4] and len(sampler) == 2
    assert list(UnpaddedShardSampler(data, rank=0, world_size=2)) == [0, 2, 4, 6]  # explicit wins


def test_invalid_rank_is_refused():
    with pytest.raises(ValueError, match="rank 2 and world_size 2"):
        list(UnpaddedShardSampler([1, 2, 3], rank=2, world_size=2))


class ItemDataset(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def make_items(n: int) -> ItemDataset:
    items = []
    for i in range(n):
        if i == 2:
            items.append(BadSample(str(i), "image file not found: x.jpg"))
            continue
        mask = np.zeros((4, 6), dtype=bool)
        mask[i % 4, :] = True
        items.append(Sample(str(i), Image.new("RGB", (6, 4), (i, 0, 0)), [Expression(f"thing {i}", f"{i}_0", mask)]))
    return ItemDataset(items)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loaders_yield_single_items_unchanged_and_in_order(num_workers):
    items = make_items(5)
    dm = RefAMDataModule(items, num_workers=num_workers)
    for loader in (dm.test_dataloader(), dm.predict_dataloader()):
        assert loader.batch_size == 1 and isinstance(loader.sampler, UnpaddedShardSampler)
        batches = list(loader)
        assert all(isinstance(b, list) and len(b) == 1 for b in batches)
        got = [b[0] for b in batches]
        assert [type(g) for g in got] == [type(i) for i in items]
        assert [g.sample_id for g in got] == ["0", "1", "2", "3", "4"]
        np.testing.assert_array_equal(got[3].expressions[0].mask, items[3].expressions[0].mask)
        assert got[1].image.getpixel((0, 0)) == (1, 0, 0)


class _Collect(L.LightningModule):
    def predict_step(self, batch, batch_idx):
        (item,) = batch
        return item.sample_id


def test_trainer_predict_sees_every_item_through_the_datamodule(tmp_path):
    trainer = L.Trainer(accelerator="cpu", devices=1, use_distributed_sampler=False, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    out = trainer.predict(_Collect(), datamodule=RefAMDataModule(make_items(4)))
    assert out == ["0", "1", "2", "3"]


@pytest.mark.parametrize(("rank", "world_size", "batches"), [(0, 2, [1, 1]), (1, 2, [1, 0]), (2, 3, [1, 0])])
def test_splits_smaller_than_the_world_leave_every_rank_a_loader_lightning_runs(monkeypatch, rank, world_size, batches):
    """val has 2 samples and testA 1 (as in configs/smoke.yaml). A rank with no sample of one split
    runs zero batches of it, which Lightning must be told is intended; a rank with no sample of any
    split gets one empty batch, or Lightning would skip its test loop and the metric gather at its end."""
    monkeypatch.setattr(datamodule.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(datamodule.dist, "get_rank", lambda: rank)
    monkeypatch.setattr(datamodule.dist, "get_world_size", lambda: world_size)
    val, test_a = make_items(2), make_items(1)
    dm = RefAMDataModule([val, test_a])
    assert dm.allow_zero_length_dataloader_with_multiple_devices
    loaders = dm.test_dataloader()
    assert [len(loader) for loader in loaders] == batches
    served = [[item.sample_id for batch in loader for item in batch] for loader in loaders]
    expected = [[s.sample_id for i, s in enumerate(d.items) if i % world_size == rank] for d in (val, test_a)]
    assert served == expected  # the empty batch adds no sample
    if rank >= 2:
        assert [list(batch) for batch in loaders[0]] == [[]]
