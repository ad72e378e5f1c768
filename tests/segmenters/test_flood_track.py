"""FloodTrackSegmenter: the key frame's flood-fill region followed through JPEG frames of flat shapes."""

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

import refam.segmenters.flood_track as flood_track
from refam.errors import ConfigError, DataError, MissingInputError
from refam.segmenters import FloodTrackSegmenter, VideoSegmenter
from refam.shapes.scenes import make_clip
from refam.types import Point


def write_jpegs(folder, images):
    paths = []
    for t, image in enumerate(images):
        path = folder / f"{t:05d}.jpg"
        image.save(path, quality=95)
        paths.append(path)
    return paths


def inner_point(mask):
    """(x, y) of the mask's pixel farthest from its edge, at the pixel's centre."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(depth), mask.shape)
    return x + 0.5, y + 0.5


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def tracked(paths, key, point, **settings):
    results = list(FloodTrackSegmenter(**settings).track(paths, key, point))
    indices = [index for index, _ in results]
    # SAM2VideoSegmenter's order: key frame, later frames, then earlier frames backward, each once
    assert indices == [key, *range(key + 1, len(paths)), *range(key - 1, -1, -1)]
    return dict(results)


def textured(image, rng, amplitude=5):
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-amplitude, amplitude + 1, size=np.asarray(image).shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def moving_circles(size, background, circles, frames, rng=None, hidden=()):
    """Frames of flat circles (colour, x0, y0, vx, vy, radius) and their exact masks per frame;
    a circle listed with a frame in `hidden` is not drawn in that frame."""
    images, masks = [], []
    for t in range(frames):
        image = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(image)
        frame_masks = []
        for k, (colour, x0, y0, vx, vy, r) in enumerate(circles):
            label = Image.new("L", size, 0)
            if (k, t) not in hidden:
                box = (x0 + vx * t - r, y0 + vy * t - r, x0 + vx * t + r, y0 + vy * t + r)
                draw.ellipse(box, fill=colour)
                ImageDraw.Draw(label).ellipse(box, fill=1)
            frame_masks.append(np.asarray(label) > 0)
        images.append(textured(image, rng) if rng is not None else image)
        masks.append(frame_masks)
    return images, masks


def apart(masks, gap=2):
    """Whether no two masks come within `gap` pixels of each other."""
    grown = [ndimage.binary_dilation(m, iterations=gap) for m in masks]
    return not any((a & b).any() for i, a in enumerate(grown) for b in grown[i + 1:])


# clips whose shapes never touch (most clips hold a pair that touches or overlaps in some frame,
# where a point prompt gets the part it lands in); 38 holds two green triangles
@pytest.mark.parametrize("clip_index", [1, 13, 38])
def test_every_shape_of_a_clip_is_followed_from_first_middle_and_last_frame(tmp_path, clip_index):
    clip = make_clip("test", clip_index, frames=7, size=128, max_speed=4)
    frames = [clip.frame(t) for t in range(clip.num_frames)]
    assert all(apart(frame.masks) for frame in frames)
    paths = write_jpegs(tmp_path, [f.image for f in frames])
    for obj in range(len(clip.objects)):
        for key in (0, 3, 6):
            masks = tracked(paths, key, inner_point(frames[key].masks[obj]))
            for t, frame in enumerate(frames):
                assert iou(masks[t], frame.masks[obj]) >= 0.97, (obj, key, t)


def test_identical_twins_are_followed_apart_on_a_non_square_frame(tmp_path):
    red = (210, 40, 40)
    images, masks = moving_circles((120, 72), (128, 128, 128), [(red, 15, 18, 9, 0, 9), (red, 105, 54, -9, 0, 9)],
                                   frames=9, rng=np.random.default_rng(0))
    paths = write_jpegs(tmp_path, images)
    for followed, other in ((0, 1), (1, 0)):
        got = tracked(paths, 4, inner_point(masks[4][followed]))
        for t in range(len(paths)):
            assert iou(got[t], masks[t][followed]) >= 0.97, (followed, t)
            assert not (got[t] & masks[t][other]).any(), (followed, t)


def test_a_shape_faster_than_its_size_is_found_where_its_motion_leads(tmp_path):
    # 22 pixels a frame for a circle 14 across: no frame's circle overlaps the one before
    images, masks = moving_circles((200, 90), (40, 110, 120), [((240, 200, 40), 15, 45, 22, 0, 7),
                                                              ((150, 60, 170), 100, 72, 0, 0, 8)],
                                   frames=8, rng=np.random.default_rng(1))
    paths = write_jpegs(tmp_path, images)
    for key in (0, 4, 7):
        got = tracked(paths, key, inner_point(masks[key][0]))
        for t in range(len(paths)):
            assert iou(got[t], masks[t][0]) >= 0.97, (key, t)


def test_the_region_follows_the_reference_colour_not_a_noisy_pixel(tmp_path):
    # a texture of +-5 comes out of JPEG as up to +-13: the click lands on the pixel farthest from
    # the object's colour, and a tolerance of 12 from that pixel leaves holes, while every pixel of
    # the object lies within 12 of the key region's median colour
    colour = (60, 150, 70)
    images, masks = moving_circles((96, 80), (200, 190, 170), [(colour, 25, 30, 4, 2, 12)], frames=6,
                                   rng=np.random.default_rng(2))
    paths = write_jpegs(tmp_path, images)
    key = np.asarray(Image.open(paths[0])).astype(int)
    inside = ndimage.binary_erosion(masks[0][0], iterations=2)
    distance = np.where(inside, np.abs(key - colour).max(axis=2), -1)
    y, x = np.unravel_index(np.argmax(distance), distance.shape)
    assert distance[y, x] > 8
    got = tracked(paths, 0, (x + 0.5, y + 0.5), tolerance=12)
    for t in range(len(paths)):
        assert iou(got[t], masks[t][0]) >= 0.97, t
        assert got[t][ndimage.binary_erosion(masks[t][0], iterations=2)].all(), t  # no hole


def squares(size, background, colour, centres, half):
    """One frame per (cx, cy): a flat square of `half` pixels half-side, and its exact mask."""
    images, masks = [], []
    for cx, cy in centres:
        image, label = Image.new("RGB", size, background), Image.new("L", size, 0)
        box = (cx - half, cy - half, cx + half, cy + half)
        ImageDraw.Draw(image).rectangle(box, fill=colour)
        ImageDraw.Draw(label).rectangle(box, fill=1)
        images.append(image)
        masks.append(np.asarray(label) > 0)
    return images, masks


def test_a_click_on_a_small_shapes_blended_edge_takes_the_whole_shape(tmp_path):
    # JPEG's 4:2:0 chroma darkens the outer pixels of a small saturated red square (the case of a
    # 12-pixel square in a held-out twins clip): flooded from there, the region was that ring alone
    # (IoU 0.73 on every frame) and its median colour missed the flat inside
    colour = (229, 16, 8)
    images, masks = squares((109, 184), (217, 217, 217), colour, [(71 + 2 * t, 171 - t) for t in range(6)], 5.7)
    paths = write_jpegs(tmp_path, images)
    key = np.asarray(Image.open(paths[0]))
    rings = []  # the shape's pixels whose flood is a ring around the inside
    for y, x in np.argwhere(masks[0]):
        region = flood_track.flood_region(key, (int(x), int(y)), 24)
        if flood_track.enclosed(region).sum() > 0.25 * region.sum():
            rings.append((x, y))
    assert len(rings) >= 10
    for x, y in rings[:: len(rings) // 5]:
        got = tracked(paths, 0, (x + 0.5, y + 0.5))
        for t in range(len(paths)):
            assert iou(got[t], masks[t]) >= 0.97, (x, y, t)


def ring_and_inside(tmp_path, band, inside_colour):
    """A flat blue ring `band` pixels wide on grey, its inside painted `inside_colour`, as JPEG (two
    frames); the ring's mask and its inside's."""
    background = (200, 200, 200)
    image, ring, inside = (Image.new("RGB", (90, 70), background), Image.new("L", (90, 70), 0),
                           Image.new("L", (90, 70), 0))
    ImageDraw.Draw(image).ellipse((20, 10, 70, 60), fill=(30, 60, 160))
    ImageDraw.Draw(image).ellipse((20 + band, 10 + band, 70 - band, 60 - band), fill=inside_colour or background)
    ImageDraw.Draw(ring).ellipse((20, 10, 70, 60), fill=1)
    ImageDraw.Draw(ring).ellipse((20 + band, 10 + band, 70 - band, 60 - band), fill=0)
    ImageDraw.Draw(inside).ellipse((20 + band, 10 + band, 70 - band, 60 - band), fill=1)
    return write_jpegs(tmp_path, [image, image]), np.asarray(ring) > 0, np.asarray(inside) > 0


def test_a_thin_ring_shaped_object_keeps_its_background_hole(tmp_path):
    # as thin as a blended edge, but its hole shows the background: not an inside to take in
    paths, ring, hole = ring_and_inside(tmp_path, 3, None)
    got = tracked(paths, 0, (21.5, 35.5))
    for t in range(2):
        assert not (got[t] & ndimage.binary_erosion(hole, iterations=3)).any(), t
        assert iou(got[t], ring) >= 0.8, t


def test_an_object_around_another_object_does_not_take_it_in(tmp_path):
    # a blue band 8 pixels wide around a red disc: wider than any blend, so two objects
    paths, ring, inside = ring_and_inside(tmp_path, 8, (220, 30, 30))
    got = tracked(paths, 0, (23.5, 35.5))
    for t in range(2):
        assert not (got[t] & ndimage.binary_erosion(inside, iterations=2)).any(), t
        assert iou(got[t], ring) >= 0.9, t


def test_a_hidden_object_gives_empty_masks_and_is_found_again_where_its_motion_leads(tmp_path):
    # hidden for 4 frames, it comes back 40 pixels from where it was last seen, farther than the
    # search radius (2 x its 17 pixels), right where its velocity leads
    images, masks = moving_circles((100, 60), (230, 230, 230), [((40, 80, 220), 15, 30, 8, 0, 8)], frames=10,
                                   hidden={(0, 3), (0, 4), (0, 5), (0, 6)})
    paths = write_jpegs(tmp_path, images)
    for key in (0, 9):
        got = tracked(paths, key, inner_point(masks[key][0]))
        for t in range(len(paths)):
            assert iou(got[t], masks[t][0]) >= 0.97, (key, t)
        assert not any(got[t].any() for t in (3, 4, 5, 6))


def test_a_point_on_the_background_follows_the_background(tmp_path):
    images, masks = moving_circles((80, 64), (225, 225, 220), [((220, 40, 40), 20, 20, 5, 3, 8)], frames=5,
                                   rng=np.random.default_rng(3))
    paths = write_jpegs(tmp_path, images)
    got = tracked(paths, 2, (2.5, 60.5))
    for t in range(len(paths)):
        assert iou(got[t], ~masks[t][0]) >= 0.97, t


def test_frames_are_read_one_at_a_time_and_once(tmp_path, monkeypatch):
    images, _ = moving_circles((64, 48), (128, 128, 128), [((220, 40, 40), 20, 20, 3, 1, 6)], frames=6)
    paths = write_jpegs(tmp_path, images)
    reads = []
    real_read = flood_track.read_frame
    monkeypatch.setattr(flood_track, "read_frame", lambda path, size=None: reads.append(path) or real_read(path, size))
    tracks = FloodTrackSegmenter().track(paths, 2, (20.5, 22.5))
    assert isinstance(FloodTrackSegmenter(), VideoSegmenter)
    assert reads == [str(paths[2])]  # the key frame, read to check the point
    for done, (index, mask) in enumerate(tracks, start=1):
        assert len(reads) == done and reads[-1] == str(paths[index])
        assert mask.shape == (48, 64) and mask.dtype == bool
    assert sorted(reads) == sorted(str(p) for p in paths)


def test_bad_settings_name_their_field():
    for settings, field in (({"tolerance": 300}, "tolerance"), ({"tolerance": -1}, "tolerance"),
                            ({"search_radius": 0}, "search_radius"), ({"search_radius": float("nan")}, "search_radius"),
                            ({"min_area": 1.5}, "min_area")):
        with pytest.raises(ConfigError) as caught:
            FloodTrackSegmenter(**settings)
        assert caught.value.field == field and str(caught.value).startswith(f"{field}: ")
    assert FloodTrackSegmenter(tolerance=10).init_args == {"tolerance": 10, "search_radius": 2.0, "min_area": 0.05}


def test_bad_videos_are_one_line_before_any_mask(tmp_path):
    images, _ = moving_circles((64, 48), (128, 128, 128), [((220, 40, 40), 20, 20, 3, 1, 6)], frames=3)
    paths = write_jpegs(tmp_path, images)
    with pytest.raises(ConfigError, match="outside frame 1"):
        FloodTrackSegmenter().track(paths, 1, (64.5, 10.0))
    with pytest.raises(MissingInputError, match="not found"):
        FloodTrackSegmenter().track([*paths, tmp_path / "gone.jpg"], 0, (20.5, 20.5))
    Image.new("RGB", (48, 64)).save(paths[2])
    with pytest.raises(DataError, match="one size"):
        list(FloodTrackSegmenter().track(paths, 0, (20.5, 20.5)))


def test_a_users_points_follow_the_positive_regions_minus_the_negative_ones(tmp_path):
    """Two circles of other colours on a non-square frame, keyed on a middle frame: positive points on
    both follow both; a negative point on one leaves the other; one positive point is `track`."""
    images, masks = moving_circles((120, 72), (128, 128, 128), [((210, 40, 40), 15, 18, 6, 0, 9),
                                                               ((40, 80, 220), 100, 54, -6, 0, 9)],
                                   frames=7, rng=np.random.default_rng(2))
    paths = write_jpegs(tmp_path, images)
    red, blue = inner_point(masks[3][0]), inner_point(masks[3][1])
    segmenter = FloodTrackSegmenter()
    order = [3, 4, 5, 6, 2, 1, 0]

    def follow(*points):
        results = list(segmenter.track_points(paths, 3, list(points)))
        assert [index for index, _ in results] == order
        return dict(results)

    both, red_only, blue_only = follow(Point(*red), Point(*blue)), follow(Point(*red), Point(*blue, 0)), \
        follow(Point(*red, 0), Point(*blue))
    for t in range(7):
        assert iou(both[t], masks[t][0] | masks[t][1]) >= 0.97, t
        assert iou(red_only[t], masks[t][0]) >= 0.97 and not (red_only[t] & masks[t][1]).any(), t
        assert iou(blue_only[t], masks[t][1]) >= 0.97 and not (blue_only[t] & masks[t][0]).any(), t
    alone = follow(Point(*red))
    assert all(np.array_equal(alone[t], mask) for t, mask in tracked(paths, 3, red).items())
    assert not any(mask.any() for mask in follow(Point(*red, 0)).values())  # no positive point: nothing
    assert not any(mask.any() for mask in follow(Point(*red), Point(*red, 0)).values())  # "not this" wins
    with pytest.raises(ConfigError, match="outside frame 3"):
        segmenter.track_points(paths, 3, [Point(*red), Point(121.0, 5.0, 0)])


def test_the_pipeline_tracks_a_video_with_it(tmp_path):
    from refam.aggregators.magnets import AppendMagnets
    from refam.pipeline import RefAMPipeline
    from refam.types import VideoExpression, VideoSample
    from tests.test_video_module import PlantedVideoExtractor, SIZE

    # the planted hot cell (row 1, col 2) of a 4 x 6 grid puts the point at (20, 12) on frame 0
    images, masks = moving_circles(SIZE, (225, 225, 220), [((40, 80, 220), 20, 12, 2, 1, 5)], frames=7)
    paths = write_jpegs(tmp_path, images)
    pipeline = RefAMPipeline(extractor=PlantedVideoExtractor({0: [(0, 1, 2, 6.0)]}), segmenter=FloodTrackSegmenter(),
                             magnets=AppendMagnets())
    seen = {}
    pipeline.segment_video(VideoSample("clip", [str(p) for p in paths], [VideoExpression("the blue ball", "e0", [1])]),
                           lambda expression, index, mask: seen.setdefault(index, mask))
    assert sorted(seen) == list(range(7))
    assert all(iou(seen[t], masks[t][0]) >= 0.97 for t in range(7))


def test_the_pipeline_moves_a_videos_mask_with_a_users_points_on_the_key_frame(tmp_path):
    from refam.aggregators.magnets import AppendMagnets
    from refam.pipeline import RefAMPipeline
    from refam.types import VideoExpression, VideoSample
    from tests.test_video_module import PlantedVideoExtractor, SIZE

    # the planted point (20, 12) on frame 0 lands on the blue ball; the user says "not this", "this" on the red one
    images, masks = moving_circles(SIZE, (225, 225, 220), [((40, 80, 220), 20, 12, 2, 0, 5),
                                                          ((210, 40, 40), 38, 26, 0, 0, 4)], frames=7)
    paths = write_jpegs(tmp_path, images)
    pipeline = RefAMPipeline(extractor=PlantedVideoExtractor({0: [(0, 1, 2, 6.0)]}), segmenter=FloodTrackSegmenter(),
                             magnets=AppendMagnets())
    video = VideoSample("clip", [str(p) for p in paths], [VideoExpression("the red ball", "e0", [1])])
    points = [Point(21.0, 13.0, 0), Point(38.5, 26.5, 1)]
    seen = {}
    result = pipeline.segment_video(video, lambda expression, index, mask: seen.setdefault(index, mask),
                                    points={"e0": points})
    assert sorted(seen) == list(range(7))
    assert all(iou(seen[t], masks[t][1]) >= 0.97 and not (seen[t] & masks[t][0]).any() for t in range(7))
    prediction = result.predictions[0]
    assert prediction.point == (20.0, 12.0) and prediction.points == points  # the model's point was dropped
    assert np.array_equal(prediction.mask, seen[0])
