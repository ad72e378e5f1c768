"""The attention-map cache: token maps stored per sample, so that runs which change only what comes
after the extractor (aggregation, spatial bias, point, segmentation) skip the DiT entirely.

One safetensors file per (sample, key) holds one extractor call's `TokenMaps`: the tensors
(`scores`, `valid`, `text_mass`) and, in the file's metadata, the tokens (JSON), `kind` and
`frame_to_latent`. The key is the sha256 of everything that changes the maps (see `cache_key`):

- the code that makes the maps (`refam.code_identity.code_identity` of the extractor and what it holds:
  the sources of their modules and of every refam module those import) and the versions of the
  libraries that change maps (`refam.code_identity.MAPS_LIBRARIES`: torch, diffusers, transformers, ...);
- the extractor's `cache_key_settings()`: its class, the model's identity (a folder: where it is
  and every file's relative path with the sha256 of its content, `refam.identity.model_identity`;
  a hub id: the id), dtype, sizes, trajectory / noise level, seed, blocks, softmax stage,
  representation, caption and expression lengths, pooled prompt, guidance, device type...,
  with the block selection and trajectory the call passes instead of the extractor's own
  (`refam.settings.Settings`) in their place (`with_overrides`);
- the sample: its id (the noise seed derives from it), the image content (sha256 of the decoded
  pixels, mode and size) or, for a video, each frame file's path and content sha256;
- the caption actually used (after `text_condition`);
- the K expressions as encoded (magnet-augmented text and where the magnets start), in order: one
  entry per sample serves all K expressions, as one forward does;
- the identity of the magnet vectors (`MagnetStrategy.vectors`), when the strategy has them
  (class, count, seed...); word magnets are already in the texts.

Settings that act after the maps (token filtering by stop words or noun phrase, the aggregator,
spatial biases, the segmenter) are not in the key, so changing them hits.

A sample whose image, caption or expressions changed since its maps were stored (same id, same
settings) misses, with a warning naming it; the old entry is left in place.

Writes are atomic (a temporary file in the same folder, then `os.replace`); a file that cannot be
read back (truncated, corrupt, tensors not matching their stored sha256, inconsistent shapes) is reported with a warning, recomputed and rewritten.
Only safetensors is read, never pickles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from refam.config import Configurable
from refam.io.names import safe_name
from refam.code_identity import MAPS_LIBRARIES, code_identity, library_versions
from refam.identity import (MAPS_FORMAT, describe_change, frames_identity, image_identity,
                            model_identity)  # noqa: F401 (model_identity re-exported)
from refam.types import TokenInfo, TokenMaps

log = logging.getLogger(__name__)

FORMAT_VERSION = MAPS_FORMAT  # the layout of a maps file (refam.identity)


# ------------------------------------------------------------------ identities
def describe(obj) -> object:
    """A JSON-able description of a setting: primitives as they are, containers recursively, other
    objects as their class path plus their public attributes (e.g. a `Trajectory`)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, torch.device):
        return obj.type
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(describe(v) for v in obj)
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    cls = type(obj)
    if isinstance(obj, Configurable):  # a component: the arguments it was built with, as it now holds them
        fields = {k: describe(v) for k, v in sorted(obj.settings().items())}
    else:
        fields = {k: describe(v) for k, v in sorted(vars(obj).items()) if not k.startswith("_")} if hasattr(obj, "__dict__") else {}
    return {"class": f"{cls.__module__}.{cls.__qualname__}", **fields}


KEEP_ONLY = frozenset({"magnets", "filter_stop_words", "stop_words", "noun_phrase"})  # act in `keep`, not on the maps


def magnet_vectors_identity(magnets) -> dict | None:
    """None for strategies without vectors (their magnets are words, already in the texts); else
    the class and the settings that draw the vectors (e.g. RandomVectorMagnets' count and seed)."""
    from refam.aggregators.magnets import MagnetStrategy

    if magnets is None or type(magnets).vectors is MagnetStrategy.vectors:
        return None
    settings = describe(magnets)
    return {k: v for k, v in settings.items() if k not in KEEP_ONLY}


