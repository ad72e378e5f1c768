"""Lightning callbacks that keep per-expression results (records, masks) of a `refam test` run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter


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

    def _open(self, trainer: L.Trainer, pl_module, dataloader_idx: int) -> IO[str]:
        if dataloader_idx not in self._files:
            root = Path(self.folder or trainer.log_dir or trainer.default_root_dir) / "expressions"
            root.mkdir(parents=True, exist_ok=True)
            name = pl_module.dataset_names[dataloader_idx].replace(os.sep, "-")
            self._files[dataloader_idx] = open(root / f"{name}.rank{trainer.global_rank}.jsonl", "w", encoding="utf-8")
        return self._files[dataloader_idx]

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        file = self._open(trainer, pl_module, dataloader_idx)
        texts = {e.expression_id: e.text for item in batch for e in getattr(item, "expressions", [])}
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

    def on_test_end(self, trainer, pl_module) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()


class MaskWriter(BasePredictionWriter):
    """Saves every predicted mask as a PNG while `refam test` (or `refam predict` through Lightning)
    runs: `<folder>/<dataset>/<sample id>/<expression id>.png` (0/255, the image's size), plus
    `<expression id>_overlay.png` (mask and argmax star) when `overlay` is set. Files are written
    atomically, so a stopped run leaves only complete masks.

    Videos are written frame by frame as the segmenter makes them, in the servers' submission layout:
    `<folder>/<dataset>/<video>/<expression id>/<frame>.png` (MeViS, Ref-YouTube-VOS; 0/255). At the
    end of the run each video dataset is zipped as its server expects (`<folder>/<dataset>.zip`,
    rooted at the dataset's `submission_root`: "Annotations" for Ref-YouTube-VOS, none for MeViS).
    Datasets whose expressions belong to annotator sets (Ref-DAVIS17) also get one palette PNG per
    frame and set, `<folder>/<dataset>-davis/anno<k>/<video>/<frame>.png` (object id = palette index),
    the layout the DAVIS 2017 evaluation and `refam score` read.

    Args:
        save: write the masks (off by default: a benchmark run writes tens of thousands).
        folder: where to write; default `<log dir>/masks`.
        overlay: also write the overlay pictures.
    """

    def __init__(self, save: bool = False, folder: str | None = None, overlay: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.save, self.folder, self.overlay = save, folder, overlay

    def _root(self, trainer: L.Trainer) -> Path:
        return Path(self.folder or Path(trainer.log_dir or trainer.default_root_dir) / "masks")

    @staticmethod
    def _dataset(pl_module, dataloader_idx: int) -> str:
        names = getattr(pl_module, "dataset_names", [])
        name = names[dataloader_idx] if dataloader_idx < len(names) else f"test{dataloader_idx}"
        return name.replace(os.sep, "-")

    # ------------------------------------------------------------------ videos
    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer
        if self.save and hasattr(pl_module, "video_mask_sinks") and self._write_video_mask not in pl_module.video_mask_sinks:
            pl_module.video_mask_sinks.append(self._write_video_mask)

    def _write_video_mask(self, dataloader_idx: int, video, expression, index: int, mask) -> None:
        from refam.visualize import mask_image, save_png

        pl_module = self._trainer.lightning_module
        folder = self._root(self._trainer) / self._dataset(pl_module, dataloader_idx) / video.sample_id
        save_png(mask_image(mask), folder / expression.expression_id.replace(os.sep, "-") / f"{video.names[index]}.png")

    def _write_davis_palettes(self, dataset_root: Path, davis_root: Path, video) -> None:
        """Merge a video's per-expression masks into one palette PNG per frame and annotator set."""
        import numpy as np
        from PIL import Image

        from refam.visualize import png_bytes, write_atomic

        sets: dict[int, list] = {}
        for expression in video.expressions:
            if getattr(expression, "annotator", None) is not None and expression.object_ids:
                sets.setdefault(expression.annotator, []).append(expression)
        for annotator, expressions in sets.items():
            for name in video.names:
                merged = None
                for expression in expressions:  # later objects overwrite earlier ones where masks overlap
                    path = dataset_root / video.sample_id / expression.expression_id / f"{name}.png"
                    if not path.exists():
                        continue
                    with Image.open(path) as image:
                        mask = np.asarray(image) > 0
                    merged = np.zeros(mask.shape, dtype=np.uint8) if merged is None else merged
                    merged[mask] = expression.object_ids[0]
                if merged is not None:
                    picture = Image.fromarray(merged, mode="P")
                    picture.putpalette(DAVIS_PALETTE)
                    write_atomic(davis_root / f"anno{annotator}" / video.sample_id / f"{name}.png", png_bytes(picture))

    def on_test_end(self, trainer, pl_module) -> None:
        if not self.save:
            return
        import zipfile

        datasets = getattr(trainer.datamodule, "datasets", None) or []
        for index, dataset in enumerate(datasets):
            if not getattr(dataset, "is_video", False):
                continue
            root = self._root(trainer)
            name = self._dataset(pl_module, index)
            folder = root / name
            if not folder.is_dir() or trainer.global_rank != 0:
                continue
            prefix = getattr(dataset, "submission_root", "")
            archive = root / f"{name}.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
                for png in sorted(folder.rglob("*.png")):
                    bundle.write(png, str(Path(prefix) / png.relative_to(folder)))

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.save:
            return
        from refam.visualize import mask_image, overlay, save_png

        root = self._root(trainer) / self._dataset(pl_module, dataloader_idx)
        images = {item.sample_id: item.image for item in batch if hasattr(item, "image")}
        videos = {item.sample_id: item for item in batch if hasattr(item, "frames")}
        for result in prediction or []:
            if result.sample_id in videos:  # video masks were written frame by frame (_write_video_mask)
                self._write_davis_palettes(root, Path(f"{root}-davis"), videos[result.sample_id])
                continue
            folder = root / result.sample_id.replace(os.sep, "-")
            for p in result.predictions:
                name = p.expression_id.replace(os.sep, "-")
                save_png(mask_image(p.mask), folder / f"{name}.png")
                if self.overlay:
                    save_png(overlay(images[result.sample_id], p.mask, p.point), folder / f"{name}_overlay.png")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.write_on_batch_end(trainer, pl_module, outputs, None, batch, batch_idx, dataloader_idx)


def _davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC colour map (bit-interleaved), 256 RGB triples."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


DAVIS_PALETTE = _davis_palette()
