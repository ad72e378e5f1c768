"""The Lightning callbacks of a `refam test` run: per-expression records (`ExpressionRecords`),
each sample's stored result written as the run goes (`ResultStoreCallback`, around
`refam.evaluation.store.ResultStore`) and the masks (`MaskWriter`). Names and folder checks:
`refam.evaluation.outputs`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from refam.evaluation.outputs import OutputError, check_folder, dataset_folder, write_output
from refam.evaluation.records import SampleRecord
from refam.evaluation.store import ResultStore
from refam.io import files
from refam.io.names import safe_name

log = logging.getLogger(__name__)

class ExpressionRecords(L.Callback):
    """One JSON line per expression: point, IoU, point hit, kept and dropped tokens, global
    attention sinks with their category, warnings (`Prediction.warnings`). Each process writes its own file
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
                        "warnings": p.warnings,
                        "no_referent": p.no_referent,
                    }
                    file.write(json.dumps(record, ensure_ascii=False) + "\n")
            file.flush()  # a run stopped midway keeps what it computed
        except OSError as err:
            if err.errno not in files.WRITE_ERRNOS:
                raise
            raise OutputError(f"cannot write {file.name}: {err.strerror or err}; free space or set --records.folder "
                              "to another folder") from err

    def on_test_end(self, trainer, pl_module) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()


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
                if err.errno not in files.WRITE_ERRNOS:
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
