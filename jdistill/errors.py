"""User-facing errors: one line, naming the field or file and what was expected.

The CLI catches `UserError` and prints its message alone (no traceback) with exit code 2 (3 for `NonFiniteError`);
`Preempted` (a stage stopped by SIGTERM / SIGINT, its checkpoint saved) exits with 128 + the signal number.
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


class NonFiniteError(UserError):
    """Training produced a non-finite loss or gradient norm (more often than `train.skip_nonfinite_steps`
    allows); exit status 3."""

    exit_code = 3


class Preempted(Exception):
    """A stage stopped on SIGTERM / SIGINT after saving a checkpoint at its current step; the message says how to
    resume. Exit status 128 + the signal number (143 for SIGTERM, 130 for SIGINT), as a shell reports a process
    killed by it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
