"""SAM2VideoSegmenter on a tiny random-weight SAM2 (hiera-t config at 128 px, CPU).

The claims: one mask per frame at the frames' size, forward from frame 0 and both ways from a later
frame, frames streamed from disk through a small LRU, the same logits as sam2's own loader, and
memory pruning that changes nothing.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refam.errors import CheckpointError, ConfigError, DataError, MissingInputError
from refam.segmenters import SAM2VideoSegmenter, VideoSegmenter
from refam.segmenters import sam2_video
from refam.segmenters.frame_store import LazyFrameStore
from refam.segmenters.sam2_video import memory_window
from refam.types import Point

torch.set_num_threads(1)

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
KEY = "^checkpoint: "  # the segmenter's own field; a front door names the full key
H, W = 48, 64  # not square, not the model's size: masks must come back at this size
SIZE = 128  # SAM2's input size: the smallest multiple of 32 above the frames (the image encoder is most of the time)
N = 5
POINT = (40.0, 20.0)  # (x, y)


def tiny(**kwargs) -> SAM2VideoSegmenter:
    seg = SAM2VideoSegmenter(config=CONFIG, image_size=SIZE, allow_random_weights=True, **kwargs)
    seg.setup(torch.device("cpu"))
    return seg


def write_frames(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (H, W)) -> list[Path]:
    """JPEGs named 00000.jpg.. (sam2's loader reads only that layout): a bright disk drifting
    right over a noisy background, so the frames differ and propagation has something to follow."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    paths = []
    for t in range(count):
        pixels = rng.integers(0, 90, (*size, 3)).astype(np.uint8)
        pixels[(xx - 20 - 3 * t) ** 2 + (yy - 20) ** 2 < 100] = (230, 60, 40)
        path = folder / f"{t:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def seg() -> SAM2VideoSegmenter:
    return tiny()


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Path]:
    return write_frames(tmp_path_factory.mktemp("video") / "clip", N)


class Recorder:
    """Wraps `seg.frame_store` to keep the store `track` builds."""

    def __init__(self, seg: SAM2VideoSegmenter) -> None:
        self.original = seg.frame_store
        self.stores: list[LazyFrameStore] = []

    def __call__(self, paths):
        store = self.original(paths)
        self.stores.append(store)
        return store


def sam2_reference(predictor, folder: Path, frame_index: int, point, more=(), labels=(1,)) -> dict[int, torch.Tensor]:
    """The masks by sam2's own API: init_state on the JPEG folder, one click (and `more` points with
    `labels` in the same call), forward then backward."""
    state = predictor.init_state(video_path=str(folder))
    predictor.add_new_points_or_box(state, frame_idx=frame_index, obj_id=1, points=[list(point), *map(list, more)],
                                    labels=list(labels))
    out = {}
    for reverse in (False, True):
        for index, _, logits in predictor.propagate_in_video(state, start_frame_idx=frame_index, reverse=reverse):
            out.setdefault(index, logits[0, 0].clone())
    return out


def test_prompting_frame_0_tracks_forward_one_mask_per_frame_in_order(seg, frames):
    assert isinstance(seg, VideoSegmenter)
    results = list(seg.track(frames, 0, POINT))
    assert [index for index, _ in results] == list(range(N))
    for _, mask in results:
        assert mask.shape == (H, W) and mask.dtype == np.bool_
    assert seg.predictor.image_size == SIZE
    assert seg.predictor.fill_hole_area == 0  # no CUDA extension here


def test_prompting_a_middle_frame_tracks_forward_then_backward_each_frame_once(seg, frames):
    order = [index for index, _ in seg.track(frames, 2, POINT)]
    assert order == [2, 3, 4, 1, 0]
    order = [index for index, _ in seg.track(frames, N - 1, POINT)]
    assert order == [4, 3, 2, 1, 0]


