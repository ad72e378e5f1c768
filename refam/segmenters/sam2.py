"""SAM2 image predictor prompted with one positive point per expression, or with several points with
labels (a user's corrections: SAM2's multi-point prompt)."""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from refam.segmenters.base import Segmenter, check_prompt_inputs, check_segment_inputs
from refam.errors import CheckpointError, ConfigError, MissingInputError
from refam.types import Point

log = logging.getLogger(__name__)



def checked_weights(checkpoint: str | None, model_id: str | None, allow_random_weights: bool,
                    image_size: int | None, config: str | None = None) -> str | None:
    """The SAM2 weights and input size settings checked (the image and video segmenters take the
    same): the checkpoint path, user-expanded. Checked when the segmenter is built rather than in
    setup, so a typo fails before the DiT spends minutes loading."""
    if importlib.util.find_spec("sam2") is None:  # an extra: said before the DiT spends minutes loading
        raise ConfigError("the SAM2 segmenters need the sam2 package: install torch and a matching torchvision, "
                          "then SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'refam[sam2]'; or choose another "
                          "segmenter")
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
        check_checkpoint(checkpoint, config)
    if image_size is not None and (image_size <= 0 or image_size % 32):
        raise ConfigError(f"must be a positive multiple of 32 (Hiera's total stride), got {image_size}", field="image_size")
    return checkpoint


FIX_SIZE = ("give the checkpoint of the size `config` names (sam2.1_hiera_large.pt for configs/sam2.1/sam2.1_hiera_l.yaml, "
            "sam2.1_hiera_small.pt for ..._s.yaml), or set config to the checkpoint's size")


def _hiera_size(config: str) -> tuple[int, int] | None:
    """(trunk width, trunk blocks) of the Hiera that a config in the installed sam2 package builds."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("sam2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], config)
    try:
        with open(path, encoding="utf-8") as file:
            trunk = yaml.safe_load(file)["model"]["image_encoder"]["trunk"]
        return int(trunk["embed_dim"]), sum(int(n) for n in trunk["stages"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None  # not a file of the package (setup reports a missing config), or another layout


def check_checkpoint(checkpoint: str, config: str | None) -> None:
    """The checkpoint file read as far as telling whether it can load, when the segmenter is built
    (before minutes of loading the DiT): a PyTorch file holding a 'model' state dict, of the Hiera
    size `config` builds. Tensors are memory-mapped, not read, so this is quick for the large model
    too; what it cannot tell, the load in `setup` reports (`checkpoint_errors`)."""
    if not zipfile.is_zipfile(checkpoint):
        raise CheckpointError(f"{checkpoint} is truncated or not a PyTorch checkpoint (no zip archive, as torch.save "
                              "writes); download it again from the SAM2 release", field="checkpoint")
    with checkpoint_errors(config or "the config", checkpoint):
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{checkpoint} holds no 'model' state dict, as SAM2's release checkpoints do; "
                              "give a SAM2 checkpoint (e.g. sam2.1_hiera_large.pt)", field="checkpoint")
    expected = _hiera_size(config) if config else None
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    blocks = {int(m.group(1)) for key in state if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", key))}
    if expected is None or patch is None or not blocks:
        return
    found = (int(patch.shape[0]), max(blocks) + 1)
    if found != expected:
        raise CheckpointError(f"{checkpoint} is a SAM2 whose image encoder has width {found[0]} and {found[1]} blocks, "
                              f"but {config} builds width {expected[0]} and {expected[1]} blocks: a checkpoint of "
                              f"another SAM2 size; {FIX_SIZE}", field="checkpoint")


def _unfit_weights(message: str) -> str | None:
    """torch's `load_state_dict` error (one line per kind, keys quoted), counted and shown by example."""
    parts = []
    for kind, label in (("Missing", "missing"), ("Unexpected", "unexpected")):
        found = re.search(rf"{kind} key\(s\) in state_dict: (.*)", message)
        if found:
            keys = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(f"{len(keys)} weights {label} (e.g. {keys[0]})" if keys else f"weights {label}")
    shapes = re.findall(r"size mismatch for ([^:]+): copying a param with shape (torch\.Size\(\[[^]]*\]\)) from "
                        r"checkpoint, the shape in current model is (torch\.Size\(\[[^]]*\]\))", message)
    if shapes:
        name, theirs, ours = shapes[0]
        parts.append(f"{len(shapes)} weights of another shape (e.g. {name}: {theirs[11:-1]} in the checkpoint, "
                     f"{ours[11:-1]} in the model)")
    return ", ".join(parts) or None


