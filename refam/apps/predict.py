"""`refam predict`: segment your own images by referring expressions and see why.

    refam predict --image photo.jpg --expression "the dog on the left" --output out/
    refam predict --image photos/ --expression "the red car" --expression "the tree" --output out/
    refam predict --manifest mine.jsonl --output out/            # expressions and captions from the file
    refam predict --config configs/refcoco.yaml --image photo.jpg --expression "..." --output out/
    refam predict --video clip.mp4 --expression "the dog" --output out/    # or a folder of frames
    refam predict --image photo.jpg --expression "the dog" --negative-point 80,40 --point 210,95 --output out/

Per image and expression, into `OUT/<name>/`: `<k>-<expression>_mask.png` (0/255), `_overlay.png`
(image, mask tinted and outlined, the argmax point as a star), `_heatmap.png` (the heatmap over the
image, star marked, with a colour bar) and `.json` (point, the points that made the mask, kept and
dropped tokens, global attention sinks, `warnings`: what the answer cannot rest on, e.g. words the
model does not know, each also printed on a line; `no_referent`: the model's no-referent flag, true
with a warning giving its measured rates, null where it has none for the call); pictures of an image
under 512 px are enlarged by a whole factor. `--point X,Y` / `--negative-point X,Y` correct one
expression's mask on one image (`refam.apps.point_options`); the `.json`'s user "points" give it again.
Without --config or --model the embedded refam-shapes pipeline runs.

A video (a file OpenCV reads, or a folder of frames) gives `OUT/<name>/<k>-<expression>/<frame>.png`
masks, `<k>-<expression>_overlay.gif` and a `.json`. With a video pipeline (a config whose extractor
has a video path and whose segmenter is a `VideoSegmenter`, e.g. configs/davis.yaml: Mochi + SAM2)
the point is chosen once, on the key frame, and the segmenter tracks the object through the video;
otherwise every frame is segmented on its own by the image pipeline. Frames are read one at a time
(a video file is first decoded to JPEG frames in a temporary folder, frame by frame); only the GIF's
thumbnails (at most 320 px) are kept until the end.

Names (docs/settings.md, "Output names"): `<name>` is the image's or video's file stem (a frame
folder's name), or a manifest record's `id`, kept when it is a safe file name and otherwise made
safe with a hash of the original (`refam.io.names`). Names are handed out in the order given
(the manifest's records, then the images, a folder's sorted by name, then the videos): the first
keeps its name, a later input whose name is taken (ignoring case) gets `-2`, `-3`, ... appended. A
file given twice (by the same or another path) is segmented once. `<k>-<expression>` is the
expression's index and a readable slug of its words. Nothing is written outside --output.
"""

from __future__ import annotations

import io
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from refam.apps.point_options import add_point_arguments, option_points
from refam.errors import ArgumentParser, ConfigError, DataError, MissingInputError, RefamError, error_line, require_words
from refam.io.files import WRITE_ERRNOS, probe_writable
from refam.io.frames import check_video_readable
from refam.io.names import NameRegistry, inside, safe_name, slug

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Written:
    """What a writer wrote for one expression: the record (the content of its JSON file) and the
    path of every file, by kind (an image's: mask, overlay, heatmap, record; a video's: masks, the
    folder of per-frame masks, overlay, record)."""

    record: dict
    paths: dict[str, Path]


@dataclass(frozen=True)
class WrittenVideo:
    """What the video writer wrote: the video's folder, its number of frames, per expression what
    was written and (frame, prediction) on the key frame (the first frame where each frame is
    segmented on its own), the prediction carrying its token maps."""

    folder: Path
    frames: int
    expressions: list[Written]
    key_frames: list[tuple] = field(default_factory=list)


@dataclass(frozen=True)
class Job:
    """One input of a run: `name` is its folder's name under --output."""

    name: str
    source: Path
    texts: list[str]
    caption: str
    is_video: bool = False


