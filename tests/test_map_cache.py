"""The attention-map cache (issue F): a rerun that changes only what acts after the maps
(aggregation, spatial bias, segmenter, token filtering) makes no extractor call and predicts exactly
what a fresh run does; whatever changes the maps misses; a corrupt file is recomputed."""

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from refam.aggregators.base import SoftmaxMeanAggregator
from refam.aggregators.magnets import AppendMagnets, RandomVectorMagnets
from refam.aggregators.spatial import SpatialBias
from refam.api import DEFAULT_CONFIG
from refam.sections import pipeline_from_config
from refam.data.manifest import ManifestDataset
from refam.embedded import REFAM_SHAPES, resolve_embedded
from refam.extractors.cache import MapCache, cache_key, model_identity
from refam.extractors.trajectory import NoiseAt, RFInversion
from refam.segmenters.floodfill import FloodFillSegmenter
from refam.types import TokenInfo, TokenMaps

ROOT = Path(__file__).resolve().parents[1]


class LeftRamp(SpatialBias):
    """A positional prior that needs no parser: favours the left of the image."""

    def __call__(self, heatmaps, expressions, context=None):
        cols = heatmaps.shape[-1]
        return heatmaps * torch.linspace(1.0, 0.2, cols)


@pytest.fixture(scope="module")
def module():
    module = pipeline_from_config(DEFAULT_CONFIG)
    module.extractor.setup(torch.device("cpu"))
    module.segmenter.setup(torch.device("cpu"))
    return module


@pytest.fixture(scope="module")
def samples():
    dataset = ManifestDataset(str(ROOT / "assets/shapes-demo/manifest.jsonl"))
    return [dataset[0], dataset[1]]


@pytest.fixture
def counted(module, monkeypatch):
    """The module with its components restorable and its extractor calls counted."""
    calls = []
    extract = module.extractor.extract

    def counting(*args, **kwargs):
        calls.append(args[3])  # sample id
        return extract(*args, **kwargs)

    monkeypatch.setattr(module.extractor, "extract", counting)
    for name in ("settings", "segmenter", "map_cache"):
        monkeypatch.setattr(module, name, getattr(module, name))
    for name in ("seed", "blocks", "trajectory", "pretrained"):
        monkeypatch.setattr(module.extractor, name, getattr(module.extractor, name))
    return module, calls


def run(module, samples):
    return [module.segment_sample(s) for s in samples]


