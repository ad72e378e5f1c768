"""Moving-shape clips and their Ref-DAVIS17-layout folders (ReferFormer's converter format)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from refam.shapes.scenes import COLOURS, make_clip, make_scene, referrals_for, render
from refam.shapes.video import DAVIS_PALETTE, write_shapes_davis

torch.set_num_threads(1)

CLIPS = range(24)


def amodal(clip, k: int, t: int) -> np.ndarray:
    """Object k's pixels in frame t as if nothing were in front of it."""
    o = clip.objects[k]
    _, masks, _ = render([(o.shape, o.colour, o.size, *o.centre(t))], clip.size)
    return masks[0]


def test_same_seed_same_clip_and_clips_are_not_the_still_scenes():
    a, b = make_clip("demo", 3), make_clip("demo", 3)
    assert a.objects == b.objects and [r.text for r in a.referrals] == [r.text for r in b.referrals]
    for t in range(a.num_frames):
        assert np.array_equal(np.asarray(a.frame(t).image), np.asarray(b.frame(t).image))
    assert not np.array_equal(np.asarray(a.frame(0).image), np.asarray(make_scene("demo", 3).image))
    assert make_clip("test", 3).objects != a.objects


@pytest.mark.parametrize("index", CLIPS)
def test_objects_move_and_their_masks_shift_by_the_velocity(index):
    clip = make_clip("demo", index, frames=6)
    assert any((o.vx, o.vy) != (0, 0) for o in clip.objects)
    frames = list(clip.frames())
    for t in range(clip.num_frames - 1):
        for k, o in enumerate(clip.objects):
            now, later = amodal(clip, k, t), amodal(clip, k, t + 1)
            assert np.array_equal(np.roll(now, (o.vy, o.vx), axis=(0, 1)), later)
            # where nothing covers it, the visible mask is that shifted mask
            if frames[t].masks[k].sum() == frames[t].full_areas[k] and frames[t + 1].masks[k].sum() == frames[t + 1].full_areas[k]:
                assert np.array_equal(np.roll(frames[t].masks[k], (o.vy, o.vx), axis=(0, 1)), frames[t + 1].masks[k])


@pytest.mark.parametrize("index", CLIPS)
def test_objects_stay_wholly_inside_the_image(index):
    clip = make_clip("demo", index, frames=8)
    for t in range(clip.num_frames):
        for k in range(len(clip.objects)):
            mask = amodal(clip, k, t)
            border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
            assert not border.any()
            assert mask.sum() == clip.frame(0).full_areas[k]  # never clipped: the same area every frame


def test_visible_masks_are_disjoint_and_the_later_object_is_in_front():
    occlusions = 0
    for index in CLIPS:
        clip = make_clip("demo", index)
        for t, frame in enumerate(clip.frames()):
            assert np.stack(frame.masks).sum(axis=0).max() <= 1
            full = [amodal(clip, k, t) for k in range(len(clip.objects))]
            for i in range(len(full)):
                # visible = own pixels minus those of every object drawn after it
                in_front = np.zeros_like(full[i])
                for j in range(i + 1, len(full)):
                    in_front |= full[j]
                assert np.array_equal(frame.masks[i], full[i] & ~in_front)
                occlusions += int((full[i] & in_front).any())
            image = np.asarray(frame.image).astype(int)
            for k, o in enumerate(clip.objects):
                if not frame.masks[k].any():  # wholly hidden in this frame
                    continue
                assert np.abs(image[frame.masks[k]] - np.array(COLOURS[o.colour])).max() <= 6
    assert occlusions > 0  # the clips do exercise occlusion


def test_expressions_are_judged_on_the_first_frame_and_name_every_object():
    for index in CLIPS:
        clip = make_clip("demo", index)
        first = clip.first_scene()
        assert [(r.text, r.target, r.kind) for r in clip.referrals] == [
            (r.text, r.target, r.kind) for r in referrals_for(first.objects, clip.size)]
        assert {r.target for r in clip.referrals} == set(range(len(clip.objects)))
        assert {r.kind for r in clip.referrals} <= {"colour+shape", "size+colour+shape", "shape", "colour",
                                                    "absolute position", "position within shape", "relation"}
        for r in clip.referrals:
            if r.text == "the object on the left":
                x0 = clip.objects[r.target].x0
                assert all(x0 < o.x0 for o in clip.objects if o is not clip.objects[r.target])


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref-davis")
    path = write_shapes_davis(root, "demo", videos=3, frames=5)
    return root, path


def test_written_folder_round_trips(written):
    root, _ = written
    for index in range(3):
        clip = make_clip("demo", index, frames=5)
        video = f"shapes-demo-{index:04d}"
        for t, frame in enumerate(clip.frames()):
            png = Image.open(root / "valid" / "Annotations" / video / f"{t:05d}.png")
            assert png.mode == "P" and png.getpalette()[:3 * 5] == DAVIS_PALETTE[:3 * 5]
            labels = np.array(png.convert("P"))  # as ReferFormer's datasets/davis.py reads it
            for k, mask in enumerate(frame.masks):
                assert np.array_equal(labels == k + 1, mask)
            assert np.array_equal(labels == 0, ~np.any(frame.masks, axis=0))
            jpg = np.asarray(Image.open(root / "valid" / "JPEGImages" / video / f"{t:05d}.jpg").convert("RGB"))
            assert jpg.shape == (clip.size, clip.size, 3)
            assert np.abs(jpg.astype(int) - np.asarray(frame.image).astype(int)).mean() < 4  # JPEG at quality 95


def test_meta_expressions_match_referformers_format(written):
    root, path = written
    assert path == root / "meta_expressions" / "valid" / "meta_expressions.json"
    meta = json.loads(path.read_text())
    assert list(meta) == ["videos"]
    assert list(meta["videos"]) == [f"shapes-demo-{i:04d}" for i in range(3)]
    objects = json.loads((root / "valid" / "meta.json").read_text())["videos"]
    for index, (video, entry) in enumerate(meta["videos"].items()):
        clip = make_clip("demo", index, frames=5)
        assert list(entry) == ["expressions", "frames"]
        stems = sorted(p.stem for p in (root / "valid" / "JPEGImages" / video).iterdir())
        assert entry["frames"] == stems == [f"{t:05d}" for t in range(5)]
        expressions = entry["expressions"]
        assert list(expressions) == [str(i) for i in range(len(expressions))]
        for exp in expressions.values():
            assert set(exp) == {"exp", "obj_id"} and isinstance(exp["obj_id"], str)
        # four per object, grouped by object in id order: inference_davis.py's `obj * 4 + annotator`
        assert len(expressions) == 4 * len(clip.objects)
        for obj in range(len(clip.objects)):
            for annotator in range(4):
                exp = expressions[str(obj * 4 + annotator)]
                assert exp["obj_id"] == str(obj + 1)
                assert exp["exp"] in {r.text for r in clip.referrals if r.target == obj}
        # datasets/davis.py::prepare_metas looks each expression's object up in meta.json
        for exp in expressions.values():
            assert objects[video]["objects"][exp["obj_id"]]["category"] == clip.objects[int(exp["obj_id"]) - 1].shape
