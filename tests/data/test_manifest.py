"""ManifestDataset: JSON / JSONL records of images, expressions and optional PNG masks."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refam.data.manifest import ManifestDataset
from refam.types import BadSample, Sample

SQUARE = np.zeros((30, 40), dtype=bool)  # H=30, W=40
SQUARE[5:15, 20:35] = True


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "imgs" / "kitchen.png")
    Image.new("L", (20, 20), 128).save(tmp_path / "imgs" / "street.jpg")
    Image.fromarray(SQUARE.astype(np.uint8) * 255).save(tmp_path / "masks" / "mug.png")
    return tmp_path


RECORDS = [
    {"image": "imgs/kitchen.png", "caption": "a kitchen",
     "expressions": [{"text": "the red mug", "mask": "masks/mug.png", "id": "mug"}, "the kettle"]},
    {"id": "s2", "image": "imgs/street.jpg", "expressions": ["a lamp post"]},
]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def check_records(dataset: ManifestDataset) -> None:
    assert len(dataset) == 2
    first, second = dataset[0], dataset[1]
    assert isinstance(first, Sample) and isinstance(second, Sample)
    assert first.sample_id == "kitchen" and first.caption == "a kitchen"  # id defaults to the image stem
    assert first.image.mode == "RGB" and first.image.size == (40, 30)
    assert [(e.expression_id, e.text) for e in first.expressions] == [("mug", "the red mug"), ("kitchen_1", "the kettle")]
    np.testing.assert_array_equal(first.expressions[0].mask, SQUARE)
    assert first.expressions[1].mask is None  # plain text: unlabelled
    assert second.sample_id == "s2" and second.caption == "" and second.image.mode == "RGB"
    assert [e.expression_id for e in second.expressions] == ["s2_0"]


def test_jsonl_paths_relative_to_manifest(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # the working directory must not matter
    dataset = ManifestDataset(str(write_jsonl(folder / "mine.jsonl", RECORDS)))
    check_records(dataset)
    assert dataset.name == "mine"
    assert "mine.jsonl:line 1" in dataset[0].source


def test_json_list_and_absolute_paths_and_name(folder):
    records = json.loads(json.dumps(RECORDS))
    records[1]["image"] = str(folder / "imgs" / "street.jpg")
    path = folder / "list.json"
    path.write_text(json.dumps(records, indent=2))
    dataset = ManifestDataset(str(path), name="kitchens/val")
    check_records(dataset)
    assert dataset.name == "kitchens/val"


def test_missing_image_or_mask_is_a_bad_sample_naming_the_file(folder):
    records = json.loads(json.dumps(RECORDS))
    records[0]["expressions"][0]["mask"] = "masks/gone.png"
    records[1]["image"] = "imgs/gone.jpg"
    dataset = ManifestDataset(str(write_jsonl(folder / "m.jsonl", records)))
    bad_mask, bad_image = dataset[0], dataset[1]
    assert isinstance(bad_mask, BadSample) and bad_mask.sample_id == "kitchen" and "gone.png" in bad_mask.reason
    assert isinstance(bad_image, BadSample) and bad_image.sample_id == "s2" and "imgs/gone.jpg" in bad_image.reason
    assert "line 2" in bad_image.reason


def test_mask_of_wrong_size_is_a_bad_sample(folder):
    Image.new("L", (30, 40), 255).save(folder / "masks" / "mug.png")  # transposed size
    sample = ManifestDataset(str(write_jsonl(folder / "m.jsonl", RECORDS)))[0]
    assert isinstance(sample, BadSample) and "30x40" in sample.reason and "40x30" in sample.reason


def test_palette_and_rgba_masks_use_index_and_colour_not_alpha(folder):
    palette = Image.fromarray(SQUARE.astype(np.uint8) * 3, mode="P")  # DAVIS-style object index 3
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    palette.save(folder / "masks" / "mug.png")
    assert ManifestDataset(str(write_jsonl(folder / "p.jsonl", RECORDS)))[0].expressions[0].mask.sum() == SQUARE.sum()
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha must not make every pixel the object
    rgba[SQUARE, 1] = 200
    Image.fromarray(rgba, mode="RGBA").save(folder / "masks" / "mug.png")
    mask = ManifestDataset(str(write_jsonl(folder / "r.jsonl", RECORDS)))[0].expressions[0].mask
    np.testing.assert_array_equal(mask, SQUARE)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"expressions": ["x"]}, '"image"'),
        ({"image": "imgs/street.jpg"}, '"expressions"'),
        ({"image": "imgs/street.jpg", "expressions": []}, '"expressions"'),
        ({"image": "imgs/street.jpg", "expressions": ["ok", {"mask": "m.png"}]}, '"expressions[1].text"'),
        ({"image": "imgs/street.jpg", "expressions": [3]}, '"expressions[0]"'),
        ({"image": "imgs/street.jpg", "expressions": ["x"], "id": 7}, '"id"'),
        ({"image": "imgs/street.jpg", "expressions": ["x"], "caption": ["no"]}, '"caption"'),
        ({"image": "imgs/street.jpg", "expressions": [{"text": "a", "id": "e"}, {"text": "b", "id": "e"}]},
         '"expressions[1].id"'),
    ],
)
def test_malformed_record_names_file_line_and_field(folder, record, field):
    path = folder / "bad.jsonl"
    path.write_text(json.dumps(RECORDS[1]) + "\n\n" + json.dumps(record) + "\n")  # blank line 2 still counts
    with pytest.raises(ValueError) as info:
        ManifestDataset(str(path))
    message = str(info.value)
    assert str(path) in message and "line 3" in message and field in message


def test_invalid_json_and_duplicate_ids_and_record_numbers(folder):
    path = folder / "broken.jsonl"
    path.write_text(json.dumps(RECORDS[1]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"broken.jsonl: line 2"):
        ManifestDataset(str(path))
    path = folder / "dup.json"
    path.write_text(json.dumps([RECORDS[1], RECORDS[1]]))
    with pytest.raises(ValueError, match=r"record 2: id 's2' repeats record 1"):
        ManifestDataset(str(path))
    path.write_text(json.dumps([RECORDS[1], {"image": 5, "expressions": ["x"]}]))
    with pytest.raises(ValueError, match=r'dup.json: record 2: field "image"'):
        ManifestDataset(str(path))
    with pytest.raises(FileNotFoundError, match="^path: manifest not found"):
        ManifestDataset(str(folder / "absent.jsonl"))
