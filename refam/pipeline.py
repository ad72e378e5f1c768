"""RefAMPipeline: one sample's journey, for an image or a video: the DiT's attention maps of the
expression's tokens (magnets appended, read through the expression branch) -> the kept tokens' maps
aggregated to a heatmap (spatial bias applied) -> its argmax point -> the segmenter's mask. It is
the one piece that `refam test` (RefAMModule), the Python API, `refam predict`, `analyze` and
`serve` run. It holds no scores: scoring is `refam.evaluation.scoring`'s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from refam.aggregators.base import Aggregation, Aggregator, SoftmaxMeanAggregator
from refam.aggregators.gas import sink_category
from refam.aggregators.magnets import AppendMagnets, MagnetStrategy
from refam.aggregators.spatial import BiasContext, SpatialBias
from refam.config import as_config
from refam.errors import ConfigError, ExpressionError, RefamError, require_words
from refam.extractors.base import Extractor, VideoExtractor
from refam.extractors.cache import MapCache
from refam.code_identity import RESULTS_LIBRARIES, code_identity, library_versions, spacy_models
from refam.identity import weights_identity
from refam.prompts.corrections import joined
from refam.prompts.keyframe import key_frames
from refam.prompts.point import argmax_points, upsample
from refam.referent.calibration import NoReferentCalibration, calibration_for
from refam.referent.statistics import expression_statistics
from refam.segmenters.base import Segmenter, points_refused
from refam.segmenters.video_base import VideoSegmenter
from refam.settings import TEXT_CONDITIONS, Settings  # noqa: F401 (TEXT_CONDITIONS re-exported)
from refam.text.caveats import expression_warnings
from refam.types import Expression, Point, Prediction, Sample, TokenMaps, VideoExpression, VideoSample

# receives each video mask as the segmenter makes it: (expression, frame index, mask)
MaskSink = Callable[[VideoExpression, int, np.ndarray], None]
# a user's points per expression id (refam.prompts.corrections), for `segment_sample` / `segment_video`
UserPoints = Mapping[str, Sequence[Point]]


@dataclass
class SampleResult:
    sample_id: str
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one message per expression that could not be run


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


def _attach_token_maps(prediction: Prediction, maps: TokenMaps, aggregation: Aggregation, k: int,
                       latent: int | None = None) -> None:
    """Each real token's map (of latent frame `latent` for a video), for the pictures and analysis."""
    valid = maps.valid[k]
    probabilities = aggregation.probabilities[k] if latent is None else aggregation.probabilities[k, :, latent]
    prediction.tokens = [t.piece for t, v in zip(maps.tokens[k], valid.tolist()) if v]
    prediction.token_maps = probabilities[valid].clone()
    prediction.text_mass = maps.text_mass[k][valid].tolist()
    prediction.token_kept = aggregation.kept[k][valid].tolist()
    prediction.token_sink = aggregation.sinks[k][valid].tolist()


