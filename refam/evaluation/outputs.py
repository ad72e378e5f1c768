"""Where a `refam test` run writes, and how it fails to: every file is named by
`refam.io.names.safe_name` (a dataset's name per `/`-separated part, see `dataset_folder`; sample,
expression and frame ids whole), so ids that collide once made file-safe never share a file and
nothing escapes the folder a user named. Each output folder is checked before the model loads
(`check_folder`): a folder that is a file, not writable or on a full disk is one line naming its
config key. A disk that fills during the run is one line naming the file (`write_output`); what was
written before stays.
"""

from __future__ import annotations

from pathlib import Path

from refam.errors import ConfigError, RefamError
from refam.io import files
from refam.io.names import safe_name

class OutputError(RefamError, OSError):
    """An output that cannot be written (a full disk, a read-only file system)."""


def dataset_folder(name: str) -> str:
    """A dataset's name as one folder name: each `/`-separated part made safe (`safe_name`) and the
    parts joined by `-` (`refcoco/val` -> `refcoco-val`)."""
    return "-".join(safe_name(part) for part in str(name).split("/"))


def check_folder(folder: Path, key: str) -> None:
    """Refuse, in one line naming the config `key`, a folder refam could not write into: one that
    is a file or under one, read-only, or on a full disk. The folder is made if missing."""
    def refuse(why: str) -> ConfigError:
        section, field = key.split(".")
        return ConfigError(f"cannot write into {folder}: {why}; set --{key} to a folder you can write",
                           field=field).at(section)

    if folder.exists() and not folder.is_dir():
        raise refuse("it is a file, not a folder")
    try:
        files.probe_writable(folder)  # what every output goes through: a full disk fails here too
    except (FileExistsError, NotADirectoryError):
        raise refuse("a part of the path is a file, not a folder") from None
    except OSError as err:
        raise refuse(err.strerror or str(err)) from err


def write_output(path: Path, data: bytes) -> Path:
    """`refam.io.files.write_atomic`, a full or read-only disk made one line naming the file; returns the path."""
    try:
        files.write_atomic(path, data)
        return path
    except OSError as err:
        if err.errno not in files.WRITE_ERRNOS:
            raise
        raise OutputError(f"cannot write {path}: {err.strerror or err}; free space or choose another folder "
                          "(what was written before is kept, and a rerun reuses it)") from err
