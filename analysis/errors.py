"""The one exception type that means "the user asked for something wrong".

The CLI prints a UserError as a single line and exits non-zero; anything else is a bug and keeps its
traceback. It lives in `analysis/` (the lowest layer) so that `queries/` and `ingest/` can both raise it
without `analysis/` ever importing storage code.
"""


class UserError(Exception):
    """A mistake in the user's input, configuration or environment, explained in one line."""


def read_json_file(path, what: str):
    """Parse a user's JSON file; a missing or malformed file is a one-line UserError naming it."""
    import json
    from pathlib import Path

    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{p}: no such {what}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read the {what}: {' '.join(str(exc).split())[:120]}") from None
