"""RefAMModule: the zero-shot REFAM inference of DESIGN.md as a LightningModule.

The module holds the science (components and metrics); the Trainer the engineering (devices,
DDP, progress, logging). Heavy models live in plain component objects, not in the registered
module tree, so DDP has no parameters to broadcast and each rank loads its own weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from refam.aggregators.base import Aggregation, Aggregator, SoftmaxMeanAggregator
from refam.aggregators.gas import sink_category
from refam.aggregators.keyframe import KEY_FRAMES, key_frames
from refam.aggregators.magnets import AppendMagnets, MagnetStrategy
from refam.aggregators.point import argmax_points, upsample
from refam.aggregators.spatial import BiasContext, SpatialBias
from refam.errors import ConfigError
from refam.extractors.base import ExpressionError, Extractor
from refam.extractors.cache import MapCache
from refam.identity import code_version, sample_identity, weights_identity
from refam.metrics import ReferringScores, SaliencyScores, VideoReferringScores, intersection_union, point_hit
from refam.metrics.davis import ObjectScore, RunPalettes, evaluate_runs
from refam.metrics.jf import TrackScores
from refam.segmenters.base import Segmenter
from refam.segmenters.video_base import VideoSegmenter
from refam.types import BadSample, Prediction, Sample, TokenMaps, VideoExpression, VideoSample

log = logging.getLogger(__name__)


@dataclass
class SampleResult:
    sample_id: str
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one message per expression that could not be run


MaskSink = Callable[[VideoExpression, int, np.ndarray], None]


def token_report(maps: TokenMaps, aggregation: Aggregation, k: int) -> dict:
    """Which of expression k's tokens were kept, dropped (real tokens only) and sinks, with categories."""
    tokens = maps.tokens[k]
    real = [t for t, v in zip(tokens, maps.valid[k].tolist()) if v]
    kept, sinks = aggregation.kept[k].tolist(), aggregation.sinks[k].tolist()
    return {
        "kept_tokens": [t.piece for t, keep in zip(tokens, kept) if keep],
        "dropped_tokens": [t.piece for t, keep in zip(real, kept) if not keep],
        "sinks": [t.piece for t, sink in zip(tokens, sinks) if sink],
        "sink_categories": [sink_category(t) for t, sink in zip(tokens, sinks) if sink],
    }


def iou_of(predicted: torch.Tensor, target: torch.Tensor) -> float:
    intersection, union = intersection_union(predicted, target)
    return intersection / union if union else 0.0


def results_table(rows: list[tuple[str, dict[str, torch.Tensor]]], metrics: tuple[str, ...] = ("mIoU", "oIoU", "PA")) -> str:
    """One line per dataset split, as in the paper's tables (scores x 100)."""
    width = max([len("dataset")] + [len(name) for name, _ in rows])
    lines = [f"{'dataset':<{width}} " + " ".join(f"{m:>6}" for m in metrics) + "  expressions  skipped"]
    for name, v in rows:
        skipped = int(v["skipped_samples"]) + int(v["skipped_expressions"])
        lines.append(f"{name:<{width}} " + " ".join(f"{float(v[m]):6.2f}" for m in metrics)
                     + f" {int(v['expressions']):12d} {skipped:8d}")
    return "\n".join(lines)


