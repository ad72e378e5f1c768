"""RefAMModule: `refam test` and `refam predict` on datasets, as a LightningModule.

The module holds the science (the pipeline and each test dataset's scores); the Trainer the
engineering (devices, DDP, progress, logging). The pipeline (`refam.pipeline.RefAMPipeline`) runs
one sample; `refam.evaluation.scoring` measures it and feeds the metrics; the result store, when one is
passed in, keeps each sample's record so that a rerun reads it back instead of running it. Heavy
models live in plain component objects, not in the registered module tree, so DDP has no parameters
to broadcast and each rank loads its own weights.
"""

from __future__ import annotations

import logging
import warnings

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from refam.code_identity import code_identity
from refam.evaluation.callbacks import MaskWriter, ResultStoreCallback
from refam.evaluation.outputs import dataset_folder
from refam.evaluation.store import ResultStore
from refam.errors import ConfigError, DataError
from refam.identity import sample_identity
from refam.pipeline import RefAMPipeline, SampleResult
from refam.metrics import VideoReferringScores
from refam.evaluation.records import SampleRecord
from refam.evaluation.scoring import DatasetScores, results_table
from refam.types import BadSample, Sample, VideoSample

log = logging.getLogger(__name__)

# the code between a pipeline's output and a stored score
SCORING_MODULES = ("refam.evaluation.scoring", "refam.evaluation.records", "refam.metrics")


class NothingScoredError(DataError):
    """A `refam test` run in which no sample of any dataset could be run."""


