"""The command line of `refam train-shapes-video`: its flags, the checks that run before anything is
built or trained, and where the model may be written (as `refam train-shapes`). The training
itself is `refam.shapes.train_video.train` (whose docstring is the command's description)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import refam.shapes.train_video as training
from refam.embedded import REFAM_SHAPES_VIDEO
from refam.errors import ArgumentParser, ConfigError, MissingInputError, number, reports_user_errors
from refam.shapes.train_cli import output_folder, writable
from refam.shapes.video_model import VideoModelConfig


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    count, positive = number(int, at_least=1), number(float, above=0)
    share = number(float, at_least=0, at_most=1)
    parser = ArgumentParser(prog="refam train-shapes-video", description=training.__doc__)
    parser.add_argument("--output", type=Path, default=None,
                        help="where the trained model goes (default: outputs/refam-shapes-video in the current folder)")
    parser.add_argument("--overwrite-embedded", action="store_true",
                        help=f"write the trained model over the one shipped in the installed package ({REFAM_SHAPES_VIDEO})")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/train-shapes-video"))
    parser.add_argument("--vae-steps", type=count, default=120)
    parser.add_argument("--flow-steps", type=count, default=2000)
    parser.add_argument("--clips", type=count, default=1200, help="training clips encoded once")
    parser.add_argument("--batch-size", type=count, default=8)
    parser.add_argument("--lr", type=positive, default=1e-3)
    parser.add_argument("--caption-tokens", type=count, default=32)
    parser.add_argument("--empty-caption-rate", type=share, default=0.5,
                        help="share of training steps' clips with the empty caption (refam predict's default)")
    parser.add_argument("--seed", type=number(int, at_least=0, at_most=2**32 - 1), default=0)
    parser.add_argument("--snapshot-every", type=number(int, at_least=0), default=0,
                        help="also save the pipeline every N flow steps")
    parser.add_argument("--resume-from", type=Path, default=None, help="continue the flow stage of a saved model")
    parser.add_argument("--ground-weight", type=number(float, at_least=0), default=1.0,
                        help="weight of the auxiliary grounding term (refam.shapes.grounding); 0: flow matching alone")
    parser.add_argument("--ground-share", type=share, default=0.5,
                        help="share of each batch observed at the grounding noise level with the term")
    parser.add_argument("--monitor-every", type=number(int, at_least=0), default=0,
                        help="score the key-frame point on held-out clips every N flow steps")
    parser.add_argument("--monitor-clips", type=count, default=30, help="held-out test clips the monitor scores")
    parser.add_argument("--threads", type=number(int, at_least=0), default=0, help="torch CPU threads (0: torch's default)")
    for name, default in VideoModelConfig().to_dict().items():
        if not isinstance(default, tuple):
            parser.add_argument(f"--{name.replace('_', '-')}", type=count, default=default)
    args = parser.parse_args(argv)
    config = VideoModelConfig(**{k: getattr(args, k) for k in VideoModelConfig().to_dict() if hasattr(args, k)})
    output = output_folder(args.output, args.overwrite_embedded, REFAM_SHAPES_VIDEO)
    if args.clips < args.batch_size:
        raise ConfigError(f"--clips {args.clips} is fewer than --batch-size {args.batch_size}: no full batch to "
                          "train on; give more clips or a smaller batch")
    if config.text_width % 8:
        raise ConfigError(f"--text-width {config.text_width} is not a multiple of 8 (Mochi's caption pooler has 8 heads)")
    if args.resume_from is not None and not (args.resume_from / "model_index.json").is_file():
        raise MissingInputError(f"--resume-from {args.resume_from}: not a model folder (no model_index.json); give "
                                "a folder that refam train-shapes-video wrote")
    if args.work_dir.exists() and not args.work_dir.is_dir():
        raise ConfigError(f"--work-dir {args.work_dir} is a file; give a folder for the logs and snapshots")
    writable(args.work_dir, "--work-dir")
    if args.threads:
        torch.set_num_threads(args.threads)
    record = training.train(output, args.vae_steps, args.flow_steps, args.clips, args.batch_size, args.seed, config,
                            args.lr, args.caption_tokens, args.work_dir, args.snapshot_every, args.resume_from,
                            args.ground_weight, args.ground_share, args.monitor_every, args.monitor_clips,
                            args.empty_caption_rate)
    print(json.dumps({k: record[k] for k in ("total_seconds", "vae_seconds")}))