class RefAMPipeline:
    """Zero-shot referring segmentation: expression branch maps -> heatmap -> point -> mask.

    It holds what is loaded (the extractor, the segmenter, the map cache) and its default
    `settings` (`refam.settings.Settings`, made from the arguments below); `segment_sample` and
    `segment_video` take other `Settings` per call without changing anything it holds.

    Args:
        extractor: the DiT observed through the expression branch (e.g. FluxExtractor).
        segmenter: point (and heatmap) -> mask (e.g. SAM2PointSegmenter); a VideoSegmenter for videos.
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
        self.extractor = extractor
        self.segmenter = segmenter
        # None is the paper's magnets, its aggregator and no spatial bias; checked here, once
        self.settings = Settings(magnets=magnets if magnets is not None else AppendMagnets(),
                                 aggregator=aggregator if aggregator is not None else SoftmaxMeanAggregator(),
                                 spatial_bias=spatial_bias, text_condition=text_condition, key_frame=key_frame)
        self.map_cache = MapCache(map_cache) if map_cache else None
        # the no-referent flag beside the weights (`refam.referent.calibration`), read by `setup`
        self.no_referent: NoReferentCalibration | None = None

    # the default settings, read as the constructor's arguments (set them with `with_settings`)
    magnets = property(lambda self: self.settings.magnets)
    aggregator = property(lambda self: self.settings.aggregator)
    spatial_bias = property(lambda self: self.settings.spatial_bias)
    text_condition = property(lambda self: self.settings.text_condition)
    key_frame = property(lambda self: self.settings.key_frame)

    def with_settings(self, **changes) -> "RefAMPipeline":
        """This pipeline with other default settings (any field of `Settings`), checked as the
        constructor checks them: the loaded extractor, segmenter and map cache are shared (no
        weights copied or reloaded) and this pipeline is not changed. A single call needs none:
        pass `settings=` to `segment_sample` / `segment_video`."""
        unknown = sorted(set(changes) - set(Settings.names()))
        if unknown:
            raise TypeError(f"with_settings takes {Settings.names()}, not {unknown}")
        other = copy.copy(self)
        other.settings = replace(self.settings, **changes)
        return other

    def model_section(self, settings: Settings | None = None) -> dict:
        """The `model:` section that builds this pipeline again with `settings` (default its own)
        as its defaults, read from its components' records (`refam.config.Configurable.to_config`):
        what a saved run holds. A per-call block selection or trajectory is written into the
        extractor's entry, where a config names it."""
        settings = settings or self.settings
        extractor = self.extractor.to_config()
        for name, value in settings.extractor_overrides().items():
            extractor["init_args"][name] = as_config(value)
        section = {"extractor": extractor, "segmenter": self.segmenter.to_config(),
                   "magnets": settings.magnets.to_config(), "aggregator": settings.aggregator.to_config(),
                   "spatial_bias": [bias.to_config() for bias in settings.spatial_bias],
                   "text_condition": settings.text_condition, "key_frame": settings.key_frame}
        if self.map_cache is not None:
            section["map_cache"] = str(self.map_cache.folder)
        return section

    def setup(self, device: torch.device | str) -> None:
        """Load the weights onto `device`; an error names the component it came from."""
        # the calibration beside the weights, then the light component: their errors come before the DiT's progress bars
        self.no_referent = calibration_for(self.extractor)
        for name in ("segmenter", "extractor"):
            with self._calling(name):
                getattr(self, name).setup(torch.device(device))

    @contextmanager
    def _calling(self, name: str) -> Iterator[None]:
        """Mark a user error raised by the component given as argument `name` as that component's."""
        try:
            yield
        except RefamError as err:
            raise err.within(name)

    @staticmethod
    def _bias_argument(settings: Settings, index: int) -> str:
        # a list of one is written as the single value it holds, as refam.errors.place names it
        return "spatial_bias" if len(settings.spatial_bias) == 1 else f"spatial_bias[{index}]"

    def _biased(self, settings: Settings, heatmaps: torch.Tensor, texts: list[str], context: BiasContext) -> torch.Tensor:
        for index, bias in enumerate(settings.spatial_bias):
            with self._calling(self._bias_argument(settings, index)):
                heatmaps = bias(heatmaps, texts, context)
        return heatmaps

    def numbers_identity(self) -> dict:
        """What changes this pipeline's numbers besides its config's text: the content of the files
        and the commits of the hub ids its components' settings name (weights, model configs), the
        code its components run (`refam.code_identity`: computed from the sources) and the
        versions of the libraries that change numbers. The result store keys every record by it."""
        components = (self.extractor, self.segmenter, *self.settings.components())
        return {"weights": weights_identity(*components),
                "code": code_identity(*components, modules=[__name__]),
                "libraries": library_versions(RESULTS_LIBRARIES, spacy_models(*components))}

    # ------------------------------------------------------------ expressions
    def check_expression(self, text: str, settings: Settings | None = None) -> tuple[str, int]:
        """The expression with magnets (of `settings`, default this pipeline's) as the extractor
        reads it, and where the magnets start; raises ExpressionError for one that cannot run
        (empty, too long for the text encoder)."""
        require_words(text)
        augmented = (settings or self.settings).magnets.augment(text)
        self.extractor.validate_expression(augmented[0])
        return augmented

    def _runnable(self, sample: Sample | VideoSample, result: SampleResult, settings: Settings) -> tuple[list, list]:
        """The expressions the extractor can encode, with magnets; the others are reported in `result`."""
        runnable, augmented = [], []
        for expression in sample.expressions:
            try:
                augmented.append(self.check_expression(expression.text, settings))
            except ExpressionError as err:
                result.skipped.append(f"{sample.source or sample.sample_id} expression {expression.expression_id!r}: {err}")
                continue
            runnable.append(expression)
        return runnable, augmented

    def _read(self, sample: Sample | VideoSample, result: SampleResult, settings: Settings, pixels,
              extract: Callable[..., TokenMaps], cache_source=None) -> tuple[list, TokenMaps, Aggregation] | None:
        """The step images and videos share: the expressions that can run (the others reported in
        `result`; None when none can), their token maps from `extract(pixels, ...)` with the
        settings' block selection and trajectory passed per call (the map cache's maps when it holds
        them, keyed by `cache_source`, default the pixels, and by those per-call arguments) and
        their aggregation."""
        runnable, augmented = self._runnable(sample, result, settings)
        if not runnable:
            return None
        caption = sample.caption if settings.text_condition == "caption" else ""
        magnets, overrides = settings.magnets, settings.extractor_overrides()

        def compute() -> TokenMaps:
            return extract(pixels, caption, augmented, sample.sample_id, magnet_vectors=magnets.vectors, **overrides)

        source = pixels if cache_source is None else cache_source
        with self._calling("extractor"):
            maps = compute() if self.map_cache is None else self.map_cache.extract(
                self.extractor, compute, sample.sample_id, source, caption, augmented, magnets, overrides)
        keep = torch.tensor([magnets.keep(tokens, e.text) for tokens, e in zip(maps.tokens, runnable)], dtype=torch.bool)
        with self._calling("aggregator"):
            aggregation = settings.aggregator(maps, keep)
        return runnable, maps, aggregation

    # ------------------------------------------------------------ images
    def _user_points(self, sample: Sample | VideoSample, points: UserPoints | None) -> dict[str, list[Point]]:
        """The user's points of the expressions that have some, refused before the DiT runs when the
        segmenter cannot take them or they name an expression the sample does not have."""
        given = {str(key): list(value) for key, value in (points or {}).items() if value}
        unknown = sorted(set(given) - {e.expression_id for e in sample.expressions})
        if unknown:
            raise ConfigError(f"points for expression ids {unknown}, which {sample.sample_id!r} does not have")
        if given and not self.segmenter.takes_points:
            raise points_refused(self.segmenter)
        return given

    def segment_sample(self, sample: Sample, keep_token_maps: bool = False,
                       settings: Settings | None = None, points: UserPoints | None = None) -> SampleResult:
        """Run every expression of one image; an expression that cannot run is reported, not fatal.

        `keep_token_maps` also returns each real token's map (for visualisation and analysis).
        `settings`: this call's (`refam.settings.Settings`), default the pipeline's own. `points`:
        a user's points per expression id, joined with the model's (`refam.prompts.corrections`);
        an expression without them is segmented exactly as without `points`."""
        settings = settings or self.settings
        user = self._user_points(sample, points)
        result = SampleResult(sample.sample_id)
        read = self._read(sample, result, settings, sample.image, self.extractor.extract)
        if read is None:
            return result
        runnable, maps, aggregation = read
        context = BiasContext(aggregation.probabilities, maps.tokens)
        aggregation.heatmaps = self._biased(settings, aggregation.heatmaps, [e.text for e in runnable], context)
        width, height = sample.image.size
        points = argmax_points(aggregation.heatmaps, height, width)
        image, heatmaps = np.array(sample.image.convert("RGB")), upsample(aggregation.heatmaps, height, width)
        with self._calling("segmenter"):
            masks = self.segmenter.segment(image, points.numpy(), heatmaps)
        flag = self._flag_applies(sample, settings)
        statistics = [expression_statistics(maps, aggregation, k, masks[k]) for k in range(len(runnable))] if flag else []
        prompts = [joined(points[k].tolist(), user.get(e.expression_id, []), masks[k]) for k, e in enumerate(runnable)]
        corrected = [k for k, e in enumerate(runnable) if e.expression_id in user]
        if corrected:  # the others keep the masks of their point alone
            with self._calling("segmenter"):
                masks[corrected] = self.segmenter.segment_points(image, [prompts[k] for k in corrected], heatmaps[corrected])
        for k, expression in enumerate(runnable):
            prediction = Prediction(expression_id=expression.expression_id, mask=masks[k],
                                    point=(float(points[k, 0]), float(points[k, 1])), points=prompts[k],
                                    heatmap=aggregation.heatmaps[k], **token_report(maps, aggregation, k))
            if keep_token_maps:
                _attach_token_maps(prediction, maps, aggregation, k)
            result.predictions.append(prediction)
        self._warn(result, maps, runnable, settings)
        for prediction, values in zip(result.predictions, statistics):  # the maps and masks of the model's points
            if not prediction.warnings:  # an unknown word or no content word: unlike any expression it was measured on
                self._flag(prediction, values[self.no_referent.statistic])
        return result

    @staticmethod
    def _warn(result: SampleResult, maps: TokenMaps, runnable: list, settings: Settings) -> None:
        """Each prediction's warnings (`refam.text.caveats`); predictions are in `runnable`'s order."""
        for prediction, tokens, expression in zip(result.predictions, maps.tokens, runnable):
            selected = settings.magnets.select(tokens, expression.text)
            prediction.warnings = expression_warnings(expression.text, tokens, selected)

    def _flag_applies(self, sample: Sample, settings: Settings) -> bool:
        """Whether this call is what the model's no-referent flag was measured on (its settings, no caption)."""
        caption = sample.caption if settings.text_condition == "caption" else ""
        return self.no_referent is not None and self.no_referent.applies(self.model_section(settings), caption)

    def _flag(self, prediction: Prediction, value: float) -> None:
        """The no-referent flag on one prediction, and its warning when it fires."""
        prediction.referent_statistic = value
        prediction.no_referent = self.no_referent.fires(value)
        if prediction.no_referent:
            prediction.warnings.append(self.no_referent.warning(value))

    # ------------------------------------------------------------ videos
    @property
    def reads_video(self) -> bool:
        """Whether this pipeline segments videos (`segment_video`): a video backbone, and a
        segmenter that tracks through frames."""
        return isinstance(self.extractor, VideoExtractor) and isinstance(self.segmenter, VideoSegmenter)

    def segment_video(self, video: VideoSample, on_mask: MaskSink | None = None, keep_token_maps: bool = False,
                      settings: Settings | None = None, points: UserPoints | None = None) -> SampleResult:
        """Run every expression of one video: the DiT sees the clip once for all expressions; each
        expression's point prompts its key frame and the video segmenter tracks it through the video.

        Masks are not kept: `on_mask(expression, frame index, mask)` receives each as it is made, so
        scoring and writing stream frame by frame. Each prediction holds the key frame's mask.
        `keep_token_maps` also returns each real token's map on the key frame (for the pictures).
        `settings`: this call's (`refam.settings.Settings`), default the pipeline's own. `points`: a
        user's points per expression id on its key frame (`Prediction.frame`), joined with the
        model's as `segment_sample` joins them (the model's mask there: its point's on the key frame)."""
        settings = settings or self.settings
        if not self.reads_video:  # say which component cannot
            if not isinstance(self.segmenter, VideoSegmenter):
                raise ConfigError(f"{type(self.segmenter).__name__} segments images; a video dataset needs a "
                                  "VideoSegmenter such as refam.segmenters.sam2_video.SAM2VideoSegmenter",
                                  field="segmenter")
            raise ConfigError(f"{type(self.extractor).__name__} reads images only; a video dataset "
                              "needs a video backbone such as refam.extractors.mochi.MochiExtractor", field="extractor")
        user = self._user_points(video, points)
        result = SampleResult(video.sample_id)
        read = self._read(video, result, settings, video.images, self.extractor.extract_video, cache_source=video.frames)
        if read is None:
            return result
        runnable, maps, aggregation = read  # heatmaps [K, F_lat, h, w]
        frame_to_latent = maps.frame_to_latent or [0] * len(video.frames)
        prompts = key_frames(aggregation.heatmaps, frame_to_latent, settings.key_frame)
        width, height = video.frame(0).size  # a video's frames share one size
        tracks: dict[tuple[int, tuple[Point, ...]], list[int]] = {}  # one segmenter run per distinct prompt
        for k, expression in enumerate(runnable):
            frame, latent = prompts[k], frame_to_latent[prompts[k]]
            heat = aggregation.heatmaps[k, latent][None]
            context = BiasContext(aggregation.probabilities[k : k + 1, :, latent], [maps.tokens[k]])
            heat = self._biased(settings, heat, [expression.text], context)
            x, y = argmax_points(heat, height, width)[0].tolist()
            prompt = [Point(x, y, 1, "model")]
            if expression.expression_id in user:  # the model's mask: its point's on the key frame
                with closing(self._track(video, frame, prompt)) as track:
                    prompt = joined((x, y), user[expression.expression_id], next(track)[1])
            tracks.setdefault((frame, tuple(prompt)), []).append(k)
            prediction = Prediction(expression_id=expression.expression_id, mask=None, point=(x, y), heatmap=heat[0],
                                    frame=frame, points=prompt, **token_report(maps, aggregation, k))
            if keep_token_maps:  # the key frame's, as segment_sample's for an image
                _attach_token_maps(prediction, maps, aggregation, k, latent)
            result.predictions.append(prediction)
        self._warn(result, maps, runnable, settings)
        # expressions prompting the same point on the same frame share a track (the segmenter is
        # deterministic), each still receiving every mask
        for (frame, prompt), members in tracks.items():
            for index, mask in self._track(video, frame, list(prompt)):
                for k in members:
                    if index == frame:
                        result.predictions[k].mask = mask
                    if on_mask is not None:
                        on_mask(runnable[k], index, mask)
        return result

    def _track(self, video: VideoSample, frame: int, prompt: list[Point]) -> Iterator[tuple[int, np.ndarray]]:
        """The segmenter's masks from `prompt` on `frame` (the model's point alone: `track`, else
        `track_points`); its errors are marked as the segmenter's (those of the caller's `on_mask` are not)."""
        with self._calling("segmenter"):
            if [p.source for p in prompt] == ["model"]:
                yield from self.segmenter.track(video.frames, frame, (prompt[0].x, prompt[0].y))
            else:
                yield from self.segmenter.track_points(video.frames, frame, prompt)
