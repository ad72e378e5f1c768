"""Procedural scenes: deterministic, disjoint splits, exact masks, unambiguous expressions."""

import numpy as np
import pytest

from refam.data.manifest import ManifestDataset
from refam.shapes.dataset import write_shapes_set
from refam.shapes.scenes import COLOURS, make_scene, referrals_for, training_caption


def test_same_seed_same_scene_and_splits_differ():
    a, b = make_scene("demo", 7), make_scene("demo", 7)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert [r.text for r in a.referrals] == [r.text for r in b.referrals]
    train = {np.asarray(make_scene("train", i).image).tobytes() for i in range(50)}
    assert not any(np.asarray(make_scene("demo", i).image).tobytes() in train for i in range(50))


@pytest.mark.parametrize("index", range(20))
def test_masks_are_the_visible_pixels_of_their_object(index):
    scene = make_scene("test", index)
    image = np.asarray(scene.image).astype(int)
    for o in scene.objects:
        colour = np.array(COLOURS[o.colour])
        # every visible pixel has the object's colour (up to the +-6 texture)
        assert np.abs(image[o.mask] - colour).max() <= 6
    masks = np.stack([o.mask for o in scene.objects])
    assert masks.sum(axis=0).max() <= 1  # visible regions never overlap


def test_every_expression_is_unambiguous_and_mostly_visible():
    for index in range(40):
        scene = make_scene("demo", index)
        for r in scene.referrals:
            target = scene.objects[r.target]
            assert target.mask.sum() >= 0.5 * target.full_area
            if r.kind == "colour+shape":
                assert sum((o.colour, o.shape) == (target.colour, target.shape) for o in scene.objects) == 1
            if r.kind == "absolute position" and r.text.endswith("left"):
                assert all(target.cx < o.cx for o in scene.objects if o is not target)
            if r.kind == "relation":
                shape, anchor = r.text.removeprefix("the ").split(" left of the " if " left of " in r.text else " right of the ")
                anchor_obj = next(o for o in scene.objects if o.shape == anchor)
                assert (target.cx < anchor_obj.cx) == (" left of " in r.text)


def test_no_expression_without_a_visible_target():
    scene = make_scene("demo", 0)
    for o in scene.objects:
        o.mask = np.zeros_like(o.mask)
    assert referrals_for(scene.objects, 128) == []


def test_training_captions_name_every_object():
    scene = make_scene("train", 3)
    captions = [training_caption(scene, np.random.default_rng(seed)) for seed in range(40)]
    for caption in captions:
        for o in scene.objects:
            assert any(f"{o.colour} {noun}" in caption for noun in (o.shape, "object", "shape"))
        assert "pink" not in caption  # a magnet, never an object colour
    assert any("object" in c for c in captions) and any(" on the " in c or " at the " in c for c in captions)


def test_colour_omission_drops_colours_only_from_named_shapes():
    scene = make_scene("train", 3)
    colours = set(COLOURS)
    plain = [training_caption(scene, np.random.default_rng(seed)) for seed in range(40)]
    assert plain == [training_caption(scene, np.random.default_rng(seed), omit_colour=0.0) for seed in range(40)]
    omitted = [training_caption(scene, np.random.default_rng(seed), omit_colour=1.0) for seed in range(40)]
    for caption in omitted:
        for phrase in caption.replace(" and ", ", ").split(", "):
            words = phrase.split()
            named_colours = colours & set(words)
            # a generic noun keeps its colour (else "the object" names nothing); a shape never does
            assert bool(named_colours) == bool({"object", "shape"} & set(words)), phrase
    assert sum(c.count(" ") for c in omitted) < sum(c.count(" ") for c in plain)


def test_set_flows_through_the_manifest_reader(tmp_path):
    manifest = write_shapes_set(tmp_path / "set", "test", scenes=4, per_scene=3)
    dataset = ManifestDataset(str(manifest))
    assert len(dataset) == 4
    sample = dataset[0]
    scene = make_scene("test", 0)
    assert sample.caption == scene.caption()
    assert np.array_equal(np.asarray(sample.image), np.asarray(scene.image))
    assert 1 <= len(sample.expressions) <= 3
    first = sample.expressions[0]
    referral = next(r for r in scene.referrals if r.text == first.text)
    assert np.array_equal(first.mask, scene.objects[referral.target].mask)
