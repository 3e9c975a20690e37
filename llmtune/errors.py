class LlmtuneError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


class Interrupted(LlmtuneError):
    """Ctrl-C or SIGTERM during training: a checkpoint was saved (the CLI exits with code 130)."""
