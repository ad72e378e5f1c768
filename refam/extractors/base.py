"""The Extractor contract: one image, K expressions -> per-token attention maps."""

from __future__ import annotations

import abc
import hashlib
import os
import torch
from PIL import Image

from refam.config import Configurable
from refam.errors import CheckpointError, ConfigError, require_words
from refam.identity import pinned_revision
from refam.types import MagnetVectors, TokenMaps


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_pretrained(pretrained: str, layout: str) -> str:
    """A local folder, a model shipped in the package (`embedded:NAME`, refam.embedded), or a hub id
    (the only case where refam touches the network). `layout` tells the user what a checkpoint
    folder holds and names an example hub id."""
    from refam.embedded import EMBEDDED_PREFIX, resolve_embedded

    if pretrained.startswith(EMBEDDED_PREFIX):
        folder = resolve_embedded(pretrained)
        if not os.path.isdir(folder):
            raise CheckpointError(f"{pretrained!r} names no model shipped with refam (no folder {folder}); "
                                  "reinstall refam or give a checkpoint folder", field="pretrained")
        return folder
    if os.path.isdir(pretrained):
        return pretrained
    looks_like_hub_id = pretrained.count("/") == 1 and not pretrained.startswith((".", "/", "~"))
    if os.path.exists(pretrained) or not looks_like_hub_id:
        raise CheckpointError(f"{pretrained!r} is not a folder. Give {layout}.", field="pretrained")
    return pretrained


def load_pipeline(pipeline_class, pretrained: str, layout: str, **kwargs):
    """`pipeline_class.from_pretrained(pretrained, **kwargs)` on a folder or hub id (see
    `resolve_pretrained`), a failure reported against the config key with what the folder must hold."""
    source = resolve_pretrained(pretrained, layout)
    # a hub id loads at the commit the run's identity names (refam.identity.hub_revision)
    revision = pinned_revision(pretrained, kwargs.pop("revision", None), kwargs.get("local_files_only", False))
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return pipeline_class.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"cannot load a {pipeline_class.__name__} from {pretrained!r}: {err}. Give {layout}, "
            f"as {pipeline_class.__name__}.save_pretrained writes it.", field="pretrained"
        ) from err


class Extractor(Configurable, abc.ABC):
    """A DiT backbone observed through an expression branch.

    The interface the pipeline calls: `setup` loads weights, `extract` returns the token maps of all
    K expressions of one image from one pass over the model per observed state. A diffusers DiT
    fills in `refam.extractors.template.DiTExtractor` instead (docs/backbones.md).
    """

    def setup(self, device: torch.device) -> None:
        """Load weights onto `device`; called once per process, before the first `extract`."""

    def cache_key_settings(self) -> dict | None:
        """Everything of this extractor that changes its maps (model identity, dtype, sizes,
        trajectory, seed, blocks, ...), JSON-able or `refam.extractors.cache.describe`-able, for
        the map cache's key (`refam.extractors.cache.MapCache`). None: the maps are never cached."""
        return None

    def validate_expression(self, text: str) -> None:
        """Raise `ExpressionError` for an expression (with magnets) this backbone cannot encode."""
        require_words(text)

    @abc.abstractmethod
    def extract(
        self,
        image: Image.Image,
        caption: str,
        expressions: list[tuple[str, int | None]],
        sample_id: str,
        magnet_vectors: MagnetVectors | None = None,
    ) -> TokenMaps:
        """`expressions`: (text with magnets, character index where magnets start or None).
        `magnet_vectors`: given the text encoder's token-embedding table [V, D], the rows [M, D] to
        append to every expression's input embeddings before EOS (or None); their tokens are magnets
        (`MagnetStrategy.vectors`). An extractor with a block selection and a trajectory (the
        template's) also takes `blocks=` and `trajectory=` for one call; the pipeline passes them
        only where a call's `refam.settings.Settings` names them."""


class VideoExtractor(Extractor):
    """An extractor that also reads videos: token maps over latent frames (`TokenMaps.frame_to_latent`)."""

    @abc.abstractmethod
    def extract_video(
        self,
        frames,
        caption: str,
        expressions: list[tuple[str, int | None]],
        sample_id: str,
        magnet_vectors: MagnetVectors | None = None,
    ) -> TokenMaps:
        """Scores [K, T, F_lat, h, w] of K expressions over a video, with `frame_to_latent`; `frames`
        is a sequence of PIL images (read lazily if it is lazy) or a `VideoSample`."""


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample noise seed that does not depend on which process or in which order it runs."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:8], "little") & (2**63 - 1)


def check_blocks(blocks: object) -> None:
    """What a block selection can be whatever the model's depth: None, a fraction in [0, 1), or a
    non-empty list of block indices (whether they exist is `select_blocks`'s to say)."""
    if blocks is None:
        return
    if isinstance(blocks, float):
        if not 0.0 <= blocks < 1.0:
            raise ConfigError(f"a fraction of filtered blocks must be in [0, 1), got {blocks}", field="blocks")
        return
    if (not isinstance(blocks, (list, tuple)) or not blocks
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks)):
        raise ConfigError(f"must be a non-empty list of block indices, a fraction in [0, 1) of the earliest "
                          f"blocks filtered out, or None (all blocks), got {blocks!r}", field="blocks")


def select_blocks(num_blocks: int, blocks: list[int] | float | None) -> set[int]:
    """Blocks whose maps are averaged: all (None), an explicit list, or a fraction in [0, 1) of the
    earliest blocks filtered out (the paper's Table 1: "% of filtered blocks")."""
    if blocks is None:
        return set(range(num_blocks))
    if isinstance(blocks, float):
        check_blocks(blocks)
        return set(range(int(round(blocks * num_blocks)), num_blocks))
    chosen = {b if b >= 0 else num_blocks + b for b in blocks}
    bad = sorted(b for b in chosen if not 0 <= b < num_blocks)
    if bad or not chosen:
        raise ConfigError(f"{blocks} is not a non-empty list of block indices in [0, {num_blocks})", field="blocks")
    return chosen
