"""Ref-DAVIS17 (Khoreva et al., ACCV 2018): DAVIS-2017 videos with referring expressions.

Two layouts are read; `root` is the folder that holds them (ReferFormer's `data/ref-davis`).

1. ReferFormer's converted layout, written by wjn922/ReferFormer tools/data/convert_davis_to_ytvos.py
   and read by its inference_davis.py (also by appletea233/AL-Ref-SAM2 rvos/davis/):

       {root}/valid/JPEGImages/<video>/<frame>.jpg
       {root}/valid/Annotations/<video>/<frame>.png      palette PNG, value = object id
       {root}/meta_expressions/valid/meta_expressions.json
           {"videos": {<video>: {"expressions": {"0": {"exp": str, "obj_id": "1"}, ...},
                                 "frames": ["00000", ...]}}}

   The converter moves DAVIS/JPEGImages/480p and DAVIS/Annotations_unsupervised/480p (the
   unsupervised-task annotations, which eval_davis.py also scores against) into valid/.

2. The original releases, as the converter reads them:

       {root}/DAVIS/ImageSets/2017/{train,val}.txt
       {root}/DAVIS/JPEGImages/480p/<video>/<frame>.jpg
       {root}/DAVIS/Annotations_unsupervised/480p/<video>/<frame>.png
       {root}/davis_text_annotations/Davis17_annot1.txt, Davis17_annot1_full_video.txt,
                                     Davis17_annot2.txt, Davis17_annot2_full_video.txt
           one line per object: `<video> <obj_id> "<expression>"`

   Expression ids are made as the converter makes them, so both layouts give the same ids: per
   video each file's lines are sorted by obj_id (as strings), the four lists are zipped, and the
   k-th object's expressions get ids 4k (annotator 1, first frame), 4k+1 (annotator 1, full video),
   4k+2 (annotator 2, first frame), 4k+3 (annotator 2, full video). The converter's fixes of three
   misspelt video names are applied. Text files are read as UTF-8, else Latin-1 (the converter reads
   annotator 2's files as Latin-1).

Evaluation protocol (ReferFormer scripts/dist_test_davis.sh, inference_davis.py, eval_davis.py; the
maintainer confirms the averaging in wjn922/ReferFormer issue #30, and SAMWISE issue #13 calls it the
standard protocol; MUTR, GroPrompt and SAMWISE run the same eval_davis.py):
- The four expression sets are four runs. In run s (s = 0..3) the expression at position 4k+s of a
  video's list refers to its k-th object; the run's masks of a video are merged into one palette PNG
  per frame (ReferFormer: object k+1 where its score wins over the others and the background).
- Each run is scored by davis2017-evaluation `DAVISEvaluation(task="unsupervised", gt_set="val")`
  (ReferFormer vendors its current code) against Annotations_unsupervised/480p: every frame counts
  (only the semi-supervised task drops the first and last frames); void (255) pixels are left out
  of J and F (the official's behaviour since its commit dc598b4, 2019; its first commit had read
  them as background); predicted ids are matched to ground-truth objects by a Hungarian assignment
  on mean J&F; J and F are means over all objects of the 30 videos of each object's mean over
  frames, and J&F = (J + F) / 2.
- A table row is the mean over the four runs of J&F, J and F.
`refam test` prints that row (`protocol="unsupervised"`, the default; `refam.metrics.davis` does the
scoring, the same code `refam score` runs on the palettes MaskWriter writes). `protocol=
"per_expression"` prints instead each expression's track scored alone (MeViS-style, void likewise
left out), which is also logged as `J&F_per_expression` under the default.
With `annotator=None` one dataset holds all four sets, so one DiT pass per video serves them all;
each expression's `annotator` names its run, and the metric scores each run and averages the four.
`annotator=k` keeps set k only (four datasets, named `ref_davis17_anno{k}/<split>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from refam.data.files import require
from refam.data.video_common import PaletteTruth, VideoDataset, VideoFrames, load_captions, load_meta_expressions
from refam.errors import ConfigError, DataError, MissingInputError
from refam.metrics.davis import PROTOCOLS
from refam.types import BadSample, VideoExpression

# The four expression sets, in the order of a video's expression ids (exp_id = 4 * object + set).
ANNOTATOR_SETS = (
    "annotator 1, first frame",
    "annotator 1, full video",
    "annotator 2, first frame",
    "annotator 2, full video",
)
TEXT_FILES = (
    "Davis17_annot1.txt",
    "Davis17_annot1_full_video.txt",
    "Davis17_annot2.txt",
    "Davis17_annot2_full_video.txt",
)
# convert_davis_to_ytvos.py::read_expressions_from_txt: names misspelt in the text files.
VIDEO_NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}
SPLITS = {"valid": "val", "val": "val", "train": "train"}  # split -> ImageSets/2017 list (original layout)


@dataclass
class RefDAVISExpression(VideoExpression):
    """A Ref-DAVIS17 expression; `annotator` (0..3) indexes `ANNOTATOR_SETS`, the run it belongs to."""

    annotator: int = -1


@dataclass(frozen=True)
class _Video:
    video: str
    frame_names: tuple[str, ...] | None  # None: listed from the frame folder when read (original layout)
    expressions: tuple[tuple[str, str, int, int], ...]  # (exp_id, text, obj_id, annotator)


def _read_text_annotations(path: Path) -> dict[str, list[tuple[str, str]]]:
    """video -> [(obj_id, expression)], each video's lines sorted by obj_id as a string (stable),
    as convert_davis_to_ytvos.py::read_expressions_from_txt does."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    videos: dict[str, list[tuple[str, str]]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3 or not parts[1].isdigit():
            raise DataError(f"{path}: line {lineno}: expected `<video> <obj_id> \"<expression>\"`, got {line.strip()!r}")
        video, obj_id, expression = parts[0], parts[1], " ".join(parts[2:])
        if len(expression) >= 2 and expression[0] == expression[-1] == '"':
            expression = expression[1:-1]
        videos.setdefault(VIDEO_NAME_FIXES.get(video, video), []).append((obj_id, expression))
    return {video: sorted(lines, key=lambda line: line[0]) for video, lines in videos.items()}


