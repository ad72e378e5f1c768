"""What every front door that reads a config shares (`refam test`, `RefAM.load`, and through it
`refam predict`, `analyze` and `serve`): the component modules, imported so that a config may name
a class by its name alone, the jsonargparse instantiator that lets an error name its config key
(`refam.errors.build`), and jsonargparse's parse error as one line.
"""

from __future__ import annotations

import re

import jsonargparse

# Imported so that configs can name components by class name as well as by full import path.
import refam.aggregators.base  # noqa: F401
import refam.aggregators.magnets  # noqa: F401
import refam.aggregators.spatial  # noqa: F401
import refam.data  # noqa: F401
import refam.extractors.flux  # noqa: F401
import refam.extractors.trajectory  # noqa: F401
import refam.segmenters  # noqa: F401
from refam.errors import build

# Every class jsonargparse builds goes through `build`, which records on a RefamError the class it
# came from; the parser's own instantiators (LightningCLI's for the model and datamodule) come first.
jsonargparse.add_instantiator(build, object, subclasses=True)

_STRUCTURE = re.compile(r"(Parser key|Problem with given class_path|Does not validate|Subtypes:|Errors:|Given value)")
# alternatives jsonargparse also tried (a file path, a list, another base class): rarely the point
_WEAK = re.compile(r"(Expected a path but|Expected a <class 'list'>|Import path .* does not correspond to a subclass)")


def parser_error_line(message: str, subcommand: str = "test") -> str:
    """jsonargparse's error as one line naming the full key. A rejected `class_path` value is
    reported as a tree (key, class, nested key, one branch per candidate type); the first specific
    reason in it is the useful line."""
    help_hint = f"run `refam {subcommand} --help` for the accepted keys"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return f"invalid arguments; {help_hint}"
    top = re.match(r'Parser key "([^"]+)":\s*(.*)', lines[0])
    if top is None:
        generic = ("does not accept", "unrecognized arguments", "invalid choice")
        return lines[0] + (f"; {help_hint}" if any(g in lines[0] for g in generic) else "")
    candidates = []
    owner = nested = None
    for line in [top.group(2)] + lines[1:]:
        text = line.lstrip("- ").strip()
        if (match := re.match(r"Problem with given class_path '([^']+)'", text)):
            owner, nested = match.group(1), None
        elif (match := re.match(r'Parser key "([^"]+)"', text)):
            nested = match.group(1)
        elif text and not _STRUCTURE.match(text):
            candidates.append((owner, nested, text))
    if not candidates:
        return f"{lines[0]} {help_hint}"
    owner, nested, reason = next((c for c in candidates if not _WEAK.match(c[2])), candidates[0])
    key = top.group(1) + (f".init_args.{nested}" if nested else "")
    if (option := re.match(r"Option '([^']+)' is not accepted", reason)):
        where = f" ({owner} has no such argument)" if owner else ""
        return f"unknown key {key}.init_args.{option.group(1)}{where}; check its spelling, or {help_hint}"
    if owner and not nested:
        return f"{key}: class_path '{owner}': {reason}"
    return f"{key}: {reason}"

