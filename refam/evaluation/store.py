"""The result store: each sample's record kept as soon as it is scored, and given back to a rerun
of the same settings, weights, code and inputs (resumable evaluation)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from refam.evaluation.outputs import dataset_folder, write_output
from refam.evaluation.records import OtherFormat, RecordError, SampleRecord
from refam.identity import RECORD_FORMAT, describe_change, numbers_key
from refam.io.names import safe_name

log = logging.getLogger(__name__)


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
    """Resumable evaluation: each sample's record (`refam.evaluation.records.SampleRecord`) is kept as one
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
