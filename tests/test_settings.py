"""Per-call settings (issue O point 1): what a user flips is one frozen `Settings`, checked once and
naming its field; a call given settings answers exactly as a pipeline built with them, on images
and videos, and leaves the loaded pipeline and extractor as they were, even during the call."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refam.aggregators.base import SoftmaxMeanAggregator
from refam.aggregators.magnets import AppendMagnets
from refam.aggregators.spatial import DirectionPrior
from refam.api import DEFAULT_CONFIG
from refam.data.manifest import ManifestDataset
from refam.errors import ConfigError
from refam.extractors.trajectory import NoiseAt
from refam.pipeline import RefAMPipeline
from refam.sections import build_pipeline, pipeline_from_config
from refam.segmenters.video_base import VideoSegmenter
from refam.settings import Settings
from refam.types import VideoExpression, VideoSample

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("field, value", [
    ("magnets", "pink"), ("aggregator", None), ("spatial_bias", ["left"]), ("text_condition", "caption please"),
    ("key_frame", "middle"), ("blocks", 1.5), ("blocks", []), ("blocks", "all"), ("trajectory", 0.75),
])
def test_a_bad_setting_names_its_field(field, value):
    with pytest.raises(ConfigError) as info:
        Settings(**{field: value})
    assert info.value.field == field
    with pytest.raises(ConfigError) as again:  # a replaced value is checked too
        dataclasses.replace(Settings(), **{field: value})
    assert again.value.field == field


def test_the_constructor_checks_as_settings_do_and_a_settings_value_is_frozen():
    with pytest.raises(ConfigError) as info:
        RefAMPipeline(extractor=None, segmenter=None, key_frame="middle")
    assert info.value.field == "key_frame"
    with pytest.raises(ConfigError) as info:
        Settings(spatial_bias=[DirectionPrior(), "right"])
    assert info.value.field == "spatial_bias[1]"  # as refam.errors.place names an item of a list
    settings = Settings(spatial_bias=DirectionPrior(), blocks=[1, 2])
    assert isinstance(settings.spatial_bias, tuple) and settings.blocks == (1, 2)  # immutable, as the value is
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.blocks = [0]
    assert dataclasses.replace(settings, key_frame="confident").blocks == (1, 2)


@pytest.fixture(scope="module")
def loaded():
    pipeline = pipeline_from_config(DEFAULT_CONFIG)
    pipeline.setup("cpu")
    return pipeline


@pytest.fixture(scope="module")
def sample():
    return ManifestDataset(str(ROOT / "assets/shapes-demo/manifest.jsonl"))[1]  # "the object on the right" among them


def snapshot(pipeline) -> tuple:
    """Everything a call could change: each attribute of the pipeline and of its extractor (by
    identity: a reassignment shows), the settings, and the extractor's record and key."""
    extractor = pipeline.extractor
    return ({name: id(value) for name, value in vars(pipeline).items()}, pipeline.settings,
            {name: id(value) for name, value in vars(extractor).items()}, extractor.to_config(),
            extractor.settings(), extractor.cache_key_settings())


def assert_same(first, second):
    assert [p.expression_id for p in first.predictions] == [p.expression_id for p in second.predictions]
    assert first.predictions
    for p, q in zip(first.predictions, second.predictions):
        assert p.point == q.point and p.frame == q.frame
        assert torch.equal(p.heatmap, q.heatmap)
        assert (p.mask is None and q.mask is None) or np.array_equal(p.mask, q.mask)
        assert (p.tokens, p.kept_tokens, p.sinks) == (q.tokens, q.kept_tokens, q.sinks)
        assert torch.equal(p.token_maps, q.token_maps)


def test_an_images_call_with_settings_equals_a_pipeline_built_with_them(loaded, sample, monkeypatch):
    settings = dataclasses.replace(
        loaded.settings, magnets=AppendMagnets(["_", "with"], filter_stop_words=False),
        aggregator=SoftmaxMeanAggregator(gas="drop"), spatial_bias=[DirectionPrior()], text_condition="empty",
        blocks=[1, 2], trajectory=NoiseAt(0.5))
    before = snapshot(loaded)
    during = []
    extract = type(loaded.extractor).extract

    def watched(self, *args, **kwargs):
        during.append(snapshot(loaded) == before)
        return extract(self, *args, **kwargs)

    monkeypatch.setattr(type(loaded.extractor), "extract", watched)
    per_call = loaded.segment_sample(sample, keep_token_maps=True, settings=settings)
    assert during == [True] and snapshot(loaded) == before  # nothing loaded changed, not even for a moment
    monkeypatch.undo()

    built = build_pipeline(loaded.model_section(settings))  # the section a saved run holds for this call
    built.setup("cpu")
    assert built.extractor.blocks == [1, 2] and built.extractor.trajectory.sigma == 0.5
    assert built.settings.text_condition == "empty" and built.magnets.magnets == ["_", "with"]
    assert_same(per_call, built.segment_sample(sample, keep_token_maps=True))
    # and the settings mattered: the loaded pipeline's own answer differs
    default = loaded.segment_sample(sample, keep_token_maps=True)
    assert any(not torch.equal(p.heatmap, q.heatmap) for p, q in zip(default.predictions, per_call.predictions))
    # the thin convenience gives the same: a pipeline whose default settings these are
    assert_same(loaded.with_settings(**vars(settings)).segment_sample(sample, keep_token_maps=True), per_call)


class Still(VideoSegmenter):
    """A weightless tracker: the prompted pixel on every frame."""

    def track(self, frames, frame_index, point):
        for index in range(len(frames)):
            mask = np.zeros((60, 100), dtype=bool)
            mask[int(point[1]), int(point[0])] = True
            yield index, mask


def test_a_videos_call_with_settings_equals_a_pipeline_built_with_them(tmp_path):
    from refam.extractors.mochi import MochiExtractor
    from refam.testing.tiny_mochi import save_tiny_mochi

    folder = str(save_tiny_mochi(tmp_path / "mochi", layers=3))
    own = dict(torch_dtype="float32", height=48, width=80, clip_frames=7, caption_max_tokens=16)
    frames = []
    for index in range(7):
        frames.append(str(tmp_path / f"{index:05d}.png"))
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (60, 100, 3), dtype=np.uint8)).save(frames[-1])
    video = VideoSample("clip", frames, [VideoExpression("the red dog", "0"), VideoExpression("a man", "1")],
                        caption="a dog and a man")
    loaded = RefAMPipeline(MochiExtractor(folder, **own), Still(), map_cache=str(tmp_path / "maps"))
    loaded.setup("cpu")
    settings = dataclasses.replace(loaded.settings, blocks=[0, 2], trajectory=NoiseAt(0.4), key_frame="confident")
    before = snapshot(loaded)
    masks = []
    per_call = loaded.segment_video(video, lambda e, i, m: masks.append((e.expression_id, i, m.sum())),
                                    keep_token_maps=True, settings=settings)
    assert snapshot(loaded) == before
    built = RefAMPipeline(MochiExtractor(folder, blocks=[0, 2], trajectory=NoiseAt(0.4), **own), Still(),
                          key_frame="confident")
    built.setup("cpu")
    again = []
    assert_same(per_call, built.segment_video(video, lambda e, i, m: again.append((e.expression_id, i, m.sum())),
                                              keep_token_maps=True))
    assert masks == again and len(masks) == 14
    default = loaded.segment_video(video, keep_token_maps=True)
    assert loaded.map_cache.misses == 2  # the per-call settings' maps are not the extractor's own
    assert any(not torch.equal(p.heatmap, q.heatmap) for p, q in zip(default.predictions, per_call.predictions))
