"""Command-line subcommands that live in their own modules (registered by `jdistill.cli`)."""
