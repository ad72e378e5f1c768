"""The point-prompt stage, between the heatmap and the segmenter: the point that prompts the
segmenter, the centre of the heatmap's best token-grid cell (`point`), and for a video the frame it
goes on (`keyframe`)."""
