"""Scores as torchmetrics `Metric`s with summable states (multi-GPU equals single-GPU)."""

from refam.metrics.iou import MeanIoU, OverallIoU, intersection_union
from refam.metrics.point import PointAccuracy, point_hit

__all__ = ["MeanIoU", "OverallIoU", "PointAccuracy", "intersection_union", "point_hit"]
from refam.metrics.referring import ReferringScores  # noqa: E402  (builds on the metrics above)

__all__ += ["ReferringScores"]
from refam.metrics.saliency import SaliencyScores  # noqa: E402  (semantic segmentation, Table 11)

__all__ += ["SaliencyScores"]
from refam.metrics.referring import VideoReferringScores  # noqa: E402  (J&F, videos)

__all__ += ["VideoReferringScores"]
from refam.metrics.jf import JandF, TrackScores, contour_accuracy, region_similarity  # noqa: E402  (video: DAVIS J&F)

__all__ += ["JandF", "TrackScores", "contour_accuracy", "region_similarity"]
