"""Scoring a test dataset: a sample's predictions measured against its ground truth into a record
(per expression: pixel counts, point hit, saliency sums, per-frame J and F; per video: each
annotator run's DAVIS scores), and a record fed to the metrics.

The metrics are fed only from records (`refam.evaluation.records.SampleRecord`), whether a record was
measured now or read back from the result store (`refam.evaluation.store.ResultStore`), so a resumed run's
sums equal an uninterrupted run's bit for bit: there is one scoring path, not a live one and a
replayed one.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torchmetrics import SumMetric

from refam.errors import ConfigError
from refam.pipeline import SampleResult
from refam.metrics import ReferringScores, SaliencyScores, VideoReferringScores, intersection_union, point_hit
from refam.metrics.davis import ObjectScore, RunPalettes, evaluate_runs
from refam.metrics.iou import iou
from refam.metrics.jf import TrackScores
from refam.evaluation.records import DavisObject, ExpressionRecord, Rle, SampleRecord
from refam.types import BadSample, Sample, VideoExpression, VideoSample

log = logging.getLogger(__name__)


def results_table(rows: list[tuple[str, dict[str, torch.Tensor]]], metrics: tuple[str, ...] = ("mIoU", "oIoU", "PA")) -> str:
    """One line per dataset split, as in the paper's tables (scores x 100)."""
    width = max([len("dataset")] + [len(name) for name, _ in rows])
    lines = [f"{'dataset':<{width}} " + " ".join(f"{m:>6}" for m in metrics) + "  expressions  skipped"]
    for name, v in rows:
        skipped = int(v["skipped_samples"]) + int(v["skipped_expressions"])
        lines.append(f"{name:<{width}} " + " ".join(f"{float(v[m]):6.2f}" for m in metrics)
                     + f" {int(v['expressions']):12d} {skipped:8d}")
    return "\n".join(lines)


class VideoMeasure:
    """Measures one video's masks as the segmenter makes them (`on_mask`): J and F per frame of each
    expression's track, and under the "unsupervised" protocol each annotator run's masks merged into
    palette frames, scored by the DAVIS 2017 unsupervised evaluation when the video ends (`record`)."""

    def __init__(self, video: VideoSample, scores: VideoReferringScores, ignores_void: bool, dataset: str) -> None:
        self.video, self.truth = video, video.truth
        self.use_void = ignores_void
        self.bound_th = scores.jf.bound_th
        self.labels = getattr(self.truth, "labels", None)  # the annotation's ids with 255 void (PaletteTruth)
        self.palettes = RunPalettes(video.expressions) if scores.protocol == "unsupervised" else None
        if self.palettes is not None and self.truth is not None and self.labels is None:
            raise ConfigError(f"{dataset}: the 'unsupervised' protocol reads the annotation's object ids, which "
                              f"{type(self.truth).__name__} does not give; set per_expression",
                              field="protocol").within("datasets")
        self.tracks: dict[str, TrackScores] = {}
        self.masks: dict[str, dict[int, Rle]] = {}  # expression id -> frame -> mask, stored for replays

    def on_mask(self, expression: VideoExpression, index: int, mask: np.ndarray) -> None:
        self.masks.setdefault(expression.expression_id, {})[index] = Rle.encode(mask)
        if self.palettes is not None:
            self.palettes.add(expression, index, mask)
        target = self.truth.mask(expression, index) if self.truth is not None else None
        if target is not None:
            void = self.truth.void(index) if self.use_void else None
            self.tracks.setdefault(expression.expression_id, TrackScores()).add_frame(mask, target, void, self.bound_th)

    def record(self, result: SampleResult) -> SampleRecord:
        """The video's record, once its masks are all in; sets each prediction's point hit."""
        expressions = {e.expression_id: e for e in self.video.expressions}
        entries = []
        for prediction in result.predictions:
            track = self.tracks.get(prediction.expression_id)
            target = (self.truth.mask(expressions[prediction.expression_id], prediction.frame)
                      if self.truth is not None else None)
            if target is not None:
                prediction.point_hit = point_hit(prediction.point, torch.from_numpy(np.asarray(target, dtype=bool)))
            masks = self.masks.get(prediction.expression_id, {})
            entries.append(ExpressionRecord.of(
                prediction, point_hit=prediction.point_hit if target is not None else None, j=list(track.j) if track else None,
                f=list(track.f) if track else None,
                track=[masks.get(index) for index in range(len(self.video.frames))]))
        runs = None
        if self.palettes is not None and self.truth is not None and self.palettes.runs:
            scored = evaluate_runs(self.video.sample_id, self.video.names, self.labels, self.palettes)
            runs = {str(run): [DavisObject(o.object_id, o.pred_id, list(o.scores.j), list(o.scores.f)) for o in objects]
                    for run, objects in scored.items()}
        return SampleRecord(result.sample_id, video=True, expressions=entries, skipped=list(result.skipped),
                            davis_runs=runs)


