"""The `refam` command: a table of subcommands, each a module's `main(argv)`.

`refam test --config X.yaml` runs the LightningCLI (`refam.evaluation.lightning_cli`); the others are refam's
own (predict, serve, score, analyze, ablate, train-shapes, train-shapes-video). Every user error, whichever subcommand
meets it, is one line `refam: error: ...` and exit code 2 (`refam.errors`).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from refam.errors import exit_with, parser_error_line, reports_user_errors


@dataclass(frozen=True)
class Subcommand:
    target: str  # "module:function", called with the arguments after the subcommand's name
    summary: str  # one line for `refam --help`

    def run(self, argv: list[str]) -> None:
        module, function = self.target.split(":")
        reports_user_errors(getattr(importlib.import_module(module), function))(argv)


SUBCOMMANDS: dict[str, Subcommand] = {
    "test": Subcommand("refam.cli:lightning_test",
                       "evaluate a config's model on its datasets: refam test --config configs/refcoco.yaml"),
    "predict": Subcommand("refam.cli:predict",
                          "segment images or videos by referring expressions (with --data: Lightning's predict)"),
    "serve": Subcommand("refam.apps.serve:main", "see and correct a segmentation in the browser (a Gradio app)"),
    "score": Subcommand("refam.evaluation.score:main", "J&F of prediction folders in the DAVIS layout, as the official evaluation"),
    "analyze": Subcommand("refam.apps.analyze:main", "the paper's diagnostic figures for one image and its expressions"),
    "ablate": Subcommand("refam.evaluation.ablations:main", "run the paper's ablation tables as config overrides"),
    "train-shapes": Subcommand("refam.shapes.train_cli:main", "train the embedded refam-shapes model on CPU"),
    "train-shapes-video": Subcommand("refam.shapes.train_video_cli:main",
                                     "train the embedded refam-shapes-video model on CPU"),
}
# LightningCLI's training subcommands: refam has nothing to fit
REFUSED = {name: f"'refam {name}' is not a refam command: refam evaluates zero-shot; to train the embedded model "
                 "use 'refam train-shapes'" for name in ("fit", "validate")}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {command.summary}" for name, command in SUBCOMMANDS.items())
    return ("usage: refam <command> [options]\n\nzero-shot referring segmentation with diffusion transformers\n\n"
            f"commands:\n{rows}\n\n`refam <command> --help` lists a command's options.")


def lightning_test(argv: list[str]) -> None:
    run_lightning(["test", *argv])


def predict(argv: list[str]) -> None:
    """Image(s) and expression(s) in, pictures out (`refam.apps.predict`); with --data or --trainer
    options it is LightningCLI's `predict` over a datamodule."""
    if any(a.startswith("--trainer") or a == "--data" or a.startswith("--data.") for a in argv):
        run_lightning(["predict", *argv])
        return
    from refam.apps.predict import main as predict_images

    predict_images(argv)


def run_lightning(argv: list[str]) -> None:
    from jsonargparse import ArgumentError

    from refam.evaluation.lightning_cli import run_cli

    try:
        run_cli(argv)
    except ArgumentError as err:  # a key or value the parser rejects: its one useful line, no usage
        exit_with(parser_error_line(str(err), argv[0]))


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    if name in REFUSED:
        exit_with(REFUSED[name])
    if name not in SUBCOMMANDS:
        given = f"option {name!r} needs a command before it" if name.startswith("-") else \
            f"'refam {name}' is not a refam command"
        exit_with(f"{given}; the commands are {', '.join(SUBCOMMANDS)} (run `refam --help`)")
    SUBCOMMANDS[name].run(rest)


if __name__ == "__main__":
    main()