def with_overrides(settings: dict, overrides: dict | None) -> dict:
    """An extractor's key settings for a call that passes `overrides` (its `blocks`, `trajectory`)
    instead of its own: where its settings record them (a diffusers extractor's `settings`), the
    passed values take their place, so the call shares its entries with an extractor built with
    them; else they are added beside them."""
    if not overrides:
        return settings
    recorded = settings.get("settings")
    if isinstance(recorded, dict) and set(overrides) <= set(recorded):
        return {**settings, "settings": {**recorded, **{name: describe(v) for name, v in overrides.items()}}}
    return {**settings, "overrides": describe(overrides)}


def cache_key(
    settings: dict,
    sample_id: str,
    source: object,
    caption: str,
    expressions: list[tuple[str, int | None]],
    magnets=None,
    code: dict | None = None,
) -> tuple[str, dict]:
    """(sha256 hex, the payload it hashes). `source`: an image (hashed by content) or a list of
    frame paths (each file's path and content sha256). `code`: the code and library identity of
    the maps (`maps_code`)."""
    if isinstance(source, Image.Image):
        source_id = {"image": image_identity(source)}
    else:
        source_id = {"frames": frames_identity(list(source))}
    payload = {
        "format": FORMAT_VERSION,
        "extractor": describe(settings),
        "sample_id": sample_id,
        "source": source_id,
        "caption": caption,
        "expressions": [[text, start] for text, start in expressions],
        "magnet_vectors": magnet_vectors_identity(magnets),
        **(code or {}),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest(), payload


def maps_code(extractor) -> dict:
    """What else makes an extractor's maps: its code (`code_identity` of the extractor and what
    it holds, with this module) and the versions of the libraries that change maps."""
    return {"code": code_identity(extractor, modules=[__name__]), "libraries": library_versions(MAPS_LIBRARIES)}


# ------------------------------------------------------------------ storage
class CorruptEntry(Exception):
    """A cache file that cannot be read back as TokenMaps."""


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' bytes (bit rot in the data region would otherwise load silently)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class MapCache:
    """Token maps on disk, one safetensors file per (sample, key), in `folder`.

    `hits`, `misses` and `corrupt` count this process's look-ups."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self._warned_uncacheable: set[str] = set()
        self._warned_code = False
        self._code: dict[int, dict] = {}  # maps_code per extractor (by id), computed once per process

    def path(self, sample_id: str, key: str) -> Path:
        return self.folder / f"{safe_name(sample_id)}.{key[:32]}.safetensors"

    # -------------------------------------------------------------- files
    def save(self, path: Path, maps: TokenMaps, payload: dict | None = None) -> None:
        from safetensors.torch import save

        from refam.io.files import write_atomic

        tensors = {
            "scores": maps.scores.detach().cpu().contiguous(),  # dtype kept: a hit equals a fresh run
            "valid": maps.valid.detach().to("cpu", torch.bool).contiguous(),
            "text_mass": maps.text_mass.detach().cpu().contiguous(),
        }
        metadata = {
            "format": str(FORMAT_VERSION),
            "checksum": _checksum(tensors),
            "kind": maps.kind,
            "tokens": json.dumps([[dataclasses.asdict(t) for t in tokens] for tokens in maps.tokens]),
            "frame_to_latent": json.dumps(maps.frame_to_latent),
            "key": json.dumps(payload, sort_keys=True) if payload is not None else "",
        }
        write_atomic(path, save(tensors, metadata=metadata))

    def load(self, path: Path, expected: int | None = None) -> TokenMaps:
        """The TokenMaps in `path`; `CorruptEntry` if it cannot be read or is inconsistent."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in ("scores", "valid", "text_mass")}
            if metadata.get("format") != str(FORMAT_VERSION):
                raise CorruptEntry(f"format {metadata.get('format')!r}, expected {FORMAT_VERSION}")
            tokens = [[TokenInfo(**t) for t in row] for row in json.loads(metadata["tokens"])]
            frame_to_latent = json.loads(metadata["frame_to_latent"])
            kind = metadata["kind"]
            if metadata.get("checksum") != _checksum(tensors):
                raise CorruptEntry("the tensors do not match their checksum")
        except CorruptEntry:
            raise
        except Exception as err:  # truncated file, bad header, missing tensor or metadata
            raise CorruptEntry(f"{type(err).__name__}: {err}") from err
        scores, valid, text_mass = tensors["scores"], tensors["valid"], tensors["text_mass"]
        k, t = valid.shape if valid.dim() == 2 else (-1, -1)
        if (valid.dtype != torch.bool or scores.shape[:2] != (k, t) or tuple(text_mass.shape) != (k, t)
                or len(tokens) != k or any(len(row) != t for row in tokens)
                or (expected is not None and k != expected) or kind not in ("logits", "probs")):
            raise CorruptEntry(f"inconsistent entry: scores {tuple(scores.shape)}, valid {tuple(valid.shape)}, "
                               f"text_mass {tuple(text_mass.shape)}, {len(tokens)} token rows, kind {kind!r}")
        return TokenMaps(scores=scores, valid=valid, text_mass=text_mass, tokens=tokens, kind=kind,
                         frame_to_latent=frame_to_latent)

    def _warn_if_changed(self, sample_id: str, path: Path, payload: dict) -> None:
        """Say so when this sample has an entry made with the same settings but other inputs (its
        image, caption or expressions were edited): the user may not expect the recomputation."""
        from safetensors import safe_open

        same = ("format", "extractor", "magnet_vectors", "sample_id")
        for other in sorted(self.folder.glob(f"{safe_name(sample_id)}.*.safetensors"))[:16]:
            if other == path:
                continue
            try:
                with safe_open(str(other), framework="pt") as f:
                    stored = json.loads((f.metadata() or {}).get("key") or "null")
            except Exception:  # unreadable entries are reported when read, not here
                continue
            if not isinstance(stored, dict) or any(stored.get(k) != payload.get(k) for k in same):
                continue
            changed = [k for k in ("source", "caption", "expressions") if stored.get(k) != payload.get(k)]
            if changed:
                log.warning("map cache: sample %s changed since its maps were stored (%s differ); recomputing it",
                            sample_id, ", ".join(changed))
                return
            code = describe_change({k: stored.get(k) for k in ("code", "libraries")},
                                   {k: payload.get(k) for k in ("code", "libraries")})
            if code and not self._warned_code:  # the same for every sample: said once
                self._warned_code = True
                log.warning("map cache: maps in %s were made by other code or libraries (%s differ); recomputing "
                            "them", self.folder, code)
            return

    # -------------------------------------------------------------- the call
    def extract(
        self,
        extractor,
        compute: Callable[[], TokenMaps],
        sample_id: str,
        source: object,
        caption: str,
        expressions: list[tuple[str, int | None]],
        magnets=None,
        overrides: dict | None = None,
    ) -> TokenMaps:
        """The maps of one extractor call: read from the cache when present, else `compute()` and
        stored. `overrides`: what the call passes the extractor instead of its own settings
        (`blocks`, `trajectory`). An extractor whose `cache_key_settings()` is None is never cached
        (warned once)."""
        settings = extractor.cache_key_settings()
        if settings is None:
            name = type(extractor).__name__
            if name not in self._warned_uncacheable:
                self._warned_uncacheable.add(name)
                log.warning("map cache: %s does not describe its settings (cache_key_settings); its maps are not cached", name)
            return compute()
        code = self._code.get(id(extractor))
        if code is None:
            code = self._code[id(extractor)] = maps_code(extractor)
        key, payload = cache_key(with_overrides(settings, overrides), sample_id, source, caption, expressions,
                                 magnets, code)
        path = self.path(sample_id, key)
        if path.exists():
            try:
                maps = self.load(path, expected=len(expressions))
                self.hits += 1
                return maps
            except CorruptEntry as err:
                self.corrupt += 1
                log.warning("map cache: %s cannot be read (%s); recomputing it", path, err)
        self.misses += 1
        self._warn_if_changed(sample_id, path, payload)
        maps = compute()
        try:
            self.save(path, maps, payload)
        except OSError as err:  # a full or read-only disk costs the cache, not the run
            log.warning("map cache: cannot write %s (%s); going on without it", path, err)
        return maps
