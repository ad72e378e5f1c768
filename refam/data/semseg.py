"""Semantic-segmentation benchmarks of REFAM Table 11, as ConceptAttention reads them.

One item is one image with one expression: its class name, whose mask is that class's pixels.
Score them with `refam.metrics.SaliencyScores` (which also reads `SegmentationExpression.void`).

ImageNet-Segmentation (Guillaumin et al. 2014), the 4,276 images of `gtsegs_ijcv.mat`, a MATLAB
v7.3 (HDF5) file whose struct `value` holds three N×1 arrays of object references:
    value/img[i, 0] -> uint8 image, stored (3, W, H): `.transpose((2, 1, 0))` gives H×W×3
    value/gt[i, 0]  -> a 1×1 cell whose [0, 0] -> the mask, stored (W, H): `.T`; nonzero = object
    value/id[i, 0]  -> uint16 characters of the image id "n<wordnet offset>_<number>"
Sources: hila-chefer/Transformer-Explainability data/Imagenet.py::Imagenet_Segmentation (img, gt)
and helblazer811/ConceptAttention@9c69fd5 experiments/imagenet_segmentation/data_processing.py
(id and names). The class name is ConceptAttention's: the synset's first WordNet lemma
(`wn.synset_from_pos_and_offset(pos, offset).lemmas()[0].name().replace("_", " ")`), mapped by its
table (refam/data/imagenet_seg_classes.json) to a simplified everyday word; its caption is
"a {name}" (experiments/imagenet_segmentation/run_experiment.py: `captions=[f"a {simplified_name}"]`).
The .mat has no names, so the lemma comes from nltk's WordNet (`pip install nltk` and
`python -m nltk.downloader wordnet`) or from `synset_words`, a text file of "<wnid> <lemma>, ..."
lines (ImageNet's words.txt or LOC_synset_mapping.txt), whose first lemma is taken.

PascalVOC 2012, single class: ConceptAttention's split, from its
experiments/pascal_voc_segmentation/run_single_class_split_experiment.py and
concept_attention/binary_segmentation_baselines/chefer_vit_explainability/data/VOC.py:
`ImageSets/Segmentation/val.txt`, `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png` (palette
indices: 0 background, 1..20 classes, 255 void border). An image is kept when the classes present
in its mask, after resizing it to 224×224 with PIL nearest (as the script does before choosing)
and leaving out 255, are background and exactly one class. Void pixels are excluded from the
scores (their label -1). Names are ConceptAttention's `VOCSegmentation.CLASSES_NAMES` ("plane",
"bike", "table", "pot", "monitor", ...); the caption is "a {name}". ConceptAttention reports 930
such images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from refam.io.images import read_rgb
from refam.errors import ConfigError, DataError, MissingInputError
from refam.io.pixels import check_mask_size, label_map
from refam.types import BadSample, Expression, Sample

DEFAULT_CAPTION = "a {name}"
MAT_NAME = "gtsegs_ijcv.mat"
VOID = 255
# concept_attention/binary_segmentation_baselines/chefer_vit_explainability/data/VOC.py::CLASSES_NAMES
CONCEPTATTENTION_VOC_NAMES = (
    "background", "plane", "bike", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "table", "dog", "horse", "motorcycle", "person", "pot", "sheep", "sofa", "train", "monitor",
)
REFERENCE_CHECK_SIZE = (224, 224)


@dataclass
class SegmentationExpression(Expression):
    """An expression whose ground truth also marks pixels that no score counts (VOC's 255 border)."""

    void: np.ndarray | None = None  # bool [H, W]


def conceptattention_class_names() -> dict[str, str]:
    """ConceptAttention's simplified name per class lemma (source, licence: imagenet_seg_classes.LICENSE)."""
    return json.loads(resources.files("refam.data").joinpath("imagenet_seg_classes.json").read_text("utf-8"))["categories"]


def _check_protocol(protocol: str) -> None:
    from refam.metrics.saliency import VARIANTS

    if protocol not in VARIANTS:
        raise ConfigError(f"must be one of {list(VARIANTS)}, got {protocol!r}", field="protocol")


def _check_caption(template: str) -> str:
    try:
        template.format(name="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"must be a template with only {{name}} in it (e.g. \"a {{name}}\") or \"\", "
            f"got {template!r} ({type(e).__name__}: {e})", field="caption"
        ) from e
    return template


# ------------------------------------------------------------------------------------ ImageNet


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # the semseg extra: a core install has no h5py
        raise MissingInputError(f"reading {MAT_NAME} needs h5py: pip install 'refam[semseg]'") from e
    return h5py


def read_wnid(file: Any, index: int) -> str:
    """The synset id ("n02085620") of item `index`, from its "n02085620_1234" image id."""
    chars = np.asarray(file[file["/value/id"][index, 0]]).ravel().astype("<u2")
    # MATLAB stores char arrays as UTF-16 code units (ConceptAttention: b"".join(...).decode("utf-16"))
    code = chars.tobytes().decode("utf-16-le").strip()
    return code.split("_")[0]


def read_image(file: Any, index: int) -> Image.Image:
    array = np.asarray(file[file["/value/img"][index, 0]])
    if array.dtype != np.uint8:
        raise DataError(f"image is stored as {array.dtype}, expected uint8")
    # MATLAB is column-major: an H×W×3 image arrives as (3, W, H), a grey H×W one as (W, H)
    array = array.transpose((2, 1, 0)) if array.ndim == 3 else array.T
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def read_mask(file: Any, index: int) -> np.ndarray:
    cell = file[file["/value/gt"][index, 0]]
    return np.asarray(file[cell[0, 0]]).T != 0


def _words_file_lookup(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise MissingInputError(f"synset words file not found: {path}", field="synset_words")
    lemmas = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2:
            lemmas[parts[0]] = parts[1].split(",")[0].strip()
    if not lemmas:
        raise DataError(f"{path}: no \"<wnid> <lemma>, ...\" lines; expected ImageNet's words.txt format")
    return lemmas


def _nltk_lookup() -> Callable[[str], str | None]:
    hint = ("set it to ImageNet's words.txt, or install WordNet for nltk: "
            "pip install nltk && python -m nltk.downloader wordnet")
    try:
        from nltk.corpus import wordnet
        from nltk.corpus.reader.wordnet import WordNetError

        wordnet.ensure_loaded()
    except ImportError as e:
        raise MissingInputError(f"ImageNet-Segmentation names its images by WordNet synset; {hint}",
                                field="synset_words") from e
    except LookupError as e:
        raise MissingInputError(f"nltk's WordNet data is not installed; {hint}", field="synset_words") from e

    def lookup(wnid: str) -> str | None:
        try:
            synset = wordnet.synset_from_pos_and_offset(wnid[0], int(wnid[1:]))
        except (WordNetError, ValueError):
            return None
        return synset.lemmas()[0].name().replace("_", " ")

    return lookup


class ImageNetSegmentation(Dataset):
    """ImageNet-Segmentation (`gtsegs_ijcv.mat`): one item per image, its class name as expression.

    `path` is the .mat file or a folder holding it. `names="simplified"` gives ConceptAttention's
    word ("dog" for "Walker hound"); "wordnet" the synset's first lemma. `protocol` is the
    `SaliencyScores` variant `refam test` scores its heatmaps with: by default ConceptAttention's
    ImageNet script, whose published numbers Table 11 compares with ("standard" for Chefer's
    definition).
    """

    def __init__(
        self,
        path: str,
        caption: str = DEFAULT_CAPTION,
        names: Literal["simplified", "wordnet"] = "simplified",
        synset_words: str | None = None,
        protocol: str = "conceptattention-imagenet",
    ) -> None:
        _check_protocol(protocol)
        self.saliency_protocol = protocol
        mat = Path(path)
        if mat.is_dir():
            mat = mat / MAT_NAME
        if not mat.is_file():
            raise MissingInputError(
                f"ImageNet-Segmentation file not found: {mat}. Download {MAT_NAME} (Guillaumin et al. 2014, "
                "the file Chefer et al. 2021 evaluate on) and point this at it or its folder", field="path"
            )
        if names not in ("simplified", "wordnet"):
            raise ConfigError(f"must be 'simplified' or 'wordnet', got {names!r}", field="names")
        self.path = mat
        self.caption = _check_caption(caption)
        self.names = names
        lookup: Callable[[str], str | None]
        if synset_words is not None:
            lookup = _words_file_lookup(Path(synset_words)).get
        else:
            lookup = _nltk_lookup()

        with self._open() as file:
            wnids = [read_wnid(file, i) for i in range(self._length(file))]
        # per item: (class name, None) or (None, why there is none)
        self._labels: list[tuple[str | None, str | None]] = []
        simplified = conceptattention_class_names()
        for wnid in wnids:
            lemma = lookup(wnid)
            if lemma is None:
                self._labels.append((None, f"synset {wnid} has no WordNet lemma in the lookup used"))
            elif names == "wordnet":
                self._labels.append((lemma, None))
            elif lemma in simplified:
                self._labels.append((simplified[lemma], None))
            else:
                self._labels.append((None, f"synset {wnid} ('{lemma}') is not in ConceptAttention's class table"))
        self.wnids = wnids
        self._file: Any = None
        self._pid = -1

    def _open(self) -> Any:
        h5py = _h5py()
        try:
            return h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path} is not a MATLAB v7.3 (HDF5) file ({e}); re-download {MAT_NAME}") from e

    def _length(self, file: Any) -> int:
        fields = ("img", "gt", "id")
        missing = [f"value/{k}" for k in fields if f"value/{k}" not in file]
        if missing:
            raise DataError(f"{self.path} lacks {', '.join(missing)}; it is not the ImageNet-Segmentation {MAT_NAME}")
        lengths = {k: file[f"value/{k}"].shape[0] for k in fields}
        if len(set(lengths.values())) != 1:
            raise DataError(f"{self.path}: value/img, value/gt and value/id differ in length ({lengths})")
        return lengths["img"]

    def _handle(self) -> Any:
        # HDF5 handles do not survive fork: each DataLoader worker opens its own
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = self._open(), os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": -1}

    @property
    def name(self) -> str:
        return "imagenet_segmentation"

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> Sample | BadSample:
        sample_id = str(index)
        name, problem = self._labels[index]
        if name is None:
            return BadSample(sample_id, f"{self.path} item {index}: {problem}")
        file = self._handle()
        try:
            image, mask = read_image(file, index), read_mask(file, index)
        except (DataError, KeyError, ValueError, OSError) as e:
            return BadSample(sample_id, f"{self.path} item {index} cannot be read: {e}")
        if mask.shape != (image.height, image.width):
            return BadSample(sample_id, f"{self.path} item {index}: mask is {mask.shape[1]}x{mask.shape[0]} but "
                                        f"the image is {image.width}x{image.height}")
        return Sample(
            sample_id=sample_id,
            image=image,
            expressions=[Expression(text=name, expression_id=sample_id, mask=mask)],
            caption=self.caption.format(name=name) if self.caption else "",
            source=f"{self.path}[{index}] ({self.wnids[index]})",
        )


# ------------------------------------------------------------------------------------ PascalVOC


def _voc_root(root: Path) -> Path:
    candidates = [root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"]
    for candidate in candidates:
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    raise MissingInputError(
        f"no VOC2012 folder (with ImageSets/Segmentation, JPEGImages, SegmentationClass) at "
        f"{', '.join(str(c) for c in candidates)}. Point this at VOCdevkit/VOC2012", field="root"
    )


def _read_labels(path: Path) -> np.ndarray:
    """VOC's class-index PNG (P, or L holding the same indices), upright: `refam.io.pixels.label_map`."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise DataError(f"{path} is a {image.mode} image; expected VOC's palette (class index) PNG")
        return label_map(image, path)


def single_class(labels: np.ndarray, check_size: tuple[int, int] | None) -> int | None:
    """The one object class of a VOC label map, or None if it has none or several.

    `check_size` = (height, width) resizes with PIL nearest first, as ConceptAttention does.
    """
    if check_size is not None:
        labels = np.asarray(Image.fromarray(labels).resize((check_size[1], check_size[0]), Image.NEAREST))
    classes = set(np.unique(labels).tolist()) - {0, VOID}
    return classes.pop() if len(classes) == 1 else None


class PascalVOCSingleClass(Dataset):
    """PascalVOC 2012 images whose segmentation holds exactly one object class (ConceptAttention).

    `root` is VOCdevkit/VOC2012 (or a folder holding VOC2012 or VOCdevkit/VOC2012).
    `class_check_size=None` decides "one class" at full resolution instead of at 224×224.
    `protocol`: the `SaliencyScores` variant, by default ConceptAttention's VOC script's.
    """

    def __init__(
        self,
        root: str,
        split: str = "val",
        caption: str = DEFAULT_CAPTION,
        class_names: list[str] | None = None,
        class_check_size: tuple[int, int] | None = REFERENCE_CHECK_SIZE,
        protocol: str = "conceptattention-voc",
    ) -> None:
        _check_protocol(protocol)
        self.saliency_protocol = protocol
        self.root = _voc_root(Path(root))
        self.split = split
        self.caption = _check_caption(caption)
        names = tuple(class_names) if class_names is not None else CONCEPTATTENTION_VOC_NAMES
        if len(names) != 21:
            raise ConfigError(f"must list 21 names (background first), got {len(names)}", field="class_names")
        self.class_names = names
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            known = sorted(p.stem for p in split_file.parent.glob("*.txt"))
            raise MissingInputError(f"split file not found: {split_file}; must be one of {known}", field="split")
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]

        # per kept item: (image id, class index) or (image id, why it cannot be judged)
        self._items: list[tuple[str, int | str]] = []
        self.excluded = 0  # images with no or several classes
        check = tuple(class_check_size) if class_check_size is not None else None
        for image_id in ids:
            path = self.root / "SegmentationClass" / f"{image_id}.png"
            try:
                labels = _read_labels(path)
            except FileNotFoundError:
                self._items.append((image_id, f"mask not found: {path}"))
                continue
            except (OSError, DataError) as e:
                self._items.append((image_id, f"cannot read mask {path}: {e}"))
                continue
            unknown = set(np.unique(labels).tolist()) - set(range(21)) - {VOID}
            if unknown:
                self._items.append((image_id, f"{path} has labels {sorted(unknown)} outside VOC's 0..20 and 255"))
                continue
            class_index = single_class(labels, check)
            if class_index is None:
                self.excluded += 1
            else:
                self._items.append((image_id, class_index))

    @property
    def name(self) -> str:
        return f"voc2012_single_class/{self.split}"

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Sample | BadSample:
        image_id, class_index = self._items[index]
        if isinstance(class_index, str):
            return BadSample(image_id, class_index)
        mask_path = self.root / "SegmentationClass" / f"{image_id}.png"
        try:
            labels = _read_labels(mask_path)
        except (OSError, DataError) as e:
            return BadSample(image_id, f"cannot read mask {mask_path}: {e}")
        image_path = self.root / "JPEGImages" / f"{image_id}.jpg"
        image = read_rgb(image_path)
        if isinstance(image, str):
            return BadSample(image_id, f"{image}. Check that the dataset's root points at VOC2012")
        try:
            check_mask_size(labels, image.size, mask_path, image_path)
        except DataError as e:
            return BadSample(image_id, str(e))
        name = self.class_names[class_index]
        expression = SegmentationExpression(
            text=name, expression_id=image_id, mask=labels == class_index, void=labels == VOID
        )
        return Sample(
            sample_id=image_id,
            image=image,
            expressions=[expression],
            caption=self.caption.format(name=name) if self.caption else "",
            source=str(image_path),
        )
