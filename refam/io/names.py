"""Names of output files and folders made from what a user or a dataset names (an image's file
name, a sample or expression id, an expression's text).

The rule, for every output refam writes:

- A name that is already safe is kept as it is: letters, digits, `.`, `_` and `-`, at most
  `MAX_LENGTH` characters, not starting with `.` or `-`, not ending with `.`, and not a name
  Windows reserves for a device (`CON`, `nul.txt`, `COM1`, ...) (so the ids of official submission
  layouts, Ref-YouTube-VOS's and MeViS's `<video>/<expression>/<frame>.png`, are written unchanged).
- Any other name is made safe (each run of other characters becomes `-`, the result cut to fit)
  and gets `~` and 8 hex digits of the original's sha256 appended, so two names that differ
  only in what was replaced (`a/b`, `a-b`, `a b`) never share a file. `~` never occurs in a safe
  name, so a made-safe name never equals a kept one.
- A name never holds a path separator, so nothing a user names writes outside the output folder;
  `inside` checks a joined path as a last guard.
- `NameRegistry` hands out names within one folder: the same key always gets the same name, and
  two keys never share one (compared case-insensitively, as macOS and Windows file systems do).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

MAX_LENGTH = 80
_SAFE = re.compile(r"[A-Za-z0-9._-]+")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
# Windows opens these devices whatever the extension (`nul.png`); a trailing `.` it drops (`a.` is `a`)
_WINDOWS_DEVICE = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)


def is_safe(name: str) -> bool:
    """Whether `name` is kept unchanged as a file name (see the module docstring)."""
    return (bool(_SAFE.fullmatch(name)) and len(name) <= MAX_LENGTH and not name.startswith((".", "-"))
            and not name.endswith(".") and not _WINDOWS_DEVICE.fullmatch(name))


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def safe_name(name: object, limit: int = MAX_LENGTH) -> str:
    """`name` as one safe file-name component: unchanged when already safe, else made safe with a
    hash of the original appended (see the module docstring)."""
    text = str(name)
    if is_safe(text) and len(text) <= limit:
        return text
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    body = _UNSAFE_RUN.sub("-", ascii_text).strip(".-")[: max(1, limit - 9)].rstrip(".-") or "_"
    if _WINDOWS_DEVICE.fullmatch(body.split(".")[0]):  # `nul.x~...` would still open the device
        body = f"_{body}"[: max(1, limit - 9)]
    return f"{body}~{short_hash(text)}"


def slug(text: str, limit: int = 40) -> str:
    """A readable, lower-case stem for an expression's files (`the-dog-on-the-left`); not unique on
    its own: callers prefix it with the expression's index."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:limit].rstrip("-") or "expression"


def inside(root: Path | str, *parts: str) -> Path:
    """`root / parts...`, refusing (ValueError) a result outside `root` (an absolute part, `..`, a
    symbolic link out)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise ValueError(f"{os.path.join(*parts)!r} would write outside {root}")
    return path


class NameRegistry:
    """Unique names within one folder: `name(key, wanted)` gives `safe_name(wanted)`, or, when that
    is taken by another key, the same with `-2`, `-3`, ... appended. The same key always gets the
    same name."""

    def __init__(self) -> None:
        self._by_key: dict[object, str] = {}
        self._taken: set[str] = set()

    def name(self, key: object, wanted: str) -> str:
        if key in self._by_key:
            return self._by_key[key]
        base = safe_name(wanted)
        candidate, count = base, 1
        while candidate.casefold() in self._taken:
            count += 1
            candidate = f"{base}-{count}"
        self._taken.add(candidate.casefold())
        self._by_key[key] = candidate
        return candidate
