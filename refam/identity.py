"""What produced a stored number: the identities the map cache and the result store key their
records by, so that neither ever replays a record made by other data, weights, libraries or code.

One concept, one place:

- `file_digest`: a file's content (sha256). Files of `MEMO_SIZE` or more (weights) are hashed once
  per version of the file: the digest is remembered, in this process and in a small memo file
  (`memo_path`), under the file's path, size, mtime, ctime and inode; a file rewritten or replaced
  changes its ctime (which no tool sets), so a remembered digest never outlives its content.
- `path_identity` / `model_identity`: a checkpoint file or folder by content; a hub id by the
  commit it resolves to (`hub_revision`), which is also the commit the extractor loads.
- `image_identity`, `frames_identity`, `mask_identity`: a sample's pixels, frame files and masks.
- `sample_identity`: one sample's inputs (image or frames, caption, each expression's fields:
  id, text, ground-truth and void masks, object ids; a video's ground truth).
- `weights_identity`: the files and hub ids that the components' settings name (checkpoints,
  model configs).
- the code and the libraries that made a number: `refam.code_identity`;
- `numbers_key`, `describe_change`: the compact form a record stores, and what differs between two.
- `RECORD_FORMAT`, `MAPS_FORMAT`: the layouts of a stored record and of a cached maps file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from refam.config import Configurable
from refam.embedded import EMBEDDED_PREFIX, resolve_embedded

log = logging.getLogger(__name__)

# The layouts of what is stored (not the code's version: that is `refam.code_identity`, computed).
RECORD_FORMAT = 3  # the result store's record; 3: keyed by computed code identity and library versions
MAPS_FORMAT = 2  # a cached maps file (refam.extractors.cache)


def digest(payload: object) -> str:
    """sha256 hex of a JSON-able payload (keys sorted)."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ------------------------------------------------------------------ files
MEMO_SIZE = 64 << 20  # files this large are remembered across processes (hashing FLUX's weights takes a while)
MEMO_ENV = "REFAM_DIGEST_MEMO"


def memo_path() -> Path | None:
    """Where large files' digests are remembered: `$REFAM_DIGEST_MEMO` (empty: nowhere), else
    `$XDG_CACHE_HOME/refam/file-digests.json` (`~/.cache/refam/...`)."""
    if MEMO_ENV in os.environ:
        return Path(os.environ[MEMO_ENV]).expanduser() if os.environ[MEMO_ENV] else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "refam" / "file-digests.json"


def _read_memo(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(path: Path | None, name: str, entry: list) -> None:
    if path is None:
        return
    from refam.io.files import write_atomic

    memo = _read_memo(path)
    memo[name] = entry
    try:
        write_atomic(path, json.dumps(memo, indent=0, sort_keys=True).encode())
    except OSError as err:  # a read-only home costs the memo, not the run
        log.debug("cannot write the digest memo %s (%s)", path, err)


@functools.lru_cache(maxsize=8192)
def _digest_of(path: str, stamp: tuple) -> str:
    size = stamp[0]
    memo_file = memo_path() if size >= MEMO_SIZE else None
    if memo_file is not None:
        entry = _read_memo(memo_file).get(path)
        if isinstance(entry, list) and len(entry) == len(stamp) + 1 and tuple(entry[:-1]) == stamp:
            return entry[-1]
        log.info("refam: hashing %s (%.1f GB) once, to key cached maps and stored results by its content",
                 path, size / 1e9)
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            hasher.update(block)
    value = hasher.hexdigest()
    if memo_file is not None:
        _remember(memo_file, path, [*stamp, value])
    return value


def file_digest(path: str | os.PathLike) -> str:
    """sha256 hex of a file's content (remembered per version of the file; see the module docstring)."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    return _digest_of(real, (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))


def folder_identity(root: Path) -> dict[str, str]:
    """Every file of a folder (relative path -> content sha256); hidden files and folders (editor
    swaps, `.cache`) are left out: they do not change a model."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        files[rel.as_posix()] = file_digest(path)
    return files


def model_identity(pretrained: str, revision: str | None = None, offline: bool = False) -> dict:
    """What identifies a checkpoint: for a folder, where it is and every file's content; for a
    file, its content; otherwise (a hub id) the id and the commit it resolves to (`hub_revision`).
    `embedded:NAME` is the shipped folder."""
    root = Path(resolve_embedded(pretrained))
    if root.is_dir():
        return {"folder": str(root.resolve()), "files": folder_identity(root)}
    if root.is_file():
        return {"file": str(root.resolve()), "sha256": file_digest(root)}
    return {"hub_id": pretrained, "revision": hub_revision(pretrained, revision, offline)}


@functools.lru_cache(maxsize=64)
def hub_revision(repo_id: str, revision: str | None = None, offline: bool = False) -> str | None:
    """The commit a hub id (at `revision`: a branch, tag or commit; default the main branch)
    resolves to: the hub's answer when it can be reached (never asked when `offline` or
    `HF_HUB_OFFLINE` is set), else the commit the local hub cache holds for it; None when neither
    knows it (loading it would fail too). Remembered per process, so the identity a run keys its
    records by and the commit its extractor loads (`pinned_revision`) agree even if the branch
    moves on meanwhile."""
    from huggingface_hub import constants

    if not (offline or constants.HF_HUB_OFFLINE):
        try:
            from huggingface_hub import HfApi

            info = HfApi().model_info(repo_id, revision=revision)
            if info.sha:
                return info.sha
        except Exception as err:  # unreachable, gated, unknown: fall back to the cache
            log.debug("hub revision of %s from the hub failed (%s); trying the local cache", repo_id, err)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True)).name
    except Exception as err:
        log.debug("hub revision of %s not in the local cache (%s)", repo_id, err)
        return None