@pytest.mark.parametrize("cache_size", [1, 2])
def test_frames_are_read_on_demand_and_only_the_lru_is_held(frames, cache_size):
    seg = tiny(frame_cache_size=cache_size)
    seg.frame_store = recorder = Recorder(seg)
    seen = []
    for index, _ in seg.track(frames, 0, POINT):
        store = recorder.stores[-1]
        # when frame t comes out, frames 0..t and no later one have been read, each once
        assert store.loads == list(range(index + 1))
        assert len(store.held) <= cache_size
        seen.append(index)
    assert seen == list(range(N))
    assert store.max_held == min(cache_size, N)
    assert store.held == []  # released once the video is done

    seg.frame_store = recorder = Recorder(seg)
    list(seg.track(frames, 2, POINT))
    store = recorder.stores[-1]
    assert store.loads == [2, 3, 4, 1, 0]  # the prompt frame, then as propagation reaches each
    assert store.max_held <= cache_size


def test_lazy_store_holds_what_sam2s_loader_holds(seg, frames):
    from sam2.utils.misc import load_video_frames

    images, height, width = load_video_frames(str(frames[0].parent), SIZE, offload_video_to_cpu=True,
                                              compute_device=torch.device("cpu"))
    store = LazyFrameStore(frames, SIZE, cache_size=1)
    assert (store.video_height, store.video_width) == (height, width) == (H, W)
    assert len(store) == len(images) == N
    for i in range(N):
        assert store[i].dtype == images[i].dtype == torch.float32
        assert torch.equal(store[i], images[i])  # bit-identical, not just close


@pytest.mark.parametrize("offload", [False, True])
def test_inference_state_matches_sam2s_init_state(seg, frames, offload):
    """Our state is sam2's `init_state` with the store under "images": same keys, same values."""
    ours_seg = SAM2VideoSegmenter(allow_random_weights=True, offload_video_to_cpu=offload, offload_state_to_cpu=offload)
    ours_seg._predictor = seg.predictor  # the same model, other settings
    ours = ours_seg._new_state(ours_seg.frame_store(frames))
    theirs = seg.predictor.init_state(video_path=str(frames[0].parent), offload_video_to_cpu=offload,
                                      offload_state_to_cpu=offload)
    assert ours.keys() == theirs.keys()
    for key in ours:
        if key in ("images", "cached_features"):  # the store; sam2's warm-up of frame 0 (skipped)
            continue
        assert ours[key] == theirs[key], key
    assert ours["images"].offload_video_to_cpu is offload
    assert list(theirs["cached_features"]) == [0]


@pytest.mark.parametrize("frame_index", [0, 2])
def test_logits_equal_those_of_sam2s_own_loader(seg, frames, frame_index):
    expected = sam2_reference(seg.predictor, frames[0].parent, frame_index, POINT)
    got = dict(seg.track_logits(frames, frame_index, POINT))
    assert got.keys() == expected.keys() == set(range(N))
    for index in range(N):
        assert torch.equal(got[index], expected[index]), index
    masks = dict(seg.track(frames, frame_index, POINT))
    for index in range(N):
        np.testing.assert_array_equal(masks[index], (expected[index] > 0).numpy())
    # random weights still give a mask that is neither empty nor everything somewhere
    assert any(0 < m.sum() < H * W for m in masks.values())


