"""Scoring a test dataset: a sample's predictions measured against its ground truth into a record
(per expression: pixel counts, point hit, saliency sums, per-frame J and F; per video: each
annotator run's DAVIS scores), and a record fed to the metrics.

The metrics are fed only from records, whether a record was measured now or read back from the
result store (`refam.callbacks.ResultStore`), so a resumed run's sums equal an uninterrupted run's
bit for bit: there is one scoring path, not a live one and a replayed one.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from refam.errors import ConfigError
from refam.inference import SampleResult
from refam.metrics import ReferringScores, SaliencyScores, VideoReferringScores, intersection_union, point_hit
from refam.metrics.davis import ObjectScore, RunPalettes, evaluate_runs
from refam.metrics.iou import iou
from refam.metrics.jf import TrackScores
from refam.types import BadSample, Prediction, Sample, VideoExpression, VideoSample

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


def _entry(prediction: Prediction) -> dict:
    """One expression's record; the scores are added where it has ground truth."""
    return {
        "expression_id": prediction.expression_id,
        "point": [float(prediction.point[0]), float(prediction.point[1])],
        "frame": prediction.frame,
        "intersection": None, "union": None, "iou": None, "point_hit": None,
        "kept_tokens": list(prediction.kept_tokens), "dropped_tokens": list(prediction.dropped_tokens),
        "sinks": list(prediction.sinks), "sink_categories": list(prediction.sink_categories),
    }


def result_from_record(record: dict) -> SampleResult:
    """A stored sample's result as `refam test` hands it to the writers: no masks or heatmaps."""
    result = SampleResult(record["sample_id"], skipped=list(record.get("skipped", [])))
    for entry in record["expressions"]:
        result.predictions.append(Prediction(
            expression_id=entry["expression_id"], mask=None, point=tuple(entry["point"]), heatmap=None,
            kept_tokens=entry.get("kept_tokens", []), dropped_tokens=entry.get("dropped_tokens", []),
            sinks=entry.get("sinks", []), sink_categories=entry.get("sink_categories", []),
            iou=entry.get("iou"), point_hit=entry.get("point_hit"), frame=entry.get("frame"),
        ))
    return result


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

    def on_mask(self, expression: VideoExpression, index: int, mask: np.ndarray) -> None:
        if self.palettes is not None:
            self.palettes.add(expression, index, mask)
        target = self.truth.mask(expression, index) if self.truth is not None else None
        if target is not None:
            void = self.truth.void(index) if self.use_void else None
            self.tracks.setdefault(expression.expression_id, TrackScores()).add_frame(mask, target, void, self.bound_th)

    def record(self, result: SampleResult) -> dict:
        """The video's record, once its masks are all in; sets each prediction's point hit."""
        expressions = {e.expression_id: e for e in self.video.expressions}
        entries = []
        for prediction in result.predictions:
            entry = _entry(prediction)
            track = self.tracks.get(prediction.expression_id)
            entry.update(j=track.j if track else None, f=track.f if track else None)
            target = (self.truth.mask(expressions[prediction.expression_id], prediction.frame)
                      if self.truth is not None else None)
            if target is not None:
                prediction.point_hit = point_hit(prediction.point, torch.from_numpy(np.asarray(target, dtype=bool)))
                entry["point_hit"] = prediction.point_hit
            entries.append(entry)
        record = {"sample_id": result.sample_id, "video": True, "skipped": list(result.skipped), "expressions": entries}
        if self.palettes is not None and self.truth is not None and self.palettes.runs:
            runs = evaluate_runs(self.video.sample_id, self.video.names, self.labels, self.palettes)
            record["davis_runs"] = {str(run): [{"object": o.object_id, "pred_id": o.pred_id, "j": o.scores.j,
                                                "f": o.scores.f} for o in objects] for run, objects in runs.items()}
        return record


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

    @property
    def scores_runs(self) -> bool:
        """Whether the headline is the official unsupervised evaluation of annotator runs."""
        return getattr(self.referring, "protocol", None) == "unsupervised"

    def skip_sample(self, item: BadSample) -> None:
        # not stored: it costs nothing to find again, and a repaired file is then scored
        log.warning("skipped sample %s: %s", item.sample_id, item.reason)
        self.referring.skipped_samples.update(1)

    # ------------------------------------------------------------ measuring
    def measure_image(self, sample: Sample, result: SampleResult) -> dict:
        """The sample's record; sets each prediction's IoU and point hit where it has a mask."""
        truth = {e.expression_id: e for e in sample.expressions}
        entries = []
        for prediction in result.predictions:
            entry = _entry(prediction)
            entries.append(entry)
            expression = truth[prediction.expression_id]
            if expression.mask is None:
                continue
            target = torch.from_numpy(np.asarray(expression.mask, dtype=bool))
            intersection, union = intersection_union(torch.from_numpy(np.asarray(prediction.mask, dtype=bool)), target)
            prediction.iou = iou(counts=(intersection, union))
            prediction.point_hit = point_hit(prediction.point, target)
            entry.update(intersection=intersection, union=union, iou=prediction.iou, point_hit=prediction.point_hit)
            if self.saliency is not None:
                void = getattr(expression, "void", None)
                entry["saliency"] = self.saliency.contribution(
                    prediction.heatmap, target, None if void is None else torch.from_numpy(np.asarray(void, dtype=bool)))
        return {"sample_id": result.sample_id, "video": False, "skipped": list(result.skipped), "expressions": entries}

    def measure_video(self, video: VideoSample) -> VideoMeasure:
        return VideoMeasure(video, self.referring, self.ignores_void, self.name)

    # ------------------------------------------------------------ scoring
    def can_replay(self, record: dict) -> bool:
        """Whether a stored record holds all this dataset's scores need. A video stored before the
        annotator runs were scored in-run would leave the video out of the headline J&F."""
        return not (record.get("video") and self.scores_runs and "davis_runs" not in record)

    def add(self, record: dict) -> None:
        """Feed one sample's record to the metrics (measured now or stored by an earlier run)."""
        scores = self.referring
        for message in record.get("skipped", []):
            log.warning("skipped %s", message)
        scores.skipped_expressions.update(len(record.get("skipped", [])))
        for entry in record["expressions"]:
            if record.get("video"):
                if entry.get("j") is not None:
                    scores.update_track(TrackScores(list(entry["j"]), list(entry["f"])))
                if entry.get("point_hit") is not None:
                    scores.pa.update(hit=entry["point_hit"])
                continue
            if entry.get("intersection") is None:
                continue
            scores.update_counts(entry["intersection"], entry["union"], entry["point_hit"])
            if self.saliency is not None:
                self.saliency.update(counts=entry["saliency"])
        if self.scores_runs:
            for run, objects in record.get("davis_runs", {}).items():
                scores.runs.update(int(run), [ObjectScore(record["sample_id"], o["object"], o["pred_id"],
                                                          TrackScores(list(o["j"]), list(o["f"]))) for o in objects])

    def reset(self) -> None:
        self.referring.reset()
        if self.saliency is not None:
            self.saliency.reset()
