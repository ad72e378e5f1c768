"""Segmenters: argmax point (+ heatmap) per expression → binary mask; video segmenters propagate a
first-frame point through a video. Those that take a user's points with labels (`takes_points`)
re-prompt with them (`segment_points`, `track_points`)."""

from refam.segmenters.base import Segmenter
from refam.segmenters.floodfill import FloodFillSegmenter
from refam.segmenters.flood_track import FloodTrackSegmenter
from refam.segmenters.sam2 import SAM2PointSegmenter
from refam.segmenters.frame_store import LazyFrameStore
from refam.segmenters.sam2_video import SAM2VideoSegmenter
from refam.segmenters.threshold import HeatmapThresholdSegmenter
from refam.segmenters.video_base import VideoSegmenter

__all__ = [
    "FloodFillSegmenter",
    "FloodTrackSegmenter",
    "HeatmapThresholdSegmenter",
    "LazyFrameStore",
    "SAM2PointSegmenter",
    "SAM2VideoSegmenter",
    "Segmenter",
    "VideoSegmenter",
]