def pinned_revision(pretrained: str, revision: str | None = None, offline: bool = False) -> str | None:
    """The revision to load a hub id at, so that the weights loaded are those the identity names:
    the resolved commit (for a folder or file: `revision` as given)."""
    if os.path.exists(resolve_embedded(pretrained)):
        return revision
    return hub_revision(pretrained, revision, offline) or revision


path_identity = model_identity  # a file or folder that a setting names


# settings whose value, when it names no local file, is a hub id (diffusers' `pretrained`, SAM2's `model_id`)
HUB_SETTINGS = ("pretrained", "model_id")


def _names_a_path(value: object) -> bool:
    if isinstance(value, os.PathLike):
        return True
    if not isinstance(value, str) or not value:
        return False
    # a path has a separator or a suffix ("configs/sam2.yaml", "sam2.pt"); plain words never name files
    return ("/" in value or os.sep in value or bool(Path(value).suffix)) and os.path.exists(value)


def weights_identity(*components: object) -> dict:
    """The content of every existing file or folder that a component's public settings name
    (`pretrained`, a SAM2 `checkpoint` and `config`, ...), and the commit of every hub id they name
    (`pretrained`, `model_id`): what a config's text cannot tell apart."""
    out: dict[str, object] = {}
    for index, component in enumerate(components):
        if component is None or not hasattr(component, "__dict__"):
            continue
        # a component's recorded arguments (refam.config), as it now holds them; other objects' public attributes
        settings = component.settings() if isinstance(component, Configurable) else {
            name: value for name, value in vars(component).items() if not name.startswith("_")}
        for name, value in sorted(settings.items()):
            values = value if isinstance(value, (list, tuple)) else [value]
            for position, item in enumerate(values):
                if isinstance(item, str) and item.startswith(EMBEDDED_PREFIX):
                    item = resolve_embedded(item)  # a model shipped in the package is keyed by content too
                key = f"{index}.{type(component).__name__}.{name}" + (f"[{position}]" if values is value else "")
                if _names_a_path(item):
                    out[key] = model_identity(os.fspath(item))
                elif name in HUB_SETTINGS and isinstance(item, str) and item:
                    out[key] = model_identity(item, getattr(component, "revision", None),
                                              offline=bool(getattr(component, "local_files_only", False)))
    return out


# ------------------------------------------------------------------ samples
def image_identity(image: Image.Image) -> str:
    """sha256 of the decoded pixels with the mode and size (what the extractor sees)."""
    hasher = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    hasher.update(image.tobytes())
    return hasher.hexdigest()