def image_paths(arguments: list[Path]) -> list[Path]:
    paths: list[Path] = []
    for argument in arguments:
        if argument.is_dir():
            found = sorted(p for p in argument.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise MissingInputError(f"--image {argument}: the folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif argument.exists():
            paths.append(argument)
        else:
            raise MissingInputError(f"--image {argument}: no such file or folder")
    return paths


def check_writable(folder: Path) -> None:
    try:
        probe_writable(folder)
    except OSError as err:
        raise ConfigError(f"--output {folder} is not writable ({err.strerror or err}): choose another folder") from err


def output_folder(output: Path, name: str) -> Path:
    """`output / name` (as given, so that what is printed reads as the user wrote --output), refused
    in one line when it would lie outside `output` (a symbolic link there pointing elsewhere); `name`
    is already a safe name."""
    try:
        inside(output, name)
    except ValueError as err:
        raise ConfigError(f"--output {output}: {name} is a link to a folder outside it; remove the link or "
                          "choose another --output") from err
    folder = Path(output) / name
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--output {output}: {folder} is a file where this input's folder goes; move it or "
                          "choose another --output")
    return folder


def video_stem(video: Path) -> str:
    return video.name if video.is_dir() else video.stem


def expression_stems(texts: list[str]) -> list[str]:
    """`<k>-<slug>`: unique by k, readable by the slug."""
    return [f"{k}-{slug(text)}" for k, text in enumerate(texts)]


def overlay_gif(frames: list) -> bytes:
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return gif.getvalue()


def track_video(model, video: Path, texts: list[str], caption: str, folder: Path, settings=None,
                points=None) -> WrittenVideo:
    """The video pipeline: one DiT pass over the clip, a point on the key frame, tracked by the
    segmenter; everything written into `folder`. `settings`: the call's (`refam.settings.Settings`);
    `points`: a user's on each expression's key frame, as `RefAM.segment` takes them."""
    from refam.prompts.corrections import by_index
    from refam.io.frames import frame_files, iter_frames
    from refam.types import VideoExpression, VideoSample
    from refam.visualize import mask_image, overlay
    from refam.io.files import save_json, save_png, write_atomic

    stems = expression_stems(texts)
    with tempfile.TemporaryDirectory(prefix="refam-frames-") as scratch:
        if video.is_dir():
            paths = [str(p) for p in frame_files(video)]
        else:  # SAM2 reads frames by path: decode once, one frame at a time
            paths = []
            for index, frame in enumerate(iter_frames(video)):
                path = Path(scratch) / f"{index:05d}.jpg"
                frame.save(path, quality=95)
                paths.append(str(path))
        sample = VideoSample(video_stem(video), paths, [VideoExpression(t, str(k)) for k, t in enumerate(texts)],
                             caption=caption, frame_names=[f"{i:05d}" for i in range(len(paths))])
        thumbnails: dict[int, dict[int, object]] = {k: {} for k in range(len(texts))}

        def on_mask(expression, index, mask):
            k = int(expression.expression_id)
            save_png(mask_image(mask), folder / stems[k] / f"{index:05d}.png")
            picture = overlay(sample.frame(index), mask, None)
            picture.thumbnail((320, 320))
            thumbnails[k][index] = picture

        result = model.pipeline.segment_video(sample, on_mask, keep_token_maps=True, settings=settings,
                                              points=by_index(points, len(texts), *sample.frame(0).size))
        if result.skipped:
            raise ConfigError("; ".join(result.skipped))
        written: dict[int, Written] = {}
        key_frames: dict[int, tuple] = {}
        for prediction in result.predictions:
            k = int(prediction.expression_id)
            key_frames[k] = (sample.frame(prediction.frame), prediction)
            paths_k = video_paths(folder, stems[k])
            write_atomic(paths_k["overlay"], overlay_gif([thumbnails[k][i] for i in sorted(thumbnails[k])]))
            record = {"expression": texts[k], "key_frame": prediction.frame,
                      "point": [round(v, 2) for v in prediction.point],
                      "points": [p.to_record() for p in prediction.points], "kept_tokens": prediction.kept_tokens,
                      "dropped_tokens": prediction.dropped_tokens, "warnings": prediction.warnings,
                      **prediction.referent_record(), "files": video_files(stems[k])}
            save_json(record, paths_k["record"])
            written[k] = Written(record, paths_k)
        order = sorted(written)
        return WrittenVideo(folder, len(paths), [written[k] for k in order], [key_frames[k] for k in order])


def video_files(stem: str) -> dict[str, str]:
    """A video record's "files": paths relative to the video's folder."""
    return {"masks": f"{stem}/", "overlay": f"{stem}_overlay.gif"}


def video_paths(folder: Path, stem: str) -> dict[str, Path]:
    return {"masks": folder / stem, "overlay": folder / f"{stem}_overlay.gif", "record": folder / f"{stem}.json"}


def write_video_predictions(model, video: Path, texts: list[str], caption: str, output: Path, *,
                            name: str | None = None, settings=None, points=None) -> WrittenVideo:
    """Per-frame masks, an overlay GIF and a record per expression, into `output/<name>/` (`name`:
    default the video's file stem made safe); returns what was written, with each expression's key
    frame and its prediction. `settings`: the call's (`refam.settings.Settings`), default the model's;
    `points`: a user's on the key frames (`track_video`), for a pipeline that tracks only."""
    from refam.io.frames import iter_frames
    from refam.visualize import mask_image, overlay
    from refam.io.files import save_json, save_png, write_atomic

    model = model.for_video()  # the embedded default runs videos on the embedded video pipeline
    folder = output_folder(output, name or safe_name(video_stem(video)))
    if model.pipeline.reads_video:
        return track_video(model, video, texts, caption, folder, settings, points)
    if points is not None:  # each frame on its own: no key frame to correct
        raise ConfigError("points correct a tracked video's key frame: give a video pipeline (e.g. configs/davis.yaml)")
    stems = expression_stems(texts)
    thumbnails: list[list] = [[] for _ in texts]
    records = [{"expression": text, "frames": []} for text in texts]
    key_frames: list[tuple] = []
    frames = 0
    for index, frame in enumerate(iter_frames(video)):
        for k, prediction in enumerate(model.segment(frame, texts, caption=caption, settings=settings)):
            save_png(mask_image(prediction.mask), folder / stems[k] / f"{index:05d}.png")
            picture = overlay(frame, prediction.mask, prediction.point)
            picture.thumbnail((320, 320))
            thumbnails[k].append(picture)
            records[k]["frames"].append({"frame": index, "point": [round(v, 2) for v in prediction.point],
                                         "mask_pixels": int(prediction.mask.sum())})
            if index == 0:
                records[k].update(kept_tokens=prediction.kept_tokens, dropped_tokens=prediction.dropped_tokens,
                                  warnings=prediction.warnings, **prediction.referent_record())
                key_frames.append((frame, prediction))
        frames = index + 1
    written = []
    for k, stem in enumerate(stems):
        paths = video_paths(folder, stem)
        write_atomic(paths["overlay"], overlay_gif(thumbnails[k]))
        records[k]["files"] = video_files(stem)
        save_json(records[k], paths["record"])
        written.append(Written(records[k], paths))
    return WrittenVideo(folder, frames, written, key_frames)


def check_texts(texts: list[str]) -> None:
    """The one-line error for an empty expression; needs no model."""
    for text in texts:
        require_words(text)


def check_expressions(model, texts: list[str], settings=None) -> None:
    """The one-line error for an expression that cannot run (empty, too long for the text encoder
    with the magnets of `settings`, default the model's)."""
    check_texts(texts)
    for text in texts:
        model.pipeline.check_expression(text, settings)


def plan_jobs(args) -> list[Job]:
    """Every input of the run with its folder's name, and every error the arguments alone reveal,
    before any model loads: names are handed out in the order given (manifest records, images,
    videos), each distinct from the others; a file given twice is one job."""
    if args.manifest is not None and args.image:
        raise ConfigError("give --manifest or --image, not both (a manifest lists its own images)")
    if args.manifest is None and not args.image and not args.video:
        raise ConfigError("give --image (files or folders) or --video with --expression, or --manifest")
    if (args.image or args.video) and not args.expression:
        raise ConfigError("give at least one --expression \"...\" to segment")
    names, seen, jobs = NameRegistry(), set(), []
    if args.manifest is not None:
        from refam.data.manifest import ManifestDataset

        for sample_id, image, specs, caption, _ in ManifestDataset(str(args.manifest)).parsed_records():
            jobs.append(Job(names.name(("id", sample_id), sample_id), image, [text for _, text, _ in specs], caption))
    for path in image_paths(args.image):
        if path.resolve() not in seen:
            seen.add(path.resolve())
            jobs.append(Job(names.name(path.resolve(), path.stem), path, list(args.expression), args.caption))
    for video in args.video:
        if not video.exists():
            raise MissingInputError(f"--video {video}: no such file or folder")
        if video.resolve() not in seen:
            seen.add(video.resolve())
            jobs.append(Job(names.name(video.resolve(), video_stem(video)), video, list(args.expression),
                            args.caption, is_video=True))
    for job in jobs:
        check_texts(job.texts)
    return jobs


def write_prediction(folder: Path, index: int, text: str, image, prediction) -> Written:
    """The mask, overlay and heatmap PNGs and the JSON record of one expression, into `folder`, as
    `<index>-<slug>_<kind>.png` and `<index>-<slug>.json`; returns what was written."""
    from refam.visualize import prediction_pictures
    from refam.io.files import save_json, save_png

    stem = f"{index}-{slug(text)}"
    files = {kind: f"{stem}_{kind}.png" for kind in ("mask", "overlay", "heatmap")}
    record = {
        "expression": text,
        "point": [round(prediction.point[0], 2), round(prediction.point[1], 2)],
        "points": [p.to_record() for p in prediction.points],  # what made the mask: the model's and a user's
        "kept_tokens": prediction.kept_tokens,
        "dropped_tokens": prediction.dropped_tokens,
        "sinks": [{"token": t, "category": c} for t, c in zip(prediction.sinks, prediction.sink_categories)],
        "mask_pixels": int(prediction.mask.sum()),
        "warnings": prediction.warnings, **prediction.referent_record(),
        "files": files,
    }
    paths = {kind: folder / file for kind, file in files.items()} | {"record": folder / f"{stem}.json"}
    for kind, picture in prediction_pictures(image, prediction).items():
        save_png(picture, paths[kind])
    save_json(record, paths["record"])  # last: its presence means the expression is complete
    return Written(record, paths)


def run(args) -> int:
    from refam.api import RefAM, as_image

    jobs = plan_jobs(args)
    check_writable(args.output)
    folders = [output_folder(args.output, job.name) for job in jobs]
    images = [job for job in jobs if not job.is_video]
    first_image = None
    if len(images) == 1:  # a lone image that cannot be read is the run's error: say it before loading
        first_image = as_image(images[0].source)
    points = option_points(args, jobs, first_image)  # a lone image's corrections, checked before loading
    for job in jobs:
        if job.is_video:
            check_video_readable(job.source)
    model = RefAM.load(args.config or args.model, device=args.device)
    for job in jobs:  # every expression checked before anything is computed or written
        check_expressions(model.for_video() if job.is_video else model, job.texts)
    try:
        return write_all(model, jobs, folders, images, first_image, args, points)
    except OSError as err:  # a disk that fills or turns read-only mid-run: what was written stays
        if err.errno not in WRITE_ERRNOS:
            raise
        where = err.filename or args.output
        raise ConfigError(f"cannot write {where}: {err.strerror or err}; free space or choose another --output "
                          "(the files written before are complete)") from err


def print_warnings(texts: list[str], predictions: list) -> None:
    """One line per warning of each expression, under the line that reports its input."""
    for text, prediction in zip(texts, predictions):
        for warning in prediction.warnings:
            print(f'  warning: "{text}": {warning}')


def write_all(model, jobs: list, folders: list[Path], images: list, first_image, args, points=None) -> int:
    """Segment and write every job (`points`: the image's corrections); 1 when an image was unreadable, else 0."""
    from refam.api import as_image

    failures = 0
    for job, folder in zip(jobs, folders):
        if job.is_video:
            written = write_video_predictions(model, job.source, job.texts, job.caption, args.output, name=job.name)
            print(f"{job.source}: {written.frames} frame(s) x {len(job.texts)} expression(s) -> {written.folder}")
            print_warnings(job.texts, [prediction for _, prediction in written.key_frames])
            continue
        try:
            image = first_image if first_image is not None else as_image(job.source)
        except (MissingInputError, DataError) as err:  # missing or unreadable: the other images go on
            print(f"refam: skipped: {err}", file=sys.stderr)
            failures += 1
            continue
        corrections = {} if points is None else {"points": points}  # without points: the call as before
        predictions = model.segment(image, job.texts, caption=job.caption, **corrections)
        for index, (text, prediction) in enumerate(zip(job.texts, predictions)):
            write_prediction(folder, index, text, image, prediction)
        print(f"{job.source}: {len(job.texts)} expression(s) -> {folder}")
        print_warnings(job.texts, predictions)
    if failures:
        print(f"refam: {failures} of {len(images)} images could not be read (see above)", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> None:
    from refam.api import add_model_arguments

    parser = ArgumentParser(prog="refam predict", description=__doc__)
    parser.add_argument("--image", type=Path, action="append", default=[], help="an image file or a folder (repeatable)")
    parser.add_argument("--video", type=Path, action="append", default=[],
                        help="a video file or a folder of frames (repeatable)")
    parser.add_argument("--expression", action="append", default=[], help="a referring expression (repeatable)")
    parser.add_argument("--caption", default="", help="what the denoising stream is conditioned on (default: empty prompt)")
    parser.add_argument("--manifest", type=Path, default=None, help="a JSON/JSONL manifest instead of --image/--expression")
    parser.add_argument("--output", type=Path, required=True)
    add_point_arguments(parser)
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    try:
        code = run(args)
    except RefamError as err:
        print(error_line(err), file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
