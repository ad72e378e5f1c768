"""SAM2 video predictor prompted with one positive point on one frame, frames streamed from disk.

sam2's `SAM2VideoPredictor.init_state(video_path)` reads every frame of the video into one
[N, 3, S, S] float32 tensor (12 MB a frame at S = 1024), or with `async_loading_frames=True` caches
every frame as it goes: memory grows with the video. Here the inference state is built with a
`LazyFrameStore` under "images" instead: sam2 only ever asks for `images[idx]` (and `len`), so the
store reads a frame from disk when sam2 asks and keeps a small LRU. With `prune_memory` the
per-frame tracking outputs that sam2 can no longer read (older than its memory window) are dropped
too, so memory stays flat however long the video is; masks are unchanged (a test holds both).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from refam.errors import ConfigError, DataError, MissingInputError
from refam.segmenters.sam2 import checked_weights, checkpoint_errors
from refam.segmenters.video_base import FramePath, VideoSegmenter, check_track_inputs

if TYPE_CHECKING:
    from sam2.sam2_video_predictor import SAM2VideoPredictor

log = logging.getLogger(__name__)

# sam2's `load_video_frames` defaults (ImageNet statistics).
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)

OBJ_ID = 1  # the one object tracked per call


class LazyFrameStore:
    """Frames of a video as sam2's inference state expects under "images", read on demand.

    `store[idx]` is what sam2's own loader holds at that index: the frame converted to RGB,
    resized to `image_size` x `image_size` with PIL's default filter, scaled to [0, 1] in float64
    then stored as float32, minus the ImageNet mean, over the ImageNet std (the same operations in
    the same order as `sam2.utils.misc.load_video_frames_from_jpg_images`, so values are
    bit-identical), on `device` unless `offload_video_to_cpu`. sam2 only indexes it and takes
    its `len` (`_get_image_feature`, `init_state`).

    At most `cache_size` frames are held (least recently used evicted; at least 1, as
    SAM2VideoSegmenter checks its `frame_cache_size`). `loads` lists the frames read from disk in
    order and `max_held` the most frames ever held at once, so tests and benchmarks can check the
    streaming.

    All frames must have the size of frame 0 (sam2 resizes every mask to one video size); only
    frame 0's header is read up front, and a frame of another size is a `DataError` when read.
    """

    def __init__(
        self,
        paths: Sequence[FramePath],
        image_size: int,
        device: torch.device | str = "cpu",
        offload_video_to_cpu: bool = False,
        cache_size: int = 2,
        img_mean: tuple[float, float, float] = IMG_MEAN,
        img_std: tuple[float, float, float] = IMG_STD,
    ) -> None:
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ConfigError("a video needs at least one frame")
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.offload_video_to_cpu = offload_video_to_cpu
        self.cache_size = cache_size
        self.img_mean = torch.tensor(img_mean, dtype=torch.float32)[:, None, None]
        self.img_std = torch.tensor(img_std, dtype=torch.float32)[:, None, None]
        self.video_width, self.video_height = self._header(0)  # header only, nothing decoded
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.loads: list[int] = []
        self.requests = 0
        self.max_held = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        index = self._check_index(index)
        self.requests += 1
        frame = self._cache.get(index)
        if frame is not None:
            self._cache.move_to_end(index)
            return frame
        frame = self._load(index)
        self._cache[index] = frame
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        self.max_held = max(self.max_held, len(self._cache))
        self.loads.append(index)
        return frame

    @property
    def held(self) -> list[int]:
        """Indices of the frames in memory now, least recently used first."""
        return list(self._cache)

    def clear(self) -> None:
        self._cache.clear()

    def _check_index(self, index) -> int:
        import operator

        index = operator.index(index)
        if not 0 <= index < len(self.paths):
            raise IndexError(f"frame {index} outside a video of {len(self.paths)} frames")
        return index

    def _open(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            return Image.open(path)
        except FileNotFoundError as err:
            raise MissingInputError(f"video frame not found: {path}") from err
        except OSError as err:
            raise DataError(f"cannot read video frame {path}: {err}") from err

    def _header(self, index: int) -> tuple[int, int]:
        from refam.io.pixels import viewed_size

        with self._open(index) as image:
            return viewed_size(image)  # upright, as the frame is read

    def _load(self, index: int) -> torch.Tensor:
        from refam.io.images import to_rgb  # every frame as every image: modes, EXIF orientation, alpha

        path = self.paths[index]
        with self._open(index) as image:
            try:
                rgb = to_rgb(image, path)
            except OSError as err:
                raise DataError(f"cannot decode video frame {path}: {err}") from err
        if rgb.size != (self.video_width, self.video_height):
            raise DataError(
                f"video frame {path} is {rgb.size[0]}x{rgb.size[1]} but frame 0 is "
                f"{self.video_width}x{self.video_height}; all frames of a video must have one size"
            )
        pixels = np.array(rgb.resize((self.image_size, self.image_size)))
        # As sam2: uint8 / 255.0 in float64, stored into a float32 buffer, then normalised.
        frame = torch.from_numpy(pixels / 255.0).permute(2, 0, 1).to(torch.float32)
        if not self.offload_video_to_cpu:
            frame = frame.to(self.device)
        frame -= self.img_mean.to(frame.device)
        frame /= self.img_std.to(frame.device)
        return frame


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


class SAM2VideoSegmenter(VideoSegmenter):
    """SAM2VideoPredictor with one positive click on one frame, propagated over the whole video.

    Propagates forward from the prompted frame to the last frame, then (when the prompted frame is
    not the first) backward from it to frame 0 with `reverse=True`, as zero-shot RVOS drivers do
    (e.g. AL-Ref-SAM2): the backward pass sees the forward pass's memories near the prompt frame,
    exactly as sam2's own `propagate_in_video` calls in that order would. Masks are yielded as
    soon as they are computed: prompt frame, later frames in order, then earlier frames in
    reverse order, every frame once.

    For one click on the prompt frame SAM2 itself picks among its multimask outputs (the mask with
    the highest predicted IoU, `multimask_output_in_sam` in the released configs).

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
        checkpoint = checked_weights(checkpoint, model_id, allow_random_weights, image_size, config)
        if frame_cache_size < 1:
            raise ConfigError(f"must be at least 1, got {frame_cache_size}", field="frame_cache_size")
        if fill_hole_area is not None and fill_hole_area < 0:
            raise ConfigError(f"must be >= 0 (or null for sam2's default), got {fill_hole_area}", field="fill_hole_area")
        self.config = config
        self.checkpoint = checkpoint
        self.model_id = model_id
        self.image_size = image_size
        self.allow_random_weights = allow_random_weights
        self.init_seed = init_seed
        self.offload_video_to_cpu = offload_video_to_cpu
        self.offload_state_to_cpu = offload_state_to_cpu
        self.frame_cache_size = frame_cache_size
        self.prune_memory = prune_memory
        self.fill_hole_area = fill_hole_area
        self.mask_threshold = mask_threshold
        self._predictor: SAM2VideoPredictor | None = None

    @property
    def predictor(self) -> SAM2VideoPredictor:
        if self._predictor is None:
            raise RuntimeError("SAM2VideoSegmenter.setup(device) must be called before tracking")
        return self._predictor

    def setup(self, device: torch.device) -> None:
        if self._predictor is not None:
            self._predictor.to(device)
            return
        # Imported here: importing sam2 initialises hydra and pulls torchvision, which a run
        # using another segmenter should not pay for.
        from hydra.errors import MissingConfigException
        from sam2.build_sam import build_sam2_video_predictor
        from sam2.sam2_video_predictor import SAM2VideoPredictor

        overrides = [] if self.image_size is None else [f"++model.image_size={self.image_size}"]
        try:
            if self.model_id is not None:
                predictor = SAM2VideoPredictor.from_pretrained(
                    self.model_id, device=str(device), hydra_overrides_extra=overrides
                )
            elif self.checkpoint is not None:
                with checkpoint_errors(self.config, self.checkpoint):
                    predictor = build_sam2_video_predictor(
                        self.config, self.checkpoint, device=str(device), hydra_overrides_extra=overrides
                    )
            else:
                log.warning(
                    "SAM2 video predictor is built with RANDOM weights (allow_random_weights=true, seed %d): "
                    "masks are meaningless; set the segmenter's checkpoint for real runs",
                    self.init_seed,
                )
                # build_sam2_video_predictor instantiates on the CPU before moving to `device`, so
                # only the CPU generator needs forking; the caller's RNG stream is left as it was.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.init_seed)
                    predictor = build_sam2_video_predictor(
                        self.config, None, device=str(device), hydra_overrides_extra=overrides
                    )
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
        if not (0 <= x <= store.video_width and 0 <= y <= store.video_height):
            raise ConfigError(
                f"track: point (x={x}, y={y}) lies outside frame {frame_index} "
                f"({store.video_width}x{store.video_height}); points are (x, y) in pixels"
            )
        return self._propagate(store, frame_index, (x, y))

    @torch.inference_mode()
    def _propagate(self, store: LazyFrameStore, frame_index: int, point: tuple[float, float]):
        predictor = self.predictor
        state = self._new_state(store)
        predictor.add_new_points_or_box(
            state, frame_idx=frame_index, obj_id=OBJ_ID, points=[list(point)], labels=[1]
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
        without its warm-up of frame 0's features (computed when needed instead).

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
