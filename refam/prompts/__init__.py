"""The point-prompt stage (DESIGN.md's PointSelector): heatmap -> the point that prompts the
segmenter (`point`), and for a video the frame it goes on (`keyframe`)."""
