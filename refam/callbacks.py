"""Lightning callbacks that keep per-expression results (records, masks) of a `refam test` run."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from collections.abc import Callable
from typing import IO, Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from refam.identity import RECORD_FORMAT, digest

log = logging.getLogger(__name__)

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

    def _open(self, trainer: L.Trainer, pl_module, dataloader_idx: int) -> IO[str]:
        if dataloader_idx not in self._files:
            root = self._root or Path(self.folder or trainer.log_dir or trainer.default_root_dir) / "expressions"
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


def _stem(sample_id: str) -> str:
    """A sample id as a file name: path separators become "-"; the id itself is kept in the record."""
    return str(sample_id).replace(os.sep, "-").replace("/", "-")


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


class ResultStore(L.Callback):
    """Resumable evaluation: each sample's per-expression results are written as soon as they are
    scored, one JSON file per sample, `<folder>/<dataset>/<sample id>.json`, atomically (a stopped
    run leaves only complete files). A rerun of the same config into the same folder reads a stored
    sample back instead of running it (no DiT forward, no segmenter) and feeds the stored numbers to
    the metrics, so its final scores equal an uninterrupted run's exactly.

    The store is given to the module (`RefAMModule(result_store=...)`; `refam test` passes its
    `--results` store), which looks each sample up (`lookup`) and queues the record of each sample
    it scored (`queue`); the store writes them when the batch ends and reports at the end of the run.

    A record holds what produced it: the config's fingerprint (`config_fingerprints`), the
    identity of the weights and model files the settings name and of the code's version
    (`RefAMPipeline.numbers_identity`), and the sample's inputs (`refam.identity.sample_identity`:
    pixels, caption, expression ids and texts, ground-truth masks). A record made with other
    settings, weights or code is never reused (said once per dataset); nor is one of a sample whose
    inputs changed since (said per sample): the sample is recomputed and its file replaced. Each
    process reads and writes only the samples of its own shard.

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
        self._root: Path | None = None
        self._warned: set[str] = set()
        self.numbers: str | None = None  # digest of the module's numbers_identity(), set in setup
        # (dataloader index, dataset, record) of the samples scored in the current batch, written at its end
        self._pending: list[tuple[int, str, dict]] = []

    def root(self, trainer: L.Trainer) -> Path:
        if self.folder:
            return Path(self.folder)
        save_dir = getattr(trainer.logger, "save_dir", None) if trainer.logger is not None else None
        return Path(save_dir or trainer.default_root_dir) / "results"

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._root = self.root(trainer)
        self.reused = self.computed = 0
        self._warned.clear()
        identity = getattr(pl_module, "numbers_identity", None)
        self.numbers = digest(identity()) if callable(identity) else None
        self._pending.clear()
        if self.resume and self.fingerprints is None:
            rank_zero_info("refam: results: no config fingerprint (not run through `refam test`); "
                           "stored results are written but not reused")

    def fingerprint(self, dataloader_idx: int) -> str | None:
        if self.fingerprints is None or dataloader_idx >= len(self.fingerprints):
            return None
        return self.fingerprints[dataloader_idx]

    def path(self, dataset: str, sample_id: str) -> Path:
        assert self._root is not None, "ResultStore.setup has not run"
        return self._root / dataset.replace(os.sep, "-") / f"{_stem(sample_id)}.json"

    def lookup(self, dataloader_idx: int, dataset: str, sample_id: str, inputs: str | None,
               accept: Callable[[dict], bool] | None = None) -> dict | None:
        """The stored record of a sample when it was made from the same `inputs`
        (`refam.identity.sample_identity`) with the same settings, weights and code, else None;
        also None where `accept(record)` is false (a record that lacks what the scores now need)."""
        fingerprint = self.fingerprint(dataloader_idx)
        if not self.resume or fingerprint is None or inputs is None:
            return None
        path = self.path(dataset, sample_id)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # written atomically, so only a foreign file can be broken
            log.warning("refam: results: unreadable %s (%s); recomputing sample %s", path, err, sample_id)
            return None
        differs = [what for what, same in (
            ("record format", record.get("format") == RECORD_FORMAT),
            ("settings", record.get("fingerprint") == fingerprint),
            ("weights, model files or code version", record.get("numbers") == self.numbers),
        ) if not same]
        if differs:
            if dataset not in self._warned:
                self._warned.add(dataset)
                log.warning("refam: results: %s holds results computed with other %s (config fingerprint %s, now %s); "
                            "recomputing and replacing them", path.parent, " and ".join(differs),
                            record.get("fingerprint"), fingerprint)
            return None
        if str(record.get("sample_id")) != str(sample_id):
            return None
        if record.get("inputs") != inputs:
            log.warning("refam: results: sample %s of %s changed since its result was stored (its image, caption, "
                        "expressions or ground-truth masks differ); recomputing it", sample_id, dataset)
            return None
        if accept is not None and not accept(record):
            return None
        self.reused += 1
        return record

    def queue(self, dataloader_idx: int, dataset: str, record: dict) -> None:
        """A sample scored now: its record is written when the batch ends (`save`)."""
        self._pending.append((dataloader_idx, dataset, record))

    def save(self, dataloader_idx: int, dataset: str, record: dict) -> None:
        from refam.io.files import write_atomic

        record = {"format": RECORD_FORMAT, "fingerprint": self.fingerprint(dataloader_idx), "numbers": self.numbers,
                  "dataset": dataset, **record}
        write_atomic(self.path(dataset, record["sample_id"]),
                     (json.dumps(record, ensure_ascii=False) + "\n").encode())
        self.computed += 1

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        # the module queues the records of the samples it scored in this batch (never the reused ones)
        masks = next((c for c in trainer.callbacks if isinstance(c, MaskWriter) and c.save), None)
        for index, dataset, record in self._pending:
            if masks is not None and not record.get("video"):
                folder = masks._root(trainer) / MaskWriter._dataset(pl_module, index) / _stem(record["sample_id"])
                for expression in record["expressions"]:
                    expression["mask"] = str(folder / f"{_stem(expression['expression_id'])}.png")
            self.save(index, dataset, record)
        self._pending.clear()

    def on_test_end(self, trainer, pl_module) -> None:
        where = self._root
        message = f"refam: results: computed {self.computed} sample(s), reused {self.reused} stored in {where}"
        if trainer.world_size > 1:
            message += f" (rank {trainer.global_rank})"
        log.info(message)
        print(message, flush=True)


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
        self._folder: Path | None = None

    def _root(self, trainer: L.Trainer) -> Path:
        # resolved once in setup: `trainer.log_dir` is a broadcast, which ranks writing different
        # numbers of batches must not call per batch
        return self._folder or Path(self.folder or Path(trainer.log_dir or trainer.default_root_dir) / "masks")

    @staticmethod
    def _dataset(pl_module, dataloader_idx: int) -> str:
        names = getattr(pl_module, "dataset_names", [])
        name = names[dataloader_idx] if dataloader_idx < len(names) else f"test{dataloader_idx}"
        return name.replace(os.sep, "-")

    # ------------------------------------------------------------------ videos
    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer
        self._folder = Path(self.folder or Path(trainer.log_dir or trainer.default_root_dir) / "masks")

    def write_video_mask(self, dataloader_idx: int, video, expression, index: int, mask) -> None:
        """One video mask, as the segmenter makes it (RefAMModule hands each to the writers that save)."""
        from refam.visualize import mask_image
        from refam.io.files import save_png

        pl_module = self._trainer.lightning_module
        folder = self._root(self._trainer) / self._dataset(pl_module, dataloader_idx) / video.sample_id
        save_png(mask_image(mask), folder / expression.expression_id.replace(os.sep, "-") / f"{video.names[index]}.png")

    def _write_davis_palettes(self, dataset_root: Path, davis_root: Path, video) -> None:
        """Merge a video's per-expression masks into one palette PNG per frame and annotator set."""
        import numpy as np
        from PIL import Image

        from refam.visualize import DAVIS_PALETTE
        from refam.io.files import png_bytes, write_atomic

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
        from refam.visualize import mask_image, overlay
        from refam.io.files import save_png

        root = self._root(trainer) / self._dataset(pl_module, dataloader_idx)
        images = {item.sample_id: item.image for item in batch if hasattr(item, "image")}
        videos = {item.sample_id: item for item in batch if hasattr(item, "frames")}
        for result in prediction or []:
            if result.sample_id in videos:  # video masks were written frame by frame (write_video_mask)
                self._write_davis_palettes(root, Path(f"{root}-davis"), videos[result.sample_id])
                continue
            folder = root / result.sample_id.replace(os.sep, "-")
            for p in result.predictions:
                if p.mask is None:  # a result reused from the result store: its mask was written then
                    continue
                name = p.expression_id.replace(os.sep, "-")
                save_png(mask_image(p.mask), folder / f"{name}.png")
                if self.overlay:
                    save_png(overlay(images[result.sample_id], p.mask, p.point), folder / f"{name}_overlay.png")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.write_on_batch_end(trainer, pl_module, outputs, None, batch, batch_idx, dataloader_idx)

