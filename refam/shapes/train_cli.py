"""The command line of `refam train-shapes`: its flags, the checks that run before anything is built
or trained, and where the trained model may be written. The training itself is
`refam.shapes.train.train` (whose docstring is the command's description)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import refam.shapes.train as training
from refam.embedded import REFAM_SHAPES
from refam.errors import ArgumentParser, ConfigError, MissingInputError, number, reports_user_errors
from refam.io.files import probe_writable
from refam.shapes.dataset import FAMILIES
from refam.shapes.model import ShapesModelConfig


MODEL_FILES = ("model_index.json", "training.json")  # a folder holding either holds a trained model
COUNT, SHARE = number(int, at_least=1), number(float, at_least=0, at_most=1)


def output_folder(output: Path | None, overwrite_embedded: bool, embedded: Path = REFAM_SHAPES) -> Path:
    """Where the trained model goes: --output (default outputs/<the embedded model's name> under the
    current folder). The installed package's own model (`embedded`) is written only with
    --overwrite-embedded, said in so many words; nothing else inside the package is, and no folder
    already holding a model is overwritten."""
    import refam

    package = Path(refam.__file__).resolve().parent
    if overwrite_embedded:
        if output is not None and output.resolve() != embedded.resolve():
            raise ConfigError(f"--overwrite-embedded writes the shipped model {embedded}; leave out --output "
                              f"{output}, or leave out --overwrite-embedded to write there")
        return embedded
    output = Path("outputs") / embedded.name if output is None else output
    if output.resolve().is_relative_to(package):
        raise ConfigError(f"--output {output} is inside the installed refam package ({package}); choose a folder "
                          f"of your own, or give --overwrite-embedded to replace the shipped {embedded.name} model")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; give a folder for the trained model")
    if any((output / name).exists() for name in MODEL_FILES):
        raise ConfigError(f"--output {output} already holds a trained model; choose a new folder, or remove it first")
    writable(output, "--output")
    return output


def writable(folder: Path, flag: str) -> None:
    """Refuse, before hours of training, a folder the run could not write into (read-only, not
    creatable, a full disk); folders made for the check are removed again."""
    try:
        probe_writable(folder, keep_folder=False)
    except OSError as err:
        raise ConfigError(f"{flag} {folder}: cannot write there ({err.strerror or err}); choose a folder you can "
                          "write") from err


def check_arguments(args: argparse.Namespace, config: ShapesModelConfig) -> None:
    """Everything a run needs, checked before anything is built or trained."""
    if args.scenes < args.batch_size:
        raise ConfigError(f"--scenes {args.scenes} is fewer than --batch-size {args.batch_size}: no full batch to "
                          "train on; give more scenes or a smaller batch")
    if config.width % config.heads:
        raise ConfigError(f"--width {config.width} is not a multiple of --heads {config.heads}")
    if getattr(args, "absent_share", 0.0) and not args.ground_weight:
        raise ConfigError("--absent-share needs --ground-weight > 0 (it is a part of the grounding term)")
    if args.monitor_every and args.monitor_manifest is None:
        raise ConfigError("--monitor-every needs --monitor-manifest (the held-out expressions to score)")
    if args.monitor_manifest is not None and not args.monitor_manifest.is_file():
        raise MissingInputError(f"--monitor-manifest {args.monitor_manifest}: no such file; write one with "
                                "refam.shapes.dataset.write_shapes_set")
    if args.resume_from is not None:
        if not args.resume_from.is_dir():
            raise MissingInputError(f"--resume-from {args.resume_from}: no such folder; give a model folder that "
                                    "refam train-shapes wrote")
        if not (args.resume_from / "model_index.json").is_file():
            raise ConfigError(f"--resume-from {args.resume_from}: not a diffusers pipeline folder (no "
                              "model_index.json); give a model folder that refam train-shapes wrote")
    if args.work_dir.exists() and not args.work_dir.is_dir():
        raise ConfigError(f"--work-dir {args.work_dir} is a file; give a folder for the logs and snapshots")
    writable(args.work_dir, "--work-dir")
    if config.text_width % 4:
        raise ConfigError(f"--text-width {config.text_width} is not a multiple of 4 (T5's four heads share it)")


def add_run_arguments(parser: ArgumentParser, embedded: Path, vae_steps: int, flow_steps: int, batch_size: int,
                      ground_weight: float) -> None:
    """The flags both embedded models' training commands take: where it writes, how long, the
    optimiser, the seed, snapshots and resuming, the grounding term, threads."""
    count, share = COUNT, SHARE
    parser.add_argument("--output", type=Path, default=None,
                        help=f"where the trained model goes (default: outputs/{embedded.name} in the current folder)")
    parser.add_argument("--overwrite-embedded", action="store_true",
                        help=f"write the trained model over the one shipped in the installed package ({embedded})")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs") / f"train-{embedded.name.removeprefix('refam-')}")
    parser.add_argument("--vae-steps", type=count, default=vae_steps)
    parser.add_argument("--flow-steps", type=count, default=flow_steps)
    parser.add_argument("--batch-size", type=count, default=batch_size)
    parser.add_argument("--lr", type=number(float, above=0), default=1e-3)
    parser.add_argument("--caption-tokens", type=count, default=32)
    parser.add_argument("--seed", type=number(int, at_least=0, at_most=2**32 - 1), default=0)
    parser.add_argument("--snapshot-every", type=number(int, at_least=0), default=0,
                        help="also save the pipeline every N flow steps")
    parser.add_argument("--resume-from", type=Path, default=None, help="continue the flow stage of a saved model")
    parser.add_argument("--ground-weight", type=number(float, at_least=0), default=ground_weight,
                        help="weight of the auxiliary grounding term (refam.shapes.grounding); 0: flow matching alone")
    parser.add_argument("--ground-share", type=share, default=0.5,
                        help="share of each batch observed at the grounding noise level with the term")
    parser.add_argument("--threads", type=number(int, at_least=0), default=0, help="torch CPU threads (0: torch's default)")


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    count, share = COUNT, SHARE
    parser = ArgumentParser(prog="refam train-shapes", description=training.__doc__)
    add_run_arguments(parser, REFAM_SHAPES, vae_steps=800, flow_steps=4000, batch_size=32, ground_weight=0.0)
    parser.add_argument("--scenes", type=count, default=12000, help="training scenes encoded once")
    parser.add_argument("--t-mean", type=number(float), default=0.0, help="mean of the logit-normal t (> 0: more noise)")
    parser.add_argument("--pooled-prompt", choices=["caption", "empty"], default="caption",
                        help="what CLIP (the pooled vector) sees; 'empty' forces text through attention")
    parser.add_argument("--monitor-every", type=number(int, at_least=0), default=0,
                        help="score point accuracy on --monitor-manifest every N flow steps")
    parser.add_argument("--monitor-manifest", type=Path, default=None, help="held-out expressions (manifest format)")
    parser.add_argument("--omit-colour", type=share, default=0.0,
                        help="chance that a training caption names an object without its colour")
    parser.add_argument("--family", choices=list(FAMILIES), default="varied",
                        help="training scenes: any background, size and aspect (varied) or the demo set's (fixed)")
    for name, default in ShapesModelConfig().to_dict().items():
        if not isinstance(default, tuple):
            parser.add_argument(f"--{name.replace('_', '-')}", type=number(int, at_least=0 if name == "rope_fixed_dims" else 1),
                                default=default)
    parser.add_argument("--absent-share", type=share, default=0.0,
                        help="share of the grounding term's expressions that name a colour or shape the scene "
                             "lacks, taught to give every patch's mass to the magnets and the end token")
    args = parser.parse_args(argv)
    config = ShapesModelConfig(**{k: getattr(args, k) for k in ShapesModelConfig().to_dict() if hasattr(args, k)})
    output = output_folder(args.output, args.overwrite_embedded)
    check_arguments(args, config)
    if args.threads:
        torch.set_num_threads(args.threads)
    record = training.train(output, args.vae_steps, args.flow_steps, args.scenes, args.batch_size, args.seed, config,
                            args.lr, args.caption_tokens, args.work_dir, args.snapshot_every, args.resume_from,
                            args.t_mean, args.pooled_prompt, args.monitor_every, args.monitor_manifest,
                            args.omit_colour, args.family, args.ground_weight, args.ground_share,
                            args.absent_share)
    print(json.dumps({k: record[k] for k in ("total_seconds", "vae_seconds")}))
