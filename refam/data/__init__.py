"""Dataset readers: each yields `Sample`s (one image, all its expressions), `VideoSample`s (one video,
all its expressions) or `BadSample`s."""

from refam.data.datamodule import RefAMDataModule, UnpaddedShardSampler
from refam.data.davis import RefDAVIS17, RefDAVISExpression
from refam.data.manifest import ManifestDataset
from refam.data.mevis import MeViS, MeViSTruth
from refam.data.refcoco import RefCOCODataset
from refam.data.semseg import ImageNetSegmentation, PascalVOCSingleClass, SegmentationExpression
from refam.data.video_common import PaletteTruth
from refam.data.ytvos import RefYouTubeVOS

__all__ = [
    "ImageNetSegmentation",
    "ManifestDataset",
    "MeViS",
    "MeViSTruth",
    "PaletteTruth",
    "PascalVOCSingleClass",
    "RefAMDataModule",
    "RefCOCODataset",
    "RefDAVIS17",
    "RefDAVISExpression",
    "RefYouTubeVOS",
    "SegmentationExpression",
    "UnpaddedShardSampler",
]
