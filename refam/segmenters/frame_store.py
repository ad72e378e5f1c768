"""Frames of a video streamed from disk to SAM2's video predictor, a few at a time.

sam2's `load_video_frames` (what `SAM2VideoPredictor.init_state` calls) reads every frame into one
[N, 3, S, S] float32 tensor (12 MB a frame at S = 1024), or with `async_loading_frames=True` loads
every frame in a background thread and keeps them all: memory grows with the video. sam2 only ever
asks its inference state's "images" for `images[idx]` and `len`, so `LazyFrameStore` reads a frame
when asked and keeps a small LRU, with values bit-identical to sam2's loader.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from refam.errors import ConfigError, DataError, MissingInputError
from refam.segmenters.video_base import FramePath

# sam2's `load_video_frames` defaults (ImageNet statistics).
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


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