class RefDAVIS17(VideoDataset):
    """Ref-DAVIS17: one item per video with its expressions; ground truth read per frame on demand.

    See the module docstring for the layouts read and for how a table row is averaged over the four
    expression sets (`annotator`). `protocol`: how `refam test` scores J&F, "unsupervised" (the
    published protocol) or "per_expression".
    """

    ignores_void = True  # 255 pixels leave J and F, as in the official unsupervised evaluation

    def __init__(
        self,
        root: str,
        split: str = "valid",
        annotator: int | None = None,
        captions_file: str | None = None,
        protocol: str = "unsupervised",
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError("must be 'unsupervised' (the published Ref-DAVIS17 figure: DAVIS 2017 unsupervised "
                              "evaluation per annotator run, runs averaged) or 'per_expression' (each expression's "
                              f"track alone), got {protocol!r}", field="protocol")
        self.protocol = protocol
        if split not in SPLITS:
            raise ConfigError(f"must be one of {sorted(SPLITS)}, got {split!r}", field="split")
        if annotator is not None and (isinstance(annotator, bool) or annotator not in range(len(ANNOTATOR_SETS))):
            raise ConfigError("must be null (all four expression sets) or 0..3 "
                              f"({', '.join(f'{i}: {s}' for i, s in enumerate(ANNOTATOR_SETS))}), got {annotator!r}",
                              field="annotator")
        self.root = Path(root)
        self.split = "valid" if split == "val" else split
        self.annotator = annotator
        require(self.root, "root", "Ref-DAVIS17 root")

        meta_path = self.root / "meta_expressions" / self.split / "meta_expressions.json"
        if meta_path.is_file():
            self.layout = "converted"
            videos = self._read_converted(meta_path)
        elif (self.root / "davis_text_annotations").is_dir():
            self.layout = "original"
            videos = self._read_original()
        else:
            raise MissingInputError(
                f"no Ref-DAVIS17 found under {self.root}: expected {meta_path.relative_to(self.root)} (ReferFormer's "
                "layout, written by its tools/data/convert_davis_to_ytvos.py) or davis_text_annotations/ next to DAVIS/ "
                "(the original release); check it and split", field="root"
            )
        if annotator is not None:
            videos = [
                _Video(v.video, v.frame_names, tuple(e for e in v.expressions if e[3] == annotator)) for v in videos
            ]
        # A video without expressions is no sample (as a RefCOCO image no ref points at).
        self._videos = [v for v in videos if v.expressions]
        if not self._videos:
            raise DataError(f"Ref-DAVIS17 under {self.root} has no expressions in split '{self.split}'; "
                            "check it and split", field="root")
        self._captions = load_captions(captions_file)

    def _read_converted(self, meta_path: Path) -> list[_Video]:
        require(self.root / self.split / "JPEGImages", "root", "Ref-DAVIS17 frame folder",
                " (ReferFormer's layout puts the frames in <root>/<split>/JPEGImages)")
        videos = []
        for video, entry in sorted(load_meta_expressions(meta_path, "root").items()):
            expressions = []
            for position, (exp_id, expression) in enumerate(entry["expressions"].items()):
                try:
                    obj_id = int(expression["obj_id"])
                except (KeyError, TypeError, ValueError):
                    raise DataError(
                        f"{meta_path}: video '{video}', expression '{exp_id}' has no integer \"obj_id\""
                    ) from None
                # inference_davis.py: the expression at position 4k + s is object k's in set s.
                expressions.append((str(exp_id), expression["exp"], obj_id, position % len(ANNOTATOR_SETS)))
            videos.append(_Video(video, tuple(sorted(entry["frames"])), tuple(expressions)))
        return videos

    def _read_original(self) -> list[_Video]:
        davis = self.root / "DAVIS"
        list_path = davis / "ImageSets" / "2017" / f"{SPLITS[self.split]}.txt"
        require(list_path, "root", "DAVIS-2017 video list",
                " (the original layout needs DAVIS/ from DAVIS-2017-Unsupervised-trainval-480p.zip next to "
                "davis_text_annotations/)")
        require(davis / "JPEGImages" / "480p", "root", "DAVIS-2017 frame folder")
        texts = []
        for name in TEXT_FILES:
            path = self.root / "davis_text_annotations" / name
            require(path, "root", "Ref-DAVIS17 text annotations file")
            texts.append(_read_text_annotations(path))
        videos = []
        for video in (line.strip() for line in list_path.read_text(encoding="utf-8").splitlines()):
            if not video:
                continue
            expressions = []
            # zip as the converter does: object k's four expressions, one from each file.
            for k, group in enumerate(zip(*(text.get(video, []) for text in texts))):
                for s, (obj_id, expression) in enumerate(group):
                    expressions.append((str(len(ANNOTATOR_SETS) * k + s), expression, int(obj_id), s))
            videos.append(_Video(video, None, tuple(expressions)))
        return videos

    @property
    def benchmark(self) -> str:
        """Metric-name prefix: "ref_davis17", or "ref_davis17_anno{k}" for one expression set."""
        return "ref_davis17" if self.annotator is None else f"ref_davis17_anno{self.annotator}"

    def frames_folder(self, video: str) -> Path:
        if self.layout == "converted":
            return super().frames_folder(video)
        return self.root / "DAVIS" / "JPEGImages" / "480p" / video

    def _annotations_folder(self, video: str) -> Path:
        if self.layout == "converted":
            return self.root / self.split / "Annotations" / video
        return self.root / "DAVIS" / "Annotations_unsupervised" / "480p" / video

    def _expressions_and_truth(
        self, entry: _Video, frames: VideoFrames
    ) -> tuple[list[VideoExpression], PaletteTruth] | BadSample:
        annotations_dir = self._annotations_folder(entry.video)
        if not annotations_dir.is_dir():
            return BadSample(entry.video, f"annotation folder of video '{entry.video}' not found: {annotations_dir}. "
                                          "Check the dataset's root, or restore the folder")
        expressions: list[VideoExpression] = [
            RefDAVISExpression(text=text, expression_id=exp_id, object_ids=[obj_id], annotator=annotator)
            for exp_id, text, obj_id, annotator in entry.expressions
        ]
        return expressions, PaletteTruth.of_frames(annotations_dir, frames)
