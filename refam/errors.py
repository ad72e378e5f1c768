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
