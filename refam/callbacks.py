"""What a `refam test` run keeps besides its metrics: per-expression records (`ExpressionRecords`),
each sample's stored result (`ResultStore`, written by `ResultStoreCallback`) and the masks
(`MaskWriter`).

Every file is named by `refam.io.names.safe_name` (a dataset's name per `/`-separated part, see
`dataset_folder`; sample, expression and frame ids whole), so ids that collide once made file-safe
never share a file and nothing escapes the folder a user named. Each output folder is checked in
`setup`, before the model loads: a folder that is a file, not writable or on a full disk is one
line naming its config key. A disk that fills during the run is one line naming the file; what was
written before stays.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from refam.errors import ConfigError, RefamError
from refam.identity import RECORD_FORMAT, describe_change, numbers_key
from refam.io import files
from refam.io.names import safe_name
from refam.records import OtherFormat, RecordError, SampleRecord

log = logging.getLogger(__name__)

# what a full, read-only or forbidden output location raises
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class OutputError(RefamError, OSError):
    """An output that cannot be written (a full disk, a read-only file system)."""


def dataset_folder(name: str) -> str:
    """A dataset's name as one folder name: each `/`-separated part made safe (`safe_name`) and the
    parts joined by `-` (`refcoco/val` -> `refcoco-val`)."""
    return "-".join(safe_name(part) for part in str(name).split("/"))


def check_folder(folder: Path, key: str) -> None:
    """Refuse, in one line naming the config `key`, a folder refam could not write into: one that
    is a file or under one, read-only, or on a full disk. The folder is made if missing."""
    def refuse(why: str) -> ConfigError:
        section, field = key.split(".")
        return ConfigError(f"cannot write into {folder}: {why}; set --{key} to a folder you can write",
                           field=field).at(section)

    if folder.exists() and not folder.is_dir():
        raise refuse("it is a file, not a folder")
    probe = folder / f".refam-write-check.{os.getpid()}"  # one per process: DDP ranks check at once
    try:
        folder.mkdir(parents=True, exist_ok=True)
        files.write_atomic(probe, b"refam")  # what every output goes through: a full disk fails here too
        probe.unlink(missing_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise refuse("a part of the path is a file, not a folder") from None
    except OSError as err:
        raise refuse(err.strerror or str(err)) from err


def write_output(path: Path, data: bytes) -> Path:
    """`refam.io.files.write_atomic`, a full or read-only disk made one line naming the file; returns the path."""
    try:
        files.write_atomic(path, data)
        return path
    except OSError as err:
        if err.errno not in _OUTPUT_ERRNOS:
            raise
        raise OutputError(f"cannot write {path}: {err.strerror or err}; free space or choose another folder "
                          "(what was written before is kept, and a rerun reuses it)") from err


class ExpressionRecords(L.Callback):
    """One JSON line per expression: point, IoU, point hit, kept and dropped tokens, global
    attention sinks with their category. Each process writes its own file
    (`<log dir>/expressions/<dataset>.rank<R>.jsonl`), so nothing is gathered or lost across GPUs.

    Args:
        folder: where to write; default the logger's run folder.
    """

    def __init__(self, folder: str | None = None) -> None:
        self.folder = folder
        self._files: dict[int, IO[str]] = {}
        self._root: Path | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        # `trainer.log_dir` is a broadcast: read it here, where every rank is, never per batch
        # (under DDP ranks run different numbers of batches, a rank none of a small split)
        self._root = Path(self.folder or trainer.log_dir or trainer.default_root_dir) / "expressions"
        if stage == "test":
            check_folder(self._root, "records.folder")

    def _open(self, trainer: L.Trainer, pl_module, dataloader_idx: int) -> IO[str]:
        if dataloader_idx not in self._files:
            root = self._root or Path(self.folder or trainer.log_dir or trainer.default_root_dir) / "expressions"
            root.mkdir(parents=True, exist_ok=True)
            name = dataset_folder(pl_module.dataset_names[dataloader_idx])
            self._files[dataloader_idx] = open(root / f"{name}.rank{trainer.global_rank}.jsonl", "w", encoding="utf-8")
        return self._files[dataloader_idx]

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        file = self._open(trainer, pl_module, dataloader_idx)
        texts = {e.expression_id: e.text for item in batch for e in getattr(item, "expressions", [])}
        try:
            for result in outputs or []:
                for p in result.predictions:
                    record = {
                        "sample_id": result.sample_id,
                        "expression_id": p.expression_id,
                        "expression": texts.get(p.expression_id),
                        "point": [round(p.point[0], 2), round(p.point[1], 2)],
                        "iou": p.iou,
                        "point_hit": p.point_hit,
                        "kept_tokens": p.kept_tokens,
                        "dropped_tokens": p.dropped_tokens,
                        "sinks": [{"token": t, "category": c} for t, c in zip(p.sinks, p.sink_categories)],
                    }
                    file.write(json.dumps(record, ensure_ascii=False) + "\n")
            file.flush()  # a run stopped midway keeps what it computed
        except OSError as err:
            if err.errno not in _OUTPUT_ERRNOS:
                raise
            raise OutputError(f"cannot write {file.name}: {err.strerror or err}; free space or set --records.folder "
                              "to another folder") from err

    def on_test_end(self, trainer, pl_module) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()


def config_fingerprints(config: dict[str, Any]) -> list[str]:
    """One fingerprint per test dataset of a resolved `refam test` config (a plain dict): a hash of
    everything that can change that dataset's numbers (the model, the seed, the trainer's precision
    and the dataset's own settings) and of nothing else (devices, logger, callbacks, workers, the
    other datasets), so a rerun of the same config on more GPUs still reuses its results."""
    data = dict(config.get("data") or {})
    init = data.get("init_args") if isinstance(data.get("init_args"), dict) else data
    datasets = init.get("datasets") or []
    datasets = datasets if isinstance(datasets, list) else [datasets]
    model = config.get("model")
    if isinstance(model, dict):  # where the token-map cache lives changes no number
        model = {k: v for k, v in model.items() if k != "map_cache"}
    common = {
        "model": model,
        "seed_everything": config.get("seed_everything"),
        "precision": (config.get("trainer") or {}).get("precision"),
        "data": {k: v for k, v in init.items() if k not in ("datasets", "num_workers")},
    }
    return [hashlib.sha256(json.dumps({"format": RECORD_FORMAT, **common, "dataset": d}, sort_keys=True,
                                      default=str).encode()).hexdigest()[:20] for d in datasets]


class ResultStore:
    """Resumable evaluation: each sample's record (`refam.records.SampleRecord`) is kept as one
    JSON file, `<folder>/<dataset>/<sample id>.json`, written atomically (a stopped run leaves only
    complete files). A rerun of the same config into the same folder reads a stored sample back
    (`lookup`) instead of running it (no DiT forward, no segmenter) and feeds the stored numbers and
    masks to the metrics and the writers, so its scores and outputs equal an uninterrupted run's.

    A plain object: `RefAMModule(result_store=...)` looks samples up and queues the records of the
    samples it scores; `ResultStoreCallback` (which the module hands to the trainer) writes them
    (`put`) when each batch ends and reports at the end. `refam test` passes its `--results` store.

    A record holds what produced it: the config's fingerprint (`config_fingerprints`), the
    identity of the weights, model files and code (`RefAMPipeline.numbers_identity`), the sample's
    inputs (`refam.identity.sample_identity`: pixels, caption, expression ids and texts,
    ground-truth masks), and a digest of its own content. A record made with other settings,
    weights or code is never reused (said once per dataset); nor is one of a sample whose inputs
    changed since, nor one that is malformed or whose content does not match its digest (said per
    file): the sample is recomputed and its file replaced. Each process reads and writes only the
    samples of its own shard.

    Args:
        folder: where to keep the results; default `<logger save_dir or trainer.default_root_dir>/results`
            (not the versioned log folder, so that a rerun finds them).
        resume: reuse stored results (default); `false` recomputes every sample and overwrites them.
    """

    def __init__(self, folder: str | None = None, resume: bool = True) -> None:
        self.folder, self.resume = folder, resume
        # set by the CLI from the resolved config (one per test dataset); without them nothing is reused
        self.fingerprints: list[str] | None = None
        self.reused = self.computed = 0
        self.root: Path | None = None
        self.numbers: dict | None = None  # numbers_key of the module's numbers_identity(), set in setup
        self._warned: set[str] = set()

    def default_root(self, trainer: L.Trainer) -> Path:
        if self.folder:
            return Path(self.folder)
        save_dir = getattr(trainer.logger, "save_dir", None) if trainer.logger is not None else None
        return Path(save_dir or trainer.default_root_dir) / "results"

    def setup(self, trainer: L.Trainer, module: Any, stage: str = "test") -> None:
        """Start a run: where the records go, and the identity of the module's weights and code."""
        self.root = self.default_root(trainer)
        self.reused = self.computed = 0
        self._warned.clear()
        identity = getattr(module, "numbers_identity", None)
        self.numbers = numbers_key(identity()) if callable(identity) else None
        if self.resume and self.fingerprints is None:
            rank_zero_info("refam: results: no config fingerprint (not run through `refam test`); "
                           "stored results are written but not reused")

    def fingerprint(self, dataloader_idx: int) -> str | None:
        if self.fingerprints is None or dataloader_idx >= len(self.fingerprints):
            return None
        return self.fingerprints[dataloader_idx]

    def path(self, dataset: str, sample_id: str) -> Path:
        if self.root is None:
            raise RuntimeError("ResultStore.setup has not run")
        return self.root / dataset_folder(dataset) / f"{safe_name(sample_id)}.json"

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def lookup(self, dataloader_idx: int, dataset: str, sample_id: str, inputs: str | None,
               accept: Callable[[SampleRecord], bool] | None = None) -> SampleRecord | None:
        """The stored record of a sample when it was made from the same `inputs`
        (`refam.identity.sample_identity`) with the same settings, weights and code and its content
        matches its digest, else None; also None where `accept(record)` is false (a record that
        lacks what the scores now need)."""
        fingerprint = self.fingerprint(dataloader_idx)
        if not self.resume or fingerprint is None or inputs is None:
            return None
        path = self.path(dataset, sample_id)
        if not path.is_file():
            return None
        try:
            record = SampleRecord.loads(path.read_text(encoding="utf-8"))
        except OtherFormat as err:
            self._warn_once(dataset, "refam: results: %s holds results in another record format (%s); recomputing "
                            "and replacing them", path.parent, err)
            return None
        except (OSError, UnicodeDecodeError, RecordError) as err:
            self._warn_once(str(path), "refam: results: cannot replay %s (%s); recomputing sample %s",
                            path, err, sample_id)
            return None
        if record.fingerprint != fingerprint:
            self._warn_once(dataset, "refam: results: %s holds results computed with other settings (config fingerprint "
                            "%s, now %s); recomputing and replacing them", path.parent, record.fingerprint, fingerprint)
            return None
        if record.numbers != self.numbers:
            self._warn_once(dataset, "refam: results: %s holds results computed with other weights, code or libraries "
                            "(%s differ); recomputing and replacing them", path.parent,
                            describe_change(record.numbers, self.numbers) or "their identity")
            return None
        if record.sample_id != str(sample_id) or record.dataset != dataset:
            return None
        if record.inputs != inputs:
            log.warning("refam: results: sample %s of %s changed since its result was stored (its image, caption, "
                        "expressions or ground-truth masks differ); recomputing it", sample_id, dataset)
            return None
        if accept is not None and not accept(record):
            return None
        self.reused += 1
        return record

    def put(self, dataloader_idx: int, dataset: str, record: SampleRecord) -> SampleRecord:
        """Store a sample scored now (replacing an older record of it); returns the record as written."""
        record = record.stamped(dataset=dataset, fingerprint=self.fingerprint(dataloader_idx), numbers=self.numbers,
                                format=RECORD_FORMAT)
        write_output(self.path(dataset, record.sample_id), record.dumps().encode())
        self.computed += 1
        return record

    def report(self) -> str:
        return f"refam: results: computed {self.computed} sample(s), reused {self.reused} stored in {self.root}"


