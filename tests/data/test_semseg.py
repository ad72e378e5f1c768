"""ImageNet-Segmentation and PascalVOC single-class readers on tiny files in the real formats.

The .mat fixture is a MATLAB v7.3 file (HDF5 with MATLAB's 512-byte user block) laid out like
gtsegs_ijcv.mat: struct `value` with N×1 reference arrays img, gt (via 1×1 cells) and id, the data
in `#refs#`, stored column-major as MATLAB writes it. The VOC fixture is a VOCdevkit/VOC2012 tree
with palette PNGs whose objects have 255 borders.
"""

import hashlib
import json
import pickle
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from refam.data import ImageNetSegmentation, PascalVOCSingleClass, SegmentationExpression
from refam.data.semseg import conceptattention_class_names
from refam.errors import ConfigError, DataError, MissingInputError
from refam.metrics import SaliencyScores
from refam.types import BadSample, Sample

# ------------------------------------------------------------------------------------ ImageNet


def matlab_attrs(dataset, matlab_class: str) -> None:
    dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)


def write_gtsegs(path: Path, items: list[tuple[np.ndarray, np.ndarray, str]]) -> Path:
    """Write (image H×W×3 or H×W uint8, mask H×W, image id) items as MATLAB v7.3 would."""
    ref = h5py.ref_dtype
    with h5py.File(path, "w", userblock_size=512) as f:
        refs, value = f.create_group("#refs#"), f.create_group("value")
        matlab_attrs(value, "struct")
        columns = {k: value.create_dataset(k, (len(items), 1), dtype=ref) for k in ("img", "gt", "id")}
        for k in ("img", "gt", "id"):
            matlab_attrs(columns[k], "cell")
        for i, (image, mask, code) in enumerate(items):
            img = refs.create_dataset(f"img{i}", data=image.T)  # column-major: (3, W, H) or (W, H)
            matlab_attrs(img, "uint8")
            columns["img"][i, 0] = img.ref
            gt = refs.create_dataset(f"gt{i}", data=mask.T.astype(np.uint8))
            matlab_attrs(gt, "uint8")
            cell = refs.create_dataset(f"cell{i}", (1, 1), dtype=ref)
            cell[0, 0] = gt.ref
            matlab_attrs(cell, "cell")
            columns["gt"][i, 0] = cell.ref
            chars = np.frombuffer(code.encode("utf-16-le"), dtype="<u2").reshape(-1, 1)
            ident = refs.create_dataset(f"id{i}", data=chars)
            matlab_attrs(ident, "char")
            ident.attrs["MATLAB_int_decode"] = np.int32(2)
            columns["id"][i, 0] = ident.ref
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:  # MATLAB's text header, subsystem offset, version 0x0200 and "IM"
        f.write(header.ljust(116) + bytes(8) + b"\x00\x02" + b"IM")
    return path


