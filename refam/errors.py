"""Errors caused by the user's input or configuration.

Each message names the file, field or config key at fault and what to do; the CLI prints them as
one line and exits non-zero instead of showing a traceback. They subclass the built-in error a
caller would expect (ValueError, FileNotFoundError) so generic handlers keep working.
"""


class RefamError(Exception):
    """Base of the errors refam reports to the user as one line."""


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


def user_error(err: BaseException) -> RefamError | None:
    """The RefamError behind `err`, if any. jsonargparse re-raises an error raised while it builds
    a component (a dataset, a segmenter) as a ValueError caused by it, so the chain is searched."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, RefamError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
