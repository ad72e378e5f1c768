"""The module's video path with planted maps and a scripted segmenter: key frame, point, streaming scores."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from refam.aggregators.magnets import AppendMagnets
from refam.extractors.base import VideoExtractor
from refam.metrics.jf import contour_accuracy, region_similarity
from refam.pipeline import RefAMPipeline
from refam.evaluation.module import RefAMModule
from refam.evaluation.scoring import DatasetScores
from refam.segmenters.video_base import VideoSegmenter
from refam.types import TokenInfo, TokenMaps, VideoExpression, VideoSample, VideoTruth

FRAMES, ROWS, COLS, SIZE = 7, 4, 6, (48, 32)  # 7 frames -> latents 0 (frame 0) and 1 (frames 1-6)
FRAME_TO_LATENT = [0, 1, 1, 1, 1, 1, 1]


class PlantedVideoExtractor(VideoExtractor):
    """Token maps with one hot cell per expression and latent frame, as a video backbone returns them."""

    def __init__(self, hot: dict[int, list[tuple[int, int, int, float]]]) -> None:
        self.hot = hot  # expression -> [(latent, row, col, logit)]
        self.frames_read = 0

    def extract(self, image, caption, expressions, sample_id, magnet_vectors=None):
        raise NotImplementedError

    def extract_video(self, frames, caption, expressions, sample_id, magnet_vectors=None) -> TokenMaps:
        self.frames_read += len(frames[:1])  # a backbone reads what it encodes
        k = len(expressions)
        tokens = [[TokenInfo("▁cat", "cat", False, False, 0, 3), TokenInfo("▁with", "with", False, True, 4, 8)]
                  for _ in range(k)]
        scores = torch.zeros(k, 2, 2, ROWS, COLS)
        scores[:, 1] = 1.0  # the magnet takes the background
        for e, cells in self.hot.items():
            for latent, row, col, logit in cells:
                scores[e, 0, latent, row, col] = logit
        return TokenMaps(scores=scores, valid=torch.ones(k, 2, dtype=torch.bool), text_mass=torch.full((k, 2), 0.5),
                         tokens=tokens, frame_to_latent=FRAME_TO_LATENT)


class ScriptedTracker(VideoSegmenter):
    """Returns a square around the click on every frame, moving one pixel right per frame away from it."""

    def __init__(self) -> None:
        self.calls = []

    def track(self, frames, frame_index, point):
        self.calls.append((frame_index, point))
        with Image.open(frames[0]) as first:
            width, height = first.size
        order = list(range(frame_index, len(frames))) + list(range(frame_index - 1, -1, -1))
        for index in order:
            mask = np.zeros((height, width), dtype=bool)
            x = int(point[0]) + (index - frame_index)
            mask[max(int(point[1]) - 3, 0): int(point[1]) + 3, max(x - 3, 0): x + 3] = True
            yield index, mask


class SquareTruth(VideoTruth):
    """Object 1 is a 6x6 square at (x, y) = (20, 10) on every frame; frame 3 is not annotated."""

    def mask(self, expression, frame_index):
        if frame_index == 3:
            return None
        mask = np.zeros((SIZE[1], SIZE[0]), dtype=bool)
        mask[7:13, 17:23] = True
        return mask


@pytest.fixture
def video(tmp_path):
    frames = []
    for i in range(FRAMES):
        path = tmp_path / f"{i:05d}.jpg"
        Image.new("RGB", SIZE, (i * 30, 0, 0)).save(path)
        frames.append(str(path))
    return VideoSample("clip", frames, [VideoExpression("the cat", "e0", [1]), VideoExpression("a cat", "e1", [1])],
                       truth=SquareTruth())


@pytest.mark.parametrize("mode", ["first", "confident"])
def test_video_point_prompts_the_key_frame_and_every_mask_is_scored_as_it_comes(video, mode):
    # expression 0: a weak hot cell on latent 0 at (row 1, col 2), a stronger one on latent 1 at (2, 4)
    extractor = PlantedVideoExtractor({0: [(0, 1, 2, 3.0), (1, 2, 4, 6.0)], 1: [(0, 1, 2, 6.0)]})
    tracker = ScriptedTracker()
    pipeline = RefAMPipeline(extractor=extractor, segmenter=tracker, magnets=AppendMagnets(), key_frame=mode)
    seen = []
    result = pipeline.segment_video(video, lambda e, i, m: seen.append((e.expression_id, i)))
    key = 0 if mode == "first" else 4  # latent 1 covers frames 1..6: the middle one is frame 4
    assert [p.frame for p in result.predictions] == [key, 0]
    cell_w, cell_h = SIZE[0] / COLS, SIZE[1] / ROWS
    row, col = (1, 2) if mode == "first" else (2, 4)
    assert result.predictions[0].point == pytest.approx(((col + 0.5) * cell_w, (row + 0.5) * cell_h))
    assert tracker.calls[0][0] == key
    # every frame exactly once per expression, forward from the key frame then backward
    assert [i for e, i in seen if e == "e0"] == list(range(key, FRAMES)) + list(range(key - 1, -1, -1))
    assert sorted(i for e, i in seen if e == "e1") == list(range(FRAMES))
    assert result.predictions[0].mask is not None and result.predictions[0].kept_tokens == ["▁cat"]


def test_video_scores_equal_the_official_definitions_frame_by_frame(video):
    extractor = PlantedVideoExtractor({0: [(0, 1, 2, 6.0)], 1: [(0, 0, 0, 6.0)]})
    module = RefAMModule(extractor=extractor, segmenter=ScriptedTracker(), magnets=AppendMagnets())
    scores = DatasetScores(SimpleNamespace(is_video=True), "clip")
    result, record = module.measure(video, scores)
    scores.add(record)
    values = scores.referring.compute()
    assert int(values["expressions"]) == 2
    # recompute: the scripted masks against the square, annotated frames only, mean per track then over tracks
    truth, expected_j, expected_f = SquareTruth(), [], []
    for prediction in result.predictions:
        tracker = ScriptedTracker()
        masks = dict(tracker.track(video.frames, prediction.frame, prediction.point))
        frames = [i for i in range(FRAMES) if truth.mask(None, i) is not None]
        expected_j.append(np.mean([region_similarity(masks[i], truth.mask(None, i)) for i in frames]))
        expected_f.append(np.mean([contour_accuracy(masks[i], truth.mask(None, i)) for i in frames]))
    assert float(values["J"]) == pytest.approx(100 * np.mean(expected_j))
    assert float(values["F"]) == pytest.approx(100 * np.mean(expected_f))
    assert float(values["J&F"]) == pytest.approx((float(values["J"]) + float(values["F"])) / 2)
    # expression 0's point lands on the square on frame 0, expression 1's (the top-left cell) does not
    assert [p.point_hit for p in result.predictions] == [True, False]
    assert float(values["PA"]) == pytest.approx(50.0)


def test_a_video_needs_a_video_segmenter(video):
    from refam.errors import ConfigError
    from refam.segmenters.floodfill import FloodFillSegmenter

    pipeline = RefAMPipeline(extractor=PlantedVideoExtractor({}), segmenter=FloodFillSegmenter())
    assert not pipeline.reads_video
    with pytest.raises(ConfigError, match="^segmenter: FloodFillSegmenter segments images"):
        pipeline.segment_video(video)
    # before any expression is read: a video none of whose expressions can run is no exception
    video.expressions = [VideoExpression("   ", "empty", [1])]
    with pytest.raises(ConfigError, match="^segmenter: FloodFillSegmenter segments images"):
        pipeline.segment_video(video)
    assert RefAMPipeline(extractor=PlantedVideoExtractor({}), segmenter=ScriptedTracker()).reads_video


def test_an_error_while_tracking_is_the_segmenters_and_the_frame_size_is_read_once(video, monkeypatch):
    from refam.errors import ConfigError
    from refam.types import VideoSample

    class LostTracker(ScriptedTracker):
        def track(self, frames, frame_index, point):
            yield from super().track(frames, frame_index, point)
            raise ConfigError("lost the object", field="threshold")

    reads = []
    original = VideoSample.frame
    monkeypatch.setattr(VideoSample, "frame", lambda self, index: reads.append(index) or original(self, index))
    pipeline = RefAMPipeline(extractor=PlantedVideoExtractor({0: [(0, 1, 2, 3.0)], 1: [(0, 2, 4, 6.0)]}),
                             segmenter=LostTracker())
    with pytest.raises(ConfigError) as info:
        pipeline.segment_video(video)
    assert info.value.key == "segmenter.threshold"  # a front door names model.segmenter.init_args.threshold
    assert len(reads) == pipeline.extractor.frames_read + 1  # the size: not a decoded key frame per expression


def test_refam_test_on_ref_davis_scores_streams_masks_and_writes_submission_layouts(tmp_path):
    """A Lightning test run on a Ref-DAVIS17 fixture: J&F logged, a bad video counted, every mask
    written frame by frame, DAVIS palettes per annotator set, and a zip."""
    import zipfile

    import lightning as L

    from refam.evaluation.callbacks import MaskWriter
    from refam.data import RefAMDataModule
    from refam.data.davis import RefDAVIS17
    from tests.fixtures.video_fixtures import write_ref_davis

    dataset = RefDAVIS17(str(write_ref_davis(tmp_path / "davis")))
    extractor = PlantedVideoExtractor({k: [(0, 1, 1, 6.0)] for k in range(8)})
    module = RefAMModule(extractor=extractor, segmenter=ScriptedTracker(), magnets=AppendMagnets())
    writer = MaskWriter(save=True, folder=str(tmp_path / "masks"))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer], enable_progress_bar=False,
                        use_distributed_sampler=False)
    trainer.test(module, datamodule=RefAMDataModule(dataset))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    name = dataset.name
    assert metrics[f"{name}/expressions"] == 8 and metrics[f"{name}/skipped_samples"] == 1  # "ghost" has no folders
    assert 0 <= metrics[f"{name}/J&F"] <= 100 and metrics[f"{name}/PA"] in (0.0, 12.5, 25.0, 37.5, 50.0, 62.5, 75.0, 87.5, 100.0)
    root = tmp_path / "masks" / name.replace("/", "-")
    for exp in range(8):
        written = sorted(p.stem for p in (root / "dogs-scale" / str(exp)).glob("*.png"))
        assert written == ["00000", "00001", "00002", "00003"]
    for annotator in range(4):
        palettes = sorted((tmp_path / "masks" / f"{name.replace('/', '-')}-davis" / f"anno{annotator}" / "dogs-scale").glob("*.png"))
        assert len(palettes) == 4
        with Image.open(palettes[0]) as first:
            assert first.mode == "P" and set(np.unique(np.asarray(first)).tolist()) <= {0, 1, 2}
    with zipfile.ZipFile(tmp_path / "masks" / f"{name.replace('/', '-')}.zip") as bundle:
        assert "dogs-scale/0/00000.png" in bundle.namelist()


def test_expressions_prompting_the_same_point_share_one_track(video):
    extractor = PlantedVideoExtractor({0: [(0, 1, 2, 6.0)], 1: [(0, 1, 2, 6.0)]})  # the same cell
    tracker = ScriptedTracker()
    pipeline = RefAMPipeline(extractor=extractor, segmenter=tracker, magnets=AppendMagnets())
    seen = []
    result = pipeline.segment_video(video, lambda e, i, m: seen.append((e.expression_id, i, m.sum())))
    assert len(tracker.calls) == 1
    for expression in ("e0", "e1"):
        assert sorted(i for e, i, _ in seen if e == expression) == list(range(FRAMES))
    assert [s for e, _, s in seen if e == "e0"] == [s for e, _, s in seen if e == "e1"]
    assert all(p.mask is not None for p in result.predictions)


# Ref-DAVIS17's published protocol. Cells of the planted maps (rows x cols = 4 x 6 over the 32x24
# frames of write_ref_davis): OBJ1 lands on object 1, OBJ2 on object 2, TOP on object 1's top rows
# (its tracked square reaches the void band of frame 2). Expression 4k+s is object k+1's in run s.
OBJ1, OBJ2, TOP = (0, 1, 1, 6.0), (0, 2, 4, 6.0), (0, 0, 1, 6.0)
RUN_CELLS = {
    0: OBJ2, 4: OBJ1,  # run 0: the two objects' expressions swapped (the official matching undoes it)
    1: OBJ1, 5: OBJ2,  # run 1: right
    2: TOP, 6: OBJ2,  # run 2: object 1's square runs into the void band
    3: OBJ1, 7: OBJ1,  # run 3: both on object 1 (the masks overlap; the later expression wins)
}


def _ref_davis_run(tmp_path, protocol="unsupervised", store=None):
    import lightning as L

    from refam.evaluation.callbacks import MaskWriter
    from refam.data import RefAMDataModule
    from refam.data.davis import RefDAVIS17
    from tests.fixtures.video_fixtures import write_ref_davis

    root = tmp_path / "davis"
    if not root.exists():
        write_ref_davis(root)
    dataset = RefDAVIS17(str(root), protocol=protocol)
    extractor = PlantedVideoExtractor({k: [cell] for k, cell in RUN_CELLS.items()})
    module = RefAMModule(extractor=extractor, segmenter=ScriptedTracker(), magnets=AppendMagnets(), result_store=store)
    writer = MaskWriter(save=True, folder=str(tmp_path / "masks"))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, callbacks=[writer],
                        use_distributed_sampler=False)
    trainer.test(module, datamodule=RefAMDataModule(dataset))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return dataset, metrics, tmp_path / "masks" / f"{dataset.name.replace('/', '-')}-davis", root


def test_ref_davis_headline_is_refam_score_of_the_written_runs_averaged(tmp_path, caplog):
    """`refam test` on Ref-DAVIS17 prints what ReferFormer's eval_davis.py gives on the four runs'
    palettes, averaged: the figure published tables hold, computed by the same code as `refam score`."""
    from refam.evaluation.score import score_folder, summarize

    import logging

    with caplog.at_level(logging.INFO):
        dataset, metrics, palettes, root = _ref_davis_run(tmp_path)
    name = dataset.name
    runs = [summarize(score_folder(palettes / f"anno{k}", root / "valid/Annotations", "unsupervised")) for k in range(4)]
    for key, column in (("J&F", "J&F-Mean"), ("J", "J-Mean"), ("F", "F-Mean")):
        assert metrics[f"{name}/{key}"] == pytest.approx(np.mean([r[column] for r in runs]), abs=1e-4), key
    for k in range(4):
        assert metrics[f"{name}/J&F_anno{k}"] == pytest.approx(runs[k]["J&F-Mean"], abs=1e-4)
    # the swap in run 0 costs the per-expression figure, not the official one (the matching undoes it)
    assert runs[0]["J&F-Mean"] == pytest.approx(runs[1]["J&F-Mean"], abs=1e-9)
    assert metrics[f"{name}/J&F"] - metrics[f"{name}/J&F_per_expression"] > 5.0
    assert f"{name}: J&F, J, F: the DAVIS 2017 unsupervised evaluation" in caplog.text  # says which protocol

    # the setting: the per-expression figure as the headline, equal to the one logged beside the official
    _, per_expression, _, _ = _ref_davis_run(tmp_path / "again", protocol="per_expression")
    assert per_expression[f"{name}/J&F"] == pytest.approx(metrics[f"{name}/J&F_per_expression"], abs=1e-6)
    assert f"{name}/J&F_anno0" not in per_expression


def test_ref_davis_runs_are_stored_and_replayed(tmp_path):
    from refam.evaluation.store import ResultStore

    store = ResultStore(folder=str(tmp_path / "results"))
    store.fingerprints = ["config"]
    _, first, _, _ = _ref_davis_run(tmp_path, store=store)
    assert store.computed == 1
    again = ResultStore(folder=str(tmp_path / "results"))
    again.fingerprints = ["config"]
    _, replayed, _, _ = _ref_davis_run(tmp_path, store=again)
    assert again.reused == 1 and again.computed == 0
    assert replayed == pytest.approx(first, abs=1e-9)


def test_ref_davis_protocol_is_checked(tmp_path):
    from refam.data.davis import RefDAVIS17
    from refam.errors import ConfigError
    from tests.fixtures.video_fixtures import write_ref_davis

    with pytest.raises(ConfigError, match=r"^protocol: must be 'unsupervised'"):
        RefDAVIS17(str(write_ref_davis(tmp_path / "davis")), protocol="official")
