"""User-facing errors: one line, naming the field or file and what was expected.

The CLI catches `UserError` and prints its message alone (no traceback) with exit code 2.
"""


class UserError(Exception):
    """An error caused by the user's input (config, files, data); printed as one line."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid config key, type or value."""


class DataError(UserError):
    """A dataset that is missing, unprepared or malformed."""


class RunDirError(UserError):
    """A run directory that cannot be written or resumed."""
