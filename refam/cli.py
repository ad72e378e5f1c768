"""`refam test --config X.yaml` (and the other LightningCLI subcommands)."""

from __future__ import annotations

import logging
import re
import sys

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

# Imported so that configs can name components by class name as well as by full import path.
import refam.aggregators.base  # noqa: F401
import refam.aggregators.magnets  # noqa: F401
import refam.aggregators.spatial  # noqa: F401
import refam.data  # noqa: F401
import refam.extractors.flux  # noqa: F401
import refam.extractors.trajectory  # noqa: F401
import refam.segmenters  # noqa: F401
from refam.callbacks import ExpressionRecords, MaskWriter, ResultStore, config_fingerprints
from refam.data.datamodule import RefAMDataModule
from refam.errors import user_error
from refam.module import RefAMModule

TRAINER_DEFAULTS = {
    # the datamodule shards without padding; Lightning's DistributedSampler would duplicate samples
    "use_distributed_sampler": False,
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "outputs"}},
}


class RefAMCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # always on, configurable as --records.folder
        parser.add_lightning_class_args(ExpressionRecords, "records")
        # --masks.save true [--masks.overlay true] [--masks.folder DIR]
        parser.add_lightning_class_args(MaskWriter, "masks")
        # resumable evaluation: --results.folder DIR (default <logger save_dir>/results), --results.resume false
        parser.add_lightning_class_args(ResultStore, "results")

    def after_instantiate_classes(self) -> None:
        # a stored result is reused only by a run of the same model and data settings
        config = self.config[self.subcommand] if self.subcommand else self.config
        for callback in self.trainer.callbacks:
            if isinstance(callback, ResultStore):
                callback.fingerprints = config_fingerprints(config.as_dict())


def run_cli(args: list[str] | None = None) -> RefAMCLI:
    """One LightningCLI run (`refam test ...`); returns the CLI, whose trainer holds the metrics."""
    # "Seed set to 0" comes before the components are built, so a config error would not be the
    # only line printed; the seed is in the run's saved config.yaml
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    return RefAMCLI(
        RefAMModule,
        RefAMDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        # a bad key or value raises ArgumentError (main prints its one useful line) instead of
        # printing the whole usage before it
        parser_kwargs={"exit_on_error": False},
        args=args,
    )


_STRUCTURE = re.compile(r"(Parser key|Problem with given class_path|Does not validate|Subtypes:|Errors:|Given value)")
# alternatives jsonargparse also tried (a file path, a list, another base class): rarely the point
_WEAK = re.compile(r"(Expected a path but|Expected a <class 'list'>|Import path .* does not correspond to a subclass)")


def parser_error_line(message: str, subcommand: str = "test") -> str:
    """jsonargparse's error as one line naming the full key. A rejected `class_path` value is
    reported as a tree (key, class, nested key, one branch per candidate type); the first specific
    reason in it is the useful line."""
    help_hint = f"run `refam {subcommand} --help` for the accepted keys"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return f"invalid arguments; {help_hint}"
    top = re.match(r'Parser key "([^"]+)":\s*(.*)', lines[0])
    if top is None:
        generic = ("does not accept", "unrecognized arguments", "invalid choice")
        return lines[0] + (f"; {help_hint}" if any(g in lines[0] for g in generic) else "")
    candidates = []
    owner = nested = None
    for line in [top.group(2)] + lines[1:]:
        text = line.lstrip("- ").strip()
        if (match := re.match(r"Problem with given class_path '([^']+)'", text)):
            owner, nested = match.group(1), None
        elif (match := re.match(r'Parser key "([^"]+)"', text)):
            nested = match.group(1)
        elif text and not _STRUCTURE.match(text):
            candidates.append((owner, nested, text))
    if not candidates:
        return f"{lines[0]} {help_hint}"
    owner, nested, reason = next((c for c in candidates if not _WEAK.match(c[2])), candidates[0])
    key = top.group(1) + (f".init_args.{nested}" if nested else "")
    if (option := re.match(r"Option '([^']+)' is not accepted", reason)):
        where = f" ({owner} has no such argument)" if owner else ""
        return f"unknown key {key}.init_args.{option.group(1)}{where}; check its spelling, or {help_hint}"
    if owner and not nested:
        return f"{key}: class_path '{owner}': {reason}"
    return f"{key}: {reason}"


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["train-shapes"]:
        from refam.shapes.train import main as train_shapes

        train_shapes(argv[1:])
        return
    if argv[:1] == ["ablate"]:
        from refam.ablations import main as ablate

        ablate(argv[1:])
        return
    if argv[:1] == ["analyze"]:
        from refam.analyze import main as analyze

        analyze(argv[1:])
        return
    if argv[:1] == ["serve"]:
        from refam.serve import main as serve

        serve(argv[1:])
        return
    if argv[:1] == ["score"]:
        from refam.score import main as score

        score(argv[1:])
        return
    if argv[:1] == ["predict"] and not any(a.startswith("--trainer") or a == "--data" for a in argv):
        # image(s) + expression(s) in, pictures out; LightningCLI's `predict` needs a datamodule
        from refam.predict import main as predict

        predict(argv[1:])
        return
    try:
        run_cli(args)
    except ArgumentError as err:  # a key or value the parser rejects: its one useful line, no usage
        subcommand = next((a for a in argv if not a.startswith("-")), "test")
        print(f"refam: error: {parser_error_line(str(err), subcommand)}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        found = user_error(err)
        if found is None:
            raise
        # The message names the culprit and the fix; a traceback would only bury it.
        print("refam: error: " + " ".join(str(found).splitlines()), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
