"""The command line of `refam train-shapes-video`: its flags, the checks that run before anything is
built or trained, and where the model may be written (as `refam train-shapes`). The training
itself is `refam.shapes.train_video.train` (whose docstring is the command's description)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import refam.shapes.train_video as training
from refam.card import read_training_record
from refam.embedded import REFAM_SHAPES_VIDEO
from refam.errors import ArgumentParser, ConfigError, MissingInputError, number, reports_user_errors
from refam.shapes.motion import TWIN_RATE
from refam.shapes.train_cli import COUNT, SHARE, add_run_arguments, output_folder, writable
from refam.shapes.video_model import VideoModelConfig


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="refam train-shapes-video", description=training.__doc__)
    add_run_arguments(parser, REFAM_SHAPES_VIDEO, vae_steps=120, flow_steps=2000, batch_size=8, ground_weight=1.0)
    parser.add_argument("--clips", type=COUNT, default=1200, help="training clips encoded once")
    parser.add_argument("--empty-caption-rate", type=SHARE, default=0.5,
                        help="share of training steps' clips with the empty caption (refam predict's default)")
    parser.add_argument("--monitor-every", type=number(int, at_least=0), default=0,
                        help="score the key-frame point on held-out clips every N flow steps")
    parser.add_argument("--vae-crop", type=number(int, at_least=16), default=32,
                        help="side of the random crops the autoencoder trains on (smaller: more steps an hour)")
    parser.add_argument("--vae-colour-weight", type=number(float, at_least=0.0), default=1.0,
                        help="weight of the autoencoder's linear colour read-out term (0: reconstruction alone)")
    parser.add_argument("--vae-from", type=Path, default=None,
                        help="a trained refam-shapes-video folder whose autoencoder to keep (skips stage 1)")
    parser.add_argument("--monitor-clips", type=COUNT, default=30, help="held-out test clips the monitor scores")
    parser.add_argument("--vae-motion-weight", type=number(float, at_least=0.0), default=0.0,
                        help="weight of the autoencoder's linear motion read-out term (each latent cell's velocity)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="a trained refam-shapes-video folder every part of which starts both stages")
    parser.add_argument("--twin-rate", type=SHARE, default=TWIN_RATE,
                        help="share of training clips drawn with twins (identical shapes only motion tells apart)")
    parser.add_argument("--lr-schedule", choices=training.LR_SCHEDULES, default="constant",
                        help="after the warm-up: constant, or a cosine down to a tenth at the last flow step")
    for name, default in VideoModelConfig().to_dict().items():
        if not isinstance(default, tuple):
            parser.add_argument(f"--{name.replace('_', '-')}", type=COUNT, default=default)
    args = parser.parse_args(argv)
    config = VideoModelConfig(**{k: getattr(args, k) for k in VideoModelConfig().to_dict() if hasattr(args, k)})
    output = output_folder(args.output, args.overwrite_embedded, REFAM_SHAPES_VIDEO)
    if args.clips < args.batch_size:
        raise ConfigError(f"--clips {args.clips} is fewer than --batch-size {args.batch_size}: no full batch to "
                          "train on; give more clips or a smaller batch")
    if config.text_width % 8:
        raise ConfigError(f"--text-width {config.text_width} is not a multiple of 8 (Mochi's caption pooler has 8 heads)")
    if config.rope_fixed_dims % 2 or config.rope_fixed_dims >= config.head_dim:
        raise ConfigError(f"--rope-fixed-dims {config.rope_fixed_dims} must be even and below --head-dim "
                          f"{config.head_dim}: the rest of each head carries the position")
    if args.vae_from is not None and args.resume_from is not None:
        raise ConfigError("--vae-from and --resume-from both given: a resumed snapshot keeps its own autoencoder")
    if args.init_from is not None and (args.vae_from is not None or args.resume_from is not None):
        raise ConfigError("--init-from with --vae-from or --resume-from: give one starting point")
    if args.init_from is not None:
        if not (args.init_from / "model_index.json").is_file():
            raise MissingInputError(f"--init-from {args.init_from}: not a model folder (no model_index.json); give a "
                                    "folder that refam train-shapes-video wrote")
        recorded = (read_training_record(args.init_from / "training.json") or {}).get("model")
        if recorded is not None and recorded != json.loads(json.dumps(config.to_dict())):
            raise ConfigError(f"--init-from {args.init_from}: its model ({recorded}) differs from this run's flags; "
                              "give the same architecture flags")
    if args.resume_from is not None and not (args.resume_from / "model_index.json").is_file():
        raise MissingInputError(f"--resume-from {args.resume_from}: not a model folder (no model_index.json); give "
                                "a folder that refam train-shapes-video wrote")
    if args.vae_from is not None and not (args.vae_from / "vae" / "config.json").is_file():
        raise MissingInputError(f"--vae-from {args.vae_from}: no vae/config.json there; give a folder that "
                                "refam train-shapes-video wrote")
    if args.work_dir.exists() and not args.work_dir.is_dir():
        raise ConfigError(f"--work-dir {args.work_dir} is a file; give a folder for the logs and snapshots")
    writable(args.work_dir, "--work-dir")
    if args.threads:
        torch.set_num_threads(args.threads)
    record = training.train(output, args.vae_steps, args.flow_steps, args.clips, args.batch_size, args.seed, config,
                            args.lr, args.caption_tokens, args.work_dir, args.snapshot_every, args.resume_from,
                            args.ground_weight, args.ground_share, args.monitor_every, args.monitor_clips,
                            args.empty_caption_rate, args.vae_from, args.vae_crop,
                            args.vae_colour_weight, args.twin_rate, args.lr_schedule, args.vae_motion_weight, args.init_from)
    print(json.dumps({k: record[k] for k in ("total_seconds", "vae_seconds")}))