def test_a_users_points_with_labels_are_sam2s_multi_point_prompt(seg, frames):
    """Points with labels go to the prompt frame in one add_new_points_or_box call: the masks are those
    of sam2's own API for the same points and labels; a positive point alone is `track`."""
    points = [Point(*POINT, 1, "model"), Point(10.0, 40.0, 0), Point(30.0, 22.0, 1)]
    expected = sam2_reference(seg.predictor, frames[0].parent, 2, POINT, [(10.0, 40.0), (30.0, 22.0)], [1, 0, 1])
    got = list(seg.track_points(frames, 2, points))
    assert [index for index, _ in got] == [2, 3, 4, 1, 0]
    for index, mask in got:
        np.testing.assert_array_equal(mask, (expected[index] > 0).numpy())
    all_positive = dict(seg.track_points(frames, 2, [Point(p.x, p.y, 1) for p in points]))
    assert any(not np.array_equal(all_positive[index], mask) for index, mask in got)  # labels are read
    alone = dict(seg.track_points(frames, 2, [Point(*POINT)]))
    assert all(np.array_equal(alone[index], mask) for index, mask in seg.track(frames, 2, POINT))
    nothing = list(seg.track_points(frames, 2, [Point(*POINT, 0)]))  # no positive point: nothing
    assert [index for index, _ in nothing] == [2, 3, 4, 1, 0] and not any(m.any() for _, m in nothing)
    assert all(m.shape == (H, W) for _, m in nothing)
    with pytest.raises(ConfigError, match="outside frame 2"):
        seg.track_points(frames, 2, [Point(*POINT), Point(W + 1.0, 5.0, 0)])


def test_memory_window_reads_sam2s_settings(seg):
    model = seg.predictor
    # hiera-t: 7 mask memories (stride 1) reach 6 frames back; 16 object pointers reach 15
    assert (model.num_maskmem, model.memory_temporal_stride_for_eval, model.max_obj_ptrs_in_encoder) == (7, 1, 16)
    assert memory_window(model) == 15


@pytest.mark.slow
def test_pruning_changes_no_logit_and_bounds_the_state(tmp_path, monkeypatch):
    """A 14-frame video prompted on frame 3, with object pointers cut to 4 so that the 6-frame
    mask-memory window is what pruning has to respect: the pruned run equals the unpruned one,
    the stored outputs stay within the window, and a window one frame too short is caught."""
    frames = write_frames(tmp_path / "clip", 14, seed=1)
    seg = tiny()
    seg.predictor.max_obj_ptrs_in_encoder = 4
    window = memory_window(seg.predictor)
    assert window == 6

    def run(prune: bool) -> tuple[dict[int, torch.Tensor], list[int]]:
        seg.prune_memory = prune
        states = []
        original = seg._new_state
        monkeypatch.setattr(seg, "_new_state", lambda store: states.append(original(store)) or states[-1])
        sizes, out = [], {}
        for index, logits in seg.track_logits(frames, 3, POINT):
            out[index] = logits.clone()
            sizes.append(len(states[-1]["output_dict_per_obj"][0]["non_cond_frame_outputs"]))
        monkeypatch.undo()
        return out, sizes

    full, full_sizes = run(prune=False)
    pruned, pruned_sizes = run(prune=True)
    assert pruned.keys() == full.keys() == set(range(14))
    for index in full:
        assert torch.equal(pruned[index], full[index]), index
    assert max(full_sizes) == 13  # every frame but the prompt
    # the sliding window plus the frames just after the prompt kept for the backward pass
    assert max(pruned_sizes) <= 2 * window - 1
    assert pruned_sizes[-1] < full_sizes[-1]

    # The test can fail: a window one frame short drops a memory SAM2 still reads.
    monkeypatch.setattr(sam2_video, "memory_window", lambda model: window - 1)
    seg.prune_memory = True
    short = dict(seg.track_logits(frames, 3, POINT))
    assert any(not torch.equal(short[i], full[i]) for i in full)


def test_checkpoint_is_loaded_from_disk(seg, frames, tmp_path):
    path = tmp_path / "sam2_tiny.pt"
    torch.save({"model": seg.predictor.state_dict()}, path)
    loaded = SAM2VideoSegmenter(config=CONFIG, checkpoint=str(path), image_size=SIZE, init_seed=99)
    loaded.setup(torch.device("cpu"))
    ours, theirs = seg.predictor.state_dict(), loaded.predictor.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    for (i, a), (j, b) in zip(seg.track(frames[:2], 1, POINT), loaded.track(frames[:2], 1, POINT)):
        assert i == j and np.array_equal(a, b)