@contextmanager
def checkpoint_errors(config: str, checkpoint: str) -> Iterator[None]:
    """sam2's build from `checkpoint`, with a file that is not a SAM2 checkpoint of `config`'s size
    (truncated, not a PyTorch file, another model's) reported as one CheckpointError on `checkpoint`."""
    from hydra.errors import MissingConfigException

    try:
        yield
    except MissingConfigException as err:
        raise ConfigError(f"no SAM2 config {config!r} in the installed sam2 package", field="config") from err
    except (pickle.UnpicklingError, EOFError) as err:
        raise CheckpointError(f"{checkpoint} is not a PyTorch checkpoint ({type(err).__name__}); download it "
                              "again from the SAM2 release", field="checkpoint") from err
    except (KeyError, TypeError) as err:  # sam2 reads torch.load(...)["model"]
        raise CheckpointError(f"{checkpoint} holds no 'model' state dict, as SAM2's release checkpoints do; "
                              "give a SAM2 checkpoint (e.g. sam2.1_hiera_large.pt)", field="checkpoint") from err
    except RuntimeError as err:
        message = str(err)
        if "PytorchStreamReader" in message or "zip archive" in message:
            raise CheckpointError(f"{checkpoint} is truncated or corrupt ({message.split('.')[0]}); download it "
                                  "again from the SAM2 release", field="checkpoint") from err
        unfit = _unfit_weights(message)
        if unfit is None and message.strip():  # not the checkpoint's doing (a device error, ...)
            raise
        # sam2 itself raises a bare RuntimeError after logging the keys of a non-strict load
        raise CheckpointError(f"{checkpoint} does not fit the model of {config}: "
                              f"{unfit or 'missing or unexpected weights (logged above)'}; it may be a checkpoint "
                              f"of another SAM2 size: {FIX_SIZE}", field="checkpoint") from err


class SAM2Weights:
    """The weight settings SAM2's image and video segmenters share (their Args say what each means),
    checked when the segmenter is built (`checked_weights`), and the predictor `setup` loads."""

    used_for = "segmenting"  # what needs the predictor, for the error when setup has not run

    def take_weights(self, config: str, checkpoint: str | None, model_id: str | None, image_size: int | None,
                     allow_random_weights: bool, init_seed: int) -> None:
        self.checkpoint = checked_weights(checkpoint, model_id, allow_random_weights, image_size, config)
        self.config, self.model_id, self.image_size = config, model_id, image_size
        self.allow_random_weights, self.init_seed = allow_random_weights, init_seed
        self._predictor = None

    def built(self, from_pretrained, build, device: torch.device):
        """The predictor from the hub (`from_pretrained(model_id, ...)`), from the checkpoint
        (`build(config, checkpoint, ...)`, its errors summarised by `checkpoint_errors`), or with
        random weights seeded by `init_seed`, at `image_size` when one is set."""
        overrides = [] if self.image_size is None else [f"++model.image_size={self.image_size}"]
        if self.model_id is not None:
            return from_pretrained(self.model_id, device=str(device), hydra_overrides_extra=overrides)
        if self.checkpoint is not None:
            with checkpoint_errors(self.config, self.checkpoint):
                return build(self.config, self.checkpoint, device=str(device), hydra_overrides_extra=overrides)
        log.warning("%s: SAM2 is built with RANDOM weights (allow_random_weights=true, seed %d): masks are "
                    "meaningless; set the segmenter's checkpoint for real runs", type(self).__name__, self.init_seed)
        # sam2 instantiates on the CPU before moving to `device`, so only the CPU generator needs
        # forking; the caller's RNG stream is left as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            return build(self.config, None, device=str(device), hydra_overrides_extra=overrides)

    @property
    def predictor(self):
        """The loaded SAM2 predictor (`SAM2ImagePredictor` or `SAM2VideoPredictor`)."""
        if self._predictor is None:
            raise RuntimeError(f"{type(self).__name__}.setup(device) must be called before {self.used_for}")
        return self._predictor


