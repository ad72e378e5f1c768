"""Errors caused by the user's input or configuration, and where in a config they point.

Each message says what is wrong and what to do; every subcommand of `refam` prints it as one line,
`refam: error: <message>`, and exits 2 instead of showing a traceback (`reports_user_errors` around
its `main`, `exit_with`), and the Python API (`RefAM`) raises it. They subclass the built-in error a
caller would expect (ValueError, FileNotFoundError) so generic handlers keep working. A subcommand's
own arguments go through `ArgumentParser`, whose errors (an unknown flag, a missing value, a number
out of the range `number` allows) are the same one line, without argparse's usage.

A component does not know where it sits in a config (the same segmenter is `model.segmenter` in
`refam test` and a keyword of `RefAM.load`), so it names only its own init argument:

    class FloodFillSegmenter(Segmenter):
        def __init__(self, tolerance: int = 32) -> None:
            if not 0 <= tolerance <= 255:
                raise ConfigError(f"must be in [0, 255], got {tolerance}", field="tolerance")

Built directly in Python, `str(err)` is `tolerance: must be in [0, 255], got 300`. Built from a
config, the front door fills in where the component sits (`place`) and the line reads
`model.segmenter.init_args.tolerance: must be in [0, 255], got 300`. Rules for a component:

- `field` is one of the raising class's own `__init__` arguments (the one to change), never a
  config path; the message does not repeat it. A sibling argument is named plainly
  ("set split_by"). An error about no single argument (a malformed data file) has no `field`.
- Raise from `__init__` or from a method: either works. A component that calls into a component it
  holds (RefAMPipeline calls `self.segmenter.setup()`) marks errors from it with `err.within(argument)`,
  the argument it received the inner component as, so the key reaches down to the inner field.

How a front door finds the component: jsonargparse builds every class through `build`
(refam.components registers it as an instantiator), which records on a RefamError the class it was
building and its arguments; `place` then finds that class's `class_path` in the parsed config.
jsonargparse's own error names no key (it re-raises the component's error, or wraps it in a
ValueError whose text lists union alternatives), so the key cannot be read from it. The parser's
errors before anything is built (a key it does not know, a value of the wrong type) do name the
key, in a tree of lines that `parser_error_line` makes one.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import math
import re
import sys
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, NoReturn


# the last RefamError raised while jsonargparse built a class (`build`), for `user_error`
_last_built: ContextVar[RefamError | None] = ContextVar("refam_last_built_error", default=None)


class RefamError(Exception):
    """Base of the errors refam reports to the user as one line.

    Args:
        message: what is wrong and what to do.
        field: the raising component's own init argument at fault (see the module docstring).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        # init arguments leading from the config section to the raising component, outermost
        # first (("segmenter",); ("datasets[1]",)), and the section ("model", "data"): set by
        # `within` and `place`
        self.path: tuple[str, ...] = ()
        self.section: str | None = None
        # (class, keyword arguments) that jsonargparse was building when this was raised (`build`)
        self.built: tuple[type, dict[str, Any]] | None = None

    def within(self, argument: str) -> "RefamError":
        """Mark this error as raised by the component given as `argument` to the caller's class."""
        self.path = (argument, *self.path)
        return self

    def at(self, section: str, *path: str) -> "RefamError":
        """Place this error: the component that raised it is `path` (init arguments, outermost
        first) under the config's `section`. For a front door that knows where it built it."""
        self.section, self.path = section, (*path, *self.path)
        return self

    @property
    def key(self) -> str | None:
        """The config key at fault: `model.segmenter.init_args.checkpoint` once placed, else the
        argument path (`checkpoint`, `segmenter.checkpoint`); None for an error with no `field`."""
        if self.field is None:
            return None
        names = (*self.path, self.field)
        if self.section is None:
            return ".".join(names)
        return f"{self.section}." + ".init_args.".join(names)

    def __str__(self) -> str:
        key = self.key
        return f"{key}: {self.message}" if key else self.message


class ConfigError(RefamError, ValueError):
    """A configuration value that cannot work."""


class MissingInputError(RefamError, FileNotFoundError):
    """A file or folder named by the configuration does not exist."""


class DataError(RefamError, ValueError):
    """A data file that exists but is malformed."""


class CheckpointError(RefamError, RuntimeError):
    """Weights that cannot be loaded."""


class ExpressionError(RefamError, ValueError):
    """An expression the extractor cannot encode (empty, too long); the sample's other expressions go on."""


def require_words(text: str) -> None:
    """The one check that an expression has words (the pipeline, every extractor and every text
    reader make it, so a component called directly says the same)."""
    if not text.strip():
        raise ExpressionError("an expression is empty: give the words that name the object")


