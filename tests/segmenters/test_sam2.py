"""SAM2PointSegmenter on a tiny random-weight SAM2 (hiera-t config at 256 px, CPU)."""

import numpy as np
import pytest
import torch

from refam.segmenters import SAM2PointSegmenter, Segmenter
from refam.types import Point

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
KEY = "^checkpoint: "  # the segmenter's own field; a front door names the full key
H, W = 120, 160
POINTS = np.array([[20.0, 30.0], [140.0, 100.0]])


def tiny(seed: int = 0, **kwargs) -> SAM2PointSegmenter:
    seg = SAM2PointSegmenter(config=CONFIG, image_size=256, allow_random_weights=True, init_seed=seed, **kwargs)
    seg.setup(torch.device("cpu"))
    return seg


@pytest.fixture(scope="module")
def seg() -> SAM2PointSegmenter:
    return tiny(seed=0)


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def heat(k: int) -> torch.Tensor:
    return torch.zeros(k, H, W)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[n], sb[n]) for n in sa)


def test_segments_each_point_at_image_resolution(seg, img):
    assert isinstance(seg, Segmenter)
    masks = seg.segment(img, POINTS, heat(2))
    assert masks.shape == (2, H, W) and masks.dtype == np.bool_
    # The override reached both the model and the predictor's resize transform.
    assert seg.predictor.model.image_size == 256 and seg.predictor._transforms.resolution == 256
    assert seg.predictor._bb_feat_sizes == [(64, 64), (32, 32), (16, 16)]


def test_same_seed_gives_the_same_model_whatever_the_ambient_rng(seg, img):
    torch.manual_seed(1234)  # a caller's RNG state must not leak into the weights
    again = tiny(seed=0)
    assert same_weights(seg.predictor.model, again.predictor.model)
    np.testing.assert_array_equal(seg.segment(img, POINTS, heat(2)), again.segment(img, POINTS, heat(2)))
    other = tiny(seed=1)
    assert not same_weights(seg.predictor.model, other.predictor.model)


def test_random_init_leaves_the_callers_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    tiny(seed=0)
    torch.testing.assert_close(torch.rand(3), expected)


def test_checkpoint_is_loaded_from_disk(seg, img, tmp_path):
    path = tmp_path / "sam2_tiny.pt"
    torch.save({"model": seg.predictor.model.state_dict()}, path)
    loaded = SAM2PointSegmenter(config=CONFIG, checkpoint=str(path), image_size=256, init_seed=99)
    loaded.setup(torch.device("cpu"))
    assert same_weights(seg.predictor.model, loaded.predictor.model)
    np.testing.assert_array_equal(seg.segment(img, POINTS, heat(2)), loaded.segment(img, POINTS, heat(2)))


def test_setup_is_idempotent(seg):
    predictor = seg.predictor
    seg.setup(torch.device("cpu"))
    assert seg.predictor is predictor


class FakePredictor:
    """Records calls; returns three masks whose scores put the best one in the middle."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.calls: list[dict] = []

    def set_image(self, image: np.ndarray) -> None:
        self.images.append(image)

    def predict(self, point_coords, point_labels, multimask_output):
        self.calls.append(dict(coords=point_coords, labels=point_labels, multimask=multimask_output))
        masks = np.zeros((3, H, W), dtype=np.float32)
        for c in range(3):
            masks[c, c] = 1.0  # mask c is row c
        return masks, np.array([0.1, 0.9, 0.3], dtype=np.float32), np.zeros((3, 256, 256), np.float32)


@pytest.mark.parametrize("multimask", [True, False])
def test_one_embedding_per_image_one_positive_point_per_expression(img, multimask):
    seg = SAM2PointSegmenter(allow_random_weights=True, multimask_output=multimask)
    fake = FakePredictor()
    seg._predictor = fake  # the prompting logic, without building SAM2
    masks = seg.segment(img, POINTS, heat(2))
    assert len(fake.images) == 1
    assert len(fake.calls) == 2
    for call, point in zip(fake.calls, POINTS):
        np.testing.assert_array_equal(call["coords"], [point])  # [[x, y]], not [y, x]
        np.testing.assert_array_equal(call["labels"], [1])
        assert call["multimask"] is multimask
    # Highest predicted IoU wins: mask 1, which is row 1.
    assert masks[:, 1].all() and masks.sum() == 2 * W


def test_no_points_embeds_nothing(img):
    seg = SAM2PointSegmenter(allow_random_weights=True)
    seg._predictor = fake = FakePredictor()
    masks = seg.segment(img, np.zeros((0, 2)), heat(0))
    assert masks.shape == (0, H, W) and not fake.images


# -- a user's points (segment_points): SAM2's multi-point prompt

PROMPTS = [
    [Point(20.0, 30.0, 1, "model"), Point(140.0, 100.0, 0), Point(70.0, 15.0, 1)],  # several points: one mask
    [Point(140.0, 100.0, 1, "model")],  # one positive point: segment's prompt
    [Point(20.0, 30.0, 0)],  # no positive point: nothing is pointed at, SAM2 is not asked
]


@pytest.mark.parametrize("multimask", [True, False])
def test_each_expressions_points_and_labels_go_to_one_predict_call(img, multimask):
    seg = SAM2PointSegmenter(allow_random_weights=True, multimask_output=multimask)
    seg._predictor = fake = FakePredictor()
    masks = seg.segment_points(img, PROMPTS, heat(3))
    assert len(fake.images) == 1 and len(fake.calls) == 2
    several, single = fake.calls
    np.testing.assert_array_equal(several["coords"], [[20.0, 30.0], [140.0, 100.0], [70.0, 15.0]])  # [[x, y]], in order
    np.testing.assert_array_equal(several["labels"], [1, 0, 1])  # 1 positive, 0 negative, as sam2 reads them
    assert several["coords"].dtype == np.float32 and several["labels"].dtype == np.int32
    assert several["multimask"] is False  # several points are not ambiguous (sam2's advice)
    np.testing.assert_array_equal(single["coords"], [[140.0, 100.0]])
    np.testing.assert_array_equal(single["labels"], [1])
    assert single["multimask"] is multimask
    assert masks[:2, 1].all() and masks.sum() == 2 * W and not masks[2].any()


def test_multi_point_masks_are_sam2s_own_on_the_tiny_model(seg, img):
    """On the real (tiny, random) SAM2: each prompt's mask is what sam2's predictor gives for the same
    point_coords and point_labels; one positive point gives `segment`'s mask; the labels matter."""
    masks = seg.segment_points(img, PROMPTS[:2], heat(2))
    predictor = seg.predictor
    predictor.set_image(img)
    own, scores, _ = predictor.predict(point_coords=np.array([[20.0, 30.0], [140.0, 100.0], [70.0, 15.0]]),
                                       point_labels=np.array([1, 0, 1]), multimask_output=False)
    np.testing.assert_array_equal(masks[0], own[int(np.argmax(scores))] > 0.5)
    np.testing.assert_array_equal(masks[1], seg.segment(img, POINTS[1:], heat(1))[0])
    all_positive = [Point(p.x, p.y, 1) for p in PROMPTS[0]]
    flipped = seg.segment_points(img, [all_positive], heat(1))[0]
    assert not np.array_equal(flipped, masks[0])  # a negative label is not read as a positive one


