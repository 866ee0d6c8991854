"""The errors a user can fix: each prints as one line, and the CLI exits with status 2.

Every module raises one of these for bad input (never a bare traceback): the message
names the file, key or parameter at fault.  They subclass ``ValueError`` so that code
catching "a bad value" keeps working.
"""


class UserError(ValueError):
    """An error in what the user asked for (bad input, missing file, unknown name)."""


class ConfigError(UserError):
    """A config could not be read: the message names the key or path at fault."""


class CheckpointError(UserError):
    """A model directory or checkpoint could not be read safely."""


class AudioError(UserError):
    """Audio that cannot be used: unreadable, empty, silent or not finite."""
