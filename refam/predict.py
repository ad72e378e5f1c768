"""`refam predict`: segment your own images by referring expressions and see why.

    refam predict --image photo.jpg --expression "the dog on the left" --output out/
    refam predict --image photos/ --expression "the red car" --expression "the tree" --output out/
    refam predict --manifest mine.jsonl --output out/            # expressions and captions from the file
    refam predict --config configs/refcoco.yaml --image photo.jpg --expression "..." --output out/
    refam predict --video clip.mp4 --expression "the dog" --output out/    # or a folder of frames

Per image and expression, into `OUT/<image name>/`: `<k>-<expression>_mask.png` (0/255),
`_overlay.png` (image, mask tinted and outlined, the argmax point as a star), `_heatmap.png` (the
heatmap over the image, star marked, with a colour bar) and `.json` (point, kept and dropped tokens,
global attention sinks); the pictures of an image under 512 px are enlarged by a whole factor.
Without --config or --model the embedded refam-shapes pipeline runs.

A video (a file OpenCV reads, or a folder of frames) gives `OUT/<video>/<k>-<expression>/<frame>.png`
masks, `<k>-<expression>_overlay.gif` and a `.json`. With a video pipeline (a config whose extractor
has a video path and whose segmenter is a `VideoSegmenter`, e.g. configs/davis.yaml: Mochi + SAM2)
the point is chosen once, on the key frame, and the segmenter tracks the object through the video;
otherwise every frame is segmented on its own by the image pipeline. Frames are read one at a time
(a video file is first decoded to JPEG frames in a temporary folder, frame by frame); only the GIF's
thumbnails (at most 320 px) are kept until the end.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from refam.errors import ConfigError, MissingInputError, RefamError, error_line
from refam.io.names import slug

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


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
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ConfigError(f"--output {folder} is not writable ({err.strerror or err}): choose another folder") from err


def track_video(model, video: Path, texts: list[str], caption: str, output: Path, key_frames: dict | None = None) -> int:
    """The video pipeline: one DiT pass over the clip, a point on the key frame, tracked by the segmenter.
    `key_frames`, if given, receives {expression index: (key frame image, its prediction)}."""
    from refam.data.frames import frame_files, iter_frames
    from refam.types import VideoExpression, VideoSample
    from refam.visualize import mask_image, overlay
    from refam.io.files import save_json, save_png, write_atomic

    folder = output / video.stem
    stems = [f"{k}-{slug(text)}" for k, text in enumerate(texts)]
    with tempfile.TemporaryDirectory(prefix="refam-frames-") as scratch:
        if video.is_dir():
            paths = [str(p) for p in frame_files(video)]
        else:  # SAM2 reads frames by path: decode once, one frame at a time
            paths = []
            for index, frame in enumerate(iter_frames(video)):
                path = Path(scratch) / f"{index:05d}.jpg"
                frame.save(path, quality=95)
                paths.append(str(path))
        sample = VideoSample(video.stem, paths, [VideoExpression(t, str(k)) for k, t in enumerate(texts)], caption=caption,
                             frame_names=[f"{i:05d}" for i in range(len(paths))])
        thumbnails: dict[int, dict[int, object]] = {k: {} for k in range(len(texts))}

        def on_mask(expression, index, mask):
            k = int(expression.expression_id)
            save_png(mask_image(mask), folder / stems[k] / f"{index:05d}.png")
            picture = overlay(sample.frame(index), mask, None)
            picture.thumbnail((320, 320))
            thumbnails[k][index] = picture

        result = model.pipeline.segment_video(sample, on_mask, keep_token_maps=key_frames is not None)
        if result.skipped:
            raise ConfigError("; ".join(result.skipped))
        for prediction in result.predictions:
            k = int(prediction.expression_id)
            if key_frames is not None:
                key_frames[k] = (sample.frame(prediction.frame), prediction)
            frames = [thumbnails[k][i] for i in sorted(thumbnails[k])]
            gif = io.BytesIO()
            frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
            write_atomic(folder / f"{stems[k]}_overlay.gif", gif.getvalue())
            save_json({"expression": texts[k], "key_frame": prediction.frame,
                       "point": [round(v, 2) for v in prediction.point], "kept_tokens": prediction.kept_tokens,
                       "dropped_tokens": prediction.dropped_tokens,
                       "files": {"masks": f"{stems[k]}/", "overlay": f"{stems[k]}_overlay.gif"}},
                      folder / f"{stems[k]}.json")
        return len(paths)


def write_video_predictions(model, video: Path, texts: list[str], caption: str, output: Path,
                            key_frames: dict | None = None) -> int:
    """Per-frame masks, an overlay GIF and a record per expression; returns the number of frames.
    `key_frames`, if given, receives {expression index: (key frame image, its prediction)} (the
    first frame where each frame is segmented on its own)."""
    from refam.data.frames import iter_frames
    from refam.visualize import mask_image, overlay
    from refam.io.files import save_json, save_png, write_atomic

    if model.pipeline.reads_video:
        return track_video(model, video, texts, caption, output, key_frames)
    folder = output / video.stem
    stems = [f"{k}-{slug(text)}" for k, text in enumerate(texts)]
    thumbnails: list[list] = [[] for _ in texts]
    records = [{"expression": text, "frames": []} for text in texts]
    frames = 0
    for index, frame in enumerate(iter_frames(video)):
        for k, prediction in enumerate(model.segment(frame, texts, caption=caption)):
            save_png(mask_image(prediction.mask), folder / stems[k] / f"{index:05d}.png")
            picture = overlay(frame, prediction.mask, prediction.point)
            picture.thumbnail((320, 320))
            thumbnails[k].append(picture)
            records[k]["frames"].append({"frame": index, "point": [round(v, 2) for v in prediction.point],
                                         "mask_pixels": int(prediction.mask.sum())})
            if index == 0:
                records[k].update(kept_tokens=prediction.kept_tokens, dropped_tokens=prediction.dropped_tokens)
                if key_frames is not None:
                    key_frames[k] = (frame, prediction)
        frames = index + 1
    for k, stem in enumerate(stems):
        gif = io.BytesIO()
        thumbnails[k][0].save(gif, format="GIF", save_all=True, append_images=thumbnails[k][1:], duration=100, loop=0)
        write_atomic(folder / f"{stem}_overlay.gif", gif.getvalue())
        records[k]["files"] = {"masks": f"{stem}/", "overlay": f"{stem}_overlay.gif"}
        save_json(records[k], folder / f"{stem}.json")
    return frames


def jobs_from_arguments(args) -> list[tuple[str, Path, list[str], str]]:
    """(name, image path, expressions, caption) per image."""
    if args.manifest is not None:
        from refam.data.manifest import ManifestDataset

        dataset = ManifestDataset(str(args.manifest))
        return [(sample_id, image, [text for _, text, _ in specs], caption)
                for sample_id, image, specs, caption, _ in dataset.parsed_records()]
    if not args.image and not args.video:
        raise ConfigError("give --image (files or folders) or --video with --expression, or --manifest")
    if not args.expression:
        raise ConfigError("give at least one --expression \"...\" to segment")
    return [(p.stem, p, list(args.expression), args.caption) for p in image_paths(args.image)]


def write_prediction(folder: Path, index: int, text: str, image, prediction) -> dict:
    from refam.visualize import prediction_pictures
    from refam.io.files import save_json, save_png

    stem = folder / f"{index}-{slug(text)}"
    record = {
        "expression": text,
        "point": [round(prediction.point[0], 2), round(prediction.point[1], 2)],
        "kept_tokens": prediction.kept_tokens,
        "dropped_tokens": prediction.dropped_tokens,
        "sinks": [{"token": t, "category": c} for t, c in zip(prediction.sinks, prediction.sink_categories)],
        "mask_pixels": int(prediction.mask.sum()),
        "files": {kind: f"{stem.name}_{kind}.png" for kind in ("mask", "overlay", "heatmap")},
    }
    for kind, picture in prediction_pictures(image, prediction).items():
        save_png(picture, stem.with_name(f"{stem.name}_{kind}.png"))
    save_json(record, stem.with_suffix(".json"))  # last: its presence means the expression is complete
    return record


def check_expressions(model, texts: list[str]) -> None:
    """The one-line error for an expression that cannot run (empty, too long for the text encoder)."""
    for text in texts:
        if not text.strip():
            raise ConfigError("an --expression is empty: give the words that name the object")
        model.pipeline.check_expression(text)


def run(args) -> int:
    from refam.api import RefAM, as_image

    jobs = jobs_from_arguments(args)
    for video in args.video:
        if not video.exists():
            raise MissingInputError(f"--video {video}: no such file or folder")
    check_writable(args.output)
    model = RefAM.load(args.config or args.model, device=args.device)
    for texts in [job[2] for job in jobs] + ([list(args.expression)] if args.video else []):
        check_expressions(model, texts)  # every expression checked before anything is computed or written
    failures = 0
    for name, path, texts, caption in jobs:
        try:
            image = as_image(path)
        except MissingInputError as err:
            if len(jobs) == 1:
                raise
            print(f"refam: skipped: {err}", file=sys.stderr)
            failures += 1
            continue
        predictions = model.segment(image, texts, caption=caption)
        folder = args.output / name
        for index, (text, prediction) in enumerate(zip(texts, predictions)):
            write_prediction(folder, index, text, image, prediction)
        print(f"{path}: {len(texts)} expression(s) -> {folder}")
    for video in args.video:
        frames = write_video_predictions(model, video, list(args.expression), args.caption, args.output)
        print(f"{video}: {frames} frame(s) x {len(args.expression)} expression(s) -> {args.output / video.stem}")
    if failures:
        print(f"refam: {failures} of {len(jobs)} images could not be read (see above)", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> None:
    from refam.api import add_model_arguments

    parser = argparse.ArgumentParser(prog="refam predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, action="append", default=[], help="an image file or a folder (repeatable)")
    parser.add_argument("--video", type=Path, action="append", default=[],
                        help="a video file or a folder of frames (repeatable)")
    parser.add_argument("--expression", action="append", default=[], help="a referring expression (repeatable)")
    parser.add_argument("--caption", default="", help="what the denoising stream is conditioned on (default: empty prompt)")
    parser.add_argument("--manifest", type=Path, default=None, help="a JSON/JSONL manifest instead of --image/--expression")
    parser.add_argument("--output", type=Path, required=True)
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    try:
        code = run(args)
    except RefamError as err:
        print(error_line(err), file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