def test_segment_before_setup_is_an_error(img):
    with pytest.raises(RuntimeError, match="setup"):
        SAM2PointSegmenter(allow_random_weights=True).segment(img, POINTS, heat(2))


def test_no_checkpoint_names_the_config_key():
    with pytest.raises(ValueError, match=KEY) as info:
        SAM2PointSegmenter()
    assert "allow_random_weights" in str(info.value)


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "sam2.1_hiera_large.pt"
    with pytest.raises(FileNotFoundError, match=KEY) as info:
        SAM2PointSegmenter(checkpoint=str(missing))
    assert str(missing) in str(info.value)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="both"):
        SAM2PointSegmenter(checkpoint="a.pt", model_id="facebook/sam2.1-hiera-tiny")
    with pytest.raises(ValueError, match="image_size"):
        SAM2PointSegmenter(allow_random_weights=True, image_size=250)


def _write_bad_checkpoint(kind: str, path, state: dict) -> str:
    """A checkpoint file that does not load into CONFIG's model, of the given kind."""
    import os

    if kind == "truncated":
        torch.save({"model": state}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "no model dict":
        torch.save({"weights": state}, path)
    elif kind == "a list":
        torch.save([1, 2, 3], path)
    elif kind == "another size":  # the tiny model's weights read as SAM2-S (16 Hiera blocks, not 12)
        torch.save({"model": state}, path)
    elif kind == "weights missing":  # the right size, half its weights gone: only the load can tell
        torch.save({"model": dict(list(state.items())[: len(state) // 2])}, path)
    return {"another size": "configs/sam2.1/sam2.1_hiera_s.yaml"}.get(kind, CONFIG)


BAD_CHECKPOINTS = {"truncated": "truncated", "random bytes": "not a PyTorch checkpoint",
                   "no model dict": "no 'model' state dict", "a list": "no 'model' state dict",
                   "another size": "12 blocks, but configs/sam2.1/sam2.1_hiera_s.yaml builds width 96 and 16 blocks",
                   "weights missing": "weights missing (e.g. "}


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
@pytest.mark.parametrize("segmenter", ["image", "video"])
def test_a_checkpoint_that_cannot_load_is_one_checkpoint_error_naming_the_key(seg, kind, segmenter, tmp_path):
    """A corrupt file or another model's checkpoint: one line on `checkpoint` saying what to do, not
    torch's or sam2's tracebacks; what the file alone tells is told when the segmenter is built."""
    from refam.errors import CheckpointError
    from refam.segmenters import SAM2VideoSegmenter

    path = tmp_path / "sam2.pt"
    config = _write_bad_checkpoint(kind, path, seg.predictor.model.state_dict())
    cls = SAM2PointSegmenter if segmenter == "image" else SAM2VideoSegmenter
    with pytest.raises(CheckpointError, match=KEY) as info:
        built = cls(config=config, checkpoint=str(path), image_size=256)
        assert kind == "weights missing"  # the only kind that the file alone does not give away
        built.setup(torch.device("cpu"))
    message = str(info.value)
    assert "\n" not in message and len(message) < 600 and str(path) in message
    assert BAD_CHECKPOINTS[kind] in message
    assert "download" in message or "give" in message  # what to do
