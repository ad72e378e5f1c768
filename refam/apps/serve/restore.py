"""A run downloaded from the app, given back as `refam serve --config run.json`: its `model:`
section loads as any config's (the settings), and its `run` entry puts the input, the expressions
and the caption back in the page. The input is not inside run.json: the download offers a copy of it
(`input/<name>`), and the record names it (`run.input`); saved beside run.json, it is found there."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from refam.errors import ConfigError


@dataclass(frozen=True)
class RestoredRun:
    """What a run JSON puts back in the page besides its settings."""

    expressions: str  # one per line, as the page's box holds them
    caption: str
    input: Path | None  # the input file beside the run JSON, None where it is not there
    note: str = ""  # why the input is missing, for the page's status line


def restored_run(config: str | Path | None) -> RestoredRun | None:
    """The page's inputs recorded in `config` when it is a run JSON from the app (it has a `run`
    entry); None for any other config. A malformed `run` entry is a ConfigError naming its key."""
    if config is None or Path(config).suffix.lower() != ".json" or not Path(config).is_file():
        return None  # no config, a YAML one, or a folder; a missing file is the model loader's error
    config = Path(config)
    try:
        document = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # not JSON after all: the config loader reads it (as YAML) and says what is wrong
    if not isinstance(document, dict) or "run" not in document:
        return None
    run = document["run"]

    def entry(key: str, kind: type, what: str):
        value = run.get(key, kind()) if isinstance(run, dict) else None
        if not isinstance(value, kind):
            raise ConfigError(f"{config}: run.{key} must be {what}; give the run.json the app offers for download")
        return value

    entry("input", str, "the input's file name")  # checks `run` is a mapping too
    caption = entry("caption", str, "a text")
    expressions = entry("expressions", list, "a list of {expression: ...} entries")
    if not all(isinstance(e, dict) and isinstance(e.get("expression"), str) for e in expressions):
        raise ConfigError(f"{config}: run.expressions must be a list of {{expression: ...}} entries; "
                          "give the run.json the app offers for download")
    texts = "\n".join(e["expression"] for e in expressions)
    name = Path(run.get("input", "")).name  # a file name only: the input is looked for beside the record
    if not name:
        return RestoredRun(texts, caption, None)
    found = config.parent / name
    if found.is_file():
        return RestoredRun(texts, caption, found)
    return RestoredRun(texts, caption, None, note=f"{config.name} was run on {name}, which is not beside it: "
                                                   f"save {name} from the run's downloads next to it, or upload it")