class ResultStoreCallback(L.Callback):
    """A `ResultStore` in a Lightning run: opens it in `setup` (checking its folder before the model
    loads), writes the records the module queued (`queue`) when each batch ends, and reports at the
    end. `RefAMModule` hands it to the trainer (`configure_callbacks`)."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self._pending: list[tuple[int, str, SampleRecord]] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.store.setup(trainer, pl_module, stage)
        self._pending.clear()
        if stage == "test":
            check_folder(self.store.root, "results.folder")

    def queue(self, dataloader_idx: int, dataset: str, record: SampleRecord) -> None:
        """A sample scored now: its record is written when the batch ends."""
        self._pending.append((dataloader_idx, dataset, record))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        pending, self._pending = self._pending, []
        for index, dataset, record in pending:
            self.store.put(index, dataset, record)

    def on_test_end(self, trainer, pl_module) -> None:
        message = self.store.report()
        if trainer.world_size > 1:
            message += f" (rank {trainer.global_rank})"
        log.info(message)
        print(message, flush=True)


class MaskWriter(BasePredictionWriter):
    """Saves every predicted mask as a PNG while `refam test` (or `refam predict` through Lightning)
    runs: `<folder>/<dataset>/<sample id>/<expression id>.png` (0/255, the image's size), plus
    `<expression id>~overlay.png` (mask and argmax star) when `overlay` is set (`~` never occurs in
    an id kept as it is, so an overlay never shares a name with a mask). Files are written
    atomically, so a stopped run leaves only complete masks. A sample replayed from the result store
    is written exactly as a fresh run writes it.

    Videos are written frame by frame as the segmenter makes them, in the servers' submission layout:
    `<folder>/<dataset>/<video>/<expression id>/<frame>.png` (MeViS, Ref-YouTube-VOS; 0/255). At the
    end of the run each video dataset is zipped as its server expects (`<folder>/<dataset>.zip`,
    rooted at the dataset's `submission_root`: "Annotations" for Ref-YouTube-VOS, none for MeViS).
    Datasets whose expressions belong to annotator sets (Ref-DAVIS17) also get one palette PNG per
    frame and set, `<folder>/<dataset>-davis/anno<k>/<video>/<frame>.png` (object id = palette index),
    the layout the DAVIS 2017 evaluation and `refam score` read. Every name is made by `safe_name`
    (datasets by `dataset_folder`): the official ids are safe and kept as they are.

    Args:
        save: write the masks (off by default: a benchmark run writes tens of thousands).
        folder: where to write; default `<log dir>/masks`.
        overlay: also write the overlay pictures.
    """

    def __init__(self, save: bool = False, folder: str | None = None, overlay: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.save, self.folder, self.overlay = save, folder, overlay
        self._folder: Path | None = None

    def _root(self, trainer: L.Trainer) -> Path:
        # resolved once in setup: `trainer.log_dir` is a broadcast, which ranks writing different
        # numbers of batches must not call per batch
        return self._folder or Path(self.folder or Path(trainer.log_dir or trainer.default_root_dir) / "masks")

    def _dataset(self, dataloader_idx: int) -> str:
        names = getattr(self._trainer.lightning_module, "dataset_names", [])
        name = names[dataloader_idx] if dataloader_idx < len(names) else f"test{dataloader_idx}"
        return dataset_folder(name)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer
        self._folder = Path(self.folder or Path(trainer.log_dir or trainer.default_root_dir) / "masks")
        if not self.save:
            return
        check_folder(self._folder, "masks.folder")
        register = getattr(pl_module, "add_mask_writer", None)
        if callable(register):  # the module hands each video mask to the writers as it is made
            register(self)

    # ------------------------------------------------------------------ videos
    def write_video_mask(self, dataloader_idx: int, video, expression, index: int, mask) -> Path:
        """One video mask, as the segmenter makes it or a replayed record holds it; returns its file."""
        from refam.visualize import mask_image

        folder = self._root(self._trainer) / self._dataset(dataloader_idx) / safe_name(video.sample_id)
        path = folder / safe_name(expression.expression_id) / f"{safe_name(video.names[index])}.png"
        return write_output(path, files.png_bytes(mask_image(mask)))

    def _write_davis_palettes(self, dataset_root: Path, davis_root: Path, video) -> None:
        """Merge a video's per-expression masks into one palette PNG per frame and annotator set."""
        import numpy as np
        from PIL import Image

        from refam.visualize import DAVIS_PALETTE

        sets: dict[int, list] = {}
        for expression in video.expressions:
            if getattr(expression, "annotator", None) is not None and expression.object_ids:
                sets.setdefault(expression.annotator, []).append(expression)
        video_folder = safe_name(video.sample_id)
        for annotator, expressions in sets.items():
            for name in video.names:
                merged = None
                for expression in expressions:  # later objects overwrite earlier ones where masks overlap
                    path = dataset_root / video_folder / safe_name(expression.expression_id) / f"{safe_name(name)}.png"
                    if not path.exists():
                        continue
                    with Image.open(path) as image:
                        mask = np.asarray(image) > 0
                    merged = np.zeros(mask.shape, dtype=np.uint8) if merged is None else merged
                    merged[mask] = expression.object_ids[0]
                if merged is not None:
                    picture = Image.fromarray(merged, mode="P")
                    picture.putpalette(DAVIS_PALETTE)
                    write_output(davis_root / f"anno{annotator}" / video_folder / f"{safe_name(name)}.png",
                                 files.png_bytes(picture))

    def on_test_end(self, trainer, pl_module) -> None:
        if not self.save:
            return
        import zipfile

        datasets = getattr(trainer.datamodule, "datasets", None) or []
        for index, dataset in enumerate(datasets):
            if not getattr(dataset, "is_video", False):
                continue
            root = self._root(trainer)
            name = self._dataset(index)
            folder = root / name
            if not folder.is_dir() or trainer.global_rank != 0:
                continue
            prefix = getattr(dataset, "submission_root", "")
            archive = root / f"{name}.zip"
            try:
                with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
                    for png in sorted(folder.rglob("*.png")):
                        bundle.write(png, str(Path(prefix) / png.relative_to(folder)))
            except OSError as err:
                if err.errno not in _OUTPUT_ERRNOS:
                    raise
                raise OutputError(f"cannot write {archive}: {err.strerror or err}; free space or set --masks.folder "
                                  "to another folder") from err

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.save:
            return
        from refam.visualize import mask_image, overlay

        root = self._root(trainer) / self._dataset(dataloader_idx)
        images = {item.sample_id: item.image for item in batch if hasattr(item, "image")}
        videos = {item.sample_id: item for item in batch if hasattr(item, "frames")}
        for result in prediction or []:
            if result.sample_id in videos:  # video masks were written frame by frame (write_video_mask)
                self._write_davis_palettes(root, Path(f"{root}-davis"), videos[result.sample_id])
                continue
            folder = root / safe_name(result.sample_id)
            for p in result.predictions:
                name = safe_name(p.expression_id)
                write_output(folder / f"{name}.png", files.png_bytes(mask_image(p.mask)))
                if self.overlay:
                    picture = overlay(images[result.sample_id], p.mask, p.point)
                    write_output(folder / f"{name}~overlay.png", files.png_bytes(picture))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.write_on_batch_end(trainer, pl_module, outputs, None, batch, batch_idx, dataloader_idx)
