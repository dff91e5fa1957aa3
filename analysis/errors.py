"""The one exception type that means "the user asked for something wrong".

The CLI prints a UserError as a single line and exits non-zero; anything else is a bug and keeps its
traceback. It lives in `analysis/` (the lowest layer) so that `queries/` and `ingest/` can both raise it
without `analysis/` ever importing storage code.
"""


class UserError(Exception):
    """A mistake in the user's input, configuration or environment, explained in one line."""
