"""Lightning callbacks that keep per-expression results of a `refam test` run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

import lightning as L


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
