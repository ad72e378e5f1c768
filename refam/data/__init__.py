"""Dataset readers: each yields `Sample`s (one image, all its expressions) or `BadSample`s."""

from refam.data.datamodule import RefAMDataModule, UnpaddedShardSampler
from refam.data.manifest import ManifestDataset
from refam.data.refcoco import RefCOCODataset
from refam.data.semseg import ImageNetSegmentation, PascalVOCSingleClass, SegmentationExpression

__all__ = [
    "ImageNetSegmentation",
    "ManifestDataset",
    "PascalVOCSingleClass",
    "RefAMDataModule",
    "RefCOCODataset",
    "SegmentationExpression",
    "UnpaddedShardSampler",
]
