"""SAM2 image predictor prompted with one positive point per expression."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from refam.segmenters.base import Segmenter, check_segment_inputs
from refam.errors import ConfigError, MissingInputError

if TYPE_CHECKING:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

log = logging.getLogger(__name__)



def checked_weights(checkpoint: str | None, model_id: str | None, allow_random_weights: bool,
                    image_size: int | None) -> str | None:
    """The SAM2 weights and input size settings checked (the image and video segmenters take the
    same): the checkpoint path, user-expanded. Checked when the segmenter is built rather than in
    setup, so a typo fails before the DiT spends minutes loading."""
    if checkpoint is not None and model_id is not None:
        raise ConfigError("give a checkpoint or a model_id, not both", field="checkpoint")
    if checkpoint is None and model_id is None and not allow_random_weights:
        raise ConfigError("give a SAM2 checkpoint path (e.g. sam2.1_hiera_large.pt), or set model_id to a hub id, "
                          "or set allow_random_weights: true for smoke tests", field="checkpoint")
    if checkpoint is not None:
        checkpoint = os.path.expanduser(checkpoint)
        if not os.path.isfile(checkpoint):
            raise MissingInputError(f"SAM2 checkpoint not found: {checkpoint}; download it from the SAM2 release "
                                    "(sam2.1_hiera_large.pt, see README) or set this key to your copy", field="checkpoint")
    if image_size is not None and (image_size <= 0 or image_size % 32):
        raise ConfigError(f"must be a positive multiple of 32 (Hiera's total stride), got {image_size}", field="image_size")
    return checkpoint


class SAM2PointSegmenter(Segmenter):
    """One SAM2 image embedding per image, then one single-point prediction per expression.

    With `multimask_output=True` SAM2 returns three candidate masks and we keep
    `masks[argmax(scores)]`, the mask with the highest predicted IoU: the convention of the
    official SAM2 image-predictor notebook. With `multimask_output=False` the decoder itself picks
    (its single-mask token, falling back to the best multimask when that token is unstable,
    because `build_sam2` turns on `dynamic_multimask_via_stability`).

    Args:
        config: SAM2 hydra config name inside the installed `sam2` package. Ignored with `model_id`
            (a hub id implies its own config).
        checkpoint: path to a SAM2 `.pt` checkpoint (a dict with a "model" state dict).
        model_id: a Hugging Face hub id such as "facebook/sam2.1-hiera-large", loaded through
            `SAM2ImagePredictor.from_pretrained` (needs the hub or a populated cache).
        multimask_output: ask for three masks and keep the best-scored one (see above).
        image_size: override SAM2's input resolution (1024 in every released config). Smaller is
            much faster on CPU; released checkpoints are trained at 1024.
        allow_random_weights: build without a checkpoint, for smoke tests only.
        init_seed: seed for the random weights, so every process (and every run) builds the same model.
    """

    def __init__(
        self,
        config: str = "configs/sam2.1/sam2.1_hiera_l.yaml",
        checkpoint: str | None = None,
        model_id: str | None = None,
        multimask_output: bool = True,
        image_size: int | None = None,
        allow_random_weights: bool = False,
        init_seed: int = 0,
    ) -> None:
        checkpoint = checked_weights(checkpoint, model_id, allow_random_weights, image_size)
        self.config = config
        self.checkpoint = checkpoint
        self.model_id = model_id
        self.multimask_output = multimask_output
        self.image_size = image_size
        self.allow_random_weights = allow_random_weights
        self.init_seed = init_seed
        self._predictor: SAM2ImagePredictor | None = None

    @property
    def predictor(self) -> SAM2ImagePredictor:
        if self._predictor is None:
            raise RuntimeError("SAM2PointSegmenter.setup(device) must be called before segmenting")
        return self._predictor

    def setup(self, device: torch.device) -> None:
        if self._predictor is not None:
            self._predictor.model.to(device)
            return
        # Imported here: importing sam2 initialises hydra and pulls torchvision, which a run
        # using another segmenter should not pay for.
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        overrides = [] if self.image_size is None else [f"++model.image_size={self.image_size}"]
        if self.model_id is not None:
            predictor = SAM2ImagePredictor.from_pretrained(
                self.model_id, device=str(device), hydra_overrides_extra=overrides
            )
        elif self.checkpoint is not None:
            predictor = SAM2ImagePredictor(
                build_sam2(self.config, self.checkpoint, device=str(device), hydra_overrides_extra=overrides)
            )
        else:
            log.warning(
                "SAM2 is built with RANDOM weights (allow_random_weights=true, seed %d): masks are "
                "meaningless; set the segmenter's checkpoint for real runs",
                self.init_seed,
            )
            # build_sam2 instantiates on the CPU before moving to `device`, so only the CPU
            # generator needs forking; the caller's RNG stream is left as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.init_seed)
                model = build_sam2(self.config, None, device=str(device), hydra_overrides_extra=overrides)
            predictor = SAM2ImagePredictor(model)
        # SAM2ImagePredictor hard-codes the backbone feature sizes of a 1024 input; any other
        # image_size makes set_image fail on a reshape unless they are recomputed.
        size = predictor.model.image_size
        predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        self._predictor = predictor

    def segment(self, image: np.ndarray, points: np.ndarray, heatmaps: torch.Tensor) -> np.ndarray:
        """Masks for each (x, y) point; `heatmaps` are unused (SAM2 sees the point only)."""
        k, height, width = check_segment_inputs(image, points, heatmaps)
        out = np.zeros((k, height, width), dtype=bool)
        if k == 0:
            return out
        predictor = self.predictor
        labels = np.ones(1, dtype=np.int32)
        with torch.inference_mode():
            predictor.set_image(image)
            for i in range(k):
                masks, scores, _ = predictor.predict(
                    point_coords=np.asarray(points[i : i + 1], dtype=np.float32),
                    point_labels=labels,
                    multimask_output=self.multimask_output,
                )
                out[i] = masks[int(np.argmax(scores))] > 0.5
        return out