def test_checkpoint_that_does_not_fit_names_the_key(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"model": {"not_a_sam2_weight": torch.zeros(1)}}, path)
    seg = SAM2VideoSegmenter(config=CONFIG, checkpoint=str(path), image_size=SIZE)
    with pytest.raises(CheckpointError, match=KEY):
        seg.setup(torch.device("cpu"))


def test_missing_frame_fails_before_tracking(seg, frames, tmp_path):
    missing = tmp_path / "00003.jpg"
    with pytest.raises(MissingInputError, match="00003.jpg") as info:
        seg.track([*frames[:3], missing, frames[4]], 0, POINT)  # raised on the call, not on next()
    assert isinstance(info.value, FileNotFoundError)


def test_frame_deleted_during_tracking_is_named(seg, tmp_path):
    frames = write_frames(tmp_path / "clip", 3)
    masks = seg.track(frames, 0, POINT)
    next(masks)
    frames[2].unlink()
    with pytest.raises(MissingInputError, match="00002.jpg"):
        list(masks)


def test_frame_of_another_size_is_a_data_error(seg, tmp_path):
    frames = write_frames(tmp_path / "clip", 3)
    write_frames(tmp_path / "big", 1, size=(H + 8, W))[0].replace(frames[1])
    with pytest.raises(DataError, match="00001.jpg"):
        list(seg.track(frames, 0, POINT))


def test_bad_prompts_are_rejected(seg, frames):
    with pytest.raises(ConfigError, match="frame_index"):
        seg.track(frames, N, POINT)
    with pytest.raises(ConfigError, match="outside"):
        seg.track(frames, 0, (W + 5.0, 10.0))
    with pytest.raises(ConfigError, match="no frames"):
        seg.track([], 0, POINT)


def test_tracking_before_setup_is_an_error(frames):
    with pytest.raises(RuntimeError, match="setup"):
        SAM2VideoSegmenter(allow_random_weights=True).track(frames, 0, POINT)


def test_no_checkpoint_names_the_config_key():
    with pytest.raises(ValueError, match=KEY) as info:
        SAM2VideoSegmenter()
    assert "allow_random_weights" in str(info.value)


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "sam2.1_hiera_large.pt"
    with pytest.raises(FileNotFoundError, match=KEY) as info:
        SAM2VideoSegmenter(checkpoint=str(missing))
    assert str(missing) in str(info.value)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="both"):
        SAM2VideoSegmenter(checkpoint="a.pt", model_id="facebook/sam2.1-hiera-tiny")
    with pytest.raises(ValueError, match="image_size"):
        SAM2VideoSegmenter(allow_random_weights=True, image_size=250)
    with pytest.raises(ValueError, match="frame_cache_size"):
        SAM2VideoSegmenter(allow_random_weights=True, frame_cache_size=0)
    with pytest.raises(ValueError, match="config"):
        SAM2VideoSegmenter(config="configs/nope.yaml", allow_random_weights=True).setup(torch.device("cpu"))


def test_tracks_a_written_shapes_clip(seg, tmp_path):
    """The offline video path end to end: a Ref-DAVIS17-layout clip on disk, tracked from the
    first-frame centre of the object its first expression names."""
    import json

    from refam.shapes.scenes import make_clip
    from refam.shapes.video import write_shapes_davis

    meta = json.loads(write_shapes_davis(tmp_path, "demo", videos=1, frames=4).read_text())["videos"]
    (video, entry), = meta.items()
    frames = [tmp_path / "valid" / "JPEGImages" / video / f"{name}.jpg" for name in entry["frames"]]
    target = make_clip("demo", 0, frames=4).objects[int(entry["expressions"]["0"]["obj_id"]) - 1]
    masks = list(seg.track(frames, 0, (target.x0, target.y0)))
    assert [i for i, _ in masks] == [0, 1, 2, 3]
    assert all(m.shape == (128, 128) for _, m in masks)
