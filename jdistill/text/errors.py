"""The one error type of `jdistill.text`."""

from jdistill.errors import ConfigError


class TokenizerError(ConfigError):
    """A tokenizer spec, directory, file, chat template or chat that cannot be used; printed as one line."""
