"""The files a dataset's settings name, read so that a missing or broken one is one error naming
the setting to change (`field`: the dataset's own init argument, `data_root`, `root`, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from refam.errors import DataError, MissingInputError


def require(path: Path, field: str, what: str, hint: str = "") -> None:
    """Raise MissingInputError naming `field` when `path` does not exist. `hint` ends the message:
    what else the path is made of, or where the release keeps the file."""
    if not path.exists():
        raise MissingInputError(f"{what} not found: {path}{hint}", field=field)


def load_json(path: Path, field: str, what: str) -> Any:
    """The JSON document at `path` (`what` names the file when it is missing); a file that is not
    UTF-8 JSON is one DataError naming it, where it breaks and the setting that chose it."""
    require(path, field, what)
    fix = "restore the original file or name another"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}; {fix}", field=field) from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); {fix}", field=field) from e
