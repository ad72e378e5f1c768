"""Dataset readers: each yields `Sample`s (one image, all its expressions) or `BadSample`s."""

from refam.data.datamodule import RefAMDataModule, UnpaddedShardSampler
from refam.data.manifest import ManifestDataset
from refam.data.refcoco import RefCOCODataset

__all__ = ["ManifestDataset", "RefAMDataModule", "RefCOCODataset", "UnpaddedShardSampler"]