def picture(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def blob(height: int, width: int, top: int, left: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top:top + 4, left:left + 6] = True
    return mask


ITEMS = [
    (picture(10, 14, 0), blob(10, 14, 2, 3), "n02089867_1234"),  # Walker hound -> dog
    (picture(12, 9, 1)[..., 0], blob(12, 9, 5, 1), "n02123045_77"),  # grey tabby -> cat
    (picture(8, 16, 2), blob(8, 16, 1, 8), "n02690373_5"),  # airliner -> plane
    (picture(9, 9, 3), blob(9, 9, 0, 0), "n04285008_12"),  # sports car: not in ConceptAttention's table
]
WORDS = "n02089867\tWalker hound, Walker foxhound\nn02123045\ttabby, tabby cat\nn02690373\tairliner\n" \
        "n04285008\tsports car, sport car\n"


@pytest.fixture
def mat(tmp_path: Path) -> Path:
    return write_gtsegs(tmp_path / "gtsegs_ijcv.mat", ITEMS)


@pytest.fixture
def words(tmp_path: Path) -> Path:
    path = tmp_path / "words.txt"
    path.write_text(WORDS)
    return path


def test_fixture_is_laid_out_as_chefers_loader_reads_it(mat):
    # data/Imagenet.py::Imagenet_Segmentation.__getitem__, verbatim indexing
    with h5py.File(mat, "r") as f:
        assert len(f["/value/img"]) == len(ITEMS)
        img = np.array(f[f["/value/img"][0, 0]]).transpose((2, 1, 0))
        target = np.array(f[f[f["/value/gt"][0, 0]][0, 0]]).transpose((1, 0))
        code = b"".join(f[f["/value/id"][0, 0]]).decode("utf-16").strip()  # ConceptAttention's decoding
    assert np.array_equal(img, ITEMS[0][0]) and np.array_equal(target != 0, ITEMS[0][1])
    assert code == "n02089867_1234"
    assert mat.read_bytes()[:10] == b"MATLAB 7.3"


def test_imagenet_items_carry_image_mask_and_conceptattention_name(mat, words):
    dataset = ImageNetSegmentation(str(mat), synset_words=str(words))
    assert len(dataset) == 4 and dataset.name == "imagenet_segmentation"
    first = dataset[0]
    assert isinstance(first, Sample) and first.sample_id == "0"
    assert first.image.mode == "RGB" and first.image.size == (14, 10)
    assert np.array_equal(np.asarray(first.image), ITEMS[0][0])
    [expression] = first.expressions
    assert (expression.text, expression.expression_id) == ("dog", "0")
    assert np.array_equal(expression.mask, ITEMS[0][1])
    assert first.caption == "a dog"  # run_experiment.py: captions=[f"a {simplified_name}"]
    assert [dataset[i].expressions[0].text for i in (1, 2)] == ["cat", "plane"]
    grey = dataset[1]
    assert grey.image.size == (9, 12) and np.array_equal(np.asarray(grey.image)[..., 2], ITEMS[1][0])


def test_class_table_is_conceptattentions():
    table = conceptattention_class_names()
    assert len(table) == 445  # one entry per ImageNet-Segmentation class
    assert table["Homo sapiens"] == "skull" and table["Thomson's gazelle"] == "animal"
    # keys, values and order as the Python table it replaced held them (and as the source lists them)
    digest = hashlib.sha256(json.dumps(list(table.items()), ensure_ascii=False).encode()).hexdigest()
    assert digest == "5ce561b606d26073239255f50613bb9d1285332ff428bdb448737f84fce88d5f"


def test_class_table_and_its_licence_ship_in_the_package():
    """pyproject's package-data names both files, so a wheel carries them (a test that builds one is slow)."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["refam"]
    for name in ("imagenet_seg_classes.json", "imagenet_seg_classes.LICENSE"):
        assert (root / "refam/data" / name).is_file()
        assert any(fnmatch.fnmatch(f"data/{name}", glob) for glob in globs), name
    assert "MIT License" in (root / "refam/data/imagenet_seg_classes.LICENSE").read_text()


def test_imagenet_folder_path_and_wordnet_names(mat, words):
    dataset = ImageNetSegmentation(str(mat.parent), names="wordnet", synset_words=str(words))
    assert [dataset[i].expressions[0].text for i in range(4)] == ["Walker hound", "tabby", "airliner", "sports car"]


def test_imagenet_class_outside_the_table_is_a_bad_sample(mat, words):
    bad = ImageNetSegmentation(str(mat), synset_words=str(words))[3]
    assert isinstance(bad, BadSample) and "sports car" in bad.reason and "n04285008" in bad.reason


def test_caption_template_is_a_setting(mat, words):
    assert ImageNetSegmentation(str(mat), caption="", synset_words=str(words))[0].caption == ""
    custom = ImageNetSegmentation(str(mat), caption="a photo of a {name}.", synset_words=str(words))
    assert custom[2].caption == "a photo of a plane."
    with pytest.raises(ConfigError, match="caption"):
        ImageNetSegmentation(str(mat), caption="a {cls}", synset_words=str(words))


def test_imagenet_wrong_paths_and_files_say_what_to_do(tmp_path, mat, words):
    with pytest.raises(MissingInputError, match="gtsegs_ijcv.mat"):
        ImageNetSegmentation(str(tmp_path / "nowhere"), synset_words=str(words))
    not_hdf5 = tmp_path / "broken" / "gtsegs_ijcv.mat"
    not_hdf5.parent.mkdir()
    not_hdf5.write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(DataError, match="v7.3"):
        ImageNetSegmentation(str(not_hdf5), synset_words=str(words))
    other = tmp_path / "other.mat"
    with h5py.File(other, "w") as f:
        f.create_dataset("value/img", (1, 1), dtype=h5py.ref_dtype)
    with pytest.raises(DataError, match="value/gt"):
        ImageNetSegmentation(str(other), synset_words=str(words))


def test_without_a_words_file_nltk_wordnet_is_required(mat, monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk", None)  # as if nltk were not installed
    monkeypatch.setitem(sys.modules, "nltk.corpus", None)
    with pytest.raises(MissingInputError, match="synset_words"):
        ImageNetSegmentation(str(mat))


def test_imagenet_dataset_pickles_for_loader_workers(mat, words):
    dataset = ImageNetSegmentation(str(mat), synset_words=str(words))
    dataset[0]  # opens the HDF5 file
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone[2].expressions[0].text == "plane"


# ------------------------------------------------------------------------------------ PascalVOC


def voc_palette() -> list[int]:
    """The VOC colour map (bit-interleaved), so the PNGs look like the real ones."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def with_border(labels: np.ndarray, cls: int, top: int, left: int, height: int, width: int) -> None:
    labels[top - 1:top + height + 1, left - 1:left + width + 1] = 255  # VOC's void outline
    labels[top:top + height, left:left + width] = cls


def save_voc_item(root: Path, image_id: str, labels: np.ndarray) -> None:
    png = Image.fromarray(labels, mode="P")
    png.putpalette(voc_palette())
    png.save(root / "SegmentationClass" / f"{image_id}.png")
    Image.fromarray(picture(*labels.shape, seed=len(image_id))).save(root / "JPEGImages" / f"{image_id}.jpg")


def voc_labels() -> dict[str, np.ndarray]:
    dog = np.zeros((30, 40), dtype=np.uint8)
    with_border(dog, 12, 5, 6, 10, 12)
    two = np.zeros((30, 40), dtype=np.uint8)
    with_border(two, 15, 3, 3, 8, 8)
    with_border(two, 12, 15, 20, 10, 12)  # a person and a dog: excluded
    plane = np.zeros((24, 32), dtype=np.uint8)
    plane[4:20, 2:30] = 1  # no border at all
    cat = np.zeros((448, 448), dtype=np.uint8)
    cat[100:300, 50:400] = 8
    cat[0, 0] = 15  # one pixel of person, gone after PIL's nearest resize to 224x224
    return {"2008_000001": dog, "2008_000002": two, "2008_000003": plane, "2008_000004": cat}


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for image_id, labels in voc_labels().items():
        save_voc_item(root, image_id, labels)
    ids = list(voc_labels()) + ["2008_000005"]  # listed, but its mask is missing
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    (root / "ImageSets/Segmentation/train.txt").write_text("2008_000003\n")
    return root


def test_voc_keeps_only_single_class_images(voc):
    dataset = PascalVOCSingleClass(str(voc))
    items = [dataset[i] for i in range(len(dataset))]
    kept = [s.sample_id for s in items if isinstance(s, Sample)]
    assert kept == ["2008_000001", "2008_000003", "2008_000004"]  # 2008_000002 has two classes
    assert dataset.excluded == 1 and dataset.name == "voc2012_single_class/val"
    [bad] = [s for s in items if isinstance(s, BadSample)]
    assert bad.sample_id == "2008_000005" and "mask not found" in bad.reason
    assert [s.expressions[0].text for s in items if isinstance(s, Sample)] == ["dog", "plane", "cat"]


def test_voc_mask_is_the_class_and_void_is_the_255_border(voc):
    sample = PascalVOCSingleClass(str(voc))[0]
    labels = voc_labels()["2008_000001"]
    [expression] = sample.expressions
    assert isinstance(expression, SegmentationExpression)
    assert np.array_equal(expression.mask, labels == 12)
    assert np.array_equal(expression.void, labels == 255) and expression.void.sum() == 12 * 14 - 10 * 12
    assert sample.caption == "a dog" and sample.image.size == (40, 30)


def test_voc_one_class_is_judged_at_224_like_conceptattention(voc):
    # The script resizes the palette mask to 224x224 (PIL nearest), then lists the classes present.
    label_tf = transforms.Compose([transforms.Resize((224, 224), Image.NEAREST), transforms.ToTensor(),
                                   transforms.Lambda(lambda x: x * 255)])
    resized = label_tf(Image.open(voc / "SegmentationClass/2008_000004.png")).numpy().astype("int32")
    assert sorted(set(np.unique(resized).tolist())) == [0, 8]  # the person pixel is gone
    at_224 = PascalVOCSingleClass(str(voc))
    full = PascalVOCSingleClass(str(voc), class_check_size=None)
    assert "2008_000004" in [at_224[i].sample_id for i in range(len(at_224))]
    assert "2008_000004" not in [full[i].sample_id for i in range(len(full))]
    assert full.excluded == 2


def test_voc_root_may_be_any_level_and_errors_name_the_fix(voc, tmp_path):
    for root in (voc, voc.parent, voc.parent.parent):
        assert len(PascalVOCSingleClass(str(root))) == 4
    assert len(PascalVOCSingleClass(str(voc), split="train")) == 1
    with pytest.raises(MissingInputError, match="VOC2012"):
        PascalVOCSingleClass(str(tmp_path / "elsewhere"))
    with pytest.raises(MissingInputError, match=r"\['train', 'val'\]"):
        PascalVOCSingleClass(str(voc), split="test")
    with pytest.raises(ConfigError, match="21 names"):
        PascalVOCSingleClass(str(voc), class_names=["background", "dog"])


def test_voc_unreadable_or_mismatched_files_are_bad_samples(voc):
    Image.new("RGB", (40, 30)).save(voc / "SegmentationClass/2008_000003.png")  # not a palette PNG
    Image.new("RGB", (10, 10)).save(voc / "JPEGImages/2008_000004.jpg")  # wrong size
    dataset = PascalVOCSingleClass(str(voc))
    items = {dataset[i].sample_id: dataset[i] for i in range(len(dataset))}
    assert isinstance(items["2008_000003"], BadSample) and "palette" in items["2008_000003"].reason
    assert isinstance(items["2008_000004"], BadSample) and "10x10" in items["2008_000004"].reason


def test_voc_sample_scores_with_its_void(voc):
    # A heatmap that is right on the object and wrong only on the void border still scores 100.
    sample = PascalVOCSingleClass(str(voc))[0]
    expression = sample.expressions[0]
    heat = torch.from_numpy(expression.mask | expression.void).float()
    metric = SaliencyScores(eval_size=None)
    metric.update(heat, expression.mask, void=expression.void)
    out = metric.compute()
    assert [out[k].item() for k in ("Acc", "mIoU", "mAP")] == pytest.approx([100.0, 100.0, 100.0])


@pytest.mark.slow
def test_refam_test_scores_semseg_heatmaps_with_each_datasets_protocol(tmp_path, mat, words, voc, monkeypatch,
                                                                        refam_here):
    """configs/semseg.yaml, pointed at the fixtures and the embedded model, logs the saliency scores
    that SaliencyScores gives on the heatmaps the module predicts, with each dataset's protocol.
    `refam test` runs in this process (`refam_here`)."""
    import csv
    import json

    from refam.api import RefAM

    root = Path(__file__).resolve().parents[2]
    datasets = [
        {"class_path": "refam.data.semseg.ImageNetSegmentation",
         "init_args": {"path": str(mat), "synset_words": str(words), "protocol": "conceptattention-imagenet"}},
        {"class_path": "refam.data.semseg.PascalVOCSingleClass",
         "init_args": {"root": str(voc), "protocol": "conceptattention-voc"}},
    ]
    result = refam_here(
        "test", "--config", "configs/semseg.yaml",
        "--model.extractor.init_args.pretrained", "embedded:refam-shapes",
        "--model.extractor.init_args.torch_dtype", "float32", "--model.extractor.init_args.resolution", "128",
        "--model.extractor.init_args.caption_max_tokens", "32", "--model.extractor.init_args.pooled_prompt", "empty",
        "--model.segmenter", '{"class_path": "refam.segmenters.floodfill.FloodFillSegmenter"}',
        "--data.datasets", json.dumps(datasets), "--data.num_workers", "0",
        "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics_file = next((tmp_path / "logs").rglob("metrics.csv"))
    logged = {k: float(v) for row in csv.DictReader(metrics_file.open()) for k, v in row.items() if v}

    monkeypatch.chdir(root)
    model = RefAM.load(root / "configs/demo.yaml")
    for dataset, variant in ((ImageNetSegmentation(str(mat), synset_words=str(words)), "conceptattention-imagenet"),
                             (PascalVOCSingleClass(str(voc)), "conceptattention-voc")):
        assert dataset.saliency_protocol == variant
        metric = SaliencyScores(variant=variant)
        for index in range(len(dataset)):
            sample = dataset[index]
            if not hasattr(sample, "expressions"):
                continue  # a BadSample: skipped by the run too
            for prediction, expression in zip(model.pipeline.segment_sample(sample).predictions, sample.expressions):
                metric.update(prediction.heatmap, expression.mask, getattr(expression, "void", None))
        expected = metric.compute()
        for name in ("Acc", "mIoU", "mAP"):
            assert logged[f"{dataset.name}/saliency_{name}"] == pytest.approx(float(expected[name]), abs=1e-3)