def assert_same_predictions(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert [p.expression_id for p in a.predictions] == [p.expression_id for p in b.predictions]
        for p, q in zip(a.predictions, b.predictions):
            assert np.array_equal(p.mask, q.mask)
            assert p.point == q.point
            assert torch.equal(p.heatmap, q.heatmap)
            assert (p.kept_tokens, p.dropped_tokens, p.sinks) == (q.kept_tokens, q.dropped_tokens, q.sinks)


def test_rerun_changing_only_aggregation_bias_or_segmenter_skips_the_dit(counted, samples, tmp_path):
    module, calls = counted
    module.map_cache = MapCache(tmp_path / "maps")
    cold = run(module, samples)
    assert calls == [s.sample_id for s in samples] and module.map_cache.misses == 2
    assert len(list((tmp_path / "maps").glob("*.safetensors"))) == 2
    module.map_cache = None
    assert_same_predictions(cold, run(module, samples))  # the cache does not change a cold run's answers

    changes = [
        ("aggregator", SoftmaxMeanAggregator(gas_factor=2.0, gas="drop")),
        ("spatial_bias", [LeftRamp()]),
        ("segmenter", FloodFillSegmenter(tolerance=8)),
        ("magnets", AppendMagnets(filter_stop_words=False)),  # same magnet words: only `keep` changes
    ]
    for name, value in changes:
        if name == "segmenter":  # loaded, not a setting
            module.segmenter = value
        else:
            module.settings = dataclasses.replace(module.settings, **{name: value})
        module.map_cache = None
        calls.clear()
        fresh = run(module, samples)
        assert len(calls) == 2
        module.map_cache = MapCache(tmp_path / "maps")
        calls.clear()
        warm = run(module, samples)
        assert calls == [], f"changing {name} reran the extractor"
        assert module.map_cache.hits == 2 and module.map_cache.misses == 0
        assert_same_predictions(warm, fresh)


@pytest.mark.parametrize("change", ["seed", "caption", "magnet words", "magnet vectors", "vector seed", "blocks",
                                    "noise level", "trajectory", "model path", "expressions", "blocks per call",
                                    "noise level per call", "trajectory per call"])
def test_what_changes_the_maps_misses(counted, samples, tmp_path, change):
    module, calls = counted
    sample = samples[0]
    call = None  # the settings of the last call (refam.settings.Settings): the pipeline's own

    def use(magnets):  # as the pipeline's default settings
        module.settings = dataclasses.replace(module.settings, magnets=magnets)

    if change == "magnet vectors":
        use(RandomVectorMagnets(count=2, seed=0))
    module.map_cache = MapCache(tmp_path / "maps")
    module.segment_sample(sample)
    module.segment_sample(sample)
    assert len(calls) == 1  # the same run again hits
    extractor = module.extractor
    if change == "seed":
        extractor.seed = 1
    elif change == "caption":
        sample = dataclasses.replace(sample, caption=sample.caption + " on a white background")
    elif change == "magnet words":
        use(AppendMagnets(magnets=["_", "with", "to", "and"]))
    elif change == "magnet vectors":
        use(RandomVectorMagnets(count=3, seed=0))
    elif change == "vector seed":
        use(RandomVectorMagnets(count=4, seed=0))
        module.segment_sample(sample)
        use(RandomVectorMagnets(count=4, seed=1))
    elif change == "blocks":
        extractor.blocks = [0, 1]
    elif change == "noise level":
        extractor.trajectory = NoiseAt(sigma=0.5)
    elif change == "trajectory":
        extractor.trajectory = RFInversion(steps=2)
    elif change == "model path":
        copy = tmp_path / "model"
        shutil.copytree(resolve_embedded(extractor.pretrained), copy)
        extractor.pretrained = str(copy)
    elif change == "expressions":
        sample = dataclasses.replace(sample, expressions=sample.expressions[:2])
    elif change == "blocks per call":  # the extractor's own settings are unchanged: only the call's differ
        call = dataclasses.replace(module.settings, blocks=[0, 1])
    elif change == "noise level per call":
        call = dataclasses.replace(module.settings, trajectory=NoiseAt(sigma=0.5))
    elif change == "trajectory per call":
        call = dataclasses.replace(module.settings, trajectory=RFInversion(steps=2))
    before = len(calls)
    module.segment_sample(sample, settings=call)
    assert len(calls) == before + 1, f"changing the {change} hit the cache"
    module.segment_sample(sample, settings=call)
    assert len(calls) == before + 1, f"the same {change} again missed"


def test_a_calls_blocks_and_trajectory_share_the_entry_of_an_extractor_built_with_them(counted, samples, tmp_path):
    """The key holds what the call ran with: settings passed per call take the place of the
    extractor's own, so the maps an extractor built with them stored are found, and they are equal."""
    module, calls = counted
    module.map_cache = MapCache(tmp_path / "maps")
    call = dataclasses.replace(module.settings, blocks=[0, 1], trajectory=NoiseAt(sigma=0.5))
    per_call = module.segment_sample(samples[0], settings=call)
    assert len(calls) == 1
    module.extractor.blocks, module.extractor.trajectory = [0, 1], NoiseAt(sigma=0.5)  # restored by `counted`
    assert_same_predictions([module.segment_sample(samples[0])], [per_call])
    assert len(calls) == 1 and module.map_cache.hits == 1


def _rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """Other content of the same size under the same mtime (`cp -p`, rsync -a, a tar of another
    checkpoint): what a size-and-mtime key cannot tell apart."""
    stat = path.stat()
    assert len(data) == stat.st_size
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_model_identity_follows_weights_and_configs_by_content(tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(REFAM_SHAPES, copy)
    base = model_identity(str(copy))
    assert model_identity(str(copy)) == base
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: same weights
    assert model_identity(str(copy)) == base
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # other weights, same size, same mtime
    _rewrite_keeping_size_and_mtime(weights, bytes(data))
    retrained = model_identity(str(copy))
    assert retrained != base
    config = copy / "scheduler" / "scheduler_config.json"
    text = config.read_text()
    _rewrite_keeping_size_and_mtime(config, text.replace('"', "'", 1).encode())
    assert model_identity(str(copy)) != retrained
    hub = model_identity("black-forest-labs/FLUX.1-dev")  # offline and not cached here: no commit known
    assert hub == {"hub_id": "black-forest-labs/FLUX.1-dev", "revision": None}


def test_swapped_weights_of_the_same_size_and_mtime_miss(counted, samples, tmp_path):
    """Weights replaced in place by others of the same size and mtime: the maps are recomputed."""
    module, calls = counted
    copy = tmp_path / "model"
    shutil.copytree(resolve_embedded(module.extractor.pretrained), copy)
    module.extractor.pretrained = str(copy)
    module.map_cache = MapCache(tmp_path / "maps")
    module.segment_sample(samples[0])
    module.segment_sample(samples[0])
    assert len(calls) == 1
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the file's last byte: weights, not the safetensors header
    _rewrite_keeping_size_and_mtime(weights, bytes(data))
    module.segment_sample(samples[0])
    assert len(calls) == 2, "maps of other weights were replayed"


def test_changed_sample_misses_with_a_warning_naming_it(counted, samples, tmp_path, caplog):
    module, calls = counted
    module.map_cache = MapCache(tmp_path / "maps")
    sample = samples[0]
    module.segment_sample(sample)
    edited = dataclasses.replace(sample, expressions=[dataclasses.replace(sample.expressions[0], text="the blue thing"),
                                                      *sample.expressions[1:]])
    with caplog.at_level(logging.WARNING, logger="refam.extractors.cache"):
        module.segment_sample(edited)
    assert len(calls) == 2
    assert f"sample {sample.sample_id} changed" in caplog.text and "expressions" in caplog.text
    caplog.clear()
    module.extractor.seed = 1  # other settings: a different entry, not a changed sample
    with caplog.at_level(logging.WARNING, logger="refam.extractors.cache"):
        module.segment_sample(edited)
    assert len(calls) == 3 and "changed" not in caplog.text


@pytest.mark.parametrize("change", ["extractor code", "a code it imports", "library version"])
def test_maps_of_other_code_or_libraries_miss_said_once(counted, samples, tmp_path, caplog, monkeypatch, change):
    """Issue N point 1: maps are keyed by the code that makes them (computed from the sources) and the
    library versions that change them; a segmenter's code is not part of the maps' key."""
    import refam.code_identity as identity

    module, calls = counted
    module.map_cache = MapCache(tmp_path / "maps")
    run(module, samples)
    graph = dict(identity._import_graph())

    def edited(name):
        graph[name] = ("edited", graph[name][1])
        monkeypatch.setattr(identity, "_import_graph", lambda: graph)

    edited("refam.segmenters.floodfill")  # code after the maps: still a hit
    module.map_cache = MapCache(tmp_path / "maps")  # a new process
    run(module, samples)
    assert len(calls) == 2
    if change == "extractor code":
        edited("refam.extractors.flux")
    elif change == "a code it imports":
        edited("refam.extractors.branch")
    else:
        real = identity._version
        monkeypatch.setattr(identity, "_version", lambda name: "9.9" if name == "diffusers" else real(name))
    module.map_cache = MapCache(tmp_path / "maps")
    with caplog.at_level(logging.WARNING, logger="refam.extractors.cache"):
        run(module, samples)
    assert len(calls) == 4, "maps of other code or libraries were replayed"
    said = [r.getMessage() for r in caplog.records if "other code or libraries" in r.getMessage()]
    assert len(said) == 1 and ("diffusers" in said[0] if change == "library version" else "code" in said[0])


def test_corrupt_cache_file_is_reported_and_recomputed(counted, samples, tmp_path, caplog):
    module, calls = counted
    module.map_cache = MapCache(tmp_path / "maps")
    first = run(module, samples[:1])
    (path,) = (tmp_path / "maps").glob("*.safetensors")
    data = path.read_bytes()
    for damage in (data[: len(data) // 2], b"not a safetensors file", data[:-1] + bytes([data[-1] ^ 1])):  # truncated, garbage, one bit of the data flipped
        path.write_bytes(damage)
        module.map_cache = MapCache(tmp_path / "maps")
        calls.clear()
        with caplog.at_level(logging.WARNING, logger="refam.extractors.cache"):
            again = run(module, samples[:1])
        assert len(calls) == 1 and module.map_cache.corrupt == 1
        assert str(path) in caplog.text and "recomputing" in caplog.text
        assert_same_predictions(again, first)
        caplog.clear()
    module.map_cache = MapCache(tmp_path / "maps")
    calls.clear()
    run(module, samples[:1])
    assert calls == []  # the recomputed entry was written back
    assert not list((tmp_path / "maps").glob(".*.part"))  # nothing half-written left


def test_entry_that_does_not_fit_the_expressions_is_recomputed(tmp_path):
    cache = MapCache(tmp_path)
    maps = TokenMaps(torch.zeros(2, 3, 4, 4), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 3),
                     [[TokenInfo("a", "a", False, False)] * 3] * 2)
    path = tmp_path / "x.safetensors"
    cache.save(path, maps)
    with pytest.raises(Exception, match="inconsistent"):
        cache.load(path, expected=3)


def test_tokens_and_tensors_round_trip_exactly(module, samples, tmp_path):
    sample = samples[0]
    augmented = [module.magnets.augment(e.text) for e in sample.expressions]
    maps = module.extractor.extract(sample.image, sample.caption, augmented, sample.sample_id)
    odd = [TokenInfo("▁naïve", "naïve", False, False, 0, 5), TokenInfo('"{}\\', '"{}\\', False, True, 6, 10),
           TokenInfo("</s>", "", True, False), TokenInfo("<pad>", "", True, False)]
    video = TokenMaps(torch.randn(1, 4, 3, 2, 2, dtype=torch.float64), torch.tensor([[True, True, True, False]]),
                      torch.rand(1, 4), [odd], kind="probs", frame_to_latent=[0, 1, 1, 2])
    cache = MapCache(tmp_path)
    for name, original in (("real", maps), ("odd", video)):
        cache.save(tmp_path / f"{name}.safetensors", original)
        loaded = cache.load(tmp_path / f"{name}.safetensors")
        assert loaded.tokens == original.tokens
        for field in ("scores", "valid", "text_mass"):
            a, b = getattr(loaded, field), getattr(original, field)
            assert a.dtype == b.dtype and torch.equal(a, b)
        assert (loaded.kind, loaded.frame_to_latent) == (original.kind, original.frame_to_latent)


class FakeVideoExtractor:
    def __init__(self):
        self.calls = 0

    def cache_key_settings(self):
        return {"class": "fake", "sigma": 0.01}

    def extract_video(self):
        self.calls += 1
        return TokenMaps(torch.rand(1, 2, 2, 3, 3), torch.ones(1, 2, dtype=torch.bool), torch.rand(1, 2),
                         [[TokenInfo("a", "a", False, False), TokenInfo("</s>", "", True, False)]],
                         frame_to_latent=[0, 1])


def test_video_entries_key_on_the_frame_files(tmp_path):
    frames = []
    for i in range(2):
        frames.append(tmp_path / f"{i:05d}.jpg")
        frames[-1].write_bytes(b"frame %d" % i)
    extractor, cache = FakeVideoExtractor(), MapCache(tmp_path / "maps")
    get = lambda: cache.extract(extractor, extractor.extract_video, "video/1", [str(f) for f in frames], "", [("a", None)])
    first = get()
    assert torch.equal(get().scores, first.scores) and extractor.calls == 1
    assert get().frame_to_latent == [0, 1]
    frames[1].write_bytes(b"another frame 1")  # a frame file changed
    get()
    assert extractor.calls == 2
    _rewrite_keeping_size_and_mtime(frames[1], b"another frame 2")  # same size and mtime, other content
    get()
    assert extractor.calls == 3


def test_extractor_without_settings_is_not_cached(tmp_path, caplog):
    class Bare(FakeVideoExtractor):
        def cache_key_settings(self):
            return None

    extractor, cache = Bare(), MapCache(tmp_path / "maps")
    with caplog.at_level(logging.WARNING, logger="refam.extractors.cache"):
        for _ in range(2):
            cache.extract(extractor, extractor.extract_video, "v", [], "", [("a", None)])
    assert extractor.calls == 2 and not (tmp_path / "maps").exists()
    assert caplog.text.count("not cached") == 1


def test_key_covers_the_sample_caption_and_expressions():
    from PIL import Image

    image = Image.new("RGB", (8, 8), (10, 20, 30))
    base, payload = cache_key({"seed": 0}, "s", image, "cap", [("a dog _ with", 6)])
    assert payload["expressions"] == [["a dog _ with", 6]]
    other_pixels = Image.new("RGB", (8, 8), (10, 20, 31))
    variants = [
        cache_key({"seed": 1}, "s", image, "cap", [("a dog _ with", 6)]),
        cache_key({"seed": 0}, "t", image, "cap", [("a dog _ with", 6)]),
        cache_key({"seed": 0}, "s", other_pixels, "cap", [("a dog _ with", 6)]),
        cache_key({"seed": 0}, "s", image, "", [("a dog _ with", 6)]),
        cache_key({"seed": 0}, "s", image, "cap", [("a dog _ with", None)]),
        cache_key({"seed": 0}, "s", image, "cap", [("a dog _ with", 6), ("a cat", None)]),
        cache_key({"seed": 0}, "s", image, "cap", [("a dog _ with", 6)], RandomVectorMagnets(seed=3)),
    ]
    keys = [base] + [k for k, _ in variants]
    assert len(set(keys)) == len(keys)
    # strategies without vectors add nothing beyond their texts; token filtering is not in the key
    assert cache_key({"seed": 0}, "s", image, "cap", [("a dog _ with", 6)], AppendMagnets(filter_stop_words=False))[0] == base


def test_yaml_map_cache_setting(tmp_path):
    import yaml

    from refam.embedded import DEFAULT_MODEL_SECTION

    document = {"model": yaml.safe_load(DEFAULT_MODEL_SECTION.read_text())}
    document["model"]["map_cache"] = str(tmp_path / "maps")
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(document))
    module = pipeline_from_config(config)
    assert isinstance(module.map_cache, MapCache) and module.map_cache.folder == tmp_path / "maps"
    assert pipeline_from_config(DEFAULT_CONFIG).map_cache is None


def test_segment_video_reads_a_warm_cache(tmp_path):
    from PIL import Image as PILImage

    from refam.extractors.base import VideoExtractor
    from refam.pipeline import RefAMPipeline
    from refam.segmenters.video_base import VideoSegmenter
    from refam.types import VideoExpression, VideoSample

    frames = []
    for i in range(7):
        frames.append(str(tmp_path / f"{i:05d}.jpg"))
        PILImage.new("RGB", (48, 32), (i * 30, 0, 0)).save(frames[-1])
    clip = VideoSample("clip", frames, [VideoExpression("the cat", "e0", [1]), VideoExpression("a cat", "e1", [1])])
    calls = []

    class Planted(VideoExtractor):
        """Expression 0: a weak hot cell on latent 0, a stronger one on latent 1; expression 1: latent 0."""

        def cache_key_settings(self):
            return {"class": "planted"}

        def extract(self, *args, **kwargs):
            raise NotImplementedError

        def extract_video(self, frames, caption, expressions, sample_id, magnet_vectors=None):
            calls.append(sample_id)
            k = len(expressions)
            scores = torch.zeros(k, 2, 2, 4, 6)
            scores[:, 1] = 1.0
            scores[0, 0, 0, 1, 2], scores[0, 0, 1, 2, 4], scores[1, 0, 0, 1, 2] = 3.0, 6.0, 6.0
            tokens = [[TokenInfo("▁cat", "cat", False, False, 0, 3), TokenInfo("▁with", "with", False, True, 4, 8)]] * k
            return TokenMaps(scores, torch.ones(k, 2, dtype=torch.bool), torch.full((k, 2), 0.5), tokens,
                             frame_to_latent=[0, 1, 1, 1, 1, 1, 1])

    class Still(VideoSegmenter):
        def track(self, frames, frame_index, point):
            for index in range(len(frames)):
                mask = np.zeros((32, 48), dtype=bool)
                mask[int(point[1]), int(point[0])] = True
                yield index, mask

    cache = str(tmp_path / "maps")
    first = RefAMPipeline(Planted(), Still(), map_cache=cache).segment_video(clip)
    second = RefAMPipeline(Planted(), Still(), key_frame="confident", map_cache=cache).segment_video(clip)
    fresh = RefAMPipeline(Planted(), Still(), key_frame="confident").segment_video(clip)
    assert len(calls) == 2  # the cold run and the uncached one; the key-frame change read the cache
    assert [(p.frame, p.point) for p in second.predictions] == [(p.frame, p.point) for p in fresh.predictions]
    assert [p.frame for p in second.predictions] != [p.frame for p in first.predictions]