def user_error(err: BaseException) -> RefamError | None:
    """The RefamError behind `err`, if any. jsonargparse re-raises an error raised while it builds
    a component (a dataset, a segmenter) as a ValueError caused by it, so the chain is searched; for
    a value of a union type (`Dataset | list[Dataset]`) its ValueError is caused by the first
    alternative's error only and quotes the others, so the last error `build` saw is taken when the
    message quotes it. That error is read once: a caller that goes on raising should raise the
    error returned."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, RefamError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    # read once: a later, unrelated ValueError quoting the same words is not this error again
    built = _last_built.get()
    _last_built.set(None)
    if built is not None and isinstance(err, ValueError) and built.message in " ".join(str(err).split()):
        return built
    return None


def forget_built_errors() -> None:
    """Call before jsonargparse builds classes: `user_error` then sees only what `build` records
    during this instantiation, not an error of an earlier one that no one reported (a union's
    alternative that failed before another fitted)."""
    _last_built.set(None)


def error_line(err: BaseException | str) -> str:
    """A user error (or a reason already made one line, `parser_error_line`) as the line a front door prints."""
    return "refam: error: " + " ".join(str(err).splitlines())


def exit_with(err: BaseException | str) -> NoReturn:
    """Print a user error as its one line on stderr and exit 2: what every front door does with one."""
    print(error_line(err), file=sys.stderr, flush=True)
    sys.exit(2)


def reports_user_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """A subcommand's `main` that prints a user error (a RefamError, or an error caused by one) as
    its one line and exits 2; any other error is a bug in refam and keeps its traceback."""
    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except Exception as err:
            found = user_error(err)
            if found is None:
                raise
            exit_with(found)

    return run


class ArgumentParser(argparse.ArgumentParser):
    """argparse for refam's subcommands: an argument it rejects (an unknown flag, a missing or
    malformed value) is one line `refam: error: ...`, exit 2, instead of the usage and the error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        exit_with(f"{self.prog}: {message}; run `{self.prog} --help` for the options")


def number(kind: type = int, *, at_least: float | None = None, above: float | None = None,
           at_most: float | None = None) -> Callable[[str], Any]:
    """An argparse `type` that reads an int or a finite float within bounds, and otherwise says
    which values are accepted (argparse prefixes the flag: `argument --port: must be ...`)."""
    shown = (lambda bound: str(int(bound))) if kind is int else (lambda bound: f"{bound:g}")
    bounds = [f">= {shown(at_least)}" if at_least is not None else "", f"> {shown(above)}" if above is not None else "",
              f"<= {shown(at_most)}" if at_most is not None else ""]
    accepted = f"{'an integer' if kind is int else 'a number'} {' and '.join(b for b in bounds if b)}".strip()

    def read(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}") from None
        if (not math.isfinite(value) or (at_least is not None and value < at_least)
                or (above is not None and value <= above) or (at_most is not None and value > at_most)):
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text}")
        return value

    read.__name__ = kind.__name__
    return read


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


def build(class_type: type, *args: Any, **kwargs: Any) -> Any:
    """A jsonargparse instantiator: builds `class_type(*args, **kwargs)` and, if that raises a
    RefamError, records on it which class with which arguments (the innermost, for `place`)."""
    try:
        return class_type(*args, **kwargs)
    except RefamError as err:
        if err.built is None:
            err.built = (class_type, dict(kwargs))
        _last_built.set(err)
        raise


def place(err: RefamError, sections: Mapping[str, type], config: Mapping[str, Any] | None = None) -> RefamError:
    """Say where the component that raised `err` sits, so `str(err)` names the full config key.

    Args:
        sections: the config's top-level sections and the class each builds, as the front door
            declares them (`{"model": RefAMPipeline, "data": RefAMDataModule}`; the `model:` keys
            are the pipeline's arguments).
        config: the parsed config as a plain dict, where a component that jsonargparse built
            (recorded by `build`) is looked up by its `class_path`; without it only errors of the
            section classes themselves (and what they mark with `within`) are placed.
    """
    if err.field is None or err.section is not None:
        return err
    if err.built is not None:
        built, arguments = err.built
        section = next((name for name, cls in sections.items() if cls is built), None)
        if section is not None:
            err.at(section)
        elif config is not None:
            found = _component_paths(config, built, arguments)
            if found:
                err.at(*found[0])
        return err
    # raised after the components were built, or by a section class that jsonargparse built
    # through another instantiator (LightningCLI's for the model and datamodule)
    owner = err.path[0] if err.path else err.field
    holders = [name for name, cls in sections.items() if owner in inspect.signature(cls.__init__).parameters]
    if len(holders) == 1:
        err.at(holders[0])
    return err


def _component_paths(config: Mapping[str, Any], cls: type, arguments: dict[str, Any]) -> list[tuple[str, ...]]:
    """Where `class_path`s naming `cls` sit in `config` (section, then init arguments); those whose
    `init_args` agree with `arguments` first."""
    agreeing, others = [], []

    def visit(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            if isinstance(node.get("class_path"), str) and _names(node["class_path"], cls):
                init_args = node.get("init_args") or {}
                (agreeing if _agrees(init_args, arguments) else others).append(path)
            for key, value in node.items():
                if key != "class_path":
                    visit(value, path if key == "init_args" else (*path, str(key)))
        elif isinstance(node, (list, tuple)) and path:
            for index, item in enumerate(node):
                # a list of one is written as the single value it holds (`--data.datasets {...}`)
                visit(item, path if len(node) == 1 else (*path[:-1], f"{path[-1]}[{index}]"))

    visit(config, ())
    return agreeing + others


def _names(class_path: str, cls: type) -> bool:
    if class_path == f"{cls.__module__}.{cls.__qualname__}":
        return True
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None) is cls
    except (ImportError, ValueError):
        return False


def _agrees(init_args: Mapping[str, Any], arguments: Mapping[str, Any]) -> bool:
    plain = (str, int, float, bool, type(None))
    return all(str(init_args[k]) == str(v) for k, v in arguments.items()
               if k in init_args and isinstance(init_args[k], plain))