class DatasetScores(torch.nn.Module):
    """One test dataset's metrics: mIoU / oIoU / PA for images, J&F / PA for videos (`is_video`),
    plus saliency sums where the dataset names a `saliency_protocol` (Table 11).

    Args:
        dataset: the dataset scored (read for `name`, `is_video`, `ignores_void`, `protocol`,
            `saliency_protocol`).
        name: its name in the logged metrics and the printed table.
    """

    def __init__(self, dataset, name: str) -> None:
        super().__init__()
        self.name = name
        self.is_video = bool(getattr(dataset, "is_video", False))
        self.ignores_void = bool(getattr(dataset, "ignores_void", False))  # 255 pixels leave J and F (Ref-DAVIS17)
        # a video dataset's `protocol` picks its headline J&F (Ref-DAVIS17: the official unsupervised runs)
        self.referring = (VideoReferringScores(getattr(dataset, "protocol", "per_expression")) if self.is_video
                          else ReferringScores())
        protocol = getattr(dataset, "saliency_protocol", None)
        self.saliency = SaliencyScores(variant=protocol) if protocol is not None else None
        # expressions answered (scored or not: an unlabelled split has no scores), summed over processes
        self.answered = SumMetric()

    @property
    def scores_runs(self) -> bool:
        """Whether the headline is the official unsupervised evaluation of annotator runs."""
        return getattr(self.referring, "protocol", None) == "unsupervised"

    def skip_sample(self, item: BadSample) -> None:
        # not stored: it costs nothing to find again, and a repaired file is then scored
        log.warning("skipped sample %s: %s", item.sample_id, item.reason)
        self.referring.skipped_samples.update(1)

    # ------------------------------------------------------------ measuring
    def measure_image(self, sample: Sample, result: SampleResult) -> SampleRecord:
        """The sample's record; sets each prediction's IoU and point hit where it has a mask."""
        truth = {e.expression_id: e for e in sample.expressions}
        entries = []
        for prediction in result.predictions:
            expression = truth[prediction.expression_id]
            scores: dict = {}
            if expression.mask is not None:
                target = torch.from_numpy(np.asarray(expression.mask, dtype=bool))
                intersection, union = intersection_union(torch.from_numpy(np.asarray(prediction.mask, dtype=bool)),
                                                         target)
                prediction.iou = iou(counts=(intersection, union))
                prediction.point_hit = point_hit(prediction.point, target)
                scores = dict(intersection=intersection, union=union, iou=prediction.iou, point_hit=prediction.point_hit)
                if self.saliency is not None:
                    void = getattr(expression, "void", None)
                    scores["saliency"] = self.saliency.contribution(
                        prediction.heatmap, target, None if void is None else torch.from_numpy(np.asarray(void, dtype=bool)))
            entries.append(ExpressionRecord.of(prediction, mask=Rle.encode(prediction.mask), **scores))
        return SampleRecord(result.sample_id, video=False, expressions=entries, skipped=list(result.skipped))

    def measure_video(self, video: VideoSample) -> VideoMeasure:
        return VideoMeasure(video, self.referring, self.ignores_void, self.name)

    # ------------------------------------------------------------ scoring
    def can_replay(self, record: SampleRecord) -> bool:
        """Whether a stored record holds all a fresh run gives: the masks (the writers need them) and
        the scores (a video whose annotator runs were not scored would leave the video out of the
        headline J&F)."""
        if record.video:  # the masks of every frame, for the writers
            return (all(e.track is not None for e in record.expressions)
                    and not (self.scores_runs and record.davis_runs is None))
        # each expression's mask, for the writers; on a saliency split each scored one's sums
        return all(e.mask is not None and (self.saliency is None or e.intersection is None or e.saliency is not None)
                   for e in record.expressions)

    def add(self, record: SampleRecord) -> None:
        """Feed one sample's record to the metrics (measured now or stored by an earlier run)."""
        scores = self.referring
        for message in record.skipped:
            log.warning("skipped %s", message)
        scores.skipped_expressions.update(len(record.skipped))
        self.answered.update(len(record.expressions))
        for entry in record.expressions:
            if record.video:
                if entry.j is not None and entry.f is not None:
                    scores.update_track(TrackScores(list(entry.j), list(entry.f)))
                if entry.point_hit is not None:
                    scores.pa.update(hit=entry.point_hit)
                continue
            if entry.intersection is None or entry.union is None or entry.point_hit is None:
                continue
            scores.update_counts(entry.intersection, entry.union, entry.point_hit)
            if self.saliency is not None and entry.saliency is not None:
                self.saliency.update(counts=entry.saliency)
        if self.scores_runs:
            for run, objects in (record.davis_runs or {}).items():
                scores.runs.update(int(run), [ObjectScore(record.sample_id, o.object, o.pred_id,
                                                          TrackScores(list(o.j), list(o.f))) for o in objects])

    def reset(self) -> None:
        self.referring.reset()
        self.answered.reset()
        if self.saliency is not None:
            self.saliency.reset()
