"""The error users see: one line, no traceback, exit status 2 from the CLI."""


class UserError(Exception):
    """An error in what the user asked for (bad input, missing file, unknown name)."""
