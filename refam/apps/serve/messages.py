"""Errors in the page's words. The library's messages speak to a command line (`--video`, an
environment variable to set, a file's full path); a page user uploaded a file and moved a control,
so the page says what is wrong with that, names the file as it was uploaded (never the server's
temporary folder), and shows it as one line styled as an error."""

from __future__ import annotations

import re
from html import escape
from pathlib import PurePath

from refam.errors import user_error

# the library's messages the page words its own way: (what it says, what the page says)
REWORDED = [
    (r"the expression has (\d+) tokens with magnets; the limit is (\d+).*",
     r"an expression is too long: \1 tokens with the magnets, more than the model's \2; shorten it"),
    (r"image (.+) is (\d+x\d+) = [\d,]+ pixels, over the limit of ([\d,]+) .*",
     r"\1 is \2 pixels, more than the \3 this server reads: downscale it"),
    (r"cannot read image (.+?) \(.*\); give a PNG.*", r"cannot read \1 as an image: give a PNG, JPEG or another common format"),
    (r"image file not found: (.+)", r"\1 is no longer on the server: upload it again"),
    (r"(.+) is an animated or multi-frame image \((\d+) frames\).*",
     r"\1 has \2 frames: upload it as a video (e.g. MP4), or save the one frame you mean"),
    (r"video not found: (.+)", r"\1 is no longer on the server: upload it again"),
]
# an absolute path (a temporary upload's, the server's): the page names the file alone
PATH = re.compile(r"(?<![\w.])(?:/[^\s/:;,()'\"`]+)+")
LONGEST = 200  # the page shows one line; longer ones are cut (the whole message is the line's tooltip)


def page_error(err: BaseException | str) -> str:
    """The message of a user error as the page says it: one line, files by name."""
    found = user_error(err) if isinstance(err, BaseException) else None
    message = " ".join(str(found if found is not None else err).split())
    message = PATH.sub(lambda match: PurePath(match.group(0)).name, message)
    for pattern, words in REWORDED:
        if re.fullmatch(pattern, message):
            return re.sub(pattern, words, message)
    return message


def error_html(message: str) -> str:
    """The status line: empty, or the error in one line marked as an error."""
    if not message:
        return ""
    shown = message if len(message) <= LONGEST else message[:LONGEST - 1] + "…"
    return f'<p class="refam-error" role="alert" title="{escape(message)}">{escape(shown)}</p>'
