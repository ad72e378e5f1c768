"""`refam test --config X.yaml` (and the other LightningCLI subcommands)."""

from __future__ import annotations

import sys

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
from refam.errors import RefamError
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
    return RefAMCLI(
        RefAMModule,
        RefAMDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
    )


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
    except RefamError as err:
        # The message names the culprit and the fix; a traceback would only bury it.
        print(f"refam: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
