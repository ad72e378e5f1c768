"""SAM2 video predictor prompted with one positive point on one frame (or several points with labels:
a user's corrections), frames streamed from disk.

The inference state holds a `LazyFrameStore` (refam.segmenters.frame_store) under "images" instead
of sam2's loaded video, so frames are read when sam2 asks for them. With `prune_memory` the
per-frame tracking outputs that sam2 can no longer read (older than its memory window) are dropped
too, so memory stays flat however long the video is; masks are unchanged (a test holds both).

Why the state is built here rather than by sam2's public `init_state` with the store swapped in
afterwards: `init_state(video_path)` accepts only an MP4 file or a folder of JPEGs named
"<int>.jpg", while refam tracks a list of frame paths (any format, any names). Pointing it at the
video reads every frame into memory (or, with `async_loading_frames=True`, starts a thread that
reads and keeps every frame, which cannot be stopped); the only way around that is a fake folder
holding a link to frame 0, i.e. writing outside the folders the user named. And `init_state`
always runs the image encoder on frame 0 as a warm-up, on frame 0 as sam2 decodes it (no EXIF
orientation, unlike refam's `to_rgb`), so those features would have to be thrown away, and prints
a progress bar on every call. So `_new_state` fills the fields of sam2's state dict itself, and
`tests/segmenters/test_sam2_video.py` compares them with `init_state`'s on every run, so a sam2
upgrade that changes the state fails there instead of drifting here.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from refam.errors import ConfigError
from refam.segmenters.frame_store import LazyFrameStore
from refam.segmenters.sam2 import SAM2Weights
from refam.segmenters.video_base import (FramePath, VideoSegmenter, check_in_frame, check_track_inputs,
                                        check_track_points, empty_track)
from refam.types import Point

log = logging.getLogger(__name__)

OBJ_ID = 1  # the one object tracked per call


def memory_window(model) -> int:
    """How many frames back (in the tracking direction) sam2 reads a frame's non-conditioning output.

    From `SAM2Base._prepare_memory_conditioned_features`: mask memories of the last
    `num_maskmem - 1` frames (the nearest one plus every `memory_temporal_stride_for_eval`-th
    frame, at most `1 + (num_maskmem - 2) * stride` back) and object pointers of the last
    `max_obj_ptrs_in_encoder - 1` frames.
    """
    window = 0
    if model.num_maskmem >= 2:
        window = 1 + (model.num_maskmem - 2) * model.memory_temporal_stride_for_eval
    if model.use_obj_ptrs_in_encoder:
        window = max(window, model.max_obj_ptrs_in_encoder - 1)
    return window


def _prune(outputs: dict, frame: int, prompt: int, window: int, reverse: bool) -> None:
    """Drop the non-conditioning outputs that no later step of this propagation reads.

    Forward, after frame f: frame f + 1 reads back to f + 1 - window, and the backward pass that
    follows (prompt > 0) starts at prompt - 1 and reads up to prompt - 1 + window. Backward, after
    frame f: frame f - 1 reads up to f - 1 + window. Anything else is stale; the bound is tight
    (a test shows that a window one frame shorter changes the masks).
    """
    if reverse:
        stale = [t for t in outputs if t > frame - 1 + window]
    else:
        keep_for_backward = range(prompt + 1, prompt + window) if prompt > 0 else range(0)
        stale = [t for t in outputs if t < frame + 1 - window and t not in keep_for_backward]
    for t in stale:
        del outputs[t]


class SAM2VideoSegmenter(SAM2Weights, VideoSegmenter):
    """SAM2VideoPredictor with one positive click on one frame, propagated over the whole video.

    Propagates forward from the prompted frame to the last frame, then (when the prompted frame is
    not the first) backward from it to frame 0 with `reverse=True`, as zero-shot RVOS drivers do
    (e.g. AL-Ref-SAM2): the backward pass sees the forward pass's memories near the prompt frame,
    exactly as sam2's own `propagate_in_video` calls in that order would. Masks are yielded as
    soon as they are computed: prompt frame, later frames in order, then earlier frames in
    reverse order, every frame once.

    For one click on the prompt frame SAM2 itself picks among its multimask outputs (the mask with
    the highest predicted IoU, `multimask_output_in_sam` in the released configs). Several points
    with labels (`track_points`) go to the prompt frame in one `add_new_points_or_box` call, labels
    1 positive and 0 negative; SAM2 then gives one mask (`multimask_max_pt_num` is 1).

    Args:
        config: SAM2 hydra config name inside the installed `sam2` package. Ignored with `model_id`.
        checkpoint: path to a SAM2 `.pt` checkpoint (a dict with a "model" state dict).
        model_id: a Hugging Face hub id such as "facebook/sam2.1-hiera-large", loaded through
            `SAM2VideoPredictor.from_pretrained` (needs the hub or a populated cache).
        image_size: override SAM2's input resolution (1024 in every released config). Smaller is
            much faster on CPU; released checkpoints are trained at 1024.
        allow_random_weights: build without a checkpoint, for smoke tests only.
        init_seed: seed for the random weights, so every process builds the same model.
        offload_video_to_cpu: keep the (few) cached frames in CPU memory (sam2's setting).
        offload_state_to_cpu: keep the tracking memories in CPU memory (sam2's setting).
        frame_cache_size: frames the lazy store holds at once (each frame is read once per
            propagation, so 1 suffices; 2 costs one more frame and tolerates a re-read).
        prune_memory: drop per-frame tracking outputs once they fall out of SAM2's memory window
            (see `memory_window`), so memory does not grow with the video's length. Results are
            identical.
        fill_hole_area: sam2's small-hole filling on the low-res masks. None: sam2's default (8)
            where its CUDA extension is built, 0 where it is not (the filling needs the extension
            and would otherwise warn on every frame and do nothing).
        mask_threshold: logits above it are foreground (sam2 uses 0.0).
    """

    used_for = "tracking"

    def __init__(
        self,
        config: str = "configs/sam2.1/sam2.1_hiera_l.yaml",
        checkpoint: str | None = None,
        model_id: str | None = None,
        image_size: int | None = None,
        allow_random_weights: bool = False,
        init_seed: int = 0,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        frame_cache_size: int = 2,
        prune_memory: bool = True,
        fill_hole_area: int | None = None,
        mask_threshold: float = 0.0,
    ) -> None:
        self.take_weights(config, checkpoint, model_id, image_size, allow_random_weights, init_seed)
        if frame_cache_size < 1:
            raise ConfigError(f"must be at least 1, got {frame_cache_size}", field="frame_cache_size")
        if fill_hole_area is not None and fill_hole_area < 0:
            raise ConfigError(f"must be >= 0 (or null for sam2's default), got {fill_hole_area}", field="fill_hole_area")
        self.offload_video_to_cpu, self.offload_state_to_cpu = offload_video_to_cpu, offload_state_to_cpu
        self.frame_cache_size, self.prune_memory = frame_cache_size, prune_memory
        self.fill_hole_area, self.mask_threshold = fill_hole_area, mask_threshold

    def setup(self, device: torch.device) -> None:
        if self._predictor is not None:
            self._predictor.to(device)
            return
        # Imported here: importing sam2 initialises hydra and pulls torchvision, which a run
        # using another segmenter should not pay for.
        from hydra.errors import MissingConfigException
        from sam2.build_sam import build_sam2_video_predictor
        from sam2.sam2_video_predictor import SAM2VideoPredictor

        try:
            predictor = self.built(SAM2VideoPredictor.from_pretrained, build_sam2_video_predictor, device)
        except MissingConfigException as err:
            raise ConfigError(f"no SAM2 config {self.config!r} in the installed sam2 package", field="config") from err
        # `apply_postprocessing` forces fill_hole_area=8 over any hydra override; the filling
        # needs sam2's CUDA extension and only warns (every frame) without it.
        predictor.fill_hole_area = self.fill_hole_area if self.fill_hole_area is not None else (
            predictor.fill_hole_area if _has_sam2_extension() else 0
        )
        self._predictor = predictor

    # -- tracking -------------------------------------------------------------------------------

    def frame_store(self, frames: Sequence[FramePath]) -> LazyFrameStore:
        """The lazy store `track` builds for `frames` (exposed for tests and benchmarks)."""
        predictor = self.predictor
        return LazyFrameStore(
            frames,
            image_size=predictor.image_size,
            device=predictor.device,
            offload_video_to_cpu=self.offload_video_to_cpu,
            cache_size=self.frame_cache_size,
        )

    def track(self, frames: Sequence[FramePath], frame_index: int, point: tuple[float, float]) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, bool [H, W] mask) for every frame, as soon as each is computed.

        Inputs are checked now (every frame file exists, the point lies in the frame), not on the
        first `next()`; see the class docstring for the order of frames.
        """
        logits = self.track_logits(frames, frame_index, point)
        return ((index, (frame_logits > self.mask_threshold).cpu().numpy()) for index, frame_logits in logits)

    def track_logits(
        self, frames: Sequence[FramePath], frame_index: int, point: tuple[float, float]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """As `track`, with SAM2's mask logits (float [H, W] at the video's size) instead of masks,
        e.g. to stack several objects' logits against a background logit."""
        paths = check_track_inputs(frames, frame_index, point)
        store = self.frame_store(paths)
        x, y = (float(v) for v in point)
        check_in_frame([(x, y)], frame_index, (store.video_width, store.video_height))
        return self._propagate(store, frame_index, [[x, y]], [1])

    def track_points(self, frames: Sequence[FramePath], frame_index: int,
                     points: Sequence[Point]) -> Iterator[tuple[int, np.ndarray]]:
        """As `track`, prompted by several points with labels on frame `frame_index` (SAM2's
        multi-point prompt, see the class docstring); no positive point: empty masks."""
        paths = check_track_points(frames, frame_index, points)
        store = self.frame_store(paths)
        size = (store.video_width, store.video_height)
        check_in_frame([(p.x, p.y) for p in points], frame_index, size)
        if not any(p.label == 1 for p in points):
            store.clear()
            return empty_track(frame_index, len(paths), size)
        logits = self._propagate(store, frame_index, [[float(p.x), float(p.y)] for p in points], [p.label for p in points])
        return ((index, (frame_logits > self.mask_threshold).cpu().numpy()) for index, frame_logits in logits)

    @torch.inference_mode()
    def _propagate(self, store: LazyFrameStore, frame_index: int, points: list[list[float]], labels: list[int]):
        """sam2's masks from `points` [[x, y], ...] with `labels` (1 positive, 0 negative) on `frame_index`."""
        predictor = self.predictor
        state = self._new_state(store)
        predictor.add_new_points_or_box(
            state, frame_idx=frame_index, obj_id=OBJ_ID, points=points, labels=labels
        )
        outputs = state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
        window = memory_window(predictor)
        try:
            for reverse in (False, True):
                if reverse and frame_index == 0:
                    break
                for index, _, logits in predictor.propagate_in_video(
                    state, start_frame_idx=frame_index, reverse=reverse
                ):
                    if self.prune_memory:
                        _prune(outputs, index, frame_index, window, reverse)
                    if reverse and index == frame_index:
                        continue  # yielded by the forward pass
                    yield index, logits[0, 0]
        finally:
            store.clear()
            state.clear()

    def _new_state(self, store: LazyFrameStore) -> dict:
        """sam2's `init_state` (sam2 1.1.0), with the lazy store in place of the loaded frames and
        without its warm-up of frame 0's features (computed when needed instead); the module
        docstring says why `init_state` itself is not called.

        `tests/segmenters/test_sam2_video.py` checks the keys and values against `init_state`, so a
        sam2 upgrade that changes the state fails there rather than silently here.
        """
        predictor = self.predictor
        compute_device = predictor.device
        state: dict = {}
        state["images"] = store
        state["num_frames"] = len(store)
        state["offload_video_to_cpu"] = self.offload_video_to_cpu
        state["offload_state_to_cpu"] = self.offload_state_to_cpu
        state["video_height"] = store.video_height
        state["video_width"] = store.video_width
        state["device"] = compute_device
        state["storage_device"] = torch.device("cpu") if self.offload_state_to_cpu else compute_device
        state["point_inputs_per_obj"] = {}
        state["mask_inputs_per_obj"] = {}
        state["cached_features"] = {}
        state["constants"] = {}
        state["obj_id_to_idx"] = OrderedDict()
        state["obj_idx_to_id"] = OrderedDict()
        state["obj_ids"] = []
        state["output_dict_per_obj"] = {}
        state["temp_output_dict_per_obj"] = {}
        state["frames_tracked_per_obj"] = {}
        return state


def _has_sam2_extension() -> bool:
    """Whether sam2 was built with its CUDA extension (`sam2._C`, needed for hole filling)."""
    import importlib.util

    return importlib.util.find_spec("sam2._C") is not None
