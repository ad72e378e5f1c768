"""Segmenters: argmax point (+ heatmap) per expression → binary mask."""

from refam.segmenters.base import Segmenter
from refam.segmenters.floodfill import FloodFillSegmenter
from refam.segmenters.sam2 import SAM2PointSegmenter
from refam.segmenters.threshold import HeatmapThresholdSegmenter

__all__ = ["FloodFillSegmenter", "HeatmapThresholdSegmenter", "SAM2PointSegmenter", "Segmenter"]
