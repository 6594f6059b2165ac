"""The one exception type of the cache package.

`cache/` depends on nothing else in the project, so it cannot raise `pipeline.runtime.errors.CompressError`; callers
(the CLI, stages) catch `CacheError` and report its one-line message the same way.
"""


class CacheError(Exception):
    """A problem with a teacher cache the user can fix: the message names it, the value, and what to do."""