def frames_identity(frames: Sequence[str]) -> list:
    """Each frame file's path and content sha256 (None for a missing file)."""
    out = []
    for frame in frames:
        try:
            out.append([str(frame), file_digest(frame)])
        except OSError:
            out.append([str(frame), None])
    return out


def mask_identity(mask) -> str | None:
    """sha256 of a boolean mask with its shape (None for no mask)."""
    if mask is None:
        return None
    array = np.asarray(mask, dtype=bool)
    hasher = hashlib.sha256(f"{array.shape}".encode())
    hasher.update(np.packbits(array, axis=None).tobytes())
    return hasher.hexdigest()


def _field_identity(value: object) -> object:
    if isinstance(value, np.ndarray):
        return mask_identity(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_field_identity(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _field_identity(v) for k, v in value.items()}
    return repr(value)


def expression_identity(expression) -> dict:
    """Every field of an expression (id, text, ground-truth and void masks, object ids...)."""
    if dataclasses.is_dataclass(expression):
        fields = {f.name: getattr(expression, f.name) for f in dataclasses.fields(expression)}
    else:
        fields = {k: v for k, v in vars(expression).items() if not k.startswith("_")}
    return {"class": type(expression).__name__, **{k: _field_identity(v) for k, v in sorted(fields.items())}}


def truth_identity(video) -> object:
    """A video's ground truth: the truth's own `identity()` when it gives one (the files it reads),
    else every mask it gives each expression, frame by frame."""
    truth = video.truth
    if truth is None:
        return None
    own = getattr(truth, "identity", None)
    own = own() if callable(own) else None
    if own is not None:
        return own
    hasher = hashlib.sha256()
    for expression in video.expressions:
        for index in range(len(video.frames)):
            hasher.update(f"{expression.expression_id}:{index}:{mask_identity(truth.mask(expression, index))};".encode())
    return hasher.hexdigest()


def sample_identity(sample) -> str:
    """One sample's inputs, as a sha256 hex: the image's pixels (a video: its frame files and
    names), the caption, every expression's fields (texts, ids, ground-truth masks) and a video's
    ground truth. A stored result is reused only for the same inputs."""
    payload: dict[str, object] = {"sample_id": str(sample.sample_id), "caption": getattr(sample, "caption", "")}
    if hasattr(sample, "frames"):
        payload.update(frames=frames_identity(sample.frames), names=list(sample.names), truth=truth_identity(sample))
    else:
        payload["image"] = image_identity(sample.image)
    payload["expressions"] = [expression_identity(e) for e in sample.expressions]
    return digest(payload)


def numbers_key(identity: dict) -> dict:
    """The compact form of a numbers identity (`RefAMPipeline.numbers_identity`) that every record
    stores: each part kept where it is a text or a flat mapping of texts (the library versions, so a
    warning can name the one that changed), else its digest (the weights' every file)."""
    def flat(value: object) -> bool:
        return isinstance(value, dict) and all(isinstance(v, (str, type(None))) for v in value.values())

    return {str(k): v if v is None or isinstance(v, str) or flat(v) else digest(v) for k, v in identity.items()}


def describe_change(stored: object, current: object, prefix: str = "") -> str:
    """Which parts of two identities (nested dicts) differ, for a warning: `libraries.torch
    2.14.1 -> 2.15.0, code`; at most a few parts, each named by its path."""
    if stored == current:
        return ""
    if not (isinstance(stored, dict) and isinstance(current, dict)):
        if isinstance(stored, (str, int, float, type(None))) and isinstance(current, (str, int, float, type(None))) \
                and len(str(stored)) <= 24 and len(str(current)) <= 24:
            return f"{prefix or 'value'} {stored} -> {current}"
        return prefix or "value"
    parts = [describe_change(stored.get(k), current.get(k), f"{prefix}.{k}" if prefix else str(k))
             for k in sorted(set(stored) | set(current), key=str) if stored.get(k) != current.get(k)]
    shown = ", ".join(parts[:4])
    return shown + (f" and {len(parts) - 4} more" if len(parts) > 4 else "")
