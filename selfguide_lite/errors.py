"""The one exception type that means "the user gave us something wrong".

The CLI turns it into a single `error: ...` line and exit code 2; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a missing file, a malformed task, an unknown option value."""
