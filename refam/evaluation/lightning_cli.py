"""The LightningCLI behind `refam test` (and the other Lightning subcommands): one run of a config.

The `refam` command (`refam.cli`) dispatches to it; `refam ablate` runs it once per table row.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

# configs name components by class name, and a component's error names its config key (`build`)
from refam.components import INSTANTIATORS
from refam.evaluation.callbacks import ExpressionRecords, MaskWriter
from refam.evaluation.outputs import check_folder
from refam.evaluation.store import ResultStore, config_fingerprints
from refam.data.datamodule import RefAMDataModule
from refam.errors import forget_built_errors, place, user_error
from refam.pipeline import RefAMPipeline
from refam.evaluation.module import RefAMModule

# the config's sections and the class whose arguments are their keys, as errors name them (the
# module's `model:` keys are its pipeline's)
SECTIONS = {"model": RefAMPipeline, "data": RefAMDataModule, "results": ResultStore, "masks": MaskWriter,
            "records": ExpressionRecords}

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
        # resumable evaluation: --results.folder DIR (default <logger save_dir>/results), --results.resume false.
        # The module is given the store (a link target is no config key, so no fingerprint holds it) and
        # hands the trainer the callback that writes it (configure_callbacks).
        parser.add_class_arguments(ResultStore, "results", sub_configs=True)
        parser.link_arguments("results", "model.result_store", apply_on="instantiate")

    def _add_instantiators(self) -> None:
        super()._add_instantiators()  # Lightning's, for the module and the datamodule, match first
        with warnings.catch_warnings():  # the parser-scoped registration Lightning itself uses
            warnings.simplefilter("ignore", DeprecationWarning)
            for instantiator, class_type, subclasses in INSTANTIATORS:
                self.parser.add_instantiator(instantiator, class_type, subclasses=subclasses)

    def check_output_folders(self) -> None:
        """Folders named on the command line or in the config are checked before anything is built
        (the Trainer prints its device lines when built); default folders, under the log folder the
        Trainer picks, are checked by the callbacks' `setup`, which still runs before the model loads."""
        config = (self.config[self.subcommand] if self.subcommand else self.config).as_dict()
        wanted = [("masks", bool((config.get("masks") or {}).get("save")))]
        if self.subcommand in (None, "test"):
            wanted += [("results", True), ("records", True)]
        for section, used in wanted:
            folder = (config.get(section) or {}).get("folder")
            if used and folder:
                check_folder(Path(folder), f"{section}.folder")

    def instantiate_classes(self) -> None:
        forget_built_errors()
        self.check_output_folders()
        try:
            super().instantiate_classes()
        except Exception as err:  # a component's own error: say where the config holds it
            found = user_error(err)
            if found is None:
                raise
            config = self.config[self.subcommand] if self.subcommand else self.config
            place(found, SECTIONS, config.as_dict())
            raise found from found.__cause__  # the error itself, as if raised here, with its own cause

    def after_instantiate_classes(self) -> None:
        # a stored result is reused only by a run of the same model and data settings
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.model.result_store.fingerprints = config_fingerprints(config.as_dict())


def run_cli(args: list[str] | None = None) -> RefAMCLI:
    """One LightningCLI run (`refam test ...`); returns the CLI, whose trainer holds the metrics."""
    # "Seed set to 0" comes before the components are built, so a config error would not be the
    # only line printed; the seed is in the run's saved config.yaml
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # `args` is how refam hands LightningCLI its arguments (the console script's and `refam ablate`'s)
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
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
    except Exception as err:  # raised while testing (a checkpoint loaded in setup): say where the config holds it
        found = user_error(err)
        if found is not None:
            place(found, SECTIONS)
        raise
