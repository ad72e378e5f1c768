"""Writing files so that a reader never sees half of one: a temporary file in the same folder,
then a rename. Every output refam writes (masks, pictures, records, cached maps, memos) goes
through `write_atomic`."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from PIL import Image

# what a full, read-only or forbidden output location raises while writing (a user's error to report
# in one line, not refam's)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EEXIST,
                          errno.ENOTDIR, errno.EISDIR})


def current_umask() -> int:
    """The process's umask (read from /proc where there is one: setting it to read it back would
    briefly change it for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename, so a reader
    never sees half a file. The file gets the mode `open()` would give it (0666 less the umask),
    not the temporary file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            os.fchmod(file.fileno(), 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path) -> None:
    write_atomic(path, png_bytes(image))


def save_json(record: dict, path: Path) -> None:
    write_atomic(path, (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode())


def probe_writable(folder: Path, keep_folder: bool = True) -> None:
    """Raise the `OSError` a write into `folder` would meet (a file in the path, a read-only or full
    disk), by writing and removing a small file the way every output is written (`write_atomic`).
    The folder is made if missing; with `keep_folder` false, what was made for the probe is removed."""
    folder = Path(folder)
    made = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)  # the first one missing
    probe = folder / f".refam-write-check.{os.getpid()}"  # one per process: DDP ranks probe at once
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder", str(folder))
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(probe, b"refam")
        probe.unlink(missing_ok=True)
    finally:
        if made is not None and not keep_folder:
            shutil.rmtree(made, ignore_errors=True)
