"""The one exception type the CLI turns into a one-line message and a non-zero exit code."""


class CompressError(Exception):
    """A problem the user can fix: the message names it, the value, and what to do."""