class RefAMModule(L.LightningModule):
    """Zero-shot referring segmentation: expression branch maps -> heatmap -> point -> mask.

    Args:
        extractor: the DiT observed through the expression branch (e.g. FluxExtractor).
        segmenter: point (and heatmap) -> mask (e.g. SAM2PointSegmenter).
        magnets: appended attention magnets and token filtering; default the paper's.
        aggregator: token maps -> heatmap; default the paper's softmax-across-tokens mean.
        spatial_bias: optional positional priors from the expression's words, applied in order
            (e.g. DirectionPrior, then RelationPrior: HybridGL's absolute and relative cues).
        text_condition: what the denoising stream is conditioned on: "caption" (the sample's
            caption; empty where it has none) or "empty" (always the empty prompt; Table 9).
        key_frame: videos: the frame the point prompts: "first" (the paper) or "confident" (the
            frame whose heatmap peaks highest; the segmenter then tracks forward and backward).
        map_cache: a folder where the extractor's token maps are stored per sample
            (`refam.extractors.cache.MapCache`), keyed by everything that changes them; a run that
            changes only the aggregation, spatial bias or segmenter then skips the DiT. None: no cache.
    """

    def __init__(
        self,
        extractor: Extractor,
        segmenter: Segmenter | VideoSegmenter,
        magnets: MagnetStrategy | None = None,
        aggregator: Aggregator | None = None,
        spatial_bias: SpatialBias | list[SpatialBias] | None = None,
        text_condition: str = "caption",
        key_frame: str = "first",
        map_cache: str | None = None,
    ) -> None:
        super().__init__()
        self.map_cache = MapCache(map_cache) if map_cache else None
        if key_frame not in KEY_FRAMES:
            raise ConfigError(f"model.key_frame must be one of {list(KEY_FRAMES)}, got {key_frame!r}")
        self.key_frame = key_frame
        if text_condition not in ("caption", "empty"):
            raise ConfigError(f"model.text_condition must be 'caption' or 'empty', got {text_condition!r}")
        self.text_condition = text_condition
        self.extractor = extractor
        self.segmenter = segmenter
        self.magnets = magnets if magnets is not None else AppendMagnets()
        self.aggregator = aggregator if aggregator is not None else SoftmaxMeanAggregator()
        self.spatial_bias = [spatial_bias] if isinstance(spatial_bias, SpatialBias) else list(spatial_bias or [])
        self.scores = torch.nn.ModuleList()  # one ReferringScores per test dataset
        self.saliency = torch.nn.ModuleList()  # one SaliencyScores per test dataset (used where it has a protocol)
        self.saliency_datasets: list[bool] = []
        self.video_datasets: list[bool] = []
        self.void_datasets: list[bool] = []  # video datasets whose 255 pixels leave J and F (Ref-DAVIS17)
        # callables (dataset index, video, expression, frame index, mask) that receive every video mask
        # as it is made (e.g. MaskWriter); masks are never gathered
        self.video_mask_sinks: list[Callable] = []
        self.dataset_names: list[str] = []

    # ------------------------------------------------------------ lifecycle
    def _load_components(self) -> None:
        self.extractor.setup(self.device)
        self.segmenter.setup(self.device)

    def on_test_start(self) -> None:
        self._load_components()
        # (dataset index, dataset name, record) of each sample scored in the current batch, for ResultStore
        self.pending_records: list[tuple[int, str, dict]] = []
        datasets = getattr(self.trainer.datamodule, "datasets", None) or [None]
        self.dataset_names = [getattr(d, "name", None) or f"test{i}" for i, d in enumerate(datasets)]
        # video datasets (`is_video`) are scored with J&F, images with mIoU / oIoU; both with PA
        self.video_datasets = [bool(getattr(d, "is_video", False)) for d in datasets]
        self.void_datasets = [bool(getattr(d, "ignores_void", False)) for d in datasets]
        # a video dataset's `protocol` picks its headline J&F (Ref-DAVIS17: the official unsupervised runs)
        self.scores = torch.nn.ModuleList(
            VideoReferringScores(getattr(d, "protocol", "per_expression")) if video else ReferringScores()
            for d, video in zip(datasets, self.video_datasets)
        ).to(self.device)
        # datasets scored as saliency maps (Table 11) name their SaliencyScores variant
        self.saliency = torch.nn.ModuleList(
            SaliencyScores(variant=getattr(d, "saliency_protocol", None) or "standard") for d in datasets
        ).to(self.device)
        self.saliency_datasets = [getattr(d, "saliency_protocol", None) is not None for d in datasets]

    def on_predict_start(self) -> None:
        self._load_components()

    # ------------------------------------------------------------ inference
    def _runnable(self, sample: Sample | VideoSample, result: SampleResult) -> tuple[list, list]:
        """The expressions the extractor can encode, with magnets; the others are reported in `result`."""
        runnable, augmented = [], []
        for expression in sample.expressions:
            text, magnet_start = self.magnets.augment(expression.text)
            try:
                if not expression.text.strip():
                    raise ExpressionError("the expression is empty")
                self.extractor.validate_expression(text)
            except ExpressionError as err:
                result.skipped.append(f"{sample.source or sample.sample_id} expression {expression.expression_id!r}: {err}")
                continue
            runnable.append(expression)
            augmented.append((text, magnet_start))
        return runnable, augmented

    def segment_sample(self, sample: Sample, keep_token_maps: bool = False) -> SampleResult:
        """Run every expression of one image; an expression that cannot run is reported, not fatal.

        `keep_token_maps` also returns each real token's map (for visualisation and analysis)."""
        result = SampleResult(sample.sample_id)
        runnable, augmented = self._runnable(sample, result)
        if not runnable:
            return result

        caption = sample.caption if self.text_condition == "caption" else ""
        def extract() -> TokenMaps:
            return self.extractor.extract(sample.image, caption, augmented, sample.sample_id,
                                          magnet_vectors=self.magnets.vectors)

        maps = extract() if self.map_cache is None else self.map_cache.extract(
            self.extractor, extract, sample.sample_id, sample.image, caption, augmented, self.magnets)
        keep = torch.tensor([self.magnets.keep(tokens, expression.text) for tokens, expression in zip(maps.tokens, runnable)],
                            dtype=torch.bool)
        aggregation = self.aggregator(maps, keep)
        context = BiasContext(aggregation.probabilities, maps.tokens)
        for bias in self.spatial_bias:
            aggregation.heatmaps = bias(aggregation.heatmaps, [e.text for e in runnable], context)
        width, height = sample.image.size
        image_maps = upsample(aggregation.heatmaps, height, width)
        points = argmax_points(aggregation.heatmaps, height, width)
        masks = self.segmenter.segment(np.array(sample.image.convert("RGB")), points.numpy(), image_maps)
        for k, expression in enumerate(runnable):
            tokens = maps.tokens[k]
            real = [t for t, v in zip(tokens, maps.valid[k].tolist()) if v]
            result.predictions.append(
                Prediction(
                    expression_id=expression.expression_id,
                    mask=masks[k],
                    point=(float(points[k, 0]), float(points[k, 1])),
                    heatmap=aggregation.heatmaps[k],
                    **token_report(maps, aggregation, k),
                )
            )
            if keep_token_maps:
                valid = maps.valid[k]
                result.predictions[-1].tokens = [t.piece for t in real]
                result.predictions[-1].token_maps = aggregation.probabilities[k][valid].clone()
                result.predictions[-1].text_mass = maps.text_mass[k][valid].tolist()
                result.predictions[-1].token_kept = aggregation.kept[k][valid].tolist()
                result.predictions[-1].token_sink = aggregation.sinks[k][valid].tolist()
        return result

    def segment_video(self, video: VideoSample, on_mask: MaskSink | None = None,
                      keep_token_maps: bool = False) -> SampleResult:
        """Run every expression of one video: the DiT sees the clip once for all expressions; each
        expression's point prompts its key frame and the video segmenter tracks it through the video.

        Masks are not kept: `on_mask(expression, frame index, mask)` receives each as it is made, so
        scoring and writing stream frame by frame. Each prediction holds the key frame's mask.
        `keep_token_maps` also returns each real token's map on the key frame (for the pictures)."""
        result = SampleResult(video.sample_id)
        runnable, augmented = self._runnable(video, result)
        if not runnable:
            return result
        if not isinstance(self.segmenter, VideoSegmenter):
            raise ConfigError(f"model.segmenter: {type(self.segmenter).__name__} segments images; a video dataset needs "
                              "a VideoSegmenter such as refam.segmenters.sam2_video.SAM2VideoSegmenter")
        extract_video = getattr(self.extractor, "extract_video", None)
        if extract_video is None:
            raise ConfigError(f"model.extractor: {type(self.extractor).__name__} has no video path (extract_video); "
                              "a video dataset needs a video backbone such as refam.extractors.mochi.MochiExtractor")
        caption = video.caption if self.text_condition == "caption" else ""
        def extract() -> TokenMaps:
            return extract_video(video.images, caption, augmented, video.sample_id, magnet_vectors=self.magnets.vectors)

        maps = extract() if self.map_cache is None else self.map_cache.extract(
            self.extractor, extract, video.sample_id, video.frames, caption, augmented, self.magnets)
        keep = torch.tensor([self.magnets.keep(tokens, e.text) for tokens, e in zip(maps.tokens, runnable)], dtype=torch.bool)
        aggregation = self.aggregator(maps, keep)  # heatmaps [K, F_lat, h, w]
        frame_to_latent = maps.frame_to_latent or [0] * len(video.frames)
        prompts = key_frames(aggregation.heatmaps, frame_to_latent, self.key_frame)
        tracks: dict[tuple[int, float, float], list[int]] = {}  # one segmenter run per distinct prompt
        for k, expression in enumerate(runnable):
            frame, latent = prompts[k], frame_to_latent[prompts[k]]
            heat = aggregation.heatmaps[k, latent][None]
            context = BiasContext(aggregation.probabilities[k : k + 1, :, latent], [maps.tokens[k]])
            for bias in self.spatial_bias:
                heat = bias(heat, [expression.text], context)
            width, height = video.frame(frame).size
            x, y = argmax_points(heat, height, width)[0].tolist()
            tracks.setdefault((frame, x, y), []).append(k)
            result.predictions.append(
                Prediction(expression_id=expression.expression_id, mask=None, point=(x, y), heatmap=heat[0],
                           frame=frame, **token_report(maps, aggregation, k))
            )
            if keep_token_maps:  # the key frame's, as segment_sample's for an image
                valid = maps.valid[k]
                result.predictions[-1].tokens = [t.piece for t, v in zip(maps.tokens[k], valid.tolist()) if v]
                result.predictions[-1].token_maps = aggregation.probabilities[k, :, latent][valid].clone()
                result.predictions[-1].text_mass = maps.text_mass[k][valid].tolist()
                result.predictions[-1].token_kept = aggregation.kept[k][valid].tolist()
                result.predictions[-1].token_sink = aggregation.sinks[k][valid].tolist()
        # expressions prompting the same point on the same frame share a track (the segmenter is
        # deterministic), each still receiving every mask
        for (frame, x, y), members in tracks.items():
            for index, mask in self.segmenter.track(video.frames, frame, (x, y)):
                for k in members:
                    if index == frame:
                        result.predictions[k].mask = mask
                    if on_mask is not None:
                        on_mask(runnable[k], index, mask)
        return result

    def test_step(self, batch: list[Sample | BadSample], batch_idx: int, dataloader_idx: int = 0) -> list[SampleResult]:
        scores = self.scores[dataloader_idx]
        results = []
        for item in batch:
            if isinstance(item, BadSample):
                # not stored: it costs nothing to find again, and a repaired file is then scored
                log.warning("skipped sample %s: %s", item.sample_id, item.reason)
                scores.skipped_samples.update(1)
                continue
            # what the sample is made of (pixels, texts, masks): a stored result of other inputs is not reused
            inputs = sample_identity(item) if getattr(self, "result_store", None) is not None else None
            stored = self._stored_record(dataloader_idx, item.sample_id, inputs)
            if stored is not None:  # finished by an earlier run of this config: no forward, same numbers
                results.append(self._replay(stored, dataloader_idx))
                continue
            if isinstance(item, VideoSample):
                results.append(self._test_video(item, scores, dataloader_idx, inputs))
                continue
            result = self.segment_sample(item)
            for message in result.skipped:
                log.warning("skipped %s", message)
            scores.skipped_expressions.update(len(result.skipped))
            truth = {e.expression_id: e for e in item.expressions}
            entries = []
            for prediction in result.predictions:
                entry = self._entry(prediction)
                entries.append(entry)
                expression = truth[prediction.expression_id]
                if expression.mask is None:
                    continue
                target = torch.from_numpy(np.asarray(expression.mask, dtype=bool))
                predicted = torch.from_numpy(np.asarray(prediction.mask, dtype=bool))
                intersection, union = intersection_union(predicted, target)
                hit = point_hit(prediction.point, target)
                scores.update_counts(intersection, union, hit)
                prediction.iou, prediction.point_hit = (intersection / union if union else 0.0), hit
                entry.update(intersection=intersection, union=union, iou=prediction.iou, point_hit=hit)
                if self.saliency_datasets[dataloader_idx]:
                    void = getattr(expression, "void", None)
                    saliency = self.saliency[dataloader_idx]
                    entry["saliency"] = saliency.contribution(
                        prediction.heatmap, target, None if void is None else torch.from_numpy(np.asarray(void, dtype=bool))
                    )
                    saliency.update(counts=entry["saliency"])
            self._queue_record(dataloader_idx, result, entries, video=False, inputs=inputs)
            results.append(result)
        return results

    # ------------------------------------------------------------ resumable evaluation (ResultStore)
    @staticmethod
    def _entry(prediction: Prediction) -> dict:
        """One expression's stored result; the scores are added where it has ground truth."""
        return {
            "expression_id": prediction.expression_id,
            "point": [float(prediction.point[0]), float(prediction.point[1])],
            "frame": prediction.frame,
            "intersection": None, "union": None, "iou": None, "point_hit": None,
            "kept_tokens": list(prediction.kept_tokens), "dropped_tokens": list(prediction.dropped_tokens),
            "sinks": list(prediction.sinks), "sink_categories": list(prediction.sink_categories),
        }

    def numbers_identity(self) -> dict:
        """What changes this module's numbers besides its config's text: the content of the files
        its components' settings name (weights, model configs) and the code's versions. The result
        store keys every record by it."""
        return {"weights": weights_identity(self.extractor, self.segmenter, self.magnets, self.aggregator,
                                            *self.spatial_bias),
                "code": code_version()}

    def _queue_record(self, dataloader_idx: int, result: SampleResult, entries: list[dict], video: bool,
                      inputs: str | None = None, extra: dict | None = None) -> None:
        """Hand a scored sample's record to the ResultStore callback (written at the batch's end)."""
        if getattr(self, "result_store", None) is None:
            return
        record = {"sample_id": result.sample_id, "inputs": inputs, "video": video, "skipped": list(result.skipped),
                  "expressions": entries, **(extra or {})}
        self.pending_records.append((dataloader_idx, self.dataset_names[dataloader_idx], record))

    def _stored_record(self, dataloader_idx: int, sample_id: str, inputs: str | None) -> dict | None:
        store = getattr(self, "result_store", None)
        if store is None:
            return None
        record = store.lookup(dataloader_idx, self.dataset_names[dataloader_idx], sample_id, inputs)
        if record is not None and record.get("video") and self._scores_runs(dataloader_idx) and "davis_runs" not in record:
            # stored before the annotator runs were scored in-run: replaying it would leave the video
            # out of the headline J&F, so it is computed again (and not counted as reused)
            store.reused -= 1
            return None
        return record

    def _scores_runs(self, dataloader_idx: int) -> bool:
        """Whether this dataset's headline is the official unsupervised evaluation of annotator runs."""
        return getattr(self.scores[dataloader_idx], "protocol", None) == "unsupervised"

    def _replay(self, record: dict, dataloader_idx: int) -> SampleResult:
        """Feed a stored sample's numbers to the metrics in the order `test_step` would have, so the
        sums (and the final scores) equal a run that computed it; the result has no masks or heatmaps."""
        scores = self.scores[dataloader_idx]
        result = SampleResult(record["sample_id"], skipped=list(record.get("skipped", [])))
        for message in result.skipped:
            log.warning("skipped %s", message)
        scores.skipped_expressions.update(len(result.skipped))
        for entry in record["expressions"]:
            prediction = Prediction(
                expression_id=entry["expression_id"], mask=None, point=tuple(entry["point"]), heatmap=None,
                kept_tokens=entry.get("kept_tokens", []), dropped_tokens=entry.get("dropped_tokens", []),
                sinks=entry.get("sinks", []), sink_categories=entry.get("sink_categories", []),
                iou=entry.get("iou"), point_hit=entry.get("point_hit"), frame=entry.get("frame"),
            )
            result.predictions.append(prediction)
            if record.get("video"):
                if entry.get("j") is not None:
                    scores.update_track(TrackScores(list(entry["j"]), list(entry["f"])))
                if entry.get("point_hit") is not None:
                    scores.pa.update(hit=entry["point_hit"])
                continue
            if entry.get("intersection") is None:
                continue
            scores.update_counts(entry["intersection"], entry["union"], entry["point_hit"])
            if self.saliency_datasets[dataloader_idx]:
                self.saliency[dataloader_idx].update(counts=entry["saliency"])
        if self._scores_runs(dataloader_idx):
            for run, objects in record.get("davis_runs", {}).items():
                scores.runs.update(int(run), [ObjectScore(record["sample_id"], o["object"], o["pred_id"],
                                                          TrackScores(list(o["j"]), list(o["f"]))) for o in objects])
        return result

    def _test_video(self, video: VideoSample, scores: VideoReferringScores, dataloader_idx: int,
                    inputs: str | None = None) -> SampleResult:
        """One video: every mask is scored (J&F against the frame's ground truth) and handed to the
        registered sinks (mask writers) as it is made; the point is scored on its key frame. Under the
        "unsupervised" protocol each annotator run's masks are also merged into palette frames and
        scored by the DAVIS 2017 unsupervised evaluation when the video ends."""
        truth = video.truth
        scored: set[str] = set()
        use_void = dataloader_idx < len(self.void_datasets) and self.void_datasets[dataloader_idx]
        labels = getattr(truth, "labels", None)  # the annotation's ids with 255 void (PaletteTruth)
        palettes = RunPalettes(video.expressions) if getattr(scores, "protocol", None) == "unsupervised" else None
        if palettes is not None and truth is not None and labels is None:
            raise ConfigError(f"{self.dataset_names[dataloader_idx]}: the 'unsupervised' protocol reads the annotation's "
                              f"object ids, which {type(truth).__name__} does not give; set "
                              "data.datasets.init_args.protocol: per_expression")

        def on_mask(expression: VideoExpression, index: int, mask: np.ndarray) -> None:
            for sink in self.video_mask_sinks:
                sink(dataloader_idx, video, expression, index, mask)
            if palettes is not None:
                palettes.add(expression, index, mask)
            target = truth.mask(expression, index) if truth is not None else None
            if target is not None:
                void = truth.void(index) if use_void else None
                scores.jf.update_frame(expression.expression_id, mask, target, void)
                scored.add(expression.expression_id)

        result = self.segment_video(video, on_mask)
        for message in result.skipped:
            log.warning("skipped %s", message)
        scores.skipped_expressions.update(len(result.skipped))
        expressions = {e.expression_id: e for e in video.expressions}
        entries = []
        for prediction in result.predictions:
            entry = self._entry(prediction)
            entry.update(j=None, f=None)
            entries.append(entry)
            if prediction.expression_id in scored:
                track = scores.jf.end_track(prediction.expression_id)
                scores.expressions.update(1)
                entry.update(j=track.j, f=track.f)
            target = truth.mask(expressions[prediction.expression_id], prediction.frame) if truth is not None else None
            if target is not None:
                prediction.point_hit = point_hit(prediction.point, torch.from_numpy(np.asarray(target, dtype=bool)))
                scores.pa.update(hit=prediction.point_hit)
                entry["point_hit"] = prediction.point_hit
        extra = None
        if palettes is not None and truth is not None and palettes.runs:
            runs = evaluate_runs(video.sample_id, video.names, labels, palettes)
            for run, objects in runs.items():
                scores.runs.update(run, objects)
            # stored with the sample, so a resumed run replays the same per-run sums
            extra = {"davis_runs": {str(run): [{"object": o.object_id, "pred_id": o.pred_id, "j": o.scores.j,
                                                "f": o.scores.f} for o in objects] for run, objects in runs.items()}}
        self._queue_record(dataloader_idx, result, entries, video=True, inputs=inputs, extra=extra)
        return result

    def on_test_epoch_end(self) -> None:
        # compute() gathers the summed states of every rank, so all ranks log the same global value
        # and no sample is counted twice (the sampler shards without padding).
        rows = []
        for index, (name, scores) in enumerate(zip(self.dataset_names, self.scores)):
            values = scores.compute()
            if self.saliency_datasets[index]:
                saliency = self.saliency[index].compute()
                for metric in ("Acc", "mIoU", "mAP"):
                    self.log(f"{name}/saliency_{metric}", saliency[metric].float(), sync_dist=False, add_dataloader_idx=False)
                rank_zero_info(f"{name} saliency ({self.saliency[index].variant}): Acc {float(saliency['Acc']):.2f}  "
                               f"mIoU {float(saliency['mIoU']):.2f}  mAP {float(saliency['mAP']):.2f}")
                self.saliency[index].reset()
            rows.append((name, values))
            for metric, value in values.items():
                self.log(f"{name}/{metric}", value.float(), sync_dist=False, add_dataloader_idx=False)
            skipped_samples, skipped_expressions = int(values["skipped_samples"]), int(values["skipped_expressions"])
            if skipped_samples or skipped_expressions:
                rank_zero_info(
                    f"refam: {name}: skipped {skipped_samples} sample(s) and {skipped_expressions} expression(s); "
                    "the warnings above name each one and why. The metrics cover the rest."
                )
            scores.reset()
        image_rows = [(n, v) for (n, v), video in zip(rows, self.video_datasets) if not video]
        video_rows = [(n, v) for (n, v), video in zip(rows, self.video_datasets) if video]
        if image_rows:
            rank_zero_info(results_table(image_rows))
        if video_rows:
            rank_zero_info(results_table(video_rows, ("J&F", "J", "F", "PA")))
            # say which protocol each row's J&F follows: figures of different protocols are not comparable
            for (name, values), scores in zip(rows, self.scores):
                if isinstance(scores, VideoReferringScores):
                    rank_zero_info(f"{name}: {scores.describe(values)}")

    def predict_step(self, batch: list[Sample | BadSample], batch_idx: int, dataloader_idx: int = 0) -> list[SampleResult]:
        results = []
        for item in batch:
            if isinstance(item, BadSample):
                log.warning("skipped sample %s: %s", item.sample_id, item.reason)
                continue
            results.append(self.segment_sample(item))
        return results