class RefAMModule(L.LightningModule):
    """Zero-shot referring segmentation scored on test datasets (the config's `model:` section).

    Args: those of `refam.pipeline.RefAMPipeline` (the config's keys), and
        result_store: keeps each scored sample's record and gives back those of an earlier run of
            the same settings (resumable evaluation); `refam test` passes its `--results` store.
    """

    def __init__(self, result_store: ResultStore | None = None, **pipeline) -> None:
        super().__init__()
        self.pipeline = RefAMPipeline(**pipeline)
        self.result_store = result_store
        # writes the records this module queues, when each batch ends (handed to the trainer below)
        self._store_callback = ResultStoreCallback(result_store) if result_store is not None else None
        self.datasets = torch.nn.ModuleList()  # one DatasetScores per test dataset, set when testing starts
        self._mask_writers: list[MaskWriter] = []  # writers that save masks register in their setup

    @property
    def dataset_names(self) -> list[str]:
        return [scores.name for scores in self.datasets]

    def numbers_identity(self) -> dict:
        """What the result store keys every record by: the pipeline's `numbers_identity`, and the
        code that turns its output into the stored scores (scoring, records, the metrics, the
        dataset readers that decode the ground truth), and the accelerator the run is on."""
        identity = self.pipeline.numbers_identity()
        trainer = self._trainer  # None outside a Trainer (the attribute, not the property, which raises)
        datasets = getattr(getattr(trainer, "datamodule", None), "datasets", None) or []
        readers = sorted({type(dataset).__module__ for dataset in datasets})
        identity["scoring"] = code_identity(modules=[*SCORING_MODULES, *readers])
        if trainer is not None:
            identity["device"] = trainer.strategy.root_device.type  # numbers differ by rounding across devices
        return identity

    def configure_callbacks(self) -> list[L.Callback]:
        return [self._store_callback] if self._store_callback is not None else []

    def add_mask_writer(self, writer: MaskWriter) -> None:
        """A writer that saves masks (`MaskWriter.setup` calls this): video masks reach it frame by
        frame as they are made, or replayed from the result store."""
        if writer not in self._mask_writers:
            self._mask_writers.append(writer)

    def teardown(self, stage: str) -> None:
        self._mask_writers = []  # a later run's writers register again

    # ------------------------------------------------------------ lifecycle
    def on_test_start(self) -> None:
        datasets = getattr(self.trainer.datamodule, "datasets", None) or [None]
        names = [getattr(d, "name", None) or f"test{i}" for i, d in enumerate(datasets)]
        folders = [dataset_folder(name) for name in names]
        for index, folder in enumerate(folders):
            if folder in folders[:index]:  # their records and masks would share files
                raise ConfigError(f"datasets {names[folders.index(folder)]!r} and {names[index]!r} would share the "
                                  f"output folder {folder!r}; give one of them another name", field="datasets")
        self.pipeline.setup(self.device)
        self.datasets = torch.nn.ModuleList(DatasetScores(d, name) for d, name in zip(datasets, names)).to(self.device)

    def on_predict_start(self) -> None:
        self.pipeline.setup(self.device)

    # ------------------------------------------------------------ testing
    def test_step(self, batch: list[Sample | VideoSample | BadSample], batch_idx: int,
                  dataloader_idx: int = 0) -> list[SampleResult]:
        dataset = self.datasets[dataloader_idx]
        results = []
        for item in batch:
            if isinstance(item, BadSample):
                dataset.skip_sample(item)
                continue
            # what the sample is made of (pixels, texts, masks): a stored result of other inputs is not reused
            inputs = sample_identity(item) if self.result_store is not None else None
            record = None if inputs is None else self.result_store.lookup(
                dataloader_idx, dataset.name, item.sample_id, inputs, accept=dataset.can_replay)
            if record is not None:  # finished by an earlier run of this config: no forward, same numbers and outputs
                result = record.result()
                self.replay_video_masks(item, record, dataloader_idx)
            else:
                result, record = self.measure(item, dataset, dataloader_idx)
                if self._store_callback is not None:
                    self._store_callback.queue(dataloader_idx, dataset.name, record.stamped(inputs=inputs))
            dataset.add(record)
            results.append(result)
        return results

    def replay_video_masks(self, item: Sample | VideoSample, record: SampleRecord, dataloader_idx: int) -> None:
        """A stored video's masks, frame by frame, to the writers, as the segmenter gave them."""
        if not isinstance(item, VideoSample) or not self._mask_writers:
            return
        expressions = {e.expression_id: e for e in item.expressions}
        for entry in record.expressions:
            for index, mask in enumerate(entry.track or []):
                if mask is not None:
                    decoded = mask.decode()
                    for writer in self._mask_writers:
                        writer.write_video_mask(dataloader_idx, item, expressions[entry.expression_id], index, decoded)

    def measure(self, item: Sample | VideoSample, dataset: DatasetScores,
                dataloader_idx: int = 0) -> tuple[SampleResult, SampleRecord]:
        """Run one sample through the pipeline and measure it against its ground truth: its result
        and its record. A video's masks are measured and written as the segmenter makes them."""
        if not isinstance(item, VideoSample):
            result = self.pipeline.segment_sample(item)
            return result, dataset.measure_image(item, result)
        measure = dataset.measure_video(item)

        def on_mask(expression, index, mask) -> None:
            for writer in self._mask_writers:
                writer.write_video_mask(dataloader_idx, item, expression, index, mask)
            measure.on_mask(expression, index, mask)

        result = self.pipeline.segment_video(item, on_mask)
        return result, measure.record(result)

    def on_test_epoch_end(self) -> None:
        # compute() gathers the summed states of every rank, so all ranks log the same global value
        # and no sample is counted twice (the sampler shards without padding).
        self.refuse_if_nothing_ran()
        rows = []
        for dataset in self.datasets:
            name, values = dataset.name, dataset.referring.compute()
            if dataset.saliency is not None:
                saliency = dataset.saliency.compute()
                for metric in ("Acc", "mIoU", "mAP"):
                    self.log(f"{name}/saliency_{metric}", saliency[metric].float(), sync_dist=False, add_dataloader_idx=False)
                rank_zero_info(f"{name} saliency ({dataset.saliency.variant}): Acc {float(saliency['Acc']):.2f}  "
                               f"mIoU {float(saliency['mIoU']):.2f}  mAP {float(saliency['mAP']):.2f}")
            rows.append((dataset, values))
            for metric, value in values.items():
                self.log(f"{name}/{metric}", value.float(), sync_dist=False, add_dataloader_idx=False)
            skipped_samples, skipped_expressions = int(values["skipped_samples"]), int(values["skipped_expressions"])
            if skipped_samples or skipped_expressions:
                rank_zero_info(
                    f"refam: {name}: skipped {skipped_samples} sample(s) and {skipped_expressions} expression(s); "
                    "the warnings above name each one and why. The metrics cover the rest."
                )
            dataset.reset()
        image_rows = [(d.name, v) for d, v in rows if not d.is_video]
        video_rows = [(d.name, v) for d, v in rows if d.is_video]
        if image_rows:
            rank_zero_info(results_table(image_rows))
        if video_rows:
            rank_zero_info(results_table(video_rows, ("J&F", "J", "F", "PA")))
            # say which protocol each row's J&F follows: figures of different protocols are not comparable
            for dataset, values in rows:
                if isinstance(dataset.referring, VideoReferringScores):
                    rank_zero_info(f"{dataset.name}: {dataset.referring.describe(values)}")

    def refuse_if_nothing_ran(self) -> None:
        """A run in which no sample of any dataset could be run is a failure, not a table of zeros."""
        with warnings.catch_warnings():  # a process may have had no sample: its sum is simply zero
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            answered = [int(dataset.answered.compute()) for dataset in self.datasets]
        if any(answered) or not self.datasets:
            return
        reasons = []
        for dataset in self.datasets:
            values = dataset.referring.compute()
            samples, expressions = int(values["skipped_samples"]), int(values["skipped_expressions"])
            if samples or expressions:
                also = f" and {expressions} expression(s)" if expressions else ""
                reasons.append(f"{dataset.name}: {samples} sample(s){also} skipped")
            else:
                reasons.append(f"{dataset.name}: no sample")
            dataset.reset()
        raise NothingScoredError(f"nothing was scored ({'; '.join(reasons)}); the warnings above name each sample "
                                 "and why: fix the data (or the paths to it) and run again")

    # ------------------------------------------------------------ predicting
    def predict_step(self, batch: list[Sample | VideoSample | BadSample], batch_idx: int,
                     dataloader_idx: int = 0) -> list[SampleResult]:
        results = []
        for item in batch:
            if isinstance(item, BadSample):
                log.warning("skipped sample %s: %s", item.sample_id, item.reason)
                continue
            if isinstance(item, VideoSample):  # a pipeline that cannot track refuses in one line

                def on_mask(expression, index, mask, video=item) -> None:
                    for writer in self._mask_writers:
                        writer.write_video_mask(dataloader_idx, video, expression, index, mask)

                results.append(self.pipeline.segment_video(item, on_mask))
            else:
                results.append(self.pipeline.segment_sample(item))
        return results
