"""The `refam` command: `refam test --config X.yaml` (and the other LightningCLI subcommands, run by
`refam.lightning_cli`), and refam's own subcommands (predict, serve, score, analyze, ablate, train-shapes)."""

from __future__ import annotations

import sys

from jsonargparse import ArgumentError

from refam.errors import error_line, parser_error_line, user_error
from refam.lightning_cli import run_cli


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
        print(error_line(parser_error_line(str(err), subcommand)), file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        found = user_error(err)
        if found is None:
            raise
        # The message names the culprit and the fix; a traceback would only bury it.
        print(error_line(found), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
