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

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.save:
            return
        from refam.visualize import mask_image, overlay, save_png

        names = getattr(pl_module, "dataset_names", [])
        dataset = names[dataloader_idx] if dataloader_idx < len(names) else f"test{dataloader_idx}"
        root = self._root(trainer) / dataset.replace(os.sep, "-")
        images = {item.sample_id: item.image for item in batch if hasattr(item, "image")}
        for result in prediction or []:
            folder = root / result.sample_id.replace(os.sep, "-")
            for p in result.predictions:
                name = p.expression_id.replace(os.sep, "-")
                save_png(mask_image(p.mask), folder / f"{name}.png")
                if self.overlay:
                    save_png(overlay(images[result.sample_id], p.mask, p.point), folder / f"{name}_overlay.png")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.write_on_batch_end(trainer, pl_module, outputs, None, batch, batch_idx, dataloader_idx)