class SAM2PointSegmenter(SAM2Weights, Segmenter):
    """One SAM2 image embedding per image, then one single-point prediction per expression.

    With `multimask_output=True` SAM2 returns three candidate masks and we keep
    `masks[argmax(scores)]`, the mask with the highest predicted IoU: the convention of the
    official SAM2 image-predictor notebook. With `multimask_output=False` the decoder itself picks
    (its single-mask token, falling back to the best multimask when that token is unstable,
    because `build_sam2` turns on `dynamic_multimask_via_stability`). A user's points
    (`segment_points`) are SAM2's multi-point prompt, one `predict` call per expression.

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
        self.take_weights(config, checkpoint, model_id, image_size, allow_random_weights, init_seed)
        self.multimask_output = multimask_output

    def setup(self, device: torch.device) -> None:
        if self._predictor is not None:
            self._predictor.model.to(device)
            return
        # Imported here: importing sam2 initialises hydra and pulls torchvision, which a run
        # using another segmenter should not pay for.
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        predictor = self.built(SAM2ImagePredictor.from_pretrained, lambda *args, **kwargs: SAM2ImagePredictor(
            build_sam2(*args, **kwargs)), device)
        # SAM2ImagePredictor hard-codes the backbone feature sizes of a 1024 input; any other
        # image_size makes set_image fail on a reshape unless they are recomputed.
        size = predictor.model.image_size
        predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        self._predictor = predictor

    def segment(self, image: np.ndarray, points: np.ndarray, heatmaps: torch.Tensor) -> np.ndarray:
        """Masks for each (x, y) point; `heatmaps` are unused (SAM2 sees the point only)."""
        check_segment_inputs(image, points, heatmaps)
        return self._predicted(image, [(np.asarray(points[i : i + 1], dtype=np.float32), np.ones(1, dtype=np.int32))
                                       for i in range(len(points))])

    def segment_points(self, image: np.ndarray, prompts: Sequence[Sequence[Point]], heatmaps: torch.Tensor) -> np.ndarray:
        """Masks for each expression's points, SAM2's multi-point prompt: `point_coords` [N, 2] (x, y)
        and `point_labels` [N] (1 positive, 0 negative) in one `predict` call. One positive point
        alone is `segment`'s prompt; several points ask for one mask (`multimask_output=False`), as
        sam2 advises for prompts that are not ambiguous and as its video predictor does from the
        second click on. The previous mask is not fed back (`mask_input`): the points alone give
        the mask, so the points recorded reproduce it. No positive point: an empty mask."""
        check_prompt_inputs(image, prompts, heatmaps)
        return self._predicted(image, [(np.array([[p.x, p.y] for p in prompt], dtype=np.float32).reshape(-1, 2),
                                        np.array([p.label for p in prompt], dtype=np.int32)) for prompt in prompts])

    def _predicted(self, image: np.ndarray, prompts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """One image embedding, then one `predict` per (coordinates [N, 2], labels [N]) prompt."""
        height, width = image.shape[:2]
        out = np.zeros((len(prompts), height, width), dtype=bool)
        if not any(labels.any() for _, labels in prompts):
            return out
        predictor = self.predictor
        with torch.inference_mode():
            predictor.set_image(image)
            for i, (coords, labels) in enumerate(prompts):
                if not labels.any():
                    continue  # nothing is pointed at
                masks, scores, _ = predictor.predict(
                    point_coords=coords,
                    point_labels=labels,
                    multimask_output=self.multimask_output if len(labels) == 1 else False,
                )
                out[i] = masks[int(np.argmax(scores))] > 0.5
        return out
